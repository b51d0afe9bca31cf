#!/usr/bin/env python
r"""Train or evaluate Mask R-CNN with a LambdaResNet backbone (Detectron2's train_net conventions).

    python tools/train_net.py --config-file CONFIG [--num-gpus N] [--resume] [--eval-only [--overwrite]] [--amp] [KEY VALUE ...]
    python tools/train_net.py --config-file CONFIG --dataset mine_train train.json images/ --dataset mine_val val.json images/ \
        DATASETS.TRAIN "('mine_train',)" DATASETS.TEST "('mine_val',)" MODEL.ROI_HEADS.NUM_CLASSES 3

Outputs under OUTPUT_DIR: checkpoints, metrics.json, TensorBoard events,
inference/<dataset>/{coco_instances_results.json, ap_by_size.json, ap_by_size.md, ap_by_size.png}.
Exit status: 0 done (a finished run resumed without --overwrite changes nothing), 2 (one `error:`
line) bad flags, config values, weights or output location, or a run that diverged, 1 a write that
failed during the run (disk full), 130 interrupted (Ctrl-C; the message says how to go on).
"""
import sys
from pathlib import Path

import torch
from detectron2.engine import launch

import lambda_det  # noqa: F401  (registers backbones and datasets)
from lambda_det.checkpoint import Checkpointer, intact_checkpoints
from lambda_det.engine import (
    Trainer, argument_parser, check_launch_args, earlier_evaluation, finished_run, interrupted, load_cfg, run_folder_lock,
    parse_args_with_overrides, preflight, register_datasets, run_main, setup_cfg,
)


def main(args):
    """One process's work (Detectron2's launch runs it in each process)."""
    cfg = setup_cfg(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = Checkpointer(model, save_dir=cfg.OUTPUT_DIR, strict=True, cfg=cfg)
        weights = checkpointer.get_checkpoint_file() if args.resume and checkpointer.has_checkpoint() else cfg.MODEL.WEIGHTS
        extra = checkpointer.load(weights)
        provenance = {"config_file": args.config_file, "weights": weights, "iteration": extra.get("iteration")}
        return Trainer.test(cfg, model, provenance=provenance)
    trainer = Trainer(cfg, config_file=args.config_file)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def main_in_worker(args):
    """main, where an error about the user's input ends the worker with one line, not a traceback."""
    status = run_main(lambda: main(args))
    if status:
        sys.exit(status)


def train_net(argv=None) -> int:
    args = parse_args_with_overrides(argument_parser(), argv)
    print("Command Line Args:", args)
    register_datasets(args)
    cfg = load_cfg(args)
    check_launch_args(args, cfg.MODEL.DEVICE)
    preflight(cfg, eval_only=args.eval_only, resume=args.resume, overwrite=args.overwrite,
              world_size=args.num_gpus * args.num_machines)
    finished = finished_run(cfg) if args.resume and not args.eval_only else None
    if finished and not args.overwrite:
        reports = [p for p in earlier_evaluation(cfg) if p.name == "ap_by_size.md"]
        print(f"OUTPUT_DIR {cfg.OUTPUT_DIR} holds a finished run ({finished[0].name}: {finished[1]} of SOLVER.MAX_ITER="
              f"{cfg.SOLVER.MAX_ITER} iterations): nothing to train, and nothing was changed. "
              + (f"Its evaluation: {', '.join(map(str, reports))}. " if reports else "")
              + "To evaluate it again, add --overwrite (replaces the evaluation) or use --eval-only with MODEL.WEIGHTS "
              f"{finished[0]} and another OUTPUT_DIR; to train longer, raise SOLVER.MAX_ITER.")
        return 0
    with run_folder_lock(cfg.OUTPUT_DIR):
        try:
            launch(main_in_worker if args.num_gpus * args.num_machines > 1 else main, args.num_gpus,
                   num_machines=args.num_machines, machine_rank=args.machine_rank, dist_url=args.dist_url, args=(args,))
        except torch.multiprocessing.ProcessExitedException as exc:
            if exc.exit_code == 2:  # a worker already said why
                return 2
            raise
        except KeyboardInterrupt:
            command = ["python", *sys.argv] if args.resume else ["python", sys.argv[0], "--resume", *sys.argv[1:]]
            print(f"error: {interrupted(cfg.OUTPUT_DIR, command)}", file=sys.stderr)
            return 130
        except OSError as exc:
            where = exc.filename or cfg.OUTPUT_DIR
            print(f"error: the run stopped on {where}: {exc.strerror or exc} "
                  f"(the traceback is in {Path(cfg.OUTPUT_DIR) / 'log.txt'})", file=sys.stderr)
            intact = [] if args.eval_only else intact_checkpoints(Path(cfg.OUTPUT_DIR))
            if intact:
                print(f"  checkpoints written before are intact (newest: {intact[0][0]}); after fixing the cause, "
                      "continue with --resume", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_main(train_net))
