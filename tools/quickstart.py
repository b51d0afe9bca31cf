#!/usr/bin/env python
"""The main job (`make quickstart`): train a LambdaResNet-FPN Mask R-CNN on the toy dataset on the CPU,
evaluate AP by object size, run the demo, print where the results are. Logic: lambda_det/engine/quickstart.py.

    python tools/quickstart.py [--output DIR] [--max-iter N] [--no-resume] [KEY VALUE ...]
"""
import sys

import lambda_det  # noqa: F401
from lambda_det.checks import UserError
from lambda_det.engine.quickstart import run

if __name__ == "__main__":
    try:
        run()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
