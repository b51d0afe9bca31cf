#!/usr/bin/env python
"""Benchmark the lambda layer, in one run per command (methods interleaved, medians and ranges):

    python tools/benchmark_lambda.py                  # every form, a 3x3 conv, attention, timm, lambda-networks
    python tools/benchmark_lambda.py --vs-conv        # layer and block against the 3x3 conv, Table 6 shapes, batch 1..8
    python tools/benchmark_lambda.py --auto-rule      # every form at the Table 6 shapes: the data behind impl="auto"
    python tools/benchmark_lambda.py --scope-sweep    # every form per map side and scope
    python tools/benchmark_lambda.py --vs-timm        # timm's lambda_resnet50ts against ours (same weights), 512 and 1024
    python tools/benchmark_lambda.py --device cuda --sides 32 64 128 256

Forward (no gradients) and forward+backward are timed separately. Results go to --output
(default output/benchmarks; the committed ones: --output docs/benchmarks --overwrite) and are not
replaced without --overwrite. Competitors need `pip install -e .[bench]`. Logic: lambda_det/benchmark/.
"""
import argparse
import sys
from pathlib import Path

from lambda_det.benchmark import LayerSpec, form_sweep, run, scope_sweep_cells, table6_cells, vs_conv, write_sweep
from lambda_det.engine import positive_int, run_main
from lambda_det.utils.file_safety import ensure_writable_dir, existing, path_argument, refuse_overwrite


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=path_argument, default=Path("output/benchmarks"), help="directory for JSON/markdown/PNG")
    parser.add_argument("--overwrite", action="store_true", help="replace results an earlier run left in --output")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--vs-conv", action="store_true", help="layer and bottleneck block against the 3x3 conv they replace")
    what.add_argument("--auto-rule", action="store_true", help="every form at the Table 6 models' shapes (impl='auto')")
    what.add_argument("--scope-sweep", action="store_true", help="every form per map side (--sides) and scope (--scopes)")
    what.add_argument("--vs-timm", action="store_true", help="timm's lambda_resnet50ts against this package's build, at --sizes")
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=[512, 1024], help="--vs-timm input sizes")
    parser.add_argument("--sides", type=positive_int, nargs="+", help="map sides (default: 32 64 128; --scope-sweep 8 16 32 64; "
                        "--auto-rule 16 32 64 128)")
    parser.add_argument("--memory-sides", type=positive_int, nargs="+", default=[32, 64, 128, 256], help="map sides for peak memory")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed rounds per cell (median and range reported)")
    parser.add_argument("--methods", nargs="+", help="subset of methods (default: all available)")
    parser.add_argument("--batch", type=positive_int, default=2)
    parser.add_argument("--batches", type=positive_int, nargs="+", default=[1, 2, 4, 8], help="--vs-conv / --auto-rule batches")
    parser.add_argument("--scope", type=positive_int, default=23, help="odd r of the r x r scope")
    parser.add_argument("--scopes", type=positive_int, nargs="+", default=[3, 7, 11, 15, 23])
    args = parser.parse_args()
    even = [r for r in [args.scope, *args.scopes] if r % 2 == 0]
    if even:
        parser.error(f"--scope / --scopes: {even[0]} is even; a scope r x r needs an odd r")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device on this machine")
    tag = args.device
    if args.vs_conv:
        names = [f"lambda_vs_conv_{tag}.{ext}" for ext in ("json", "md", "png")]
    elif args.auto_rule:
        names = [f"auto_rule_{tag}.json", f"auto_rule_{tag}.md"]
    elif args.scope_sweep:
        names = [f"scope_sweep_{tag}.json", f"scope_sweep_{tag}.md"]
    elif args.vs_timm:
        names = [f"vs_timm_{tag}.json", f"vs_timm_{tag}.md"]
    else:
        names = [f"lambda_layer_{tag}.{ext}" for ext in ("json", "md", "png")]
    if not args.overwrite:
        refuse_overwrite(existing(args.output / n for n in names), "--output", "of an earlier benchmark")
    ensure_writable_dir(args.output, "--output")  # before the minutes of timing, not after
    if args.vs_conv:
        vs_conv(args.output, args.batches, args.device, args.repeats)
    elif args.auto_rule:
        cells = table6_cells(args.batches, args.sides or [16, 32, 64, 128])
        records = form_sweep(cells, args.device, args.repeats)
        write_sweep(args.output, "auto_rule", "Forms of the position term at the Table 6 models' shapes (impl='auto')",
                    records, args.device, args.repeats)
    elif args.scope_sweep:
        cells = scope_sweep_cells(args.sides or [8, 16, 32, 64], args.scopes, LayerSpec(batch=args.batch))
        records = form_sweep(cells, args.device, args.repeats)
        write_sweep(args.output, "scope_sweep", "Forms of the position term by map size and scope", records,
                    args.device, args.repeats)
    elif args.vs_timm:
        from lambda_det.benchmark.backbone import vs_timm

        vs_timm(args.output, args.sizes, args.batch, args.repeats, args.device)
    else:
        run(args.output, args.sides or [32, 64, 128], args.memory_sides, args.device, args.repeats, args.methods,
            LayerSpec(batch=args.batch, scope=args.scope))
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
