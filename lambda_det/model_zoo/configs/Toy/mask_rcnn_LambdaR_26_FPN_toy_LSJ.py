"""The LazyConfig path on a CPU: new_baselines/mask_rcnn_LambdaR_101_FPN_100ep_LSJ.py (Detectron2's
LSJ recipe with a LambdaResNet) scaled to the embedded toy dataset (lambda_det/data/toy.py), with
the small model of mask_rcnn_LambdaR_26_FPN_toy.yaml: 2 blocks per stage, lambda layers in c4 and c5
(the paper's C-C-L-L hybrid, Table 4), GroupNorm throughout (at batch 4 from scratch BN diverged).

    tools/lazyconfig_train_net.py --config-file configs/Toy/mask_rcnn_LambdaR_26_FPN_toy_LSJ.py

The feature width is one key, ``model.backbone.out_channels``, and the box head's width
``model.roi_heads.box_head.fc_dims``: the heads read them.
"""
from detectron2.config import LazyCall as L
from fvcore.common.param_scheduler import MultiStepParamScheduler

from ..new_baselines.mask_rcnn_LambdaR_101_FPN_100ep_LSJ import dataloader, lr_multiplier, model, optimizer, train

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

model.backbone.bottom_up.update(
    stage_blocks=[2, 2, 2, 2], variant="custom", layout=["C", "C", "L", "L"], se_stages=[], width_per_group=32, norm="GN",
)
model.backbone.norm = "GN"
model.backbone.out_channels = 128
model.proposal_generator.head.in_channels = "${...backbone.out_channels}"
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]  # objects of 16-280 px
heads = model.roi_heads
heads.num_classes = 4
heads.batch_size_per_image = 128
heads.box_head.input_shape.channels = heads.mask_head.input_shape.channels = "${....backbone.out_channels}"
heads.box_head.conv_dims = [128] * 4  # Detectron2's 4conv1fc head, narrower
heads.box_head.fc_dims = [512]
heads.box_predictor.input_shape.channels = "${...box_head.fc_dims[0]}"
heads.mask_head.conv_dims = [64] * 5  # the mask head over ~100 foreground ROIs costs more than the backbone here
heads.box_head.conv_norm = heads.mask_head.conv_norm = "GN"
del heads

# LSJ at 256 px, the toy images' size; the toy annotations are RLE masks
dataloader.train.dataset.names = "toy_shapes_train"
dataloader.test.dataset.names = "toy_shapes_val"
dataloader.train.mapper.augmentations[0].target_height = dataloader.train.mapper.augmentations[0].target_width = 256
dataloader.train.mapper.augmentations[1].crop_size = (256, 256)
dataloader.train.mapper.instance_mask_format = "bitmask"
dataloader.test.mapper.augmentations[0].short_edge_length = dataloader.test.mapper.augmentations[0].max_size = 256
dataloader.train.total_batch_size = 4
dataloader.train.num_workers = dataloader.test.num_workers = 1

# a schedule a CPU trains in minutes; lr at the linear-scaling rule for batch 4 (the yacs toy's 4x needs gradient
# clipping, which Detectron2's LazyConfig trainer has not)
optimizer.lr = 0.1 * 4 / 64
train.max_iter = 560
lr_multiplier.scheduler = L(MultiStepParamScheduler)(values=[1.0, 0.1, 0.01], milestones=[480, 540], num_updates=560)
lr_multiplier.warmup_length = 100 / 560
train.device = "cpu"
train.amp.enabled = False
train.ddp.fp16_compression = False
train.checkpointer.period = 100
train.eval_period = 0  # evaluated once, at the end
train.seed = 0
train.output_dir = "output/toy_lambda_resnet26_lsj"
