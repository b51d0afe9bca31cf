#!/usr/bin/env python
r"""Run a trained Mask R-CNN on images, globs, directories or videos; draw masks, boxes, classes, scores.

    python tools/demo.py --config-file configs/Toy/mask_rcnn_LambdaR_26_FPN_toy.yaml \
        --input photos/ "more/*.jpg" clip.mp4 --output output/demo \
        --opts MODEL.WEIGHTS output/toy_lambda_resnet26/model_final.pth

A LazyConfig (a .py, or the config.yaml tools/lazyconfig_train_net.py saved) takes key=value overrides:

    python tools/demo.py --config-file configs/Toy/mask_rcnn_LambdaR_26_FPN_toy_LSJ.py --input photos/ \
        --output output/demo_lsj --opts train.init_checkpoint=output/toy_lambda_resnet26_lsj/model_final.pth

Refused before any work: an --output that is an existing file or an input folder, one whose
pictures would replace an input, or pictures of an earlier run there (unless --overwrite).
The output folder is never scanned for inputs. Exit status: 0 done, 1 nothing could be processed,
2 bad arguments, config, weights or output location. Logic: lambda_det/demo.py.
"""
import argparse
import glob
import sys
from pathlib import Path

from detectron2.config import CfgNode, get_cfg

import lambda_det
from lambda_det.demo import Demo, check_outputs, collect_inputs, plan_outputs, run_demo, set_score_threshold
from lambda_det.engine import (ANY_OVERRIDE, CONFIG_KEY, LAZY_OVERRIDE, add_dataset_argument, cpu_if_no_cuda, parse_args_with_overrides,
                               probability, register_datasets, run_folder_lock, run_main, validate_config)
from lambda_det.engine.lazy import cpu_if_no_cuda_lazy
from lambda_det.lazy_config import is_lazy_config, load_lazy_config
from lambda_det.utils.file_safety import path_argument

def looks_like_override(word: str) -> bool:
    """key=value (a LazyConfig's), or KEY.KEY naming a yacs key (MODEL.WEIGHTS; not IMG_0001.JPG, a camera's picture)."""
    if LAZY_OVERRIDE.match(word):
        return True
    if not CONFIG_KEY.match(word):
        return False
    node = lambda_det.add_lambda_config(get_cfg())
    for part in word.split("."):
        if not isinstance(node, CfgNode) or part not in node:
            return False
        node = node[part]
    return True


def load_demo_config(args):
    """The yacs config or LazyConfig of --config-file with --opts, the score threshold and device set."""
    if is_lazy_config(args.config_file):
        cfg = load_lazy_config(args.config_file, args.opts, for_inference=True)
        set_score_threshold(cfg, args.confidence_threshold)
        cpu_if_no_cuda_lazy(cfg)
        return cfg
    cfg = lambda_det.load_config(args.config_file, args.opts)
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = args.confidence_threshold
    cpu_if_no_cuda(cfg)
    cfg.freeze()
    validate_config(cfg, training=False)
    return cfg


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE", help="a yacs config (.yaml) or a LazyConfig (.py)")
    parser.add_argument("--input", nargs="+", required=True, type=path_argument, help="image files, globs, directories, videos")
    parser.add_argument("--output", required=True, type=path_argument, help="directory for the drawn images / videos")
    parser.add_argument("--confidence-threshold", type=probability, default=0.5, help="minimum score to draw, in [0, 1]")
    parser.add_argument("--overwrite", action="store_true", help="replace pictures an earlier run left in --output")
    add_dataset_argument(parser)  # the class names of the config's test dataset, when it is one's own
    parser.add_argument("--opts", nargs=argparse.REMAINDER, default=[],
                        help="config overrides: KEY VALUE ... (yacs), key=value ... (LazyConfig)")
    args = parse_args_with_overrides(parser, override=ANY_OVERRIDE)
    forgotten = [p for p in map(str, args.input) if looks_like_override(p) and not glob.has_magic(p) and not Path(p).exists()]
    if forgotten:  # the overrides would be skipped as missing inputs, and the model drawn without them
        parser.error(f"--input {forgotten[0]}: no such file, and it has the form of a config override: give overrides "
                     "after --opts")
    register_datasets(args)
    cfg = load_demo_config(args)
    output = Path(args.output)
    inputs = collect_inputs([str(p) for p in args.input], exclude=output)
    check_outputs(inputs, plan_outputs(inputs, output), output, args.overwrite)  # before the model is loaded
    demo = Demo(cfg)
    for note in demo.notes:
        print(f"note: {note}", file=sys.stderr)
    with run_folder_lock(output, "--output"):  # a second demo into the same folder is refused
        processed = run_demo(demo, inputs, output, overwrite=args.overwrite)
    if processed == 0:
        print("error: nothing could be processed", file=sys.stderr)
        return 1
    print(f"{processed} input(s) processed; results in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
