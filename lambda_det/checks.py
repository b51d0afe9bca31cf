"""Values from the command line and the config, checked where they enter.

Every message names the flag or config key, the value, and what is allowed, so that a run that
cannot work stops before it starts instead of deep inside torch or Detectron2 hours later.
Tools print a :class:`UserError` as one ``error: ...`` line and exit with status 2.
"""
from __future__ import annotations

import argparse
import difflib
import math
import re
import sys
from numbers import Real
from typing import Iterable, List, Optional, Sequence


class UserError(ValueError):
    """Bad input from the user (a flag, a config value, a file); the message says what and why."""


class ConfigError(UserError):
    """A config value that cannot work."""


# --------------------------------------------------------------------------------------------
# argparse types: argparse names the flag ("argument --repeats: ...") and exits with status 2
# --------------------------------------------------------------------------------------------
CONFIG_KEY = re.compile(r"^[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+$")


def parse_args_with_overrides(parser: argparse.ArgumentParser, argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """``parser.parse_args``, for tools whose trailing KEY VALUE config overrides are argparse's
    REMAINDER: a flag after them would be handed over as a config key (or a required flag reported
    missing), so it is named instead."""
    argv = list(sys.argv[1:] if argv is None else argv)
    first = next((i for i, a in enumerate(argv) if CONFIG_KEY.match(a)), None)
    late = [a for a in argv[first:] if a.startswith("--")] if first is not None else []
    if late:
        parser.error(f"{late[0]} comes after the config overrides (from {argv[first]} on), where it would be read "
                     "as a config key; put flags before the trailing KEY VALUE overrides")
    return parser.parse_args(argv)


def positive_int(text: str) -> int:
    value = _parse_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: give an integer >= 1")
    return value


def non_negative_int(text: str) -> int:
    value = _parse_int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: give an integer >= 0")
    return value


def probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number: give a value in [0, 1]") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not allowed: give a value in [0, 1]")
    return value


def _parse_int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def check_launch_args(args: argparse.Namespace, device: str) -> None:
    """Detectron2's launcher flags (--num-gpus, --num-machines, --machine-rank) for this device."""
    if args.num_gpus < 1:
        raise UserError(f"--num-gpus {args.num_gpus}: give 1 or more (on CPUs it counts processes)")
    if args.num_machines < 1:
        raise UserError(f"--num-machines {args.num_machines}: give 1 or more")
    if not 0 <= args.machine_rank < args.num_machines:
        raise UserError(f"--machine-rank {args.machine_rank}: must lie in [0, --num-machines - 1 = {args.num_machines - 1}]")
    if device.startswith("cuda"):
        import torch

        available = torch.cuda.device_count()
        if args.num_gpus > available:
            raise UserError(f"--num-gpus {args.num_gpus}: this machine has {available} CUDA device(s)")


# --------------------------------------------------------------------------------------------
# the config
# --------------------------------------------------------------------------------------------
INPUT_FORMATS = {"BGR": 3, "RGB": 3, "YUV-BT.601": 3, "L": 1}
LR_SCHEDULERS = ("WarmupMultiStepLR", "WarmupCosineLR", "WarmupStepWithFixedGammaLR")
TRAIN_SAMPLERS = (
    "TrainingSampler", "RepeatFactorTrainingSampler", "RandomSubsetTrainingSampler", "WeightedTrainingSampler",
    "WeightedCategoryTrainingSampler",
)


class _Problems:
    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self.lines: List[str] = []

    def get(self, key: str):
        node = self.cfg
        for part in key.split("."):
            node = node[part]
        return node

    def add(self, key: str, allowed: str) -> None:
        self.lines.append(f"{key}={_show(self.get(key))}: {allowed}")

    def integer(self, key: str, minimum: int) -> None:
        value = self.get(key)
        if not _is_int(value) or value < minimum:
            self.add(key, f"must be an integer >= {minimum}")

    def number(self, key: str, low: float, high: float = math.inf, *, low_open: bool = False, high_open: bool = False) -> None:
        value = self.get(key)
        ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok:
            self.add(key, f"must be a number in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}")

    def choice(self, key: str, choices: Sequence[str]) -> None:
        if self.get(key) not in choices:
            self.add(key, f"choose from {list(choices)}")


def validate_config(cfg, *, training: bool, world_size: int = 1) -> None:
    """Every value of ``cfg`` that would otherwise fail late or deep inside torch / Detectron2.

    Raises ConfigError listing all problems found (one per line).
    """
    p = _Problems(cfg)
    output_dir = str(cfg.OUTPUT_DIR)
    if not output_dir:
        p.add("OUTPUT_DIR", "must name a directory")
    elif output_dir.endswith((".txt", ".log")):
        p.add("OUTPUT_DIR", "ends like a file name, which Detectron2's logger takes for the log file itself; name a directory")

    # the model
    p.integer("MODEL.ROI_HEADS.NUM_CLASSES", 1)
    for key in ("MODEL.ROI_HEADS.SCORE_THRESH_TEST", "MODEL.ROI_HEADS.NMS_THRESH_TEST", "MODEL.RPN.NMS_THRESH",
                "MODEL.ROI_HEADS.POSITIVE_FRACTION", "MODEL.RPN.POSITIVE_FRACTION"):
        p.number(key, 0.0, 1.0)
    for key in ("MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", "MODEL.RPN.BATCH_SIZE_PER_IMAGE", "MODEL.RPN.PRE_NMS_TOPK_TRAIN",
                "MODEL.RPN.PRE_NMS_TOPK_TEST", "MODEL.RPN.POST_NMS_TOPK_TRAIN", "MODEL.RPN.POST_NMS_TOPK_TEST",
                "TEST.DETECTIONS_PER_IMAGE"):
        p.integer(key, 1)
    channels = INPUT_FORMATS.get(cfg.INPUT.FORMAT)
    if channels is None:
        p.choice("INPUT.FORMAT", list(INPUT_FORMATS))
    else:
        for key in ("MODEL.PIXEL_MEAN", "MODEL.PIXEL_STD"):
            if len(p.get(key)) != channels:
                p.add(key, f"needs {channels} value(s), one per channel of INPUT.FORMAT={cfg.INPUT.FORMAT!r}")
    if any(not (isinstance(s, Real) and s > 0) for s in cfg.MODEL.PIXEL_STD):
        p.add("MODEL.PIXEL_STD", "every value must be > 0")
    _check_device(p)
    _check_registered_names(p)
    _check_anchors(p)
    _check_fpn(p)
    _check_feature_names(p)
    for head in ("ROI_BOX_HEAD", "ROI_MASK_HEAD"):
        p.integer(f"MODEL.{head}.POOLER_RESOLUTION", 1)
        p.integer(f"MODEL.{head}.POOLER_SAMPLING_RATIO", 0)

    # inputs
    sizes = cfg.INPUT.MIN_SIZE_TRAIN
    sizes = sizes if isinstance(sizes, (list, tuple)) else [sizes]
    if not sizes or any(not _is_int(s) or s < 1 for s in sizes):
        p.add("INPUT.MIN_SIZE_TRAIN", "must be one or more integers >= 1")
    p.choice("INPUT.MIN_SIZE_TRAIN_SAMPLING", ["choice", "range", "range_by_clip", "choice_by_clip"])
    if cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "range" and (len(sizes) != 2 or sizes[0] >= sizes[1]):
        p.add("INPUT.MIN_SIZE_TRAIN", "needs 2 values low < high with INPUT.MIN_SIZE_TRAIN_SAMPLING='range'")
    p.integer("INPUT.MAX_SIZE_TRAIN", 1)
    p.integer("INPUT.MIN_SIZE_TEST", 0)
    p.integer("INPUT.MAX_SIZE_TEST", 1)
    p.choice("INPUT.MASK_FORMAT", ["polygon", "bitmask"])
    p.choice("INPUT.RANDOM_FLIP", ["none", "horizontal", "vertical"])
    if cfg.INPUT.CROP.ENABLED:
        p.choice("INPUT.CROP.TYPE", ["relative_range", "relative", "absolute", "absolute_range"])
    if "LSJ" in cfg.INPUT and cfg.INPUT.LSJ.ENABLED:
        p.integer("INPUT.LSJ.IMAGE_SIZE", 32)
        p.number("INPUT.LSJ.MIN_SCALE", 0.0, low_open=True)
        if _is_number(cfg.INPUT.LSJ.MIN_SCALE) and _is_number(cfg.INPUT.LSJ.MAX_SCALE) and cfg.INPUT.LSJ.MAX_SCALE < cfg.INPUT.LSJ.MIN_SCALE:
            p.add("INPUT.LSJ.MAX_SCALE", f"must be >= INPUT.LSJ.MIN_SCALE={cfg.INPUT.LSJ.MIN_SCALE}")
    p.integer("DATALOADER.NUM_WORKERS", 0)

    if training:
        _check_solver(p, world_size)
    if not p.lines:  # the backbone's checks assume the basic types above are right
        p.lines += lambda_backbone_problems(cfg)
    if p.lines:
        raise ConfigError("the config cannot work:\n  " + "\n  ".join(p.lines))


def _check_solver(p: _Problems, world_size: int) -> None:
    cfg = p.cfg
    p.integer("SOLVER.IMS_PER_BATCH", 1)
    if _is_int(cfg.SOLVER.IMS_PER_BATCH) and cfg.SOLVER.IMS_PER_BATCH % world_size:
        p.add("SOLVER.IMS_PER_BATCH", f"must be divisible by the number of processes ({world_size})")
    p.number("SOLVER.BASE_LR", 0.0, low_open=True)
    p.integer("SOLVER.MAX_ITER", 1)
    steps = list(cfg.SOLVER.STEPS)
    if any(not _is_int(s) or s < 0 for s in steps) or steps != sorted(set(steps)):
        p.add("SOLVER.STEPS", "must be increasing integers >= 0 (iterations at which the lr drops)")
    if _is_int(cfg.SOLVER.MAX_ITER) and cfg.SOLVER.MAX_ITER in steps:
        p.add("SOLVER.STEPS", f"must be < SOLVER.MAX_ITER={cfg.SOLVER.MAX_ITER} (Detectron2's scheduler fails on a step at the last iteration)")
    p.choice("SOLVER.LR_SCHEDULER_NAME", LR_SCHEDULERS)
    if cfg.SOLVER.LR_SCHEDULER_NAME == "WarmupCosineLR" and _is_number(cfg.SOLVER.BASE_LR):
        p.number("SOLVER.BASE_LR_END", 0.0, cfg.SOLVER.BASE_LR)
    p.number("SOLVER.GAMMA", 0.0, low_open=True)
    p.integer("SOLVER.WARMUP_ITERS", 0)
    p.number("SOLVER.WARMUP_FACTOR", 0.0, 1.0, low_open=True)
    p.choice("SOLVER.WARMUP_METHOD", ["linear", "constant"])
    p.number("SOLVER.MOMENTUM", 0.0, 1.0, high_open=True)
    p.number("SOLVER.WEIGHT_DECAY", 0.0)
    p.integer("SOLVER.CHECKPOINT_PERIOD", 1)
    p.integer("TEST.EVAL_PERIOD", 0)
    p.choice("DATALOADER.SAMPLER_TRAIN", TRAIN_SAMPLERS)
    if cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
        p.choice("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", ["value", "norm"])
        p.number("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 0.0, low_open=True)
    if cfg.SOLVER.AMP.ENABLED and not str(cfg.MODEL.DEVICE).startswith("cuda"):
        p.add("SOLVER.AMP.ENABLED", f"needs a CUDA device (Detectron2's AMPTrainer); MODEL.DEVICE is {cfg.MODEL.DEVICE!r}")
    if not cfg.DATASETS.TRAIN:
        p.add("DATASETS.TRAIN", "training needs at least one dataset")


def _check_device(p: _Problems) -> None:
    if not re.fullmatch(r"cpu|cuda(:\d+)?", str(p.cfg.MODEL.DEVICE)):
        p.add("MODEL.DEVICE", "must be 'cpu', 'cuda' or 'cuda:N' (Detectron2's models run on those)")


REGISTRIES = {
    "MODEL.META_ARCHITECTURE": "detectron2.modeling.META_ARCH_REGISTRY",
    "MODEL.BACKBONE.NAME": "detectron2.modeling.BACKBONE_REGISTRY",
    "MODEL.PROPOSAL_GENERATOR.NAME": "detectron2.modeling.PROPOSAL_GENERATOR_REGISTRY",
    "MODEL.RPN.HEAD_NAME": "detectron2.modeling.RPN_HEAD_REGISTRY",
    "MODEL.ROI_HEADS.NAME": "detectron2.modeling.ROI_HEADS_REGISTRY",
    "MODEL.ROI_BOX_HEAD.NAME": "detectron2.modeling.roi_heads.ROI_BOX_HEAD_REGISTRY",
    "MODEL.ROI_MASK_HEAD.NAME": "detectron2.modeling.roi_heads.ROI_MASK_HEAD_REGISTRY",
}


def _check_registered_names(p: _Problems) -> None:
    """Names looked up in Detectron2's registries (unknown ones fail inside the model build)."""
    import importlib

    for key, where in REGISTRIES.items():
        if key == "MODEL.ROI_MASK_HEAD.NAME" and not p.cfg.MODEL.MASK_ON:
            continue
        module, _, attr = where.rpartition(".")
        registry = getattr(importlib.import_module(module), attr)
        value = p.get(key)
        names = [name for name, _ in registry]
        if value not in names:
            close = difflib.get_close_matches(str(value), names, n=1)
            p.add(key, f"is not registered in Detectron2's {registry._name}" + (f"; did you mean {close[0]!r}?" if close else ""))


FPN_BUILDERS = ("build_lambda_resnet_fpn_backbone", "build_resnet_fpn_backbone")


def _check_feature_names(p: _Problems) -> None:
    """The FPN reads ResNet stages res2..res5 and makes levels p2..p6, which the heads read."""
    cfg = p.cfg
    if cfg.MODEL.BACKBONE.NAME not in FPN_BUILDERS:
        return
    stages = ["res2", "res3", "res4", "res5"]
    unknown = [f for f in cfg.MODEL.FPN.IN_FEATURES if f not in stages]
    if unknown or not cfg.MODEL.FPN.IN_FEATURES:
        p.add("MODEL.FPN.IN_FEATURES", f"must name ResNet stages from {stages}" + (f"; {unknown} are not" if unknown else ""))
        return
    levels = [int(f[-1]) for f in cfg.MODEL.FPN.IN_FEATURES]
    available = [f"p{level}" for level in levels] + [f"p{max(levels) + 1}"]  # + the max-pooled top level
    for key in ("MODEL.RPN.IN_FEATURES", "MODEL.ROI_HEADS.IN_FEATURES"):
        missing = [f for f in p.get(key) if f not in available]
        if missing:
            p.add(key, f"asks for {missing}; the FPN makes {available}")


def _check_anchors(p: _Problems) -> None:
    cfg = p.cfg
    levels = len(cfg.MODEL.RPN.IN_FEATURES)
    for key in ("MODEL.ANCHOR_GENERATOR.SIZES", "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"):
        value = p.get(key)
        if len(value) not in (1, levels):
            p.add(key, f"needs 1 entry or one per MODEL.RPN.IN_FEATURES level ({levels})")
        elif any(not _is_number(x) or x <= 0 for entry in value for x in (entry if isinstance(entry, (list, tuple)) else [entry])):
            p.add(key, "every value must be > 0")


def _check_fpn(p: _Problems) -> None:
    cfg = p.cfg
    if "FPN" not in str(cfg.MODEL.BACKBONE.NAME).upper():
        return
    p.integer("MODEL.FPN.OUT_CHANNELS", 1)
    if cfg.MODEL.FPN.NORM == "GN" and _is_int(cfg.MODEL.FPN.OUT_CHANNELS) and cfg.MODEL.FPN.OUT_CHANNELS % 32:
        p.add("MODEL.FPN.OUT_CHANNELS", "must be a multiple of 32 with MODEL.FPN.NORM='GN' (GroupNorm of 32 groups)")


def lambda_backbone_problems(cfg) -> List[str]:
    """What makes a LambdaResNet config unbuildable or unable to take the inputs it will get."""
    if "LAMBDA_RESNET" not in cfg.MODEL or "lambda_resnet" not in str(cfg.MODEL.BACKBONE.NAME):
        return []
    from .modeling.lambda_resnet import lambda_resnet_kwargs_from_cfg, lambda_block_input_strides

    try:
        kwargs = lambda_resnet_kwargs_from_cfg(cfg, len(cfg.MODEL.PIXEL_MEAN))
        strides = lambda_block_input_strides(kwargs)
    except ConfigError as exc:
        return [str(exc)]
    problems = []
    c = cfg.MODEL.LAMBDA_RESNET
    for stage, width in _lambda_stage_widths(kwargs, strides):
        if width % c.HEADS:
            problems.append(
                f"MODEL.LAMBDA_RESNET.HEADS={c.HEADS}: must divide the bottleneck width of every stage with "
                f"lambda blocks; {stage} has WIDTH_PER_GROUP x {width // c.WIDTH_PER_GROUP} = {width}"
            )
    if c.NORM == "GN":
        for stage, width in _lambda_stage_widths(kwargs, strides):
            for what, channels in (("queries HEADS x DIM_K", c.HEADS * c.DIM_K), ("values", width // c.HEADS * c.DIM_U)):
                if channels % 32:
                    problems.append(
                        f"MODEL.LAMBDA_RESNET.NORM='GN' (GroupNorm of 32 groups) needs a multiple of 32 channels; the "
                        f"lambda layers of {stage} normalize {channels} ({what})"
                    )
        if c.WIDTH_PER_GROUP % 32:
            problems.append("MODEL.LAMBDA_RESNET.WIDTH_PER_GROUP must be a multiple of 32 with NORM='GN'")
    if c.SCOPE == 0 and strides:
        problems += _global_scope_problems(cfg, min(strides.values()))
    return sorted(set(problems), key=problems.index)


def _lambda_stage_widths(kwargs: dict, strides: dict) -> Iterable:
    for stage in sorted({name.split(".")[0] for name in strides}):
        index = int(stage[-1]) - 2
        yield stage, kwargs["width_per_group"] * 2**index


def _global_scope_problems(cfg, smallest_stride: int) -> List[str]:
    """A global-scope layer has a table for maps up to GLOBAL_MAX_SIZE: check the largest map it will see."""
    limit = cfg.MODEL.LAMBDA_RESNET.GLOBAL_MAX_SIZE
    sources = []
    if "LSJ" in cfg.INPUT and cfg.INPUT.LSJ.ENABLED:
        sources.append(("INPUT.LSJ.IMAGE_SIZE", cfg.INPUT.LSJ.IMAGE_SIZE))
    else:
        sources.append(("INPUT.MAX_SIZE_TRAIN", cfg.INPUT.MAX_SIZE_TRAIN))
    if cfg.INPUT.MIN_SIZE_TEST == 0:
        return [
            "INPUT.MIN_SIZE_TEST=0 (test images are not resized) cannot be bounded for a global-scope lambda layer "
            "(MODEL.LAMBDA_RESNET.SCOPE=0): set INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST or use a local SCOPE"
        ]
    sources.append(("INPUT.MAX_SIZE_TEST", cfg.INPUT.MAX_SIZE_TEST))
    problems = []
    for key, side in sources:
        padded = -(-side // 32) * 32  # images are padded to the FPN's size divisibility
        largest_map = -(-padded // smallest_stride)
        if largest_map > limit:
            problems.append(
                f"MODEL.LAMBDA_RESNET.GLOBAL_MAX_SIZE={limit}: {key}={side} gives lambda-layer maps of up to "
                f"{largest_map}x{largest_map} (stride {smallest_stride}); raise GLOBAL_MAX_SIZE to >= {largest_map}, "
                "lower the input size, or use a local SCOPE"
            )
    return problems


def check_registered(name: str, what: str) -> None:
    """A dataset name that Detectron2 knows, or an error with the closest registered names."""
    from detectron2.data import DatasetCatalog

    registered = DatasetCatalog.list()
    if name not in registered:
        close = difflib.get_close_matches(name, registered, n=3)
        hint = f"; did you mean {close}?" if close else f"; registered: {sorted(registered)[:12]} ..."
        raise ConfigError(f"{what} names {name!r}, which is not a registered dataset{hint}")


def check_datasets(cfg, names: Iterable[str], key: str) -> None:
    """Registered, and with as many classes as the model predicts (when the metadata says)."""
    from detectron2.data import MetadataCatalog

    for name in names:
        check_registered(name, key)
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if classes is not None and len(classes) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise ConfigError(
                f"MODEL.ROI_HEADS.NUM_CLASSES={cfg.MODEL.ROI_HEADS.NUM_CLASSES}, but dataset {name!r} ({key}) has "
                f"{len(classes)} classes ({', '.join(classes[:6])}{' ...' if len(classes) > 6 else ''}): set "
                f"MODEL.ROI_HEADS.NUM_CLASSES {len(classes)}"
            )


def check_dataset_dicts(cfg, dataset_dicts: Sequence[dict], names: Sequence[str]) -> None:
    """What the loaded annotations need from the config: class ids in range, a usable mask format."""
    num_classes = cfg.MODEL.ROI_HEADS.NUM_CLASSES
    kinds = set()
    for record in dataset_dicts:
        for ann in record.get("annotations", ()):
            if not 0 <= ann["category_id"] < num_classes:
                raise ConfigError(
                    f"{record.get('file_name', 'an image')} of {list(names)} has an annotation of class "
                    f"{ann['category_id']}, outside MODEL.ROI_HEADS.NUM_CLASSES={num_classes}"
                )
            if cfg.MODEL.MASK_ON and "segmentation" in ann:
                kinds.add("RLE" if isinstance(ann["segmentation"], dict) else "polygon")
    if cfg.MODEL.MASK_ON and cfg.INPUT.MASK_FORMAT == "polygon" and "RLE" in kinds:
        raise ConfigError(
            f"INPUT.MASK_FORMAT='polygon', but {list(names)} has RLE masks, which only 'bitmask' can read: "
            "set INPUT.MASK_FORMAT bitmask"
        )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _show(value) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return repr(value)


__all__ = [
    "CONFIG_KEY",
    "ConfigError",
    "UserError",
    "check_dataset_dicts",
    "parse_args_with_overrides",
    "check_datasets",
    "check_launch_args",
    "check_registered",
    "lambda_backbone_problems",
    "non_negative_int",
    "positive_int",
    "probability",
    "validate_config",
]
