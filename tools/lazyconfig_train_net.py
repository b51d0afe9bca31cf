#!/usr/bin/env python
r"""Train or evaluate a Detectron2 LazyConfig (Python config file), such as Detectron2's LSJ baselines
with a LambdaResNet inside (configs/new_baselines/): Detectron2's tools/lazyconfig_train_net.py, with
the protections of tools/train_net.py.

    python tools/lazyconfig_train_net.py --config-file CONFIG.py [--num-gpus N] [--resume] [--eval-only [--overwrite]] [key=value ...]

Outputs under train.output_dir: checkpoints, metrics.json, TensorBoard events, config.yaml,
inference/<dataset>/{coco_instances_results.json, ap_by_size.json, ap_by_size.md, ap_by_size.png}.
Exit status as train_net.py: 0 done (a finished run resumed without --overwrite changes nothing but
the final evaluation it never finished), 2 (one `error:` line) bad flags, config, override, weights
or output location, or a run that diverged, 1 a write that failed during the run, 130 interrupted
(the message says how to go on).
"""
import sys

# importing lambda_det (its engine here) registers the backbones and the toy datasets
from lambda_det.engine import (
    LAZY_OVERRIDE, evaluation_files, evaluation_reports, finished_run_at, launch_in_run_folder, parse_args_with_overrides,
    register_datasets, run_main, should_resume_finished_run,
)
from lambda_det.engine.lazy import (
    LAZY_KEYS, lazy_argument_parser, lazy_evaluate, lazy_preflight, lazy_train, load_lazy_run_config, setup_lazy_run,
    evaluation_dataset,
)


def main(args):
    """One process's work (Detectron2's launch runs it in each process)."""
    cfg = setup_lazy_run(args)
    return lazy_evaluate(cfg, args) if args.eval_only else lazy_train(cfg, args)


def lazyconfig_train_net(argv=None) -> int:
    args = parse_args_with_overrides(lazy_argument_parser(), argv, override=LAZY_OVERRIDE)
    print("Command Line Args:", args)
    register_datasets(args)
    cfg = load_lazy_run_config(args)
    lazy_preflight(cfg, args)
    output_dir, max_iter = str(cfg.train.output_dir), cfg.train.max_iter
    finished = finished_run_at(output_dir, max_iter) if args.resume and not args.eval_only else None
    if finished and not args.overwrite and not should_resume_finished_run(
            LAZY_KEYS, output_dir, finished, max_iter, evaluation_files(output_dir, [evaluation_dataset(cfg)]),
            evaluation_reports(output_dir, [evaluation_dataset(cfg)])):
        return 0
    return launch_in_run_folder(main, args, output_dir, flag=LAZY_KEYS.output_dir)


if __name__ == "__main__":
    sys.exit(run_main(lazyconfig_train_net))
