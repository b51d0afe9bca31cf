#!/usr/bin/env python
"""Run a trained Mask R-CNN on images, globs, directories or videos; draw masks, boxes, classes, scores.

    python tools/demo.py --config-file configs/Toy/mask_rcnn_LambdaR_26_FPN_toy.yaml \
        --input photos/ "more/*.jpg" clip.mp4 --output output/demo \
        --opts MODEL.WEIGHTS output/toy_lambda_resnet26/model_final.pth

Exit status 1 when nothing could be processed. Logic: lambda_det/demo.py.
"""
import argparse
import sys
from pathlib import Path

import lambda_det
from lambda_det.demo import Demo, collect_inputs, run_demo


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="image files, globs, directories, videos")
    parser.add_argument("--output", required=True, help="directory for the drawn images / videos")
    parser.add_argument("--confidence-threshold", type=float, default=0.5, help="minimum score to draw")
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    args = parser.parse_args()
    cfg = lambda_det.load_config(args.config_file, args.opts)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    import torch

    if cfg.MODEL.DEVICE.startswith("cuda") and not torch.cuda.is_available():
        cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    try:
        demo = Demo(cfg)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    processed = run_demo(demo, collect_inputs(args.input), Path(args.output))
    if processed == 0:
        print("error: nothing could be processed", file=sys.stderr)
        return 1
    print(f"{processed} input(s) processed; results in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
