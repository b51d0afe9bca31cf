"""Engine: the trainer, the checks before a run, and what the tools share (Detectron2's engine/defaults)."""
from .defaults import (
    add_dataset_argument, argument_parser, check_launch_args, console_handlers, cpu_if_no_cuda, interrupted, load_cfg, run_folder_lock, non_negative_int,
    parse_args_with_overrides, positive_int, probability, register_datasets, run_main, setup, setup_cfg,
    share_cpu_cores,
)
from .preflight import (
    build_model_on_cpu, earlier_evaluation, existing_run, explained_build_errors, finished_run, preflight, validate_config,
)
from .trainer import Trainer

__all__ = [
    "Trainer",
    "add_dataset_argument",
    "argument_parser",
    "build_model_on_cpu",
    "check_launch_args",
    "console_handlers",
    "cpu_if_no_cuda",
    "earlier_evaluation",
    "existing_run",
    "explained_build_errors",
    "finished_run",
    "interrupted",
    "load_cfg",
    "run_folder_lock",
    "non_negative_int",
    "parse_args_with_overrides",
    "positive_int",
    "preflight",
    "probability",
    "register_datasets",
    "run_main",
    "setup",
    "setup_cfg",
    "share_cpu_cores",
    "validate_config",
]
