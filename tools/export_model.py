#!/usr/bin/env python
r"""Export a trained LambdaResNet Mask R-CNN to TorchScript or ONNX, in the conventions of
Detectron2's tools/deploy/export_model.py, and check the export against the model.

    python tools/export_model.py --config-file CONFIG --format torchscript --export-method tracing \
        --sample-image photo.jpg --output output/export MODEL.WEIGHTS output/run/model_final.pth
    python tools/export_model.py ... --format torchscript --export-method scripting ...
    python tools/export_model.py ... --format onnx [--backbone-only] ...

Writes model.ts / model.onnx / backbone.onnx and export_info.json (inputs, outputs, checks) into
--output (an earlier export there is replaced only with --overwrite). The exported model takes one
image as a (3, H, W) float tensor in INPUT.FORMAT, resized to the config's test size, and returns
the detections before postprocessing: traced, module(image) -> (boxes, scores, classes, masks);
ONNX, as onnxruntime's run(None, {'image': image}); scripted, module(({'image': image},))[0] -> a
dict (export_info.json records the call).
The export is run on the sample image and on the sample at another size and compared with the
model (exit status 1 if they differ). Without --sample-image,
the first image of DATASETS.TEST[0] is the sample. Logic: lambda_det/export.py.
"""
import argparse
import sys
from pathlib import Path

from detectron2.data import DatasetCatalog

import lambda_det
from lambda_det.checkpoint import Checkpointer
from lambda_det.data import prepare_dataset
from lambda_det.demo import read_image_bgr
from lambda_det.engine import (add_dataset_argument, build_model_on_cpu, parse_args_with_overrides, register_datasets, run_folder_lock,
                               run_main, validate_config)
from lambda_det.errors import UserError, WeightsError
from lambda_det.export import FORMATS, METHODS, export_and_check, file_name, resize_for_model
from lambda_det.utils.file_safety import existing, path_argument, refuse_file, refuse_overwrite


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--export-method", choices=METHODS, required=True)
    parser.add_argument("--sample-image", metavar="FILE", help="image to trace with (default: first of DATASETS.TEST[0])")
    parser.add_argument("--output", required=True, type=path_argument, help="directory for the exported files")
    parser.add_argument("--backbone-only", action="store_true", help="ONNX of backbone + FPN only (p2..p6)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --output")
    add_dataset_argument(parser, "DATASETS.TEST", classes=None)  # the default sample image, from one's own data
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    args = parse_args_with_overrides(parser)
    register_datasets(args)
    if args.export_method == "scripting" and args.format != "torchscript":
        parser.error("--export-method scripting makes TorchScript: use --format torchscript")
    if args.backbone_only and args.format != "onnx":
        parser.error("--backbone-only is for --format onnx")

    cfg = lambda_det.load_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"  # exported on the CPU; the files run on any device
    cfg.freeze()
    validate_config(cfg, training=False)
    if not cfg.MODEL.WEIGHTS:
        raise WeightsError("exporting needs trained weights: add MODEL.WEIGHTS path/to/model_final.pth at the end")
    path = args.output / file_name(args.format, args.backbone_only)
    info_path = args.output / "export_info.json"
    refuse_file(args.output, "--output")
    if not args.overwrite:
        refuse_overwrite(existing([path, info_path]), "--output", "of an earlier export")
    if args.format == "onnx":
        for module in ("onnx", "onnxruntime"):
            try:
                __import__(module)
            except ImportError:
                raise UserError(f"--format onnx needs the '{module}' package: pip install -e '.[export]'") from None

    sample = args.sample_image
    if sample is None:
        if not cfg.DATASETS.TEST:
            raise UserError("--sample-image is needed: the config has no DATASETS.TEST to take a sample from")
        try:
            prepare_dataset(cfg.DATASETS.TEST[0])
        except UserError as exc:  # e.g. one's own dataset, registered by --dataset in training only
            raise UserError(f"{exc} (the export takes its sample image from DATASETS.TEST[0]: give one with "
                            "--sample-image instead)") from None
        sample = DatasetCatalog.get(cfg.DATASETS.TEST[0])[0]["file_name"]
    try:
        bgr = read_image_bgr(Path(sample))
    except ValueError as exc:
        raise UserError(f"--sample-image {sample}: {exc}") from None
    image = resize_for_model(cfg, bgr)  # (an image the resize leaves empty is named before the model is built)

    model = build_model_on_cpu(cfg).eval()
    Checkpointer(model, strict=True, cfg=cfg).load(cfg.MODEL.WEIGHTS)
    about = {"config_file": str(Path(args.config_file).resolve()), "weights": str(Path(cfg.MODEL.WEIGHTS).resolve()),
             "input": f"image: (3, H, W) float32, INPUT.FORMAT {cfg.INPUT.FORMAT}, resized to shortest side "
                      f"{cfg.INPUT.MIN_SIZE_TEST} (longest <= {cfg.INPUT.MAX_SIZE_TEST})"}
    with run_folder_lock(args.output, "--output"):  # a second export into the same folder is refused
        if not args.overwrite:  # again: another export may have finished there since the first check
            refuse_overwrite(existing([path, info_path]), "--output", "of an earlier export")
        checks, problems = export_and_check(model, image, args.format, args.export_method, args.output,
                                            backbone_only=args.backbone_only, about=about)
    print(f"wrote {path} and {info_path}")
    for label, check in checks.items():
        if check["max_abs_difference"] is not None:
            print(f"  {label} {check['input_size'][0]}x{check['input_size'][1]}: max |export - model| = {check['max_abs_difference']:.2e}")
    if problems:
        print("error: " + "; ".join(problems) + " (export_info.json says passed: false)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
