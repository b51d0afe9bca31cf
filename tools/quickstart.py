#!/usr/bin/env python
"""The main job (`make quickstart`): train a LambdaResNet-FPN Mask R-CNN on the embedded toy dataset
on the CPU, evaluate box and mask AP by object size, run the demo on validation images, and say
where everything went.

    python tools/quickstart.py [--output DIR] [--max-iter N] [--no-resume] [KEY VALUE ...]
"""
import argparse
import logging
import sys
import time
from pathlib import Path

from detectron2.data import DatasetCatalog

import lambda_det  # noqa: F401  (registers backbones and datasets)
from lambda_det.config import load_config
from lambda_det.data import prepare_dataset
from lambda_det.demo import Demo, Inputs, run_demo
from lambda_det.engine import (
    Trainer, existing_run, non_negative_int, parse_args_with_overrides, positive_int, preflight, run_main, setup,
)
from lambda_det.errors import OutputError
from lambda_det.evaluation import load_ap_by_size, markdown_table
from lambda_det.model_zoo import get_config_file
from lambda_det.utils.file_safety import path_argument, refuse_file

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
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg


def main(argv=None) -> dict:
    """The main job. Raises UserError (before anything is written) for bad flags, config or output."""
    args = parse_args_with_overrides(argument_parser(), argv)
    cfg = setup_cfg(args)
    refuse_file(Path(cfg.OUTPUT_DIR), "--output")
    if args.no_resume and existing_run(cfg.OUTPUT_DIR):
        raise OutputError(
            f"--no-resume: {cfg.OUTPUT_DIR} already holds a run; nothing was written. Retrain into another "
            "--output, or move the old run away yourself"
        )
    preflight(cfg, eval_only=False, resume=not args.no_resume)
    setup(cfg, args)
    log = logging.getLogger("lambda_det")
    start = time.perf_counter()
    out = Path(cfg.OUTPUT_DIR)

    for name in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST):
        prepare_dataset(name)
    log.info("toy dataset ready: %s", ", ".join(f"{n} ({len(DatasetCatalog.get(n))} images)" for n in (*cfg.DATASETS.TRAIN, *cfg.DATASETS.TEST)))

    trainer = Trainer(cfg, config_file=args.config_file)
    trainer.resume_or_load(resume=not args.no_resume)
    if trainer.start_iter >= cfg.SOLVER.MAX_ITER:
        log.info("%s already holds a finished run (iteration %d): evaluating it again", out, trainer.start_iter)
    trainer.train()  # Detectron2 logs progress with ETA every 20 iterations, then evaluates
    train_minutes = (time.perf_counter() - start) / 60

    val_name = cfg.DATASETS.TEST[0]
    val_images = [Path(d["file_name"]) for d in DatasetCatalog.get(val_name)[: args.demo_images]]
    demo_cfg = cfg.clone()
    demo_cfg.defrost()
    demo_cfg.MODEL.WEIGHTS = str(out / "model_final.pth")
    demo_cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.5
    demo_cfg.freeze()
    demo_dir = out / "demo"
    # the run's own pictures: a resumed run draws them again from its final weights
    run_demo(Demo(demo_cfg), Inputs(images=val_images), demo_dir, report=log.info, overwrite=True)

    report_dir = out / "inference" / val_name
    _, summary = load_ap_by_size(report_dir / "ap_by_size.json")  # written by Trainer.test
    print()
    print(f"Trained and evaluated in {train_minutes:.1f} min; demo on {len(val_images)} validation images.")
    print(markdown_table([(f"{out.name} on {val_name}", summary)]))
    print(f"AP by size (table, chart, JSON): {report_dir}/ap_by_size.md, ap_by_size.png, ap_by_size.json")
    print(f"Checkpoints and logs:           {out}/model_final.pth, metrics.json, log.txt, TensorBoard events")
    print(f"Demo pictures:                   {demo_dir}/")
    return summary


if __name__ == "__main__":
    sys.exit(run_main(main))
