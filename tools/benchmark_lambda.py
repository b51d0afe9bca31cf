#!/usr/bin/env python
"""Benchmark the lambda layer's forms against a 3x3 conv, global attention, timm and lambda-networks.

    python tools/benchmark_lambda.py                          # CPU, writes docs/benchmarks/
    python tools/benchmark_lambda.py --device cuda --sides 32 64 128 256
    python tools/benchmark_lambda.py --methods lambda/fft timm --sides 64
    python tools/benchmark_lambda.py --scope-sweep            # the data behind impl="auto"

Competitors need `pip install -e .[bench]`. Logic: lambda_det/benchmark.py.
"""
import argparse
from pathlib import Path

from lambda_det.benchmark import LayerSpec, run, scope_sweep


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("docs/benchmarks"), help="directory for JSON/markdown/PNG")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--sides", type=int, nargs="+", default=[32, 64, 128], help="timed map sides")
    parser.add_argument("--memory-sides", type=int, nargs="+", default=[32, 64, 128, 256], help="map sides for peak memory")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per cell (median reported)")
    parser.add_argument("--methods", nargs="+", help="subset of methods (default: all available)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--scope", type=int, default=23)
    parser.add_argument("--scope-sweep", action="store_true",
                        help="instead: time every position-lambda form per map side (--sides) and scope (--scopes)")
    parser.add_argument("--scopes", type=int, nargs="+", default=[3, 7, 11, 15, 23])
    args = parser.parse_args()
    if args.scope_sweep:
        sides = args.sides if args.sides != [32, 64, 128] else [8, 16, 32, 64]
        scope_sweep(args.output, sides, args.scopes, args.device, args.repeats, LayerSpec(batch=args.batch))
        return
    run(args.output, args.sides, args.memory_sides, args.device, args.repeats, args.methods,
        LayerSpec(batch=args.batch, scope=args.scope))


if __name__ == "__main__":
    main()
