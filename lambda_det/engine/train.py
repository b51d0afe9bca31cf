"""What tools/train_net.py runs: Detectron2's argument conventions, checks before anything starts,
then train or evaluate.

Before a process is started or a file written (``preflight``): the flags, every config value, the
datasets, OUTPUT_DIR (not a file, not an earlier run unless --resume), the weights file, and for
--resume the checkpoint it will continue from.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path
from typing import List, Optional

import torch
from detectron2.engine import default_argument_parser, default_setup, launch

from ..checkpoint import Checkpointer, WeightsError, check_resume, is_local, weights_problem
from ..checks import UserError, check_datasets, check_launch_args, validate_config
from ..config import load_config
from ..outputs import OutputError, refuse_file, refuse_overwrite
from .trainer import Trainer

logger = logging.getLogger("lambda_det")

EPILOG = """
Examples:
  Toy data, CPU:       tools/train_net.py --config-file configs/Toy/mask_rcnn_LambdaR_26_FPN_toy.yaml
  COCO, 8 GPUs:        tools/train_net.py --num-gpus 8 --config-file configs/COCO-InstanceSegmentation/mask_rcnn_LambdaR_101_FPN_100ep.yaml
  Resume after a stop: the same command with --resume
  Evaluate:            tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/.../model_final.pth
  Two CPU processes:   tools/train_net.py --num-gpus 2 ... (without GPUs, --num-gpus counts gloo processes)

Training never writes over an earlier run: an OUTPUT_DIR that holds checkpoints or metrics is
continued with --resume, or refused. --eval-only refuses to replace an earlier evaluation in
OUTPUT_DIR/inference/<dataset>/ unless --overwrite is given.
"""

# files that mark an OUTPUT_DIR as holding a run
RUN_MARKERS = ("last_checkpoint", "metrics.json")


def argument_parser() -> argparse.ArgumentParser:
    parser = default_argument_parser(epilog=EPILOG)
    parser.add_argument("--amp", action="store_true", help="mixed precision (sets SOLVER.AMP.ENABLED; needs CUDA)")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="with --eval-only: replace an earlier evaluation in OUTPUT_DIR/inference/<dataset>/",
    )
    return parser


def load_cfg(args):
    """The config of this run (no side effects): file, overrides, --amp, CPU fallback."""
    cfg = load_config(args.config_file, args.opts)
    if args.amp:
        cfg.SOLVER.AMP.ENABLED = True
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on the CPU (MODEL.DEVICE cpu)")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def setup_cfg(args):
    """Per process: the config, the CPU threads it may use, Detectron2's logger / config dump / seed."""
    cfg = load_cfg(args)
    share_cpu_cores(cfg, args.num_gpus)
    default_setup(cfg, args)  # logger, OUTPUT_DIR, config.yaml dump, seed
    return cfg


def share_cpu_cores(cfg, processes_per_machine: int) -> None:
    """N training processes on CPUs: each gets its share of the cores (all of them each is ~10x slower).

    An explicit OMP_NUM_THREADS is the user's choice and is kept.
    """
    if processes_per_machine <= 1 or not cfg.MODEL.DEVICE.startswith("cpu") or "OMP_NUM_THREADS" in os.environ:
        return
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // processes_per_machine))


def existing_run(output_dir: str) -> List[Path]:
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [out / name for name in RUN_MARKERS if (out / name).exists()]
    return found + sorted(out.glob("model_*.pth"))


def preflight(cfg, args) -> None:
    """Everything that can be known to fail, checked before any process starts or file is written."""
    check_launch_args(args, cfg.MODEL.DEVICE)
    validate_config(cfg, training=not args.eval_only, world_size=args.num_gpus * args.num_machines)
    if not args.eval_only:
        check_datasets(cfg, cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
    check_datasets(cfg, cfg.DATASETS.TEST, "DATASETS.TEST")
    output_dir = cfg.OUTPUT_DIR
    refuse_file(Path(output_dir), "OUTPUT_DIR")
    if args.eval_only:
        if not cfg.DATASETS.TEST:
            raise UserError("--eval-only needs DATASETS.TEST: the datasets to evaluate on")
        resumed = check_resume(output_dir) if args.resume else None
        if resumed is None:
            if not cfg.MODEL.WEIGHTS:
                raise WeightsError(
                    "--eval-only needs weights: pass MODEL.WEIGHTS path/to/model.pth, or --resume to evaluate the "
                    f"last checkpoint in OUTPUT_DIR={output_dir}"
                )
            _check_weights_file(cfg.MODEL.WEIGHTS)
        if not args.overwrite:
            earlier = [Path(output_dir) / "inference" / name / "ap_by_size.json" for name in cfg.DATASETS.TEST]
            refuse_overwrite([p for p in earlier if p.exists()], "--eval-only", "of an earlier evaluation")
        return
    run = existing_run(output_dir)
    if args.resume:
        if check_resume(output_dir) is None and cfg.MODEL.WEIGHTS:
            _check_weights_file(cfg.MODEL.WEIGHTS)
        return
    if run:
        raise OutputError(
            f"OUTPUT_DIR {output_dir} already holds a run ({', '.join(p.name for p in run[:4])}"
            f"{' ...' if len(run) > 4 else ''}); nothing was written. Continue it with --resume, or train into "
            "another OUTPUT_DIR (trailing `OUTPUT_DIR path`), or move the old run away yourself"
        )
    if cfg.MODEL.WEIGHTS:
        _check_weights_file(cfg.MODEL.WEIGHTS)


def _check_weights_file(path: str) -> None:
    if is_local(path):
        problem = weights_problem(path)
        if problem:
            raise WeightsError(f"MODEL.WEIGHTS {path} {problem}")


def main(args):
    """One process's work (Detectron2's launch runs it in each process)."""
    cfg = setup_cfg(args)
    Trainer.run_context = {"config_file": args.config_file}
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = Checkpointer(model, save_dir=cfg.OUTPUT_DIR, strict=True, cfg=cfg)
        weights = checkpointer.get_checkpoint_file() if args.resume and checkpointer.has_checkpoint() else cfg.MODEL.WEIGHTS
        extra = checkpointer.load(weights)
        Trainer.run_context.update(weights=weights, iteration=extra.get("iteration"))
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def _main_in_worker(args):
    """main, where an error about the user's input ends the process with one line, not a traceback."""
    try:
        return main(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def launch_from_args(args) -> None:
    launch(
        _main_in_worker if args.num_gpus * args.num_machines > 1 else main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )


def run_cli(argv: Optional[List[str]] = None) -> int:
    """tools/train_net.py: exit status 0 done, 2 bad flags / config / weights / output location."""
    args = argument_parser().parse_args(argv)
    print("Command Line Args:", args)
    try:
        cfg = load_cfg(args)
        preflight(cfg, args)
        launch_from_args(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except torch.multiprocessing.ProcessExitedException as exc:
        if exc.exit_code == 2:  # a worker already said why
            return 2
        raise
    return 0
