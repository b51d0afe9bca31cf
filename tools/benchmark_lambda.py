#!/usr/bin/env python
"""Benchmark the lambda layer, in one run per command (methods interleaved, medians and ranges):

    python tools/benchmark_lambda.py                  # every form, a 3x3 conv, attention, timm, lambda-networks
    python tools/benchmark_lambda.py --vs-conv        # layer and block against the 3x3 conv, Table 6 shapes, batch 1..8
    python tools/benchmark_lambda.py --auto-rule      # every form at the Table 6 shapes: the data behind impl="auto"
    python tools/benchmark_lambda.py --scope-sweep    # every form per map side and scope
    python tools/benchmark_lambda.py --vs-timm        # timm's lambda_resnet50ts against ours (same weights), 512 and 1024
    python tools/benchmark_lambda.py --kernels --device cuda   # the Triton operator kernel by kernel, with tile variants
    python tools/benchmark_lambda.py --device cuda --sides 32 64 128 256

Forward (no gradients) and forward+backward are timed separately. Results go to --output
(default output/benchmarks; the committed ones: --output docs/benchmarks --overwrite) and are not
replaced without --overwrite. Competitors need `pip install -e .[bench]`. Logic: lambda_det/benchmark/.
"""
import argparse
import sys
from functools import partial
from pathlib import Path

import torch

from lambda_det.benchmark.layer import (
    LayerSpec, chosen_methods, form_sweep, layer_benchmark_paths, run_layer_benchmark, scope_sweep_cells, sweep_paths,
    table6_cells, vs_conv, vs_conv_paths, write_sweep,
)
from lambda_det.benchmark.backbone import vs_timm, vs_timm_paths
from lambda_det.benchmark.kernels import kernel_benchmark, kernel_benchmark_paths
from lambda_det.engine import positive_int, run_folder_lock, run_main
from lambda_det.utils.file_safety import ensure_writable_dir, existing, path_argument, refuse_overwrite


# the flags each benchmark reads beyond --output, --overwrite, --device and --repeats
MODE_FLAGS = {"vs_conv": ("batches",), "auto_rule": ("batches", "sides"), "scope_sweep": ("sides", "scopes", "batch"),
              "vs_timm": ("sizes", "batch"), "kernels": (), "layer": ("sides", "memory_sides", "methods", "batch", "scope")}
OPTIONAL_FLAGS = ("sizes", "sides", "memory_sides", "methods", "batch", "batches", "scope", "scopes")
DEFAULTS = {"sizes": [512, 1024], "memory_sides": [32, 64, 128, 256], "batch": 2, "batches": [1, 2, 4, 8], "scope": 23,
            "scopes": [3, 7, 11, 15, 23]}


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
    what.add_argument("--kernels", action="store_true", help="the Triton operator's kernels one by one, with tile variants "
                      "(CUDA; on a CPU only under TRITON_INTERPRET=1, at toy sizes)")
    parser.add_argument("--sizes", type=positive_int, nargs="+", help="--vs-timm input sizes (default: 512 1024)")
    parser.add_argument("--sides", type=positive_int, nargs="+", help="map sides (default: 32 64 128; --scope-sweep 8 16 32 64; "
                        "--auto-rule 16 32 64 128)")
    parser.add_argument("--memory-sides", type=positive_int, nargs="+", help="map sides for peak memory (default: 32 64 128 256)")
    parser.add_argument("--repeats", type=positive_int, default=5, help="timed rounds per cell (median and range reported)")
    parser.add_argument("--methods", nargs="+", help="subset of methods (default: all available)")
    parser.add_argument("--batch", type=positive_int, help="the layer benchmark's, --scope-sweep's and --vs-timm's batch (default: 2)")
    parser.add_argument("--batches", type=positive_int, nargs="+", help="--vs-conv / --auto-rule batches (default: 1 2 4 8)")
    parser.add_argument("--scope", type=positive_int, help="odd r of the r x r scope (default: 23)")
    parser.add_argument("--scopes", type=positive_int, nargs="+", help="--scope-sweep's scopes (default: 3 7 11 15 23)")
    args = parser.parse_args()
    mode = next((m for m in MODE_FLAGS if m != "layer" and getattr(args, m)), "layer")
    unused = [flag for flag in OPTIONAL_FLAGS if getattr(args, flag) is not None and flag not in MODE_FLAGS[mode]]
    if unused:  # (they were ignored without a word)
        name = "the layer benchmark" if mode == "layer" else "--" + mode.replace("_", "-")
        parser.error(f"--{unused[0].replace('_', '-')} does nothing for {name}, which takes "
                     + (", ".join("--" + f.replace("_", "-") for f in MODE_FLAGS[mode]) or "none of " + ", ".join(
                         "--" + f.replace("_", "-") for f in OPTIONAL_FLAGS)))
    for flag, default in DEFAULTS.items():
        if getattr(args, flag) is None:
            setattr(args, flag, default)
    even = [r for r in [args.scope, *args.scopes] if r % 2 == 0]
    if even:
        parser.error(f"--scope / --scopes: {even[0]} is even; a scope r x r needs an odd r")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device on this machine")
    out, device = args.output, args.device
    if args.vs_conv:
        paths = vs_conv_paths(out, device)
        benchmark = partial(vs_conv, out, args.batches, device, args.repeats)
    elif args.auto_rule or args.scope_sweep:
        if args.auto_rule:
            name, title = "auto_rule", "Forms of the position term at the Table 6 models' shapes (impl='auto')"
            cells = table6_cells(args.batches, args.sides or [16, 32, 64, 128])
        else:
            name, title = "scope_sweep", "Forms of the position term by map size and scope"
            cells = scope_sweep_cells(args.sides or [8, 16, 32, 64], args.scopes, LayerSpec(batch=args.batch))
        paths = sweep_paths(out, name, device)

        def benchmark() -> None:
            write_sweep(out, name, title, form_sweep(cells, device, args.repeats), device, args.repeats)
    elif args.vs_timm:
        paths = vs_timm_paths(out, device)
        benchmark = partial(vs_timm, out, args.sizes, args.batch, args.repeats, device)
    elif args.kernels:
        paths = kernel_benchmark_paths(out, device)

        def benchmark() -> int:
            records = kernel_benchmark(out, device, args.repeats)["records"]
            return 1 if any(r.get("agrees") is False for r in records) else 0  # a variant computed something else
    else:
        chosen_methods(args.methods, torch.device(device).type)  # (an unknown one is named before any folder is made)
        paths = layer_benchmark_paths(out, device)
        benchmark = partial(run_layer_benchmark, out, args.sides or [32, 64, 128], args.memory_sides, device, args.repeats,
                            args.methods, LayerSpec(batch=args.batch, scope=args.scope))
    if not args.overwrite:
        refuse_overwrite(existing(paths.values()), "--output", "of an earlier benchmark")
    ensure_writable_dir(out, "--output")  # before the minutes of timing, not after
    # a second benchmark into the same folder is refused while this one runs (it would also disturb
    # the timings), and one that finished there since the check above is not replaced
    with run_folder_lock(out, "--output"):
        if not args.overwrite:
            refuse_overwrite(existing(paths.values()), "--output", "of an earlier benchmark")
        return benchmark() or 0


if __name__ == "__main__":
    sys.exit(run_main(main))
