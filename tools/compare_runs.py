#!/usr/bin/env python
r"""Several evaluated runs side by side: one markdown table and one bar chart of AP by object size,
with rows of the paper's Table 6 as reference, and what produced each run (weights, config, input
size, dataset, from the provenance in each ap_by_size.json).

    python tools/compare_runs.py output/lambda_r101 output/r101 --names LambdaResNet-101 ResNet-101 \
        --paper LambdaResNet-101 ResNet-101 --output output/compare

Each run is an OUTPUT_DIR holding one evaluation (inference/<dataset>/ap_by_size.json) or an
ap_by_size.json file. An earlier comparison in --output is not replaced without --overwrite.
Logic: lambda_det/evaluation/ap_by_size.py.
"""
import argparse
import sys
from pathlib import Path

from lambda_det.engine import run_main
from lambda_det.evaluation import PAPER_TABLE6, compare
from lambda_det.utils.file_safety import path_argument


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+", type=path_argument, help="output directories or ap_by_size.json files")
    parser.add_argument("--names", nargs="*", default=[], help="row names, in the order of the runs (a run after the last name keeps its own)")
    parser.add_argument("--paper", nargs="*", default=[], choices=list(PAPER_TABLE6), metavar="ROW",
                        help=f"reference rows of the paper's Table 6: {', '.join(PAPER_TABLE6)}")
    parser.add_argument("--output", type=path_argument, default=Path("output/compare"))
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier comparison in --output")
    args = parser.parse_args()
    paths = compare(args.runs, args.output, paper_rows=args.paper, names=args.names, overwrite=args.overwrite)
    print(paths["md"].read_text())
    print(f"wrote {paths['md']}, {paths['png']}, {paths['json']}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
