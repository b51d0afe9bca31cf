"""LambdaNetworks' own length and batch (Sec. 5.4, App. E.2) in Detectron2's LSJ recipe: 130k steps
at batch 256 (about 282 epochs), lr 0.32 warmed up linearly over 1000 steps and divided by 10 at
90, 95 and 97.5 % of training, the schedule of Table 6. Everything else is
mask_rcnn_LambdaR_101_FPN_100ep_LSJ.py (Detectron2's baseline with LambdaResNet-101), so this is
configs/COCO-InstanceSegmentation/mask_rcnn_LambdaR_101_FPN_paper.yaml in Detectron2's recipe. The
warm-up starts at 0.001x, Detectron2's default and what Base-Paper-LSJ.yaml assumes (the paper gives none).

The other Table 6 rows are the same file with trailing overrides of the backbone:
    LambdaResNet-152   model.backbone.bottom_up.depth=152
    ResNet-101         model.backbone.bottom_up.variant=conv "model.backbone.bottom_up.se_stages=[]"
    ResNet-101 + SE    model.backbone.bottom_up.variant=conv "model.backbone.bottom_up.se_stages=[res2,res3,res4,res5]"
    ResNet-152 (+ SE)  either of the two with model.backbone.bottom_up.depth=152
"""
from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from .mask_rcnn_LambdaR_101_FPN_100ep_LSJ import dataloader, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

dataloader.train.total_batch_size = 256
optimizer.lr = 0.32
train.max_iter = 130000
lr_multiplier = L(WarmupParamScheduler)(
    scheduler=L(MultiStepParamScheduler)(
        values=[1.0, 0.1, 0.01, 0.001], milestones=[117000, 123500, 126750], num_updates=train.max_iter,
    ),
    warmup_length=1000 / train.max_iter,
    warmup_method="linear",
    warmup_factor=0.001,
)
