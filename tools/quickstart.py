#!/usr/bin/env python
"""The README's main job (interim smoke run): build a Mask R-CNN on a registered LambdaResNet-FPN,
train a few iterations on random images on the CPU, run one inference, and say what happened."""
import time

import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

import lambda_det


def main() -> None:
    torch.manual_seed(0)
    cfg = get_cfg()
    lambda_det.add_lambda_config(cfg)
    cfg.merge_from_file("configs/Base-LambdaResNet-FPN.yaml")
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 2
    cfg.MODEL.LAMBDA_RESNET.NORM = "GN"
    cfg.MODEL.LAMBDA_RESNET.DEPTH = 50
    model = build_model(cfg)
    print(f"built {cfg.MODEL.META_ARCHITECTURE} with {cfg.MODEL.BACKBONE.NAME}: LambdaResNet-50 "
          f"{model.backbone.bottom_up.layout}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters")
    image = torch.randint(0, 256, (3, 192, 256)).float()
    inst = Instances((192, 256))
    inst.gt_boxes = Boxes(torch.tensor([[40.0, 30.0, 140.0, 150.0]]))
    inst.gt_classes = torch.tensor([1])
    masks = torch.zeros(1, 192, 256, dtype=torch.bool)
    masks[0, 30:150, 40:140] = True
    inst.gt_masks = BitMasks(masks)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9)
    model.train()
    with EventStorage():
        for it in range(3):
            start = time.perf_counter()
            losses = model([{"image": image, "instances": inst}])
            total = sum(losses.values())
            optimizer.zero_grad()
            total.backward()
            optimizer.step()
            print(f"iter {it}: total loss {total.item():.3f} ({time.perf_counter() - start:.1f} s)")
    model.eval()
    with torch.no_grad():
        out = model([{"image": image, "height": 192, "width": 256}])[0]["instances"]
    print(f"inference: {len(out)} detections on a 256x192 image (masks {tuple(out.pred_masks.shape)})")


if __name__ == "__main__":
    main()
