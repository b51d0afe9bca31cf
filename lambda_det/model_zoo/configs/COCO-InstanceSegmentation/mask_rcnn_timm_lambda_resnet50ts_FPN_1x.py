"""Mask R-CNN + FPN fine-tuned from timm's ImageNet-trained lambda_resnet50ts, in Detectron2's own
LazyConfig for ImageNet-initialized backbones, COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py
(90k iterations at batch 16): the LazyConfig twin of mask_rcnn_timm_lambda_resnet50ts_FPN_1x.yaml.
Only the backbone and what its ImageNet weights were trained with (RGB input, timm's mean / std)
change. Weights: tools/convert_timm_to_d2.py (README, "ImageNet-pretrained backbones")."""
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from lambda_det.modeling import build_lambda_resnet
from lambda_det.modeling.timm_lambda import build_kwargs

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

_baseline = get_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py")
dataloader, lr_multiplier, model, optimizer, train = (_baseline[name] for name in __all__)

# timm's architecture (lambda_det.modeling.timm_lambda.TIMM_MODELS); frozen BN statistics and a frozen
# stem + res2, as Detectron2 fine-tunes its ImageNet ResNets
model.backbone.bottom_up = L(build_lambda_resnet)(
    **build_kwargs("lambda_resnet50ts"), norm="FrozenBN", freeze_at=2, out_features=["res2", "res3", "res4", "res5"],
)
# timm trained on RGB in [0, 1] normalized by the ImageNet mean / std: the same on 0-255
model.input_format = dataloader.train.mapper.image_format = "RGB"
model.pixel_mean = [123.675, 116.28, 103.53]
model.pixel_std = [58.395, 57.12, 57.375]
train.init_checkpoint = "weights/lambda_resnet50ts_d2.pth"
