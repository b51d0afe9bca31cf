#!/usr/bin/env python
"""Benchmark whole Mask R-CNNs with the six Table 6 backbones, the conv twins of the LambdaResNets
and Detectron2's own R-101-FPN, in one run (models interleaved, medians and ranges): training
iteration, inference, peak training memory, parameters, GFLOPs, and a per-part breakdown.

    python tools/benchmark_detector.py                          # 1024 and 512, CPU
    python tools/benchmark_detector.py --device cuda --amp --batch 8
    python tools/benchmark_detector.py --quick                  # a toy model and its twin at 128, one round
    python tools/benchmark_detector.py --models LambdaResNet-101 "LambdaResNet-101 conv twin" --sizes 1024 --tag pairs

Results go to --output (default output/benchmarks; the committed ones: --output docs/benchmarks
--overwrite) and are not replaced without --overwrite. Logic: lambda_det/benchmark/detector.py.
"""
import argparse
import sys
from pathlib import Path

import torch

from lambda_det.benchmark.detector import detector_benchmark_paths, quick_models, run_detector_benchmark, table6_models
from lambda_det.engine import positive_int, run_folder_lock, run_main
from lambda_det.utils.file_safety import ensure_writable_dir, existing, path_argument, refuse_overwrite


SIZES, REPEATS = [1024, 512], 3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=path_argument, default=Path("output/benchmarks"))
    parser.add_argument("--overwrite", action="store_true", help="replace results an earlier run left in --output")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--amp", action="store_true", help="mixed precision (CUDA)")
    parser.add_argument("--sizes", type=positive_int, nargs="+", help=f"square input sizes (default {' '.join(map(str, SIZES))})")
    parser.add_argument("--batch", type=positive_int, default=1, help="images per iteration")
    parser.add_argument("--repeats", type=positive_int, help=f"rounds (median reported; default {REPEATS})")
    parser.add_argument("--models", nargs="+", help="subset of the models, by name")
    parser.add_argument("--no-flops", action="store_true", help="skip the GFLOPs counts (tracing takes a while)")
    parser.add_argument("--quick", action="store_true", help="a toy LambdaResNet and its conv twin at 128, once")
    parser.add_argument("--tag", default="", help="file names detector_<device>_<tag>.*, so a run of some models "
                        "does not replace the full run's files (e.g. --tag pairs)")
    args = parser.parse_args()
    if args.amp and args.device != "cuda":
        parser.error("--amp needs --device cuda (mixed precision on CPUs is not what GPUs run)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device on this machine")
    if args.quick and (args.sizes or args.repeats):
        parser.error(f"{'--sizes' if args.sizes else '--repeats'} does nothing with --quick, which runs its toy models at 128, once")
    models = quick_models() if args.quick else table6_models()
    if args.models:
        known = {m.name: m for m in models}
        unknown = [name for name in args.models if name not in known]
        if unknown:
            parser.error(f"--models: unknown {unknown}; choose from {list(known)}")
        models = [known[name] for name in args.models]
    sizes, repeats = ([128], 1) if args.quick else (args.sizes or SIZES, args.repeats or REPEATS)
    if args.tag and not args.tag.replace("-", "").replace("_", "").isalnum():
        parser.error(f"--tag {args.tag!r}: letters, digits, '-' and '_' only (it becomes part of file names)")
    tag = ("_quick" if args.quick else "") + ("_amp" if args.amp else "")
    tag += f"_{args.tag}" if args.tag else ""
    paths = detector_benchmark_paths(args.output, args.device, tag).values()
    if not args.overwrite:
        refuse_overwrite(existing(paths), "--output", "of an earlier benchmark")
    ensure_writable_dir(args.output, "--output")
    # a second benchmark into the same folder is refused while this one runs (it would also disturb
    # the timings), and one that finished there since the check above is not replaced
    with run_folder_lock(args.output, "--output"):
        if not args.overwrite:
            refuse_overwrite(existing(paths), "--output", "of an earlier benchmark")
        run_detector_benchmark(args.output, sizes, models, repeats, args.batch, args.device, args.amp,
                               flops=not args.no_flops, tag=tag)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
