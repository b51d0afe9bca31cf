#!/usr/bin/env python
"""Train or evaluate Mask R-CNN with a LambdaResNet backbone (Detectron2's train_net conventions).

    python tools/train_net.py --config-file CONFIG [--num-gpus N] [--resume] [--eval-only [--overwrite]] [--amp] [KEY VALUE ...]

Logic: lambda_det/engine/. Outputs under OUTPUT_DIR: checkpoints, metrics.json, TensorBoard events,
inference/<dataset>/{coco_instances_results.json, ap_by_size.json, ap_by_size.md, ap_by_size.png}.
Exit status 2 (one `error:` line) for bad flags, config values, weights or output locations.
"""
import sys

import lambda_det  # noqa: F401  (registers backbones and datasets)
from lambda_det.engine import run_cli

if __name__ == "__main__":
    sys.exit(run_cli())
