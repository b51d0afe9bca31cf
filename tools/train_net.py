#!/usr/bin/env python
r"""Train or evaluate Mask R-CNN with a LambdaResNet backbone (Detectron2's train_net conventions).

    python tools/train_net.py --config-file CONFIG [--num-gpus N] [--resume] [--eval-only [--overwrite]] [--amp] [KEY VALUE ...]
    python tools/train_net.py --config-file CONFIG --dataset mine_train train.json images/ --dataset mine_val val.json images/ \
        DATASETS.TRAIN "('mine_train',)" DATASETS.TEST "('mine_val',)" MODEL.ROI_HEADS.NUM_CLASSES 3

Outputs under OUTPUT_DIR: checkpoints, metrics.json, TensorBoard events,
inference/<dataset>/{coco_instances_results.json, ap_by_size.json, ap_by_size.md, ap_by_size.png}, and
with TEST.AUG.ENABLED (Detectron2's test-time augmentation) the same in inference_TTA/<dataset>/.
Exit status: 0 done (a finished run resumed without --overwrite changes nothing but the final
evaluation it never finished), 2 (one `error:` line) bad flags, config values, weights or output
location, or a run that diverged, 1 a write that failed during the run (disk full), 130 interrupted
(Ctrl-C; the message says how to go on).
"""
import sys

import lambda_det  # noqa: F401  (registers backbones and datasets)
from lambda_det.checkpoint import Checkpointer
from lambda_det.engine import (
    YACS_KEYS, Trainer, argument_parser, check_launch_args, earlier_evaluation, evaluation_reports, finished_run,
    launch_in_run_folder, load_cfg, parse_args_with_overrides, preflight, register_datasets, run_main, setup_cfg,
    should_resume_finished_run,
)
from lambda_det.evaluation import evaluation_folders


def main(args):
    """One process's work (Detectron2's launch runs it in each process)."""
    cfg = setup_cfg(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = Checkpointer(model, save_dir=cfg.OUTPUT_DIR, strict=True, cfg=cfg)
        weights = checkpointer.get_checkpoint_file() if args.resume and checkpointer.has_checkpoint() else cfg.MODEL.WEIGHTS
        extra = checkpointer.load(weights)
        provenance = {"config_file": args.config_file, "weights": weights, "iteration": extra.get("iteration")}
        results = Trainer.test(cfg, model, provenance=provenance)
        if cfg.TEST.AUG.ENABLED:  # Detectron2's train_net evaluates both
            results.update(Trainer.test_with_TTA(cfg, model, provenance=provenance))
        return results
    trainer = Trainer(cfg, config_file=args.config_file)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def train_net(argv=None) -> int:
    args = parse_args_with_overrides(argument_parser(), argv)
    print("Command Line Args:", args)
    register_datasets(args)
    cfg = load_cfg(args)
    check_launch_args(args, cfg.MODEL.DEVICE)
    preflight(cfg, eval_only=args.eval_only, resume=args.resume, overwrite=args.overwrite,
              world_size=args.num_gpus * args.num_machines)
    finished = finished_run(cfg) if args.resume and not args.eval_only else None
    if finished and not args.overwrite and not should_resume_finished_run(
            YACS_KEYS, cfg.OUTPUT_DIR, finished, cfg.SOLVER.MAX_ITER, earlier_evaluation(cfg),
            evaluation_reports(cfg.OUTPUT_DIR, cfg.DATASETS.TEST, evaluation_folders(cfg))):
        return 0
    return launch_in_run_folder(main, args, cfg.OUTPUT_DIR)


if __name__ == "__main__":
    sys.exit(run_main(train_net))
