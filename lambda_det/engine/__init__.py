"""Engine: the trainer, the checks before a run, and what the tools share (Detectron2's engine/defaults);
lazy.py runs Detectron2's LazyConfigs with the same protections."""
from .defaults import (
    ANY_OVERRIDE, CONFIG_KEY, LAZY_OVERRIDE, add_dataset_argument, argument_parser, check_launch_args, console_handlers, cpu_if_no_cuda,
    interrupted, load_cfg, non_negative_int, parse_args_with_overrides, positive_int, probability, register_datasets,
    run_folder_lock, run_main, setup, setup_cfg, setup_process, share_cpu_cores,
)
from .launching import final_evaluation_written, launch_in_run_folder, should_resume_finished_run
from .preflight import (
    YACS_KEYS, RunKeys, build_model_on_cpu, check_model_and_output, check_output_and_weights, earlier_evaluation,
    evaluation_files, evaluation_reports, existing_run, explained_build_errors, finished_run, finished_run_at, preflight,
    validate_config,
)
from .trainer import Trainer

__all__ = [
    "CONFIG_KEY",
    "ANY_OVERRIDE",
    "LAZY_OVERRIDE",
    "RunKeys",
    "Trainer",
    "YACS_KEYS",
    "add_dataset_argument",
    "argument_parser",
    "build_model_on_cpu",
    "check_launch_args",
    "check_model_and_output",
    "check_output_and_weights",
    "console_handlers",
    "cpu_if_no_cuda",
    "earlier_evaluation",
    "evaluation_files",
    "evaluation_reports",
    "existing_run",
    "explained_build_errors",
    "final_evaluation_written",
    "finished_run",
    "finished_run_at",
    "interrupted",
    "launch_in_run_folder",
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
    "setup_process",
    "share_cpu_cores",
    "should_resume_finished_run",
    "validate_config",
]
