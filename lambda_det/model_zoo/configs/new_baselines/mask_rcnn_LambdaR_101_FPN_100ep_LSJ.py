"""LambdaResNet-101 inside Detectron2's own R-101 LSJ baseline.

Detectron2's new_baselines/mask_rcnn_R_101_FPN_100ep_LSJ.py (46.4 box / 41.6 mask AP published) is
the recipe of LambdaNetworks Sec. 5.4 / App. E.2: Mask R-CNN + FPN trained from scratch on 1024x1024
large-scale-jitter crops, SyncBN, weight decay 4e-5. This file takes it as it is (model, data,
optimizer, 100-epoch schedule) and replaces only ``model.backbone.bottom_up`` with the paper's
LambdaResNet-101 (Table 6 row "LambdaResNet-101": 49.4 box / 43.5 mask AP after 130k steps at batch
256), built by the same code as configs/COCO-InstanceSegmentation/mask_rcnn_LambdaR_101_FPN_paper.yaml.

    tools/lazyconfig_train_net.py --num-gpus 8 --config-file configs/new_baselines/mask_rcnn_LambdaR_101_FPN_100ep_LSJ.py
"""
from detectron2.config import LazyCall as L
from detectron2.model_zoo import get_config

from lambda_det.modeling import build_lambda_resnet

__all__ = ["dataloader", "lr_multiplier", "model", "optimizer", "train"]

_baseline = get_config("new_baselines/mask_rcnn_R_101_FPN_100ep_LSJ.py")
dataloader, lr_multiplier, model, optimizer, train = (_baseline[name] for name in __all__)

# App. D: lambda layers in blocks 6, 12 and 18 of c4 and in all of c5, the other 3x3s convolutions;
# SE on the conv blocks of c2 and c3 (what the paper's 36.9M parameters imply, docs/models.md);
# ResNet-D stem and shortcuts. SyncBN and nothing frozen, as the baseline trains its ResNet.
model.backbone.bottom_up = L(build_lambda_resnet)(
    depth=101, variant="lambda", se_stages=["res2", "res3"],
    norm="SyncBN", freeze_at=0, out_features=["res2", "res3", "res4", "res5"],
)
