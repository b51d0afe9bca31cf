"""What tools/train_net.py runs: Detectron2's argument conventions, checks before anything starts,
then train or evaluate.

Before a process is started or a file written (``preflight``): the flags, every config value, the
datasets and their files, the model (built once, on the CPU), OUTPUT_DIR (not a file, writable,
not an earlier run unless --resume), the weights file and, where they must fit (--eval-only,
--resume), that they do.
"""
from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import List, Optional

import torch
from detectron2.engine import default_argument_parser, launch
from detectron2.utils import comm
from detectron2.utils.collect_env import collect_env_info
from detectron2.utils.env import seed_all_rng
from detectron2.utils.logger import setup_logger

from ..checkpoint import Checkpointer, WeightsError, check_resume, intact_checkpoints, is_local, weights_problem
from ..checks import ConfigError, UserError, check_datasets, check_launch_args, parse_args_with_overrides, validate_config
from ..config import load_config
from ..data import prepare_dataset
from ..outputs import OutputError, ensure_writable_dir, refuse_file, refuse_overwrite, write_text
from .trainer import Trainer

logger = logging.getLogger("lambda_det")

EPILOG = """
Examples:
  Toy data, CPU:       tools/train_net.py --config-file configs/Toy/mask_rcnn_LambdaR_26_FPN_toy.yaml
  COCO, 8 GPUs:        tools/train_net.py --num-gpus 8 --config-file configs/COCO-InstanceSegmentation/mask_rcnn_LambdaR_101_FPN_100ep.yaml
  Resume after a stop: the same command with --resume
  Evaluate:            tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/.../model_final.pth
  Two CPU processes:   tools/train_net.py --num-gpus 2 ... (without GPUs, --num-gpus counts gloo processes)

Training never writes over an earlier run: an OUTPUT_DIR that holds one (checkpoints, metrics,
logs, evaluations, a config.yaml) is continued with --resume, or refused. --eval-only writes into
OUTPUT_DIR/inference/<dataset>/ (its config.yaml too) and refuses to replace an earlier evaluation
there unless --overwrite is given.
"""

# what marks an OUTPUT_DIR as holding a run (or anything Detectron2 would write or append to)
RUN_MARKERS = ("last_checkpoint", "metrics.json", "config.yaml", "log.txt", "inference")


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
    """Per process: the config, the CPU threads it may use, logging, the config dump, the seed."""
    cfg = load_cfg(args)
    share_cpu_cores(cfg, args.num_gpus)
    setup_process(cfg, args)
    return cfg


def setup_process(cfg, args) -> None:
    """Detectron2's default_setup (logger into OUTPUT_DIR/log.txt, environment and config in the log,
    seed), except that a config.yaml of an earlier run is never replaced: --eval-only writes its
    config beside its results, and a resumed run whose config changed keeps the earlier one as
    config.<n>.yaml."""
    output_dir = Path(cfg.OUTPUT_DIR)
    rank = comm.get_rank()
    if comm.is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
    setup_logger(str(output_dir), distributed_rank=rank, name="fvcore")
    log = setup_logger(str(output_dir), distributed_rank=rank)
    setup_logger(str(output_dir), distributed_rank=rank, name="lambda_det")
    log.info("Rank of current process: %d. World size: %d", rank, comm.get_world_size())
    log.info("Environment info:\n%s", collect_env_info())
    log.info("Command line arguments: %s", args)
    if comm.is_main_process():
        text = cfg.dump()
        if getattr(args, "eval_only", False):
            targets = [output_dir / "inference" / name / "config.yaml" for name in cfg.DATASETS.TEST]
        else:
            targets = [output_dir / "config.yaml"]
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.is_file() and target.read_text() != text and not getattr(args, "eval_only", False):
                kept = _free_name(target)
                os.replace(target, kept)
                log.info("The config changed since this run's last start: the earlier one is kept as %s", kept)
            write_text(target, text)
            log.info("Full config saved to %s", target)
    seed_all_rng(None if cfg.SEED < 0 else cfg.SEED + rank)
    if not getattr(args, "eval_only", False):
        torch.backends.cudnn.benchmark = cfg.CUDNN_BENCHMARK


def _free_name(path: Path) -> Path:
    n = 1
    while (path.parent / f"{path.stem}.{n}{path.suffix}").exists():
        n += 1
    return path.parent / f"{path.stem}.{n}{path.suffix}"


def share_cpu_cores(cfg, processes_per_machine: int) -> None:
    """N training processes on CPUs: each gets its share of the cores (all of them each is ~10x slower).

    An explicit OMP_NUM_THREADS is the user's choice and is kept.
    """
    if processes_per_machine <= 1 or not cfg.MODEL.DEVICE.startswith("cpu") or "OMP_NUM_THREADS" in os.environ:
        return
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // processes_per_machine))


def existing_run(output_dir: str) -> List[Path]:
    """The files and folders that show an earlier run (or its evaluation) in OUTPUT_DIR."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [out / name for name in RUN_MARKERS if (out / name).exists()]
    return found + sorted(out.glob("model_*.pth")) + sorted(out.glob("events.out.tfevents*"))


def build_model_on_cpu(cfg):
    """The config's model, built once before anything starts: a config that cannot build fails here."""
    from detectron2.modeling import build_model

    cpu_cfg = cfg.clone()
    cpu_cfg.defrost()
    cpu_cfg.MODEL.DEVICE = "cpu"
    cpu_cfg.freeze()
    try:
        return build_model(cpu_cfg)
    except UserError:
        raise
    except (KeyError, ValueError, AssertionError, RuntimeError, TypeError, IndexError) as exc:
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise ConfigError(f"the config's model cannot be built: {type(exc).__name__}: {text}") from None


def preflight(cfg, args) -> None:
    """Everything that can be known to fail, checked before any process starts or file is written."""
    check_launch_args(args, cfg.MODEL.DEVICE)
    validate_config(cfg, training=not args.eval_only, world_size=args.num_gpus * args.num_machines)
    datasets = ([] if args.eval_only else list(cfg.DATASETS.TRAIN)) + list(cfg.DATASETS.TEST)
    if not args.eval_only:
        check_datasets(cfg, cfg.DATASETS.TRAIN, "DATASETS.TRAIN")
    check_datasets(cfg, cfg.DATASETS.TEST, "DATASETS.TEST")
    output_dir = cfg.OUTPUT_DIR
    refuse_file(Path(output_dir), "OUTPUT_DIR")
    strict_weights = None
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
        strict_weights = str(resumed) if resumed is not None else cfg.MODEL.WEIGHTS
        if not args.overwrite:
            earlier = [Path(output_dir) / "inference" / name / "ap_by_size.json" for name in cfg.DATASETS.TEST]
            refuse_overwrite([p for p in earlier if p.exists()], "--eval-only", "of an earlier evaluation")
    elif args.resume:
        resumed = check_resume(output_dir)
        if resumed is not None:
            strict_weights = str(resumed)
        elif cfg.MODEL.WEIGHTS:
            _check_weights_file(cfg.MODEL.WEIGHTS)
    else:
        run = existing_run(output_dir)
        if run:
            raise OutputError(
                f"OUTPUT_DIR {output_dir} already holds a run ({', '.join(p.name for p in run[:4])}"
                f"{' ...' if len(run) > 4 else ''}); nothing was written. Continue it with --resume, or train into "
                "another OUTPUT_DIR (trailing `OUTPUT_DIR path`), or move the old run away yourself"
            )
        if cfg.MODEL.WEIGHTS:
            _check_weights_file(cfg.MODEL.WEIGHTS)
    for name in datasets:
        prepare_dataset(name)  # files present (the toy data is generated)
    model = build_model_on_cpu(cfg)
    if strict_weights:
        # the weights must fit before anything of the run (its config.yaml) is touched
        Checkpointer(model, strict=True, cfg=cfg).load(strict_weights)
    if not args.eval_only:
        _warn_about_disk_space(cfg, model)
    del model
    ensure_writable_dir(Path(output_dir), "OUTPUT_DIR")


def _warn_about_disk_space(cfg, model) -> None:
    """Detectron2 keeps every periodic checkpoint: say so when they will not fit on the disk."""
    per_checkpoint = 2 * sum(p.numel() * p.element_size() for p in model.parameters())  # weights + momentum
    count = cfg.SOLVER.MAX_ITER // cfg.SOLVER.CHECKPOINT_PERIOD + 1
    folder = Path(cfg.OUTPUT_DIR)
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if count * per_checkpoint > free:
        print(f"warning: the {count} checkpoints of this run need about {count * per_checkpoint / 2**30:.1f} GiB; "
              f"{folder} has {free / 2**30:.1f} GiB free (SOLVER.CHECKPOINT_PERIOD sets how many are written)",
              file=sys.stderr)


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
    """tools/train_net.py: exit status 0 done, 2 bad flags / config / weights / output location,
    1 a write that failed during the run (disk full)."""
    args = parse_args_with_overrides(argument_parser(), argv)
    print("Command Line Args:", args)
    try:
        cfg = load_cfg(args)
        preflight(cfg, args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    try:
        launch_from_args(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except torch.multiprocessing.ProcessExitedException as exc:
        if exc.exit_code == 2:  # a worker already said why
            return 2
        raise
    except OSError as exc:
        where = exc.filename or cfg.OUTPUT_DIR
        print(f"error: the run stopped on {where}: {exc.strerror or exc} "
              f"(the traceback is in {Path(cfg.OUTPUT_DIR) / 'log.txt'})", file=sys.stderr)
        if not args.eval_only:
            intact = intact_checkpoints(Path(cfg.OUTPUT_DIR))
            if intact:
                print(f"  checkpoints written before are intact (newest: {intact[0][0]}); after fixing the cause, "
                      "continue with --resume", file=sys.stderr)
        return 1
    return 0
