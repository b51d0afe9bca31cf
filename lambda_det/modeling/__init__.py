"""Backbones: LambdaResNets for Detectron2, registered in BACKBONE_REGISTRY on import."""
from .lambda_resnet import (
    DeepStem,
    LambdaBottleneck,
    SqueezeExcite,
    build_lambda_resnet,
    build_lambda_resnet_backbone,
    build_lambda_resnet_fpn_backbone,
    imagenet_num_params,
    lambda_resnet_config,
    lambda_resnet_config_problems,
    largest_map_problems,
    register_backbones,
)
from .layouts import PAPER_C4_LAMBDA_BLOCKS, STAGE_BLOCKS, STAGE_NAMES

register_backbones()

__all__ = [
    "DeepStem",
    "LambdaBottleneck",
    "SqueezeExcite",
    "build_lambda_resnet",
    "build_lambda_resnet_backbone",
    "build_lambda_resnet_fpn_backbone",
    "imagenet_num_params",
    "lambda_resnet_config",
    "lambda_resnet_config_problems",
    "largest_map_problems",
    "register_backbones",
    "PAPER_C4_LAMBDA_BLOCKS",
    "STAGE_BLOCKS",
    "STAGE_NAMES",
]
