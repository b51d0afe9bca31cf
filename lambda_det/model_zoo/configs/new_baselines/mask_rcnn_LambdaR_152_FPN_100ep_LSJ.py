"""LambdaResNet-152 (LambdaNetworks Table 6 row "LambdaResNet-152": 50.0 box / 43.9 mask AP) in
Detectron2's R-101 LSJ baseline at 100 epochs. Detectron2 publishes no R-152 LSJ baseline: this is
mask_rcnn_LambdaR_101_FPN_100ep_LSJ.py with depth 152, as Detectron2's R-101 file is its R-50 file
with depth 101 (the control: mask_rcnn_R_152_RS_FPN_100ep_LSJ.py)."""
from .mask_rcnn_LambdaR_101_FPN_100ep_LSJ import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

# App. D: c2-c5 of 3, 8, 36, 3 blocks; lambda layers in blocks 5, 10, ..., 30 of c4 and all of c5
model.backbone.bottom_up.depth = 152
