"""mask_rcnn_R_152_RS_SE_FPN_100ep_LSJ.py trained 2x as long: the schedule of Detectron2's
mask_rcnn_R_101_FPN_200ep_LSJ.py (48.0 box / 43.1 mask AP published)."""
from .mask_rcnn_R_152_RS_SE_FPN_100ep_LSJ import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

train.max_iter *= 2  # 100ep -> 200ep
lr_multiplier.scheduler.milestones = [milestone * 2 for milestone in lr_multiplier.scheduler.milestones]
lr_multiplier.scheduler.num_updates = train.max_iter
