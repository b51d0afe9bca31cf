#!/usr/bin/env python
"""Convert timm's ImageNet-trained lambda_resnet26t / lambda_resnet50ts weights into a Detectron2
checkpoint for MODEL.WEIGHTS (backbone only: the classifier is left out).

    python tools/convert_timm_to_d2.py lambda_resnet50ts.safetensors --output weights/lambda_resnet50ts_d2.pth
    python tools/convert_timm_to_d2.py --pretrained lambda_resnet50ts --output weights/lambda_resnet50ts_d2.pth

The first form reads a local .pth / .bin / .safetensors file (from the hub, or saved with
torch.save(model.state_dict(), ...)); --model names the architecture if it is not obvious. The
second downloads through timm (needs timm and network access). Logic: lambda_det/modeling/timm_lambda.py
(the key map) and lambda_det/checkpoint.py (the files).
"""
import argparse
import sys

from lambda_det.checkpoint import read_timm_weights, save_detectron2_weights
from lambda_det.engine import run_main
from lambda_det.errors import ConversionError, UserError
from lambda_det.modeling.timm_lambda import TIMM_MODELS, convert_state_dict
from lambda_det.utils.file_safety import ensure_writable_dir, file_path_argument, not_a_file, path_argument, refuse_file, refuse_overwrite, same_file


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("input", nargs="?", type=path_argument, help="timm checkpoint file")
    source.add_argument("--pretrained", choices=sorted(TIMM_MODELS), help="download this model's weights through timm")
    parser.add_argument("--model", choices=sorted(TIMM_MODELS), help="the architecture (default: recognized from the file)")
    parser.add_argument("--output", required=True, type=file_path_argument, help="the Detectron2 checkpoint to write (.pth)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output file")
    args = parser.parse_args()
    if args.output.exists() and not args.output.is_file():
        raise UserError(f"--output {args.output} {not_a_file(args.output)}; name the .pth file to write")
    if args.input is not None and same_file(args.input, args.output):
        raise UserError(f"--output {args.output} is the input checkpoint; name a new file")
    if args.output.suffix in (".pkl", ".pyth"):
        raise UserError(f"--output {args.output}: Detectron2 reads {args.output.suffix} weights in another format (Caffe2's "
                        "pickle, pycls'), not this PyTorch checkpoint; name the file .pth")
    if not args.overwrite and args.output.exists():
        refuse_overwrite([args.output], "--output", "of an earlier conversion")
    refuse_file(args.output.parent, "--output's folder")  # created only once the input has converted
    if args.pretrained:
        try:
            import timm
        except ImportError:
            raise UserError("--pretrained needs timm: pip install timm (or pass a downloaded checkpoint file)") from None
        try:
            state_dict = timm.create_model(args.pretrained, pretrained=True).state_dict()
        except Exception as exc:  # the hub's own errors (no network, no such weights)
            raise UserError(f"--pretrained {args.pretrained}: timm could not fetch the weights ({exc})") from None
        source, name = f"timm hub: {args.pretrained}", args.pretrained
    else:
        source, name = str(args.input), args.model
        try:
            state_dict = read_timm_weights(args.input)
        except ConversionError as exc:
            raise UserError(f"{args.input} {exc}") from None
    try:
        name, converted, report = convert_state_dict(state_dict, name)
    except ConversionError as exc:
        raise UserError(f"{source} {exc}") from None
    ensure_writable_dir(args.output.parent, "--output's folder")
    save_detectron2_weights(args.output, converted, report, source, replace=args.overwrite)
    kinds = ", ".join(report["left_out_kinds"]) or "nothing"
    print(f"{source}: timm {name}, {report['mapped']} backbone tensors mapped; left out {len(report['left_out'])} "
          f"({kinds}{': ' + ', '.join(report['left_out'][:4]) + ' ...' if report['left_out'] else ''})")
    print(f"wrote {args.output}: MODEL.WEIGHTS for configs/COCO-InstanceSegmentation/mask_rcnn_timm_{name}_FPN_*.yaml")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
