"""Layers: the lambda layer (LambdaNetworks, Bello 2021), its position-lambda forms and its FLOPs."""
from .flops import lambda_layer_flops, register_fvcore_handles
from .lambda_layer import LambdaLayer, lambda_layer_num_params
from .position_lambdas import POSITION_LAMBDA_IMPLS, choose_impl

register_fvcore_handles()

__all__ = [
    "LambdaLayer",
    "POSITION_LAMBDA_IMPLS",
    "choose_impl",
    "lambda_layer_flops",
    "lambda_layer_num_params",
    "register_fvcore_handles",
]
