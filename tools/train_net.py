#!/usr/bin/env python
"""Train or evaluate Mask R-CNN with a LambdaResNet backbone (Detectron2's train_net conventions).

    python tools/train_net.py --config-file CONFIG [--num-gpus N] [--resume] [--eval-only] [--amp] [KEY VALUE ...]

Logic: lambda_det/engine/. Outputs under OUTPUT_DIR: checkpoints, metrics.json, TensorBoard events,
inference/<dataset>/{coco_instances_results.json, ap_by_size.json, ap_by_size.md, ap_by_size.png}.
"""
import lambda_det  # noqa: F401  (registers backbones and datasets)
from lambda_det.engine import argument_parser, launch_from_args

if __name__ == "__main__":
    args = argument_parser().parse_args()
    print("Command Line Args:", args)
    launch_from_args(args)
