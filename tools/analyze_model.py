#!/usr/bin/env python
r"""FLOPs, parameters, activations and structure of a (LambdaResNet) Detectron2 model, in the
conventions of Detectron2's tools/analyze_model.py; lambda layers are counted by their definition.

    python tools/analyze_model.py --config-file CONFIG --tasks flop parameter [-n 10] [KEY VALUE ...]
    python tools/analyze_model.py --config-file CONFIG --tasks flop --input-size 1024 1024 --worst-case

A LazyConfig (a .py, or the config.yaml tools/lazyconfig_train_net.py saved) takes key=value overrides:

    python tools/analyze_model.py --config-file configs/new_baselines/mask_rcnn_LambdaR_101_FPN_100ep_LSJ.py \
        --tasks flop parameter --input-size 1024 1024 --worst-case train.device=cpu

FLOPs and activations depend on the input: by default the first -n images of DATASETS.TEST[0]
(as Detectron2; a LazyConfig's dataloader.test); --input-size H W uses synthetic images of that
size instead (no dataset needed); --worst-case gives every image the test-time maximum of proposals
and detections, so that the count does not depend on the weights. Logic: lambda_det/analysis.py.
"""
import argparse
import json
import sys

from omegaconf import DictConfig, OmegaConf

import lambda_det
from lambda_det.analysis import TASKS, analyze, inference_inputs_source, worst_case
from lambda_det.engine import (ANY_OVERRIDE, add_dataset_argument, cpu_if_no_cuda, parse_args_with_overrides, positive_int, register_datasets,
                               run_main, validate_config)
from lambda_det.engine.lazy import LAZY_KEYS, cpu_if_no_cuda_lazy, dataset_names
from lambda_det.engine.preflight import ConfigProblems
from lambda_det.errors import ConfigError, UserError
from lambda_det.lazy_config import is_lazy_config, load_lazy_config
from lambda_det.utils.file_safety import (ensure_writable_dir, existing, file_path_argument, normalized, not_a_file, refuse_overwrite,
                                         same_file, write_text)


def is_analysis_record(path) -> bool:
    """Whether ``path`` holds the JSON record this tool writes with --json."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(record, dict) and {"config_file", "opts", "worst_case", "num_inputs"} <= set(record)


def load_analysis_config(args):
    """The yacs config or LazyConfig of --config-file with the overrides, for inference on its device
    (the CPU where CUDA is absent), with --worst-case's settings; whether it names test images."""
    if is_lazy_config(args.config_file):
        cfg = load_lazy_config(args.config_file, args.opts, for_inference=True)
        if OmegaConf.select(cfg, "dataloader.test.num_workers", default=None) is not None:
            cfg.dataloader.test.num_workers = 0
        cpu_if_no_cuda_lazy(cfg)
        problems = ConfigProblems(cfg)
        problems.device("train.device")
        ConfigError.check(problems.lines)
        if args.worst_case:
            worst_case(cfg)
        return cfg, bool(dataset_names(OmegaConf.select(cfg, LAZY_KEYS.test, default=None)))
    cfg = lambda_det.load_config(args.config_file, args.opts)
    cfg.DATALOADER.NUM_WORKERS = 0
    cpu_if_no_cuda(cfg)
    if args.worst_case:
        worst_case(cfg)
    cfg.freeze()
    validate_config(cfg, training=False)
    return cfg, bool(cfg.DATASETS.TEST)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="a yacs config (.yaml) or a LazyConfig (.py)")
    parser.add_argument("--tasks", required=True, nargs="+", metavar="TASK", help=f"one or more of {', '.join(TASKS)}")
    parser.add_argument("-n", "--num-inputs", type=positive_int,
                        help="inputs to average FLOPs / activations over (they are data-dependent); default 100 "
                        "as Detectron2, or 1 with --input-size (synthetic inputs of one size count nearly the same)")
    parser.add_argument("--input-size", type=positive_int, nargs=2, metavar=("H", "W"),
                        help="synthetic images of this size instead of DATASETS.TEST[0] (a LazyConfig's dataloader.test)")
    parser.add_argument("--worst-case", action="store_true",
                        help="count every image at the test-time maximum of proposals and detections")
    parser.add_argument("--json", type=file_path_argument, help="also write the totals to this JSON file")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    add_dataset_argument(parser, "DATASETS.TEST / dataloader.test.dataset.names", classes=None)  # the images counted
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides: KEY VALUE ... (yacs), key=value ... (LazyConfig)")
    args = parse_args_with_overrides(parser, override=ANY_OVERRIDE)
    register_datasets(args)
    # --tasks takes words until the next flag: trailing overrides right after it belong to opts
    tasks = list(args.tasks)
    first_key = next((i for i, t in enumerate(tasks) if ANY_OVERRIDE.match(t)), len(tasks))  # MODEL.DEVICE, train.device=cpu
    args.opts[:0] = tasks[first_key:]
    tasks = tasks[:first_key]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        parser.error(f"--tasks: {unknown or args.tasks} not among {list(TASKS)}")
    args.tasks = tasks
    if args.num_inputs is None:
        args.num_inputs = 1 if args.input_size else 100  # synthetic inputs of one size count (nearly) the same
    cfg, names_test_images = load_analysis_config(args)
    if args.json:
        if args.json.exists() and not args.json.is_file():
            raise UserError(f"--json {args.json} {not_a_file(args.json)}; name a file")
        weights = OmegaConf.select(cfg, LAZY_KEYS.weights, default=None) if isinstance(cfg, DictConfig) else cfg.MODEL.WEIGHTS
        for source, what in ((args.config_file, "the config file"), (weights, "the weights file")):
            if source and same_file(args.json, normalized(source)):
                raise UserError(f"--json {args.json} is {what}; name a new file")
        if not args.overwrite:
            refuse_overwrite(existing([args.json]), "--json", "of an earlier analysis")
        elif args.json.is_file() and not is_analysis_record(args.json):  # a _BASE_ config, annotations, ...
            raise UserError(f"--json {args.json} is no analysis this tool wrote, which is all --overwrite replaces; "
                            "name a new file")
        ensure_writable_dir(args.json.parent, "--json's folder")
    if {"flop", "activation"} & set(args.tasks) and not args.input_size and not names_test_images:
        raise UserError(f"--tasks flop/activation need inputs: {inference_inputs_source(cfg)}, or --input-size H W")
    summary = analyze(cfg, args.tasks, args.num_inputs, tuple(args.input_size) if args.input_size else None,
                      check_worst_case=args.worst_case)
    if args.json:
        record = {"config_file": args.config_file, "opts": args.opts, "input_size": args.input_size,
                  "worst_case": args.worst_case, "num_inputs": summary.pop("num_inputs", None), **summary}  # counted
        write_text(args.json, json.dumps(record, indent=2), replace=args.overwrite)  # nor one written meanwhile
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
