"""LambdaNetworks Table 6 row "ResNet-152 + SE" (49.4 box / 43.5 mask AP), in Detectron2's R-101
LSJ baseline (with depth 152) at 100 epochs."""
from .mask_rcnn_R_101_RS_SE_FPN_100ep_LSJ import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

model.backbone.bottom_up.depth = 152
