#!/usr/bin/env python
"""The main job (`make quickstart`): train a LambdaResNet-FPN Mask R-CNN on the embedded toy dataset
(on the GPU where there is one, else on the CPU), evaluate box and mask AP by object size (single-scale
and with the config's test-time augmentation), run the demo on validation images, and say where
everything went.

    python tools/quickstart.py [--output DIR] [--max-iter N] [--no-resume] [KEY VALUE ...]
"""
import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import List

import torch
from detectron2.data import DatasetCatalog

import lambda_det  # noqa: F401  (registers backbones and datasets)
from lambda_det.config import load_config
from lambda_det.data import prepare_dataset
from lambda_det.demo import Demo, Inputs, run_demo
from lambda_det.engine import (
    Trainer, cpu_if_no_cuda, existing_run, final_evaluation_written, finished_run, interrupted, non_negative_int,
    parse_args_with_overrides, positive_int, preflight, run_folder_lock, run_main, setup,
)
from lambda_det.errors import OutputError
from lambda_det.evaluation import TTA_FOLDER, ap_table, evaluation_folders, load_ap_by_size
from lambda_det.model_zoo import get_config_file
from lambda_det.utils.file_safety import path_argument, refuse_file, write_text

TOY_CONFIG = "Toy/mask_rcnn_LambdaR_26_FPN_toy.yaml"


def argument_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", default=get_config_file(TOY_CONFIG), help="toy config to train")
    parser.add_argument("--output", default=None, type=path_argument, help="output directory (default: the config's OUTPUT_DIR)")
    parser.add_argument("--max-iter", type=positive_int, default=None, help="shorter or longer training (steps scale along)")
    parser.add_argument("--demo-images", type=non_negative_int, default=8, help="validation images to run the demo on")
    parser.add_argument("--no-resume", action="store_true",
                        help="a new run from iteration 0 (refused if the output directory already holds a run)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    return parser


def setup_cfg(args):
    cfg = load_config(args.config_file, args.opts)
    if args.output:
        cfg.OUTPUT_DIR = str(args.output)
    if args.max_iter:
        scale = args.max_iter / cfg.SOLVER.MAX_ITER
        steps = {int(round(s * scale)) for s in cfg.SOLVER.STEPS}
        cfg.SOLVER.STEPS = tuple(sorted(s for s in steps if 0 < s < args.max_iter))
        cfg.SOLVER.WARMUP_ITERS = min(cfg.SOLVER.WARMUP_ITERS, max(1, args.max_iter // 4))
        cfg.SOLVER.MAX_ITER = args.max_iter
    if "MODEL.DEVICE" not in args.opts[::2]:
        cfg.MODEL.DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
    cpu_if_no_cuda(cfg)
    cfg.freeze()
    return cfg


# written into the main job's output folder when it starts a run: it continues only runs it made
MARKER = "main_job.json"


def main(argv=None) -> dict:
    """The main job. Raises UserError (before anything is written) for bad flags, config or output."""
    args = parse_args_with_overrides(argument_parser(), argv)
    cfg = setup_cfg(args)
    out = Path(cfg.OUTPUT_DIR)
    refuse_file(out, "--output")
    run = existing_run(cfg.OUTPUT_DIR)
    if run and args.no_resume:
        raise OutputError(
            f"--no-resume: {out} already holds a run; nothing was written. Retrain into another "
            "--output, or move the old run away yourself"
        )
    if run and not (out / MARKER).is_file():
        raise OutputError(
            f"--output {out} holds a run the main job did not make ({', '.join(p.name for p in run[:4])}); the main job "
            "continues only its own runs, and nothing was written: choose another --output"
        )
    preflight(cfg, eval_only=False, resume=not args.no_resume)
    finished = finished_run(cfg) if run else None
    report_dirs = [out / folder / cfg.DATASETS.TEST[0] for folder in evaluation_folders(cfg)]
    if finished and final_evaluation_written(cfg.OUTPUT_DIR, [d / "ap_by_size.json" for d in report_dirs], finished[1]):
        print(f"{out} holds the main job's finished run ({finished[1]} iterations): nothing was trained or changed; "
              f"train anew with --output another/folder")
        return summarize(out, report_dirs, None, None)
    with run_folder_lock(cfg.OUTPUT_DIR):
        if not (out / MARKER).is_file():
            write_text(out / MARKER, json.dumps({"tool": "tools/quickstart.py", "config_file": str(args.config_file)}))
        setup(cfg, args, console_filter=progress_only)
        log = logging.getLogger("lambda_det")
        log.info("training on %s", device_name(cfg.MODEL.DEVICE))
        start = time.perf_counter()

        for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
            prepare_dataset(name)
        log.info("toy dataset ready: %s", ", ".join(f"{n} ({len(DatasetCatalog.get(n))} images)" for n in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST)))

        trainer = Trainer(cfg, config_file=args.config_file)
        trainer.resume_or_load(resume=not args.no_resume)
        try:
            trainer.train()  # Detectron2 logs progress with ETA every 20 iterations, then evaluates
        except KeyboardInterrupt:
            print(f"error: {interrupted(cfg.OUTPUT_DIR, ['python', *sys.argv])}", file=sys.stderr)
            raise SystemExit(130) from None
        train_minutes = (time.perf_counter() - start) / 60

        val_images = [Path(d["file_name"]) for d in DatasetCatalog.get(cfg.DATASETS.TEST[0])[: args.demo_images]]
        demo_cfg = cfg.clone()
        demo_cfg.defrost()
        demo_cfg.MODEL.WEIGHTS = str(out / "model_final.pth")
        demo_cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.5
        demo_cfg.freeze()
        # a resumed run draws its own pictures again from its final weights; any other file there stays
        run_demo(Demo(demo_cfg), Inputs(images=val_images), out / "demo", report=log.info, replace_own=True)
    return summarize(out, report_dirs, train_minutes, len(val_images), device_name(cfg.MODEL.DEVICE))


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        return f"the GPU ({torch.cuda.get_device_name(torch.device(device))})"
    return f"the CPU ({torch.get_num_threads()} threads; no GPU found)" if not torch.cuda.is_available() else "the CPU"


# what the terminal shows of the run (log.txt keeps everything: environment, config, model, data)
PROGRESS_LOGGERS = ("lambda_det", "detectron2.utils.events", "detectron2.engine.train_loop", "detectron2.engine.hooks",
                    "detectron2.evaluation.evaluator")


def progress_only(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.name in PROGRESS_LOGGERS


def summarize(out: Path, report_dirs: List[Path], train_minutes, demo_images, device=None) -> dict:
    """Print the run's AP rows (the plain evaluation, then the test-time augmented one) and where
    everything went; return the plain evaluation's summary."""
    rows = []
    for report_dir in report_dirs:
        _, summary = load_ap_by_size(report_dir / "ap_by_size.json")  # written by Trainer.test
        how = "multi-scale test (TEST.AUG)" if report_dir.parent.name == TTA_FOLDER else "single-scale test"
        rows.append((f"{out.name} on {report_dir.name}, {how}", summary))
    print()
    if train_minutes is not None:
        print(f"Trained and evaluated on {device} in {train_minutes:.1f} min; demo on {demo_images} validation images.")
    print(ap_table(rows))
    for report_dir in report_dirs:
        print(f"AP by size (table, chart, JSON): {report_dir}/ap_by_size.md, ap_by_size.png, ap_by_size.json")
    print(f"Checkpoints and logs:           {out}/model_final.pth, metrics.json, log.txt, TensorBoard events")
    print(f"Demo pictures:                   {out / 'demo'}/")
    return rows[0][1]


if __name__ == "__main__":
    sys.exit(run_main(main))
