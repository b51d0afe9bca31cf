"""What tools/train_net.py runs: Detectron2's argument conventions, config setup, train or evaluate."""
from __future__ import annotations

import logging

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import default_argument_parser, default_setup, launch

from ..config import load_config
from .trainer import Trainer

logger = logging.getLogger("lambda_det")

EPILOG = """
Examples:
  Toy data, CPU:       tools/train_net.py --config-file configs/Toy/mask_rcnn_LambdaR_26_FPN_toy.yaml
  COCO, 8 GPUs:        tools/train_net.py --num-gpus 8 --config-file configs/COCO-InstanceSegmentation/mask_rcnn_LambdaR_101_FPN_100ep.yaml
  Resume after a stop: the same command with --resume
  Evaluate:            tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/.../model_final.pth
  Two CPU processes:   tools/train_net.py --num-gpus 2 ... (without GPUs, --num-gpus counts gloo processes)
"""


def argument_parser():
    parser = default_argument_parser(epilog=EPILOG)
    parser.add_argument("--amp", action="store_true", help="mixed precision (sets SOLVER.AMP.ENABLED; needs CUDA)")
    return parser


def setup_cfg(args):
    cfg = load_config(args.config_file, args.opts)
    if args.amp:
        cfg.SOLVER.AMP.ENABLED = True
    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on the CPU (MODEL.DEVICE cpu)")
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    default_setup(cfg, args)  # logger, OUTPUT_DIR, config.yaml dump, seed
    return cfg


def main(args):
    cfg = setup_cfg(args)
    if args.eval_only:
        model = Trainer.build_model(cfg)
        checkpointer = DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR)
        if not cfg.MODEL.WEIGHTS and not (args.resume and checkpointer.has_checkpoint()):
            raise ValueError(
                "--eval-only needs weights: pass MODEL.WEIGHTS path/to/model.pth, or --resume to evaluate the "
                f"last checkpoint in OUTPUT_DIR={cfg.OUTPUT_DIR}"
            )
        checkpointer.resume_or_load(cfg.MODEL.WEIGHTS, resume=args.resume)
        return Trainer.test(cfg, model)
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    return trainer.train()


def launch_from_args(args) -> None:
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
