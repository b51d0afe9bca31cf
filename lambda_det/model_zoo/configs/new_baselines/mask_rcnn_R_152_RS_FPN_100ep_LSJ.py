"""LambdaNetworks Table 6 row "ResNet-152" (48.9 box / 43.2 mask AP): the conv twin of
LambdaResNet-152, in Detectron2's R-101 LSJ baseline (with depth 152) at 100 epochs."""
from .mask_rcnn_R_101_RS_FPN_100ep_LSJ import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

model.backbone.bottom_up.depth = 152
