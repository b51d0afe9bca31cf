#!/usr/bin/env python
"""Benchmark the lambda layer's forms against a 3x3 conv, global attention, timm and lambda-networks.

    python tools/benchmark_lambda.py                          # CPU, writes output/benchmarks/
    python tools/benchmark_lambda.py --device cuda --sides 32 64 128 256
    python tools/benchmark_lambda.py --methods lambda/fft timm --sides 64
    python tools/benchmark_lambda.py --scope-sweep            # the data behind impl="auto"

Competitors need `pip install -e .[bench]`. Results already in --output are not replaced without
--overwrite (the committed ones: --output docs/benchmarks --overwrite). Logic: lambda_det/benchmark.py.
"""
import argparse
import sys
from pathlib import Path

from lambda_det.benchmark import LayerSpec, run, scope_sweep
from lambda_det.checks import UserError, positive_int
from lambda_det.outputs import ensure_writable_dir, existing, path_argument, refuse_overwrite


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=path_argument, default=Path("output/benchmarks"), help="directory for JSON/markdown/PNG")
    parser.add_argument("--overwrite", action="store_true", help="replace results an earlier run left in --output")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--sides", type=positive_int, nargs="+", default=[32, 64, 128], help="timed map sides")
    parser.add_argument("--memory-sides", type=positive_int, nargs="+", default=[32, 64, 128, 256], help="map sides for peak memory")
    parser.add_argument("--repeats", type=positive_int, default=3, help="timed runs per cell (median reported)")
    parser.add_argument("--methods", nargs="+", help="subset of methods (default: all available)")
    parser.add_argument("--batch", type=positive_int, default=2)
    parser.add_argument("--scope", type=positive_int, default=23, help="odd r of the r x r scope")
    parser.add_argument("--scope-sweep", action="store_true",
                        help="instead: time every position-lambda form per map side (--sides) and scope (--scopes)")
    parser.add_argument("--scopes", type=positive_int, nargs="+", default=[3, 7, 11, 15, 23])
    args = parser.parse_args()
    even = [r for r in [args.scope, *args.scopes] if r % 2 == 0]
    if even:
        parser.error(f"--scope / --scopes: {even[0]} is even; a scope r x r needs an odd r")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device on this machine")
    tag = "cuda" if args.device == "cuda" else "cpu"
    names = [f"scope_sweep_{tag}.json", f"scope_sweep_{tag}.md"] if args.scope_sweep else [
        f"lambda_layer_{tag}.{ext}" for ext in ("json", "md", "png")]
    try:
        if not args.overwrite:
            refuse_overwrite(existing(args.output / n for n in names), "--output", "of an earlier benchmark")
        ensure_writable_dir(args.output, "--output")  # before the minutes of timing, not after
        if args.scope_sweep:
            sides = args.sides if args.sides != [32, 64, 128] else [8, 16, 32, 64]
            scope_sweep(args.output, sides, args.scopes, args.device, args.repeats, LayerSpec(batch=args.batch))
        else:
            run(args.output, args.sides, args.memory_sides, args.device, args.repeats, args.methods,
                LayerSpec(batch=args.batch, scope=args.scope))
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
