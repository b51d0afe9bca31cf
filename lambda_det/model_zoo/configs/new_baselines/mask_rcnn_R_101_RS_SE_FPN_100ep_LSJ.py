"""LambdaNetworks Table 6 row "ResNet-101 + SE" (48.5 box / 42.8 mask AP): the conv twin with
squeeze-excite on every block, in Detectron2's R-101 LSJ baseline at 100 epochs."""
from .mask_rcnn_R_101_RS_FPN_100ep_LSJ import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

# all four stages: the paper's 63.6M parameters for ResNet-101 + SE (docs/models.md)
model.backbone.bottom_up.se_stages = ["res2", "res3", "res4", "res5"]
