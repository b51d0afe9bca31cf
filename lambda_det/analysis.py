"""FLOPs, parameters, activations and structure of a model built from a config, as Detectron2's
``tools/analyze_model.py`` reports them (fvcore's conventions: one multiply-add = one flop), with
the lambda layers counted by their definition (``lambda_det.layers.flops``). Used by
``tools/analyze_model.py``.

FLOPs and activations of a detector depend on the input: on its size, and on how many proposals
and detections the heads process. Inputs come from ``DATASETS.TEST[0]`` as in Detectron2 (a
LazyConfig's ``dataloader.test``), or are synthetic images of a given size; ``worst_case`` makes the
heads' work input-independent (every image gets the test-time maximum of proposals and detections),
which is how the README's table is counted.

``cfg`` is a yacs config or a LazyConfig (a DictConfig: the model of ``model`` on ``train.device``,
weights from ``train.init_checkpoint``), as in Detectron2's tool.
"""
from __future__ import annotations

import logging
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import build_detection_test_loader
from detectron2.structures import ImageList
from omegaconf import DictConfig, OmegaConf

from .checkpoint import Checkpointer
from .data import prepare_dataset
from .engine.lazy import (
    LAZY_KEYS, box_predictor_keys, build_lazy_model, dataset_names, inference_augmentations, inference_resize_problems,
)
from .engine.preflight import build_model_on_cpu
from .errors import ConfigError, UserError
from .utils.file_safety import normalized

logger = logging.getLogger("lambda_det")

TASKS = ("flop", "activation", "parameter", "structure")


def worst_case(cfg) -> None:
    """Test-time settings under which every image yields POST_NMS_TOPK_TEST proposals and
    DETECTIONS_PER_IMAGE detections, whatever the weights: no NMS, no score threshold (a LazyConfig:
    in its proposal generator and box predictors)."""
    if isinstance(cfg, DictConfig):
        if OmegaConf.select(cfg, "model.proposal_generator", default=None) is not None:
            OmegaConf.update(cfg, "model.proposal_generator.nms_thresh", 1.0, merge=False)
        for node in box_predictor_keys(cfg, "--worst-case sets the test-time thresholds"):
            OmegaConf.update(cfg, f"{node}.test_nms_thresh", 1.0, merge=False)
            OmegaConf.update(cfg, f"{node}.test_score_thresh", 0.0, merge=False)
        return
    cfg.MODEL.RPN.NMS_THRESH = 1.0
    cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST = 1.0
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    cfg.MODEL.RETINANET.NMS_THRESH_TEST = 1.0  # read only by a RetinaNet
    cfg.MODEL.RETINANET.SCORE_THRESH_TEST = 0.0


def detections_limit(cfg, model) -> Tuple[int, str]:
    """(the detections per image under ``worst_case``, what sets that number, by its config keys): the
    detection limit, or, for R-CNN heads, the proposals times the classes when that is fewer (or the
    limit is -1: none)."""
    lazy = isinstance(cfg, DictConfig)
    heads, proposals = getattr(model, "roi_heads", None), getattr(model, "proposal_generator", None)
    if heads is None or proposals is None:  # RetinaNet, FCOS
        key = "model.max_detections_per_image" if lazy else "TEST.DETECTIONS_PER_IMAGE"
        return model.max_detections_per_image, f"{key}={model.max_detections_per_image}"
    predictor = heads.box_predictor[-1] if isinstance(heads.box_predictor, torch.nn.ModuleList) else heads.box_predictor
    limit = predictor.test_topk_per_image  # a cascade reports its last stage's
    limit_key = (f"{box_predictor_keys(cfg, 'the detections are limited')[-1]}.test_topk_per_image" if lazy
                 else "TEST.DETECTIONS_PER_IMAGE")
    candidates = proposals.post_nms_topk[False] * predictor.num_classes  # every class of every proposal
    if 0 <= limit <= candidates:
        return limit, f"{limit_key}={limit}"
    proposals_key = "model.proposal_generator.post_nms_topk" if lazy else "MODEL.RPN.POST_NMS_TOPK_TEST"
    return candidates, (f"{proposals.post_nms_topk[False]} proposals ({proposals_key}) x {predictor.num_classes} classes, "
                        f"{'no limit' if limit < 0 else 'fewer than'} {limit_key}{'' if limit < 0 else f'={limit}'}")


def build_analysis_model(cfg) -> torch.nn.Module:
    """The config's model on its device, with its weights when it names any."""
    if isinstance(cfg, DictConfig):
        model = build_lazy_model(cfg).to(cfg.train.device)
        weights = OmegaConf.select(cfg, LAZY_KEYS.weights, default=None)
        weights = normalized(weights) if weights else None  # "~/x" in a config: no shell expands it
    else:
        model = build_model_on_cpu(cfg).to(cfg.MODEL.DEVICE)
        weights = cfg.MODEL.WEIGHTS
    if weights:
        # counts do not depend on the weights: a backbone-only file (the timm configs' converted
        # weights) is fine here, with Detectron2's warnings, as in Detectron2's analyze_model
        Checkpointer(model, strict=False, cfg=cfg).load(weights)
    return model.eval()


def synthetic_inputs(num_inputs: int, height: int, width: int, seed: int = 0) -> List[List[dict]]:
    """Uniform-noise uint8 images of one size, in Detectron2's input format (batch of one)."""
    g = torch.Generator().manual_seed(seed)
    return [
        [{"image": torch.randint(0, 256, (3, height, width), generator=g, dtype=torch.uint8), "height": height, "width": width}]
        for _ in range(num_inputs)
    ]


def inference_inputs_source(cfg) -> str:
    """Where ``dataset_inputs`` reads images from, as a user writes it."""
    return "dataloader.test" if isinstance(cfg, DictConfig) else "DATASETS.TEST[0]"


def dataset_inputs(cfg, num_inputs: int) -> List[List[dict]]:
    """The first ``num_inputs`` images of Detectron2's test loader of DATASETS.TEST[0] (a LazyConfig's
    dataloader.test, with its mapper), one per input: counts are per image whatever the loader's batch."""
    if isinstance(cfg, DictConfig):
        for name in dataset_names(OmegaConf.select(cfg, LAZY_KEYS.test, default=None)):
            prepare_dataset(name)
        ConfigError.check(inference_resize_problems(cfg, inference_augmentations(cfg)))
    else:
        prepare_dataset(cfg.DATASETS.TEST[0])
    inputs: List[List[dict]] = []
    try:
        loader = instantiate(cfg.dataloader.test) if isinstance(cfg, DictConfig) else build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
        for batch in loader:
            inputs.extend([image] for image in batch)
            if len(inputs) >= num_inputs:
                break
    except UserError:
        raise
    except Exception as exc:  # the mapper reading an image in a way the config asks for and cannot work (a format)
        source = inference_inputs_source(cfg)
        raise ConfigError(f"{source} cannot give the images: {type(exc).__name__}: {' '.join(str(exc).split())[:400]}") from None
    if len(inputs) < num_inputs:
        logger.warning("%d inputs asked for (-n), and %s has %d image(s): all of them are counted", num_inputs,
                       inference_inputs_source(cfg), len(inputs))
    return inputs[:num_inputs]


def backbone_images(model, batch: Sequence[dict]) -> torch.Tensor:
    """The normalized, padded image tensor the backbone sees for a batch of inputs."""
    images = model.preprocess_image(batch)
    assert isinstance(images, ImageList)
    return images.tensor


@dataclass
class FlopReport:
    per_input_model: List[float] = field(default_factory=list)
    per_input_backbone: List[float] = field(default_factory=list)
    per_input_bottom_up: List[float] = field(default_factory=list)
    by_operator: Counter = field(default_factory=Counter)
    table: str = ""

    def summary(self) -> Dict[str, float]:
        return {
            "model_gflops": float(np.mean(self.per_input_model)) / 1e9,
            "model_gflops_std": float(np.std(self.per_input_model)) / 1e9,
            "backbone_fpn_gflops": float(np.mean(self.per_input_backbone)) / 1e9,
            "bottom_up_gflops": float(np.mean(self.per_input_bottom_up)) / 1e9,
        }


def count_flops(model, inputs: Sequence[List[dict]], max_depth: int = 4, warnings: bool = True) -> FlopReport:
    """Detectron2's FlopCountAnalysis per input, for the whole model and for backbone + FPN.

    ``warnings``: fvcore's notes on operators without a count (elementwise ops, roi_align, ...) for
    the first input, as Detectron2's tool prints them."""
    from detectron2.utils.analysis import FlopCountAnalysis
    from fvcore.nn import flop_count_table

    report = FlopReport()
    with torch.no_grad():
        for index, batch in enumerate(inputs):
            flops = FlopCountAnalysis(model, batch)
            backbone = FlopCountAnalysis(model.backbone, (backbone_images(model, batch),))
            if index > 0 or not warnings:
                for analysis in (flops, backbone):
                    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
            report.by_operator += flops.by_operator()
            report.per_input_model.append(flops.total())
            report.per_input_backbone.append(backbone.total())
            by_module = backbone.by_module()
            report.per_input_bottom_up.append(by_module.get("model.bottom_up", backbone.total()))  # Detectron2 wraps it as "model"
            if index == 0:
                report.table = flop_count_table(flops, max_depth=max_depth)
    return report


def count_activations(model, inputs: Sequence[List[dict]]) -> Tuple[Counter, List[float]]:
    from detectron2.utils.analysis import activation_count_operators

    counts: Counter = Counter()
    totals = []
    with torch.no_grad():
        for batch in inputs:
            count = activation_count_operators(model, batch)
            counts += count
            totals.append(sum(count.values()))
    return counts, totals


def count_parameters(model) -> Dict[str, float]:
    total = sum(p.numel() for p in model.parameters())
    backbone = sum(p.numel() for p in model.backbone.parameters())
    bottom_up = getattr(model.backbone, "bottom_up", model.backbone)
    return {
        "model_params_m": total / 1e6,
        "backbone_fpn_params_m": backbone / 1e6,
        "bottom_up_params_m": sum(p.numel() for p in bottom_up.parameters()) / 1e6,
    }


def parameter_table(model, max_depth: int = 5) -> str:
    from detectron2.utils.analysis import parameter_count_table

    return parameter_count_table(model, max_depth=max_depth)


def detections_per_input(model, inputs: Sequence[List[dict]]) -> List[int]:
    with torch.no_grad():
        return [len(out["instances"]) for batch in inputs for out in model(batch)]


@contextmanager
def inputs_named_when_too_small(input_size: Optional[Tuple[int, int]], dataset_source: str):
    """A normalization (GroupNorm, BatchNorm) given one value per group, which inputs smaller than the
    deepest level's stride leave it (a 1x1 map with a channel per group), is the inputs' fault: named
    so, not a traceback."""
    try:
        yield
    except ValueError as exc:
        if "more than 1 value per" not in str(exc):
            raise
        source = f"--input-size {input_size[0]} {input_size[1]}" if input_size else f"the images of {dataset_source}"
        raise UserError(f"{source}: too small for this model; a normalization of its deepest feature maps would get "
                        "one value per group (torch: \"Expected more than 1 value per channel\"); give larger inputs") from None


def analyze(cfg, tasks: Sequence[str], num_inputs: int, input_size: Optional[Tuple[int, int]] = None,
            report=print, check_worst_case: bool = False) -> Dict[str, float]:
    """Run the tasks; print tables with ``report``; return the summary numbers.

    ``check_worst_case`` (with ``worst_case(cfg)``): first make sure the heads really get the
    maximum of detections; from random weights without zero-initialized residual branches (e.g.
    Detectron2's own ResNets) the features can grow so large that the RPN proposes nothing."""

    model = build_analysis_model(cfg)
    with inputs_named_when_too_small(input_size, inference_inputs_source(cfg)):
        return _run_tasks(cfg, model, tasks, num_inputs, input_size, report, check_worst_case)


def _run_tasks(cfg, model, tasks, num_inputs, input_size, report, check_worst_case) -> Dict[str, float]:
    summary: Dict[str, float] = {}  # and num_inputs: the inputs counted, where the tasks need any
    needs_inputs = {"flop", "activation"} & set(tasks)
    inputs = []
    if needs_inputs:
        inputs = synthetic_inputs(num_inputs, *input_size) if input_size else dataset_inputs(cfg, num_inputs)
        summary["num_inputs"] = len(inputs)
        if check_worst_case:
            found = detections_per_input(model, inputs[:1])
            expected, reason = detections_limit(cfg, model)
            weights_key = LAZY_KEYS.weights if isinstance(cfg, DictConfig) else "MODEL.WEIGHTS"
            if any(n != expected for n in found):
                raise UserError(
                    f"--worst-case: the model gives {found} detection(s) instead of {reason}, so the count would leave "
                    "out part of the heads' work. With random weights this happens when the features grow too large "
                    f"(give trained weights: {weights_key}); or the heads cannot reach that many on these inputs")
    for task in tasks:
        if task == "flop":
            flops = count_flops(model, inputs)
            report("FLOPs (fvcore: one multiply-add = one flop), first input:\n" + flops.table)
            report("GFLOPs by operator, mean over inputs: "
                   + ", ".join(f"{k} {v / len(inputs) / 1e9:.2f}" for k, v in flops.by_operator.most_common()))
            s = flops.summary()
            report(f"Total GFLOPs: {s['model_gflops']:.1f}±{s['model_gflops_std']:.1f} (whole model), "
                   f"{s['backbone_fpn_gflops']:.1f} (backbone + FPN), {s['bottom_up_gflops']:.1f} (backbone without FPN); "
                   f"mean of {len(inputs)} input(s)")
            summary.update(s)
        elif task == "activation":
            counts, totals = count_activations(model, inputs)
            report("(Million) activations by operator: "
                   + ", ".join(f"{k} {v / len(inputs):.1f}" for k, v in counts.most_common()))
            report(f"Total (million) activations: {np.mean(totals):.1f}±{np.std(totals):.1f}")
            summary["model_mactivations"] = float(np.mean(totals))
        elif task == "parameter":
            report("Parameter count:\n" + parameter_table(model))
            params = count_parameters(model)
            report(f"Parameters: {params['model_params_m']:.2f} M (whole model), {params['backbone_fpn_params_m']:.2f} M "
                   f"(backbone + FPN), {params['bottom_up_params_m']:.2f} M (backbone without FPN)")
            summary.update(params)
        elif task == "structure":
            report("Model structure:\n" + str(model))
    return summary


__all__ = [
    "TASKS",
    "analyze",
    "backbone_images",
    "build_analysis_model",
    "count_activations",
    "count_flops",
    "count_parameters",
    "dataset_inputs",
    "detections_limit",
    "inference_inputs_source",
    "synthetic_inputs",
    "worst_case",
]
