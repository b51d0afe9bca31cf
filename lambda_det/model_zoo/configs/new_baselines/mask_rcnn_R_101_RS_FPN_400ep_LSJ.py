"""mask_rcnn_R_101_RS_FPN_100ep_LSJ.py trained 4x as long: the schedule of Detectron2's
mask_rcnn_R_101_FPN_400ep_LSJ.py (48.9 box / 43.7 mask AP published)."""
from .mask_rcnn_R_101_RS_FPN_100ep_LSJ import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

train.max_iter *= 4  # 100ep -> 400ep
lr_multiplier.scheduler.milestones = [milestone * 4 for milestone in lr_multiplier.scheduler.milestones]
lr_multiplier.scheduler.num_updates = train.max_iter
