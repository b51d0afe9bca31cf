"""Export a trained LambdaResNet Mask R-CNN the ways Detectron2 deploys models (its
``tools/deploy/export_model.py``): TorchScript by tracing (``TracingAdapter``) or by scripting
(``scripting_with_instances``), and ONNX by tracing (the whole Mask R-CNN, or backbone + FPN).
Used by ``tools/export_model.py``.

What makes the lambda layers exportable: under tracing they compute the position lambdas as a
convolution with the whole relative-position table, which gives the same numbers at every input
size (the FFT form's padded sizes and the kernel crop would be frozen at the traced size); under
scripting every form runs as in eager mode. The exported files hold only aten and torchvision
operators: they load without lambda_det (``import torchvision`` registers roi_align and nms).

The exported models take one image as a (3, H, W) float tensor in the config's INPUT.FORMAT,
already resized as the config's test size says (``resize_for_model``), and return the detections
before Detectron2's postprocessing (boxes in the input image's coordinates, masks as 28x28
probabilities per detection; ``detectron2.modeling.postprocessing.detector_postprocess`` pastes them).
"""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .errors import ExportError
from .utils.file_safety import StagedFiles, check_written, ensure_writable_dir, write_text

FORMATS = ("torchscript", "onnx")
METHODS = ("tracing", "scripting")
ONNX_OPSET = 17
TOLERANCE = 1e-2  # largest difference accepted between export and model (pixels, scores, mask probabilities)
# fields of the Instances the R-CNN inference produces, for scripting (Detectron2's export tool lists the same)
SCRIPTING_FIELDS = ("proposal_boxes", "objectness_logits", "pred_boxes", "scores", "pred_classes", "pred_masks")


def resize_for_model(cfg, image_bgr: np.ndarray) -> torch.Tensor:
    """An HWC BGR uint8 image -> the (3, H, W) float tensor the model takes (test-time resize, INPUT.FORMAT)."""
    import detectron2.data.transforms as T

    short, longest = cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST
    h, w = image_bgr.shape[:2]
    if short:  # (0: no resize at test time, as in Detectron2)
        new_h, new_w = T.ResizeShortestEdge.get_output_shape(h, w, short, longest)
        if min(new_h, new_w) < 1:
            raise ExportError(f"the sample image of {w}x{h} pixels is too thin: the test-time resize (INPUT.MIN_SIZE_TEST="
                              f"{short}, MAX_SIZE_TEST={longest}) leaves {new_w}x{new_h}; pass another --sample-image")
    image = T.ResizeShortestEdge([short, short], longest).get_transform(image_bgr).apply_image(image_bgr)
    if cfg.INPUT.FORMAT == "RGB":
        image = image[:, :, ::-1]
    return torch.as_tensor(np.ascontiguousarray(image.astype("float32").transpose(2, 0, 1)))


def _inference(model, inputs):
    """R-CNN inference without postprocessing: what the exported graph contains."""
    instances = model.inference(inputs, do_postprocess=False)[0]
    return [{"instances": instances}]


def tracing_adapter(model, image: torch.Tensor):
    from detectron2.export import TracingAdapter

    return TracingAdapter(model, [{"image": image}], _inference).eval()


def output_names(adapter) -> List[str]:
    """Names of the flat outputs of a TracingAdapter, in order (Detectron2 sorts Instances fields
    and puts the image size last)."""
    from detectron2.export.flatten import DictSchema, InstancesSchema, ListSchema

    def walk(schema, name: str) -> List[str]:
        if isinstance(schema, InstancesSchema):
            return [n for key, child in zip(schema.keys, schema.schemas) for n in walk(child, key)] + ["image_size"]
        if isinstance(schema, DictSchema):
            return [n for key, child in zip(schema.keys, schema.schemas) for n in walk(child, key)]
        if isinstance(schema, ListSchema):
            return [n for child in schema.schemas for n in walk(child, name)]
        return [name]

    return walk(adapter.outputs_schema, "output")


class BackboneWithPreprocessing(nn.Module):
    """Image (3, H, W) in INPUT.FORMAT -> FPN features (p2..p6): the model's normalization and
    padding to the backbone's size divisibility, then backbone + FPN."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.names = list(model.backbone.output_shape())

    def forward(self, image: torch.Tensor) -> Tuple[torch.Tensor, ...]:
        images = self.model.preprocess_image([{"image": image}])
        features = self.model.backbone(images.tensor)
        return tuple(features[name] for name in self.names)


class _ScriptableAdapter(nn.Module):
    """Detectron2's scripting needs dict outputs (an Instances cannot leave a ScriptModule)."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, inputs: Tuple[Dict[str, torch.Tensor]]) -> List[Dict[str, torch.Tensor]]:
        instances = self.model.inference(inputs, do_postprocess=False)
        return [i.get_fields() for i in instances]


def export_torchscript(model, image: torch.Tensor, method: str, path: Path) -> Dict:
    """Trace or script the model, save it; return how to call it."""
    if method == "tracing":
        adapter = tracing_adapter(model, image)
        with torch.no_grad():
            module = torch.jit.trace(adapter, adapter.flattened_inputs)
        info = {"call": "outputs = module(image)", "outputs": output_names(adapter)}
    else:
        from detectron2.export import scripting_with_instances
        from detectron2.structures import Boxes

        fields = {name: (Boxes if name.endswith("boxes") else torch.Tensor) for name in SCRIPTING_FIELDS}
        module = scripting_with_instances(_ScriptableAdapter(model), fields)
        info = {"call": "outputs = module(({'image': image},))[0]", "outputs": ["pred_boxes", "scores", "pred_classes", "pred_masks"]}
    # serialized in memory, then written by Python: TorchScript's own file writer aborts the whole
    # process on a full disk (a C++ error Python cannot catch); an OSError here is named by the caller
    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    with open(path, "wb") as f:
        f.write(buffer.getbuffer())
    return info


def export_onnx(model, image: torch.Tensor, path: Path, backbone_only: bool = False) -> Dict:
    """ONNX by tracing, with dynamic image height and width (opset ONNX_OPSET)."""
    if backbone_only:
        module = BackboneWithPreprocessing(model).eval()
        names = list(module.names)
        dynamic = {name: {2: f"{name}_height", 3: f"{name}_width"} for name in names}
    else:
        module = tracing_adapter(model, image)
        with torch.no_grad():
            module(image)  # the adapter learns its outputs' structure (their names) by running once
        names = output_names(module)
        dynamic = {name: {0: "detections"} for name in names if name != "image_size"}
    dynamic["image"] = {1: "height", 2: "width"}
    with torch.no_grad():
        torch.onnx.export(module, (image,), str(path), dynamo=False, opset_version=ONNX_OPSET,
                          input_names=["image"], output_names=names, dynamic_axes=dynamic)
    module.eval()  # the exporter restores the module's mode, and a fresh adapter starts in training mode
    check_written(path, "ONNX model")
    return {"call": "outputs = onnxruntime.InferenceSession(path).run(None, {'image': image})", "outputs": names}


def reference_outputs(model, image: torch.Tensor, backbone_only: bool = False) -> List[torch.Tensor]:
    """What the exported model must reproduce: eager PyTorch on the same input, flattened the same way."""
    return named_reference_outputs(model, image, backbone_only)[0]


def named_reference_outputs(model, image: torch.Tensor, backbone_only: bool = False) -> Tuple[List[torch.Tensor], List[str]]:
    """``reference_outputs`` and their names (``output_names``; the backbone's feature names)."""
    with torch.no_grad():
        if backbone_only:
            module = BackboneWithPreprocessing(model).eval()
            return list(module(image)), list(module.names)
        adapter = tracing_adapter(model, image)
        return list(adapter(image)), output_names(adapter)


def run_exported(path: Path, image: torch.Tensor, fmt: str, method: str) -> List[torch.Tensor]:
    """Run an exported file on one image, outputs in the order of ``reference_outputs``."""
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return [torch.as_tensor(o) for o in session.run(None, {"image": image.numpy()})]
    module = torch.jit.load(str(path))
    with torch.no_grad():
        if method == "tracing":
            return list(module(image))
        fields = module(({"image": image},))[0]
    order = ["pred_boxes", "pred_classes", "pred_masks", "scores"]
    return [fields[k] for k in order] + [torch.tensor(image.shape[1:])]


def max_difference(got: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], names: Sequence[str] = (),
                   limit: Optional[int] = None) -> float:
    """Largest elementwise difference (a NaN counts as infinite), detections matched first (``names``:
    the outputs' names, see ``matched_detections``; ``limit``: TEST.DETECTIONS_PER_IMAGE, see
    ``tied_at_the_cut``); an error when the outputs differ in number or shape."""
    if len(got) != len(expected):
        raise ExportError(f"the exported model returns {len(got)} outputs, the model {len(expected)}")
    for a, b in zip(got, expected):
        if tuple(a.shape) != tuple(b.shape):
            raise ExportError(f"an output of the exported model has shape {tuple(a.shape)}, the model's {tuple(b.shape)}")
    got = matched_detections(got, expected, names)
    tied = tied_at_the_cut(expected, names, limit)
    worst = 0.0
    for name, a, b in zip(names or [None] * len(got), got, expected):
        if tied is not None and name not in ("image_size", "scores") and a.dim() > 0 and a.shape[0] == tied.shape[0]:
            a, b = a[~tied], b[~tied]  # (their scores are compared: tied, they are the same)
        if a.numel():
            worst = max(worst, torch.nan_to_num((a.double() - b.double()).abs(), nan=float("inf")).max().item())
    return worst


NEAR_TIE = 1e-4  # scores closer than this may order or suppress differently in an export


def near_ties(expected: Sequence[torch.Tensor], names: Sequence[str]) -> int:
    """How many of the model's detections score within NEAR_TIE of another one."""
    if "scores" not in names or expected[names.index("scores")].numel() < 2:
        return 0
    scores = expected[names.index("scores")].double().sort().values
    close = (scores[1:] - scores[:-1]) < NEAR_TIE
    return int((torch.cat([close, close.new_zeros(1)]) | torch.cat([close.new_zeros(1), close])).sum())


def tied_at_the_cut(expected: Sequence[torch.Tensor], names: Sequence[str], limit: Optional[int]) -> Optional[torch.Tensor]:
    """When the model's detections fill the ``limit`` (TEST.DETECTIONS_PER_IMAGE) and several of them
    tie (to 1e-5) with the lowest kept score: those, whose boxes are left out of the comparison, since
    which of a tie the cut keeps is arbitrary (on an image of one flat colour dozens tie) and the export
    may keep others. None otherwise, and when every detection ties (then nothing would be compared)."""
    if "scores" not in names or limit is None:
        return None
    scores = expected[names.index("scores")].double()
    if scores.numel() != limit or scores.numel() == 0:
        return None
    tied = scores <= scores.min() + 1e-5
    return tied if 1 < int(tied.sum()) < scores.numel() else None


def box_predictor_topk(model) -> Optional[int]:
    """TEST.DETECTIONS_PER_IMAGE as the model's box predictor holds it (None for other heads)."""
    predictor = getattr(getattr(model, "roi_heads", None), "box_predictor", None)
    return getattr(predictor, "test_topk_per_image", None)


def matched_detections(got: Sequence[torch.Tensor], expected: Sequence[torch.Tensor], names: Sequence[str]) -> List[torch.Tensor]:
    """``got`` with its detections in the order of ``expected``'s. An export computes scores to about
    1e-5 of the model's, so detections whose scores nearly tie (an image of one flat colour has many)
    can leave the sort in another order; each of the model's detections, best first, takes the
    export's detection of its class nearest in box and score that no earlier one took (the shapes are
    checked before)."""
    if "pred_boxes" not in names or "scores" not in names:
        return list(got)
    boxes, scores = names.index("pred_boxes"), names.index("scores")
    n = expected[boxes].shape[0]
    if n == 0:
        return list(got)
    cost = torch.cdist(expected[boxes].double(), got[boxes].double(), p=1) + (
        expected[scores].double()[:, None] - got[scores].double()[None, :]).abs()
    if "pred_classes" in names:
        classes = names.index("pred_classes")
        cost = cost + torch.where(expected[classes][:, None] == got[classes][None, :], 0.0, float("inf"))
    order, taken = [], torch.zeros(n, dtype=torch.bool)
    for row in cost:
        j = int(torch.where(taken, float("inf"), row).argmin())
        order.append(j)
        taken[j] = True
    index = torch.tensor(order)
    return [t[index] if name != "image_size" and t.dim() > 0 and t.shape[0] == n else t for name, t in zip(names, got)]


def file_name(fmt: str, backbone_only: bool = False) -> str:
    return "backbone.onnx" if backbone_only else ("model.onnx" if fmt == "onnx" else "model.ts")


def other_size(image: torch.Tensor) -> torch.Tensor:
    """The check at another size: the model's input shrunk to about 3/4, not a multiple of 32."""
    import cv2

    resized = np.ascontiguousarray(image.numpy().transpose(1, 2, 0))
    h, w = resized.shape[:2]
    return torch.as_tensor(cv2.resize(resized, (max(32, w * 3 // 4 + 1), max(32, h * 3 // 4 + 3))).transpose(2, 0, 1).copy())


def export_and_check(model, image: torch.Tensor, fmt: str, method: str, output_dir: Path, *, backbone_only: bool = False,
                     about: Optional[Dict] = None) -> Tuple[Dict, List[str]]:
    """Export ``model`` into ``output_dir`` (model file + export_info.json, together or not at all)
    and run the export on ``image`` and at another size against the model: (checks, problems)."""
    output_dir = Path(output_dir)
    ensure_writable_dir(output_dir, "--output")
    path = output_dir / file_name(fmt, backbone_only)
    with StagedFiles() as staged:  # written after the checks, or not at all
        staged_model = staged.stage(path)
        if fmt == "torchscript":
            info = export_torchscript(model, image, method, staged_model)
        else:
            info = export_onnx(model, image, staged_model, backbone_only=backbone_only)
        checks, problems, ties, limit = {}, [], 0, box_predictor_topk(model)
        for label, tensor in (("sample", image), ("other_size", other_size(image))):
            expected, names = named_reference_outputs(model, tensor, backbone_only=backbone_only)
            got = run_exported(staged_model, tensor, fmt, method)
            try:
                difference = max_difference(got, expected, names, limit)
            except ExportError as exc:  # another number or shape of outputs: it differs, by how much is moot
                difference = None
                problems.append(f"{label}: {exc}")
            checks[label] = {"input_size": list(tensor.shape[1:]), "max_abs_difference": difference}
            tied = tied_at_the_cut(expected, names, limit)
            if tied is not None:  # left out of the comparison (max_difference)
                checks[label]["detections_tied_at_the_cut"] = int(tied.sum())
            ties = max(ties, near_ties(expected, names))
        worst = max((c["max_abs_difference"] for c in checks.values() if c["max_abs_difference"] is not None), default=0.0)
        if worst > TOLERANCE:
            problems.append(f"the export differs from the model by {worst:.3g} (> {TOLERANCE})" + (
                f"; {ties} of the model's detections score within {NEAR_TIE} of another, where the export's last "
                "digits can change which boxes non-maximum suppression keeps (an image of one flat colour does "
                "this): check with a --sample-image that has content" if ties else ""))
        info.update(format=fmt, export_method=method, **(about or {}), checks=checks, tolerance=TOLERANCE,
                    passed=not problems, torch=torch.__version__)
        write_text(staged.stage(output_dir / "export_info.json"), json.dumps(info, indent=2))
    return checks, problems


__all__ = [
    "BackboneWithPreprocessing",
    "ExportError",
    "FORMATS",
    "METHODS",
    "box_predictor_topk",
    "export_and_check",
    "export_onnx",
    "export_torchscript",
    "file_name",
    "matched_detections",
    "max_difference",
    "named_reference_outputs",
    "near_ties",
    "output_names",
    "reference_outputs",
    "resize_for_model",
    "run_exported",
    "tied_at_the_cut",
    "tracing_adapter",
]
