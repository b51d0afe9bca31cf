"""Layers: the lambda layer (LambdaNetworks, Bello 2021), its position-lambda forms and its FLOPs."""
from .flops import lambda_layer_flops, register_fvcore_handles
from .lambda_layer import POOLS, LambdaLayer, is_norm_name, lambda_layer_num_params
from .position_lambdas import IMPL_CHOICES, POSITION_LAMBDA_IMPLS, TERM_IMPLS, choose_impl

register_fvcore_handles()

__all__ = ["IMPL_CHOICES", "LambdaLayer", "POOLS", "POSITION_LAMBDA_IMPLS", "TERM_IMPLS", "choose_impl", "is_norm_name",
           "lambda_layer_flops", "lambda_layer_num_params", "register_fvcore_handles"]
