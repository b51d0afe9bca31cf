"""The configs that ship with lambda_det, found the way Detectron2's ``model_zoo`` finds its own:

    from lambda_det import model_zoo
    path = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_LambdaR_101_FPN_paper.yaml")
    cfg = model_zoo.get_config("Toy/mask_rcnn_LambdaR_26_FPN_toy.yaml")
    model = model_zoo.get("Toy/mask_rcnn_LambdaR_26_FPN_toy.yaml")   # built, randomly initialized
    lazy = model_zoo.get_config("new_baselines/mask_rcnn_LambdaR_101_FPN_100ep_LSJ.py")  # a LazyConfig

The files live inside the package (``lambda_det/model_zoo/configs``; the checkout's ``configs/``
points there), so an installed lambda_det finds them without the checkout.
"""
from .model_zoo import get, get_config, get_config_file, list_configs

__all__ = ["get", "get_config", "get_config_file", "list_configs"]
