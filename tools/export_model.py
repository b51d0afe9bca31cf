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
the detections before postprocessing; the export is run on the sample image and on the sample at
another size and compared with the model (exit status 1 if they differ). Without --sample-image,
the first image of DATASETS.TEST[0] is the sample. Logic: lambda_det/export.py.
"""
import argparse
import sys
from pathlib import Path

import lambda_det
from lambda_det.checks import UserError, parse_args_with_overrides, validate_config
from lambda_det.outputs import StagedFiles, ensure_writable_dir, existing, path_argument, refuse_file, refuse_overwrite

TOLERANCE = 1e-2  # largest difference accepted between export and model (pixels, scores, mask probabilities)


def main() -> int:
    from lambda_det.export import FORMATS, METHODS

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", choices=FORMATS, required=True)
    parser.add_argument("--export-method", choices=METHODS, required=True)
    parser.add_argument("--sample-image", metavar="FILE", help="image to trace with (default: first of DATASETS.TEST[0])")
    parser.add_argument("--output", required=True, type=path_argument, help="directory for the exported files")
    parser.add_argument("--backbone-only", action="store_true", help="ONNX of backbone + FPN only (p2..p6)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier export in --output")
    parser.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides: KEY VALUE ...")
    args = parse_args_with_overrides(parser)
    if args.export_method == "scripting" and args.format != "torchscript":
        parser.error("--export-method scripting makes TorchScript: use --format torchscript")
    if args.backbone_only and args.format != "onnx":
        parser.error("--backbone-only is for --format onnx")
    try:
        return export(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def export(args) -> int:
    import torch
    from detectron2.data import DatasetCatalog
    from detectron2.modeling import build_model

    from lambda_det.checkpoint import Checkpointer, WeightsError
    from lambda_det.data import prepare_dataset
    from lambda_det.demo import read_image_bgr
    from lambda_det.export import (
        ExportError, export_onnx, export_torchscript, max_difference, reference_outputs, resize_for_model, run_exported,
        write_info,
    )

    cfg = lambda_det.load_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"  # exported on the CPU; the files run on any device
    cfg.freeze()
    validate_config(cfg, training=False)
    if not cfg.MODEL.WEIGHTS:
        raise WeightsError("exporting needs trained weights: add MODEL.WEIGHTS path/to/model_final.pth at the end")
    name = "backbone.onnx" if args.backbone_only else ("model.onnx" if args.format == "onnx" else "model.ts")
    targets = [args.output / name, args.output / "export_info.json"]
    refuse_file(args.output, "--output")
    if not args.overwrite:
        refuse_overwrite(existing(targets), "--output", "of an earlier export")
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
        prepare_dataset(cfg.DATASETS.TEST[0])
        sample = DatasetCatalog.get(cfg.DATASETS.TEST[0])[0]["file_name"]
    try:
        bgr = read_image_bgr(Path(sample))
    except ValueError as exc:
        raise UserError(f"--sample-image {sample}: {exc}") from None
    image = resize_for_model(cfg, bgr)
    # the check at another size: the model's input shrunk to about 3/4, not a multiple of 32
    import cv2
    import numpy as np

    resized = np.ascontiguousarray(image.numpy().transpose(1, 2, 0))
    h, w = resized.shape[:2]
    other = torch.as_tensor(cv2.resize(resized, (max(32, w * 3 // 4 + 1), max(32, h * 3 // 4 + 3))).transpose(2, 0, 1).copy())

    model = build_model(cfg).eval()
    Checkpointer(model, strict=True, cfg=cfg).load(cfg.MODEL.WEIGHTS)
    ensure_writable_dir(args.output, "--output")
    path = args.output / name
    # model and export_info.json appear together, after the checks, or not at all
    with StagedFiles() as staged:
        staged_model = staged.stage(path)
        if args.format == "torchscript":
            info = export_torchscript(model, image, args.export_method, staged_model)
        else:
            info = export_onnx(model, image, staged_model, backbone_only=args.backbone_only)
        checks, problems = {}, []
        for label, tensor in (("sample", image), ("other_size", other)):
            expected = reference_outputs(model, tensor, backbone_only=args.backbone_only)
            got = run_exported(staged_model, tensor, args.format, args.export_method)
            try:
                difference = max_difference(got, expected)
            except ExportError as exc:  # another number or shape of outputs: it differs, by how much is moot
                difference = None
                problems.append(f"{label}: {exc}")
            checks[label] = {"input_size": list(tensor.shape[1:]), "max_abs_difference": difference}
        worst = max((c["max_abs_difference"] for c in checks.values() if c["max_abs_difference"] is not None), default=0.0)
        if worst > TOLERANCE:
            problems.append(f"the export differs from the model by {worst:.3g} (> {TOLERANCE})")
        info.update(
            format=args.format, export_method=args.export_method, config_file=str(Path(args.config_file).resolve()),
            weights=str(Path(cfg.MODEL.WEIGHTS).resolve()), input="image: (3, H, W) float32, INPUT.FORMAT "
            f"{cfg.INPUT.FORMAT}, resized to shortest side {cfg.INPUT.MIN_SIZE_TEST} (longest <= {cfg.INPUT.MAX_SIZE_TEST})",
            checks=checks, tolerance=TOLERANCE, passed=not problems, torch=torch.__version__,
        )
        write_info(staged.stage(args.output / "export_info.json"), info)
    print(f"wrote {path} and {args.output / 'export_info.json'}")
    for label, check in checks.items():
        if check["max_abs_difference"] is not None:
            print(f"  {label} {check['input_size'][0]}x{check['input_size'][1]}: max |export - model| = {check['max_abs_difference']:.2e}")
    if problems:
        print("error: " + "; ".join(problems) + " (export_info.json says passed: false)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
