"""Everything that can be known to fail, checked before a process starts or a file is written.

``validate_config`` checks the values of Detectron2's own keys that would otherwise fail late or
deep inside torch or Detectron2 (each message names the key, the value and what is allowed; the
allowed values come from Detectron2 itself where it has them); ``MODEL.LAMBDA_RESNET`` is checked
by its reader, ``lambda_det.modeling.lambda_resnet_config_problems``. ``preflight`` adds, for a
train_net run: the datasets and their files, the model (built once, on the CPU), OUTPUT_DIR (not a
file, writable, not an earlier run unless resumed), the weights file and, where they must fit
(evaluation, resume), that they do.
"""
from __future__ import annotations

import contextlib
import difflib
import math
import re
import shutil
import sys
from dataclasses import dataclass
from numbers import Real
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import torch
from detectron2.data import samplers
from detectron2.data import transforms as T
from detectron2.modeling import build_model
from detectron2.solver import build_lr_scheduler
from fvcore.common.registry import Registry
from omegaconf import DictConfig, OmegaConf

from ..checkpoint import Checkpointer, check_resume, is_local, kept_final_name, saved_iteration, weights_problem
from ..data import check_coco_files, check_datasets, check_trainable, lsj_problems, model_num_classes
from ..errors import ConfigError, OutputError, UserError, WeightsError
from ..evaluation import INFERENCE_FOLDER, TTA_FOLDER, evaluation_folders
from ..lazy_config import leaves
from ..modeling import STAGE_NAMES, lambda_resnet_config_problems
from ..utils.file_safety import ensure_writable_dir, refuse_file, refuse_overwrite

INPUT_FORMATS = {"BGR": 3, "RGB": 3, "YUV-BT.601": 3, "L": 1}

# what marks an OUTPUT_DIR as holding a run (or anything Detectron2 would write or append to)
RUN_MARKERS = ("last_checkpoint", "metrics.json", "config.yaml", "log.txt", INFERENCE_FOLDER, TTA_FOLDER)


def train_samplers() -> List[str]:
    """The training samplers of the installed Detectron2 (DATALOADER.SAMPLER_TRAIN names a class)."""
    return sorted(name for name in dir(samplers) if name.endswith("TrainingSampler"))


class ConfigProblems:
    """The problems of a config's values, one line each (``key=value: what is allowed``); keys are
    dotted paths into a yacs CfgNode or a LazyConfig."""

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

    def device(self, key: str) -> None:
        if not re.fullmatch(r"cpu|cuda(:\d+)?", str(self.get(key))):
            self.add(key, "must be 'cpu', 'cuda' or 'cuda:N' (Detectron2's models run on those)")


def validate_config(cfg, *, training: bool, world_size: int = 1) -> None:
    """Every value of ``cfg`` that would otherwise fail late or deep inside torch / Detectron2.

    Raises ConfigError listing all problems found (one per line).
    """
    p = ConfigProblems(cfg)
    # the model
    p.integer(model_num_classes(cfg)[1], 1)
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
    p.device("MODEL.DEVICE")
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
    if not _accepted_by(lambda: T.ResizeShortestEdge([1, 2], 2, cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING)):
        p.add("INPUT.MIN_SIZE_TRAIN_SAMPLING", "is no sample_style of Detectron2's ResizeShortestEdge (see its docstring)")
    if cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING == "range" and (len(sizes) != 2 or sizes[0] >= sizes[1]):
        p.add("INPUT.MIN_SIZE_TRAIN", "needs 2 values low < high with INPUT.MIN_SIZE_TRAIN_SAMPLING='range'")
    p.integer("INPUT.MAX_SIZE_TRAIN", 1)
    p.integer("INPUT.MIN_SIZE_TEST", 0)
    p.integer("INPUT.MAX_SIZE_TEST", 1)
    p.choice("INPUT.MASK_FORMAT", ["polygon", "bitmask"])
    p.choice("INPUT.RANDOM_FLIP", ["none", "horizontal", "vertical"])
    if cfg.INPUT.CROP.ENABLED:
        if not _accepted_by(lambda: T.RandomCrop(cfg.INPUT.CROP.TYPE, (1, 1))):
            p.add("INPUT.CROP.TYPE", "is no crop_type of Detectron2's RandomCrop")
    p.lines += lsj_problems(cfg)
    p.integer("DATALOADER.NUM_WORKERS", 0)

    if training:
        _check_solver(p, world_size)
    if not p.lines:  # the backbone's checks assume the basic types above are right
        p.lines += lambda_resnet_config_problems(cfg)
    ConfigError.check(p.lines)


def _check_solver(p: ConfigProblems, world_size: int) -> None:
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
    _check_lr_scheduler(p)
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
    p.choice("DATALOADER.SAMPLER_TRAIN", train_samplers())
    if cfg.SOLVER.CLIP_GRADIENTS.ENABLED:
        p.choice("SOLVER.CLIP_GRADIENTS.CLIP_TYPE", ["value", "norm"])
        p.number("SOLVER.CLIP_GRADIENTS.CLIP_VALUE", 0.0, low_open=True)
    if cfg.SOLVER.AMP.ENABLED and not str(cfg.MODEL.DEVICE).startswith("cuda"):
        p.add("SOLVER.AMP.ENABLED", f"needs a CUDA device (Detectron2's AMPTrainer); MODEL.DEVICE is {cfg.MODEL.DEVICE!r}")
    if not cfg.DATASETS.TRAIN:
        p.add("DATASETS.TRAIN", "training needs at least one dataset")


def _check_lr_scheduler(p: ConfigProblems) -> None:
    """Detectron2's build_lr_scheduler decides which names it knows: ask it."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    try:
        build_lr_scheduler(p.cfg, optimizer)
    except ValueError as exc:
        if "Unknown LR scheduler" in str(exc):
            p.add("SOLVER.LR_SCHEDULER_NAME", "is not a scheduler of Detectron2's build_lr_scheduler")


def _accepted_by(build) -> bool:
    """Whether a Detectron2 constructor takes a value: its own assert decides what it knows."""
    try:
        build()
    except AssertionError:
        return False
    return True


def _head_feature_keys(cfg) -> Tuple[Optional[str], List[str]]:
    """The keys naming the backbone features that the heads of Detectron2's meta-architectures read:
    (the one of the head that builds anchors, RPN's or RetinaNet's, or None; all of them)."""
    architecture = cfg.MODEL.META_ARCHITECTURE
    if architecture == "RetinaNet":
        return "MODEL.RETINANET.IN_FEATURES", ["MODEL.RETINANET.IN_FEATURES"]
    rpn = (architecture in ("GeneralizedRCNN", "ProposalNetwork", "PanopticFPN")
           and cfg.MODEL.PROPOSAL_GENERATOR.NAME in ("RPN", "RRPN"))
    roi_heads = architecture in ("GeneralizedRCNN", "PanopticFPN")
    anchors = "MODEL.RPN.IN_FEATURES" if rpn else None
    return anchors, [key for key, read in ((anchors, rpn), ("MODEL.ROI_HEADS.IN_FEATURES", roi_heads)) if read]


def _check_feature_names(p: ConfigProblems) -> None:
    """An FPN over a ResNet reads stages res2..res5 and makes levels p2..p6 (p2..p7 for RetinaNet's
    backbone, whose top block makes two levels), which the heads read."""
    cfg = p.cfg
    name = str(cfg.MODEL.BACKBONE.NAME)
    if not name.endswith("resnet_fpn_backbone"):
        return
    stages = list(STAGE_NAMES)
    unknown = [f for f in cfg.MODEL.FPN.IN_FEATURES if f not in stages]
    if unknown or not cfg.MODEL.FPN.IN_FEATURES:
        p.add("MODEL.FPN.IN_FEATURES", f"must name ResNet stages from {stages}" + (f"; {unknown} are not" if unknown else ""))
        return
    levels = [int(f[-1]) for f in cfg.MODEL.FPN.IN_FEATURES]
    top_levels = 2 if name.endswith("retinanet_resnet_fpn_backbone") else 1  # LastLevelP6P7, else LastLevelMaxPool
    available = [f"p{level}" for level in levels] + [f"p{max(levels) + i}" for i in range(1, top_levels + 1)]
    for key in _head_feature_keys(cfg)[1]:
        missing = [f for f in p.get(key) if f not in available]
        if missing:
            p.add(key, f"asks for {missing}; the FPN makes {available}")


def _check_anchors(p: ConfigProblems) -> None:
    anchors = _head_feature_keys(p.cfg)[0]
    if anchors is None:
        return
    levels = len(p.get(anchors))
    for key in ("MODEL.ANCHOR_GENERATOR.SIZES", "MODEL.ANCHOR_GENERATOR.ASPECT_RATIOS"):
        value = p.get(key)
        if len(value) not in (1, levels):
            p.add(key, f"needs 1 entry or one per {anchors} level ({levels})")
        elif any(not _is_number(x) or x <= 0 for entry in value for x in (entry if isinstance(entry, (list, tuple)) else [entry])):
            p.add(key, "every value must be > 0")


def _check_fpn(p: ConfigProblems) -> None:
    cfg = p.cfg
    if "FPN" not in str(cfg.MODEL.BACKBONE.NAME).upper():
        return
    p.integer("MODEL.FPN.OUT_CHANNELS", 1)
    if cfg.MODEL.FPN.NORM == "GN" and _is_int(cfg.MODEL.FPN.OUT_CHANNELS) and cfg.MODEL.FPN.OUT_CHANNELS % 32:
        p.add("MODEL.FPN.OUT_CHANNELS", "must be a multiple of 32 with MODEL.FPN.NORM='GN' (GroupNorm of 32 groups)")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool)


def _show(value) -> str:
    if isinstance(value, tuple):
        value = list(value)
    return repr(value)


# what an evaluation writes into OUTPUT_DIR/inference/<dataset>/ (Detectron2's COCOEvaluator, the
# config, the AP-by-size report)
EVALUATION_FILES = ("coco_instances_results.json", "instances_predictions.pth", "box_proposals.pkl", "config.yaml",
                    "ap_by_size.json", "ap_by_size.md", "ap_by_size.png")


def earlier_evaluation(cfg) -> List[Path]:
    """The files an evaluation of DATASETS.TEST into OUTPUT_DIR would replace (with TEST.AUG, its
    test-time augmentation's too)."""
    return evaluation_files(cfg.OUTPUT_DIR, cfg.DATASETS.TEST, evaluation_folders(cfg))


def evaluation_files(output_dir: str, dataset_names: Sequence[str], kinds: Sequence[str] = (INFERENCE_FOLDER,)) -> List[Path]:
    """The files an evaluation of ``dataset_names`` into ``output_dir`` (its ``kinds`` of folder) would replace."""
    folders = [Path(output_dir) / kind / name for kind in kinds for name in dataset_names]
    return [folder / name for folder in folders for name in EVALUATION_FILES if (folder / name).exists()]


def evaluation_reports(output_dir: str, dataset_names: Sequence[str], kinds: Sequence[str] = (INFERENCE_FOLDER,)) -> List[Path]:
    """The ap_by_size.json an evaluation of each of ``dataset_names`` into ``output_dir`` writes last,
    whether or not it exists yet: all exist once that evaluation is complete."""
    return [Path(output_dir) / kind / name / "ap_by_size.json" for kind in kinds for name in dataset_names]


def finished_run(cfg) -> Optional[Tuple[Path, int]]:
    """(checkpoint, iterations trained) when --resume would stand on a run that has trained
    SOLVER.MAX_ITER iterations already, else None."""
    return finished_run_at(cfg.OUTPUT_DIR, cfg.SOLVER.MAX_ITER)


def finished_run_at(output_dir: str, max_iter: int) -> Optional[Tuple[Path, int]]:
    """``finished_run`` for a run folder and length named directly (a LazyConfig's train.*)."""
    last = check_resume(output_dir)
    iteration = saved_iteration(last) if last is not None else None
    if iteration is None or iteration + 1 < max_iter:
        return None
    return last, iteration + 1


def existing_run(output_dir: str) -> List[Path]:
    """The files and folders that show an earlier run (or its evaluation) in OUTPUT_DIR."""
    out = Path(output_dir)
    if not out.is_dir():
        return []
    found = [out / name for name in RUN_MARKERS if (out / name).exists()]
    return found + sorted(out.glob("model_*.pth")) + sorted(out.glob("events.out.tfevents*"))


def build_model_on_cpu(cfg):
    """The config's model, built on the CPU: a config that cannot build fails here, with a ConfigError."""
    cpu_cfg = cfg.clone()
    cpu_cfg.defrost()
    cpu_cfg.MODEL.DEVICE = "cpu"
    cpu_cfg.freeze()
    with explained_build_errors(cfg):
        return build_model(cpu_cfg)


@contextlib.contextmanager
def explained_build_errors(cfg):
    """A model build that fails inside Detectron2 becomes a ConfigError that names the config key."""
    try:
        yield
    except UserError:
        raise
    except (KeyError, ValueError, AssertionError, RuntimeError, TypeError, IndexError, ImportError) as exc:
        # ImportError: a LazyConfig's _target_ that cannot be located
        raise ConfigError(explain_build_error(cfg, exc)) from None


REGISTRY_MISS = re.compile(r"No object named '(?P<value>[^']*)' found in '(?P<registry>[^']*)' registry")
# detectron2.utils.registry.locate's, for a LazyConfig _target_ that cannot be imported
UNLOCATED_TARGET = re.compile(r"Error loading '(?P<value>[^']*)'")


def explain_build_error(cfg, exc: Exception) -> str:
    """The failure in words: an unknown registry name is named with its config key and the closest
    registered names (Detectron2's registries, as they are in this process)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    miss = REGISTRY_MISS.search(text)
    if miss:
        registry = _registries().get(miss["registry"])
        names = sorted(name for name, _ in registry) if registry is not None else []
        close = difflib.get_close_matches(miss["value"], names, n=1)
        return (f"{_where(cfg, miss['value'])}: is not registered in Detectron2's {miss['registry']}"
                + (f"; did you mean {close[0]!r}?" if close else ""))
    lines = text.strip().splitlines()
    unlocated = UNLOCATED_TARGET.search(text) if isinstance(exc, ImportError) else None
    if unlocated:  # the reason (no such module) follows on the next line
        return f"{_where(cfg, unlocated['value'])}: cannot be imported: {' '.join(lines[1:2])}"
    return f"the config's model cannot be built: {type(exc).__name__}: {lines[0] if lines else ''}"


def _where(cfg, value: str) -> str:
    """``key='value'`` for the first config key holding ``value``, or the value alone."""
    plain = OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg
    keys = [key for key, leaf in leaves(plain) if leaf == value]
    return f"{keys[0]}={value!r}" if keys else repr(value)


def _registries() -> dict:
    """Every Registry object of the loaded modules, by name."""
    found = {}
    for module in list(sys.modules.values()):
        for value in list(getattr(module, "__dict__", {}).values()):
            if isinstance(value, Registry):
                found.setdefault(value._name, value)
    return found


@dataclass(frozen=True)
class RunKeys:
    """How a config names what the checks of a run talk about: a yacs config (train_net.py) or a
    LazyConfig (lazyconfig_train_net.py, ``LAZY_KEYS`` in lambda_det.engine.lazy)."""

    output_dir: str = "OUTPUT_DIR"
    weights: str = "MODEL.WEIGHTS"
    test: str = "DATASETS.TEST"
    checkpoint_period: str = "SOLVER.CHECKPOINT_PERIOD"
    max_iter: str = "SOLVER.MAX_ITER"
    num_classes: str = "MODEL.ROI_HEADS.NUM_CLASSES"
    separator: str = " "  # between a key and its value on the command line

    def setting(self, key: str, value: str) -> str:
        return f"{key}{self.separator}{value}"


YACS_KEYS = RunKeys()


def preflight(cfg, *, eval_only: bool, resume: bool, overwrite: bool = False, world_size: int = 1) -> None:
    """Everything about a train_net run that can be known to fail, checked before any process
    starts or file is written: config values, datasets, OUTPUT_DIR, the model build and the weights."""
    validate_config(cfg, training=not eval_only, world_size=world_size)
    num_classes = (*model_num_classes(cfg), YACS_KEYS.separator)
    if not eval_only:
        check_datasets(cfg.DATASETS.TRAIN, "DATASETS.TRAIN", *num_classes)
    check_datasets(cfg.DATASETS.TEST, YACS_KEYS.test, *num_classes)
    strict_weights = check_output_and_weights(
        YACS_KEYS, cfg.OUTPUT_DIR, cfg.MODEL.WEIGHTS, has_test=bool(cfg.DATASETS.TEST), earlier=earlier_evaluation(cfg),
        eval_only=eval_only, resume=resume, overwrite=overwrite, max_iter=cfg.SOLVER.MAX_ITER,
    )
    # files present (the toy data is generated), and what the json lists
    if not eval_only:
        check_trainable(cfg.DATASETS.TRAIN, masks=cfg.MODEL.MASK_ON)
    for name in cfg.DATASETS.TEST:
        check_coco_files(name, masks=cfg.MODEL.MASK_ON)
    checkpoints = None if eval_only else cfg.SOLVER.MAX_ITER // cfg.SOLVER.CHECKPOINT_PERIOD + 1
    check_model_and_output(YACS_KEYS, build_model_on_cpu(cfg), cfg.OUTPUT_DIR, strict_weights, checkpoints=checkpoints, fit_cfg=cfg)


def check_output_and_weights(keys: RunKeys, output_dir: str, weights: str, *, has_test: bool, earlier: Sequence[Path],
                             eval_only: bool, resume: bool, overwrite: bool, max_iter: Optional[int] = None) -> Optional[str]:
    """The run folder and the weights of a run, before anything is written: an evaluation needs
    weights and replaces no ``earlier`` evaluation unless ``overwrite``; a new run may not go into a
    folder that holds one; --resume stands on an intact checkpoint. Returns the weights that must
    fit the model exactly (evaluation, resume), or None."""
    if not str(output_dir):
        raise ConfigError(f"{keys.output_dir}={str(output_dir)!r}: must name a directory")
    if str(output_dir).endswith((".txt", ".log")):
        raise ConfigError(f"{keys.output_dir}={str(output_dir)!r}: ends like a file name, which Detectron2's logger "
                          "takes for the log file itself; name a directory")
    refuse_file(Path(output_dir), keys.output_dir)
    strict_weights = None
    if eval_only:
        if not has_test:
            raise UserError(f"--eval-only needs {keys.test}: the datasets to evaluate on")
        resumed = check_resume(output_dir) if resume else None
        if resumed is None:
            if not weights:
                raise WeightsError(
                    f"--eval-only needs weights: pass {keys.setting(keys.weights, 'path/to/model.pth')}"
                    + (f" ({keys.output_dir}={output_dir} holds no checkpoint for --resume)" if resume else
                       f", or --resume to evaluate the last checkpoint in {keys.output_dir}={output_dir}")
                )
            _check_weights_file(weights, keys.weights)
        strict_weights = str(resumed) if resumed is not None else weights
        if not overwrite:
            refuse_overwrite(earlier, "--eval-only", "of an earlier evaluation")
    elif resume:
        resumed = check_resume(output_dir)
        trained = saved_iteration(resumed) if resumed is not None else None
        if (resumed is not None and resumed.name == "model_final.pth" and earlier and not overwrite
                and max_iter is not None and trained is not None and trained + 1 < max_iter):
            # the run had ended: going on to the new length evaluates it again at its new end
            refuse_overwrite(earlier, f"--resume with {keys.max_iter}={max_iter} (the run ended at {trained + 1}; its "
                             f"model_final.pth would stay as {kept_final_name(resumed, trained).name})",
                             "of the finished run's evaluation")
        if resumed is not None:
            strict_weights = str(resumed)
        elif weights:
            _check_weights_file(weights, keys.weights)
    else:
        run = existing_run(output_dir)
        if run:
            raise OutputError(
                f"{keys.output_dir} {output_dir} already holds a run ({', '.join(p.name for p in run[:4])}"
                f"{' ...' if len(run) > 4 else ''}); nothing was written. Continue it with --resume, or train into "
                f"another {keys.output_dir} (trailing `{keys.setting(keys.output_dir, 'path')}`), or move the old run away yourself"
            )
        if weights:
            _check_weights_file(weights, keys.weights)
    return strict_weights


def check_model_and_output(keys: RunKeys, model, output_dir: str, strict_weights: Optional[str], *,
                           checkpoints: Optional[int], fit_cfg=None) -> None:
    """The rest of a preflight, on the model built on the CPU: the weights that must fit do (before
    anything of the run, its config.yaml, is touched), the run folder can be written, and the
    ``checkpoints`` a training run will write fit on the disk (a warning)."""
    if strict_weights:
        Checkpointer(model, strict=True, cfg=fit_cfg).load(strict_weights)
    ensure_writable_dir(Path(output_dir), keys.output_dir)
    # after the folder is proven writable: a folder that cannot hold the run is an error, not a warning
    if checkpoints is not None:
        _warn_about_disk_space(keys, model, output_dir, checkpoints)


def _warn_about_disk_space(keys: RunKeys, model, output_dir: str, count: int) -> None:
    """Detectron2 keeps every periodic checkpoint: say so when they will not fit on the disk."""
    per_checkpoint = 2 * sum(p.numel() * p.element_size() for p in model.parameters())  # weights + momentum
    folder = Path(output_dir)
    while not folder.exists():
        folder = folder.parent
    free = shutil.disk_usage(folder).free
    if count * per_checkpoint > free:
        print(f"warning: the {count} checkpoints of this run need about {count * per_checkpoint / 2**30:.1f} GiB; "
              f"{folder} has {free / 2**30:.1f} GiB free ({keys.checkpoint_period} sets how many are written)",
              file=sys.stderr)


def _check_weights_file(path: str, key: str) -> None:
    if is_local(path):
        problem = weights_problem(path)
        if problem:
            raise WeightsError(f"{key} {path} {problem}")
