"""Engine: the trainer and the train_net entry point."""
from .train import argument_parser, launch_from_args, load_cfg, main, preflight, run_cli, setup_cfg
from .trainer import Trainer

__all__ = ["Trainer", "argument_parser", "launch_from_args", "load_cfg", "main", "preflight", "run_cli", "setup_cfg"]
