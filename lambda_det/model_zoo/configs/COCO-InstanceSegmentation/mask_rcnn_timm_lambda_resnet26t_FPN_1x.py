"""mask_rcnn_timm_lambda_resnet50ts_FPN_1x.py with timm's lambda_resnet26t (79.1 top-1 at 256 px):
the LazyConfig twin of mask_rcnn_timm_lambda_resnet26t_FPN_1x.yaml."""
from lambda_det.modeling.timm_lambda import build_kwargs

from .mask_rcnn_timm_lambda_resnet50ts_FPN_1x import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

model.backbone.bottom_up.update(build_kwargs("lambda_resnet26t"))
train.init_checkpoint = "weights/lambda_resnet26t_d2.pth"
