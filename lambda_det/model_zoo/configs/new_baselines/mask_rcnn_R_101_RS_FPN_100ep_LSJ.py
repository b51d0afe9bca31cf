"""LambdaResNet-101's conv twin, LambdaNetworks Table 6 row "ResNet-101" (48.2 box / 42.6 mask AP):
the same ResNet-RS-style network (ResNet-D stem and shortcuts, zero-initialized residual gammas)
with a 3x3 convolution in every block and no SE, in Detectron2's R-101 LSJ baseline at 100 epochs.
It differs from Detectron2's own R-101 (torchvision-style stem, strided shortcuts) in those details:
the paper's ResNet-101 row is this network."""
from .mask_rcnn_LambdaR_101_FPN_100ep_LSJ import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

model.backbone.bottom_up.variant = "conv"
model.backbone.bottom_up.se_stages = []
