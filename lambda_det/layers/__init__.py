"""Layers: the lambda layer (LambdaNetworks, Bello 2021) and its position-lambda forms."""
from .lambda_layer import LambdaLayer, lambda_layer_num_params
from .position_lambdas import POSITION_LAMBDA_IMPLS, choose_impl

__all__ = ["LambdaLayer", "lambda_layer_num_params", "POSITION_LAMBDA_IMPLS", "choose_impl"]
