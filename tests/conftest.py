"""Shared helpers: small configs and synthetic inputs that keep the suite fast on a 2-core CPU."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def small_cfg(**lambda_resnet):
    """Mask R-CNN config from the base yaml with a 1-block-per-stage LambdaResNet (C-C-L-L) unless overridden."""
    from lambda_det import load_config

    cfg = load_config(str(REPO / "configs" / "Base-LambdaResNet-FPN.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    c = cfg.MODEL.LAMBDA_RESNET
    c.STAGE_BLOCKS = [1, 1, 1, 1]
    c.VARIANT = "custom"
    c.LAYOUT = ["C", "C", "L", "L"]
    c.WIDTH_PER_GROUP = 16
    c.DIM_K = 8
    c.SCOPE = 7
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    for key, value in lambda_resnet.items():
        c[key.upper()] = value
    return cfg


def synthetic_batch(height: int = 96, width: int = 128, num_images: int = 1, seed: int = 0):
    """Detectron2 training inputs: random images, each with two box+mask instances."""
    from detectron2.structures import BitMasks, Boxes, Instances

    g = torch.Generator().manual_seed(seed)
    batch = []
    for _ in range(num_images):
        image = torch.randint(0, 256, (3, height, width), generator=g).float()
        inst = Instances((height, width))
        boxes = torch.tensor([[8.0, 10.0, 50.0, 60.0], [40.0, 30.0, width - 5.0, height - 8.0]])
        masks = torch.zeros(2, height, width, dtype=torch.bool)
        for i, (x0, y0, x1, y1) in enumerate(boxes.int().tolist()):
            masks[i, y0:y1, x0:x1] = True
        inst.gt_boxes = Boxes(boxes)
        inst.gt_classes = torch.tensor([0, 2])
        inst.gt_masks = BitMasks(masks)
        batch.append({"image": image, "instances": inst, "height": height, "width": width})
    return batch


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
