#!/usr/bin/env python
"""Images, instances per class and the small / medium / large split (COCO's area ranges) of
registered datasets; the toy sets are generated first if needed.

    python tools/dataset_stats.py toy_shapes_train toy_shapes_val

Logic: lambda_det/data/stats.py.
"""
import argparse
import sys

import lambda_det  # noqa: F401  (registers the toy datasets)
from lambda_det.data.stats import dataset_statistics, statistics_table
from lambda_det.engine import add_dataset_argument, register_datasets, run_main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("datasets", nargs="+", help="registered dataset names")
    add_dataset_argument(parser)
    args = parser.parse_args()
    register_datasets(args)
    stats = [dataset_statistics(name) for name in args.datasets]
    print(statistics_table(stats), end="")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
