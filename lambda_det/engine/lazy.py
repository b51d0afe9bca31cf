"""Detectron2's LazyConfigs (configs/new_baselines/) trained and evaluated as tools/train_net.py
trains yacs configs, for tools/lazyconfig_train_net.py.

The loop is Detectron2's own (its tools/lazyconfig_train_net.py: ``instantiate`` the model, optimizer,
data and lr multiplier, Simple/AMPTrainer with Detectron2's hooks); what lambda_det adds is shared
with train_net: the checks before a run (``check_output_and_weights``, ``check_model_and_output``,
with the LazyConfig's keys: ``LAZY_KEYS``), the run-folder lock and exits of ``launch_in_run_folder``,
checkpoints written whole that must fit when resumed or evaluated (``Checkpointer``), a config.yaml
that is never replaced unasked (``setup_process``), and an AP-by-size report with its provenance
after every evaluation.
"""
from __future__ import annotations

import argparse
import copy
import logging
import numbers
import re
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List, Optional, Tuple

import detectron2.data.transforms as T
import torch
from detectron2.config import instantiate
from detectron2.engine import AMPTrainer, SimpleTrainer, default_argument_parser, default_writers, hooks
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import COCOEvaluator, inference_on_dataset, print_csv_format
from detectron2.utils import comm
from omegaconf import DictConfig, OmegaConf

from ..checkpoint import Checkpointer, keep_final_weights
from ..data import check_coco_files, check_datasets, check_trainable, prepare_dataset
from ..errors import ConfigError, TrainingDiverged, UserError
from ..evaluation import INFERENCE_FOLDER, WholeFilesCOCOEvaluator, describe_model, has_detectron2_ops, provenance_record, write_ap_by_size
from ..lazy_config import accepts_argument, callable_target, config_text, load_lazy_config
from ..utils.file_safety import normalized
from ..modeling import build_lambda_resnet, lambda_resnet_config, largest_map_problems
from ..modeling.layouts import stage_layouts
from .defaults import add_dataset_argument, check_launch_args, register_datasets, setup_process, share_cpu_cores
from .preflight import ConfigProblems, RunKeys, check_model_and_output, check_output_and_weights, evaluation_files, explained_build_errors
from .trainer import CompletedRunEvalHook, dataset_size, iterations_trained

logger = logging.getLogger("lambda_det")

LAZY_KEYS = RunKeys(output_dir="train.output_dir", weights="train.init_checkpoint", test="dataloader.test.dataset.names",
                    checkpoint_period="train.checkpointer.period", max_iter="train.max_iter",
                    num_classes="model.roi_heads.num_classes", separator="=")

# what tools/lazyconfig_train_net.py reads (Detectron2's configs/common/train.py and the data / model nodes)
REQUIRED_KEYS = ("model", "optimizer", "lr_multiplier", "dataloader.train", "dataloader.test", "dataloader.evaluator",
                 "train.output_dir", "train.init_checkpoint", "train.max_iter", "train.device", "train.amp.enabled",
                 "train.ddp", "train.checkpointer.period", "train.eval_period", "train.log_period")

EPILOG = """
Examples:
  Toy data, CPU:   tools/lazyconfig_train_net.py --config-file configs/Toy/mask_rcnn_LambdaR_26_FPN_toy_LSJ.py
  COCO, 8 GPUs:    tools/lazyconfig_train_net.py --num-gpus 8 \\
                     --config-file configs/new_baselines/mask_rcnn_LambdaR_101_FPN_100ep_LSJ.py train.output_dir=output/lambda_r101_lsj
  Resume:          the same command with --resume
  Evaluate:        ... --eval-only train.init_checkpoint=output/.../model_final.pth (or --resume: the run's last checkpoint)

Overrides are key=value (train.max_iter=1000 model.backbone.bottom_up.depth=152); a key must exist in
the config or be an argument its L(...) callable takes. Training never writes over an earlier run:
a train.output_dir that holds one is continued with --resume, or refused. --eval-only writes into
train.output_dir/inference/<dataset>/ and refuses to replace an earlier evaluation there unless
--overwrite is given.
"""


def lazy_argument_parser() -> argparse.ArgumentParser:
    """Detectron2's ``default_argument_parser`` (as its lazyconfig_train_net.py) with --dataset and --overwrite."""
    parser = default_argument_parser(epilog=EPILOG)
    add_dataset_argument(parser, "dataloader.train.dataset.names / dataloader.test.dataset.names", "model.roi_heads.num_classes")
    parser.add_argument(
        "--overwrite", action="store_true",
        help="replace an earlier evaluation in train.output_dir/inference/<dataset>/: with --eval-only, or with "
        "--resume of a finished run (which otherwise changes nothing but a final evaluation it never finished)",
    )
    return parser


# --------------------------------------------------------------------------------------------
# the config
# --------------------------------------------------------------------------------------------
def load_lazy_run_config(args) -> DictConfig:
    """The LazyConfig of a run: the file, the key=value overrides, the keys a run reads checked, the
    CPU when CUDA is absent, and the evaluator writing into train.output_dir/inference/<dataset>."""
    cfg = load_lazy_config(args.config_file, args.opts)
    missing = [key for key in REQUIRED_KEYS if OmegaConf.select(cfg, key, default=None) is None]
    if missing:
        raise ConfigError(f"config file {args.config_file} lacks {', '.join(missing)}, which a run reads "
                          "(Detectron2's configs/common/train.py defines train.*)")
    for key in ("output_dir", "init_checkpoint"):  # paths the checks must see as the run will use them
        if cfg.train.get(key):
            cfg.train[key] = normalized(cfg.train[key])
    cpu_if_no_cuda_lazy(cfg)
    evaluator = cfg.dataloader.evaluator
    if evaluator.get("_target_") is COCOEvaluator:
        # Detectron2's baselines write no evaluation files and use the fast evaluator of its compiled _C
        if evaluator.get("output_dir") is None:
            evaluator.output_dir = str(Path(cfg.train.output_dir) / INFERENCE_FOLDER / evaluation_dataset(cfg))
        if "use_fast_impl" not in evaluator:
            evaluator.use_fast_impl = has_detectron2_ops()
    return cfg


def cpu_if_no_cuda_lazy(cfg: DictConfig) -> None:
    """train.device cuda on a machine without CUDA runs on the CPU, with a warning."""
    if str(OmegaConf.select(cfg, "train.device", default="cpu")).startswith("cuda") and not torch.cuda.is_available():
        logger.warning("CUDA is not available: running on the CPU (train.device=cpu)")
        cfg.train.device = "cpu"


def dataset_names(value) -> List[str]:
    """A LazyConfig's dataset.names (one name or a list of them; None: none) as a list."""
    if value is None:
        return []
    return [value] if isinstance(value, str) else [str(v) for v in value]


def evaluation_dataset(cfg) -> str:
    """The one dataset dataloader.test reads (Detectron2's evaluator takes one)."""
    names = dataset_names(cfg.dataloader.test.dataset.names)
    if len(names) != 1:
        raise ConfigError(f"dataloader.test.dataset.names={names}: name one dataset (its evaluator evaluates one)")
    return names[0]


def has_mask_head(cfg) -> bool:
    """Whether the LazyConfig's model predicts masks: StandardROIHeads does when mask_in_features is
    set (a mask_head alone is not used), Res5ROIHeads when mask_head is."""
    heads = OmegaConf.select(cfg, "model.roi_heads", default=None)
    if heads is None or OmegaConf.select(heads, "mask_head", default=None) is None:
        return False
    return "mask_in_features" not in heads or OmegaConf.select(heads, "mask_in_features", default=None) is not None


def box_predictor_keys(cfg, needed_for: str) -> List[str]:
    """The nodes that turn a LazyConfig detector's scores into detections, which hold its test-time
    thresholds (test_score_thresh, test_nms_thresh; MODEL.ROI_HEADS.*_TEST of a yacs config): the box
    predictor, each stage's for a cascade, or the model itself for RetinaNet."""
    heads = OmegaConf.select(cfg, "model.roi_heads", default=None)
    if isinstance(heads, DictConfig) and isinstance(heads.get("box_predictor"), DictConfig):
        return ["model.roi_heads.box_predictor"]
    if isinstance(heads, DictConfig) and heads.get("box_predictors") is not None:
        return [f"model.roi_heads.box_predictors.{i}" for i in range(len(heads.box_predictors))]
    target = callable_target(cfg.model)
    if "test_score_thresh" in cfg.model or (callable(target) and accepts_argument(target, "test_score_thresh")):
        return ["model"]
    raise ConfigError("the config's model has no model.roi_heads.box_predictor (nor box_predictors, nor "
                      f"model.test_score_thresh), where {needed_for}")


TEST_MAPPER = "dataloader.test.mapper"


def inference_augmentations(cfg) -> List[T.Augmentation]:
    """dataloader.test's mapper's augmentations (the test resize), built; ConfigError when they cannot be."""
    try:
        return list(instantiate(OmegaConf.select(cfg, f"{TEST_MAPPER}.augmentations", default=None)) or [])
    except Exception as exc:  # Detectron2's instantiate names the failing node and callable in its message
        raise ConfigError(f"{TEST_MAPPER}.augmentations cannot be built: {type(exc).__name__}: "
                          f"{' '.join(str(exc).split())[:400]}") from None


def inference_resize_problems(cfg, augmentations: List[T.Augmentation]) -> List[str]:
    """The test resizes (ResizeShortestEdge) whose sizes cannot work, one line each, by their keys."""
    lines = []
    for i, aug in enumerate(augmentations):
        if isinstance(aug, T.ResizeShortestEdge):
            sizes = (*aug.short_edge_length, aug.max_size)
            if not all(isinstance(n, numbers.Integral) and not isinstance(n, bool) and n >= 0 for n in sizes):
                given = OmegaConf.select(cfg, f"{TEST_MAPPER}.augmentations.{i}.short_edge_length", default=aug.short_edge_length)
                lines.append(f"{TEST_MAPPER}.augmentations.{i}: short_edge_length={given}, max_size={aug.max_size}: "
                             "must be integers >= 0 (0: no resize)")
    return lines


def lazy_config_problems(cfg, *, training: bool, world_size: int = 1) -> List[str]:
    """The values of the keys a run reads (train.*, the batch, the learning rate) that would fail late
    or deep inside torch / Detectron2, one line each, as ``validate_config`` finds them in a yacs config;
    the model's own arguments are checked when it is built (``explained_build_errors``)."""
    p = ConfigProblems(cfg)
    p.device("train.device")
    if training:
        p.integer("train.max_iter", 1)
        p.integer("train.checkpointer.period", 1)
        for key in ("train.eval_period", "train.log_period"):
            if OmegaConf.select(cfg, key, default=None) is not None:
                p.integer(key, 0 if key == "train.eval_period" else 1)
        batch = OmegaConf.select(cfg, "dataloader.train.total_batch_size", default=None)
        if batch is not None:
            p.integer("dataloader.train.total_batch_size", 1)
            if isinstance(batch, int) and batch >= 1 and batch % world_size:
                p.add("dataloader.train.total_batch_size", f"must be divisible by the number of processes ({world_size})")
        if OmegaConf.select(cfg, "optimizer.lr", default=None) is not None:
            p.number("optimizer.lr", 0.0, low_open=True)
    if OmegaConf.select(cfg, "train.amp.enabled", default=False) and not str(cfg.train.device).startswith("cuda"):
        p.add("train.amp.enabled", f"needs a CUDA device (Detectron2's AMPTrainer); train.device is "
                                   f"{cfg.train.device!r}: add train.amp.enabled=False")
    return p.lines


def lambda_resnet_node(cfg) -> Optional[str]:
    """The key of the model's ``L(build_lambda_resnet)(...)`` node (model.backbone.bottom_up in ours), or None."""
    by_name = f"{build_lambda_resnet.__module__}.{build_lambda_resnet.__qualname__}"  # a saved config.yaml's _target_

    def walk(node, key: str) -> Optional[str]:
        if isinstance(node, dict):
            if node.get("_target_") in (build_lambda_resnet, by_name):
                return key
            for child, value in node.items():
                found = walk(value, f"{key}.{child}")
                if found:
                    return found
        return None

    model = OmegaConf.select(cfg, "model", default=None)
    # unresolved: an interpolation that cannot resolve (${..backbone.out_channels} once backbone is null) is the
    # build's error to name, and '???' left for the command line is no node
    return walk(OmegaConf.to_container(model, resolve=False), "model") if isinstance(model, DictConfig) else None


def lambda_resnet_options(cfg, node: str) -> dict:
    """The MODEL.LAMBDA_RESNET values (lower case) the ``build_lambda_resnet`` node at ``node`` is given."""
    return {k: v for k, v in OmegaConf.select(cfg, node).items() if k not in ("_target_", "in_channels", "num_classes")}


def largest_image_sides(cfg) -> List[Tuple[str, Optional[int]]]:
    """The largest image side each data loader's augmentations let through (a FixedSizeCrop's crop,
    which it pads to, Resize's shape, ResizeScale's largest scale or ResizeShortestEdge's max_size,
    whichever comes last), with their key in words; None where its resize bounds none (no max_size,
    or a short side of 0: no resize). Loaders whose size no known augmentation decides are left out,
    as are those whose augmentations cannot be built (the build of the loader names them)."""
    sides = []
    for split in ("train", "test"):
        key = f"dataloader.{split}.mapper.augmentations"
        try:
            augmentations = instantiate(OmegaConf.select(cfg, key, default=None))
        except Exception:
            continue
        if augmentations is None:
            continue
        side = decided = None
        for aug in augmentations:
            if isinstance(aug, T.FixedSizeCrop):
                side = max(aug.crop_size)
            elif isinstance(aug, T.Resize):
                side = max(aug.shape)
            elif isinstance(aug, T.ResizeScale):
                side = int(max(aug.target_height, aug.target_width) * aug.max_scale)
            elif isinstance(aug, T.ResizeShortestEdge):  # a short side of 0 leaves the image as it is
                side = aug.max_size if aug.max_size < sys.maxsize and 0 not in aug.short_edge_length else None
            else:
                continue
            decided = True
        if decided:
            sides.append((key if side is None else f"{key} (images of up to {side} pixels a side)", side))
    return sides


def lazy_evaluator(cfg):
    """dataloader.evaluator, built; Detectron2's COCOEvaluator as WholeFilesCOCOEvaluator (the same
    arguments, its files whole or absent), while the config and its config.yaml keep Detectron2's."""
    node = cfg.dataloader.evaluator
    if node.get("_target_") is COCOEvaluator:
        node = copy.deepcopy(node)
        node._target_ = WholeFilesCOCOEvaluator
    return instantiate(node)


def lazy_global_scope_problems(cfg) -> List[str]:
    """A global-scope LambdaResNet's tables against the largest maps the data loaders give it, named by
    the LazyConfig's keys (the rule of ``largest_map_problems``, as train_net applies it to INPUT.*)."""
    node = lambda_resnet_node(cfg)
    if node is None:
        return []
    c = lambda_resnet_config(**lambda_resnet_options(cfg, node)).MODEL.LAMBDA_RESNET
    return [named_as_lazy(line, node) for line in largest_map_problems(c, stage_layouts(c), largest_image_sides(cfg))]


@contextmanager
def lambda_resnet_keys_named_as_lazy(cfg):
    """build_lambda_resnet reads its arguments as MODEL.LAMBDA_RESNET keys, and its errors name them so:
    here they are named as the LazyConfig's keys (MODEL.LAMBDA_RESNET.DEPTH -> model.backbone.bottom_up.depth)."""
    try:
        yield
    except UserError as exc:
        node = lambda_resnet_node(cfg)
        if node is None:
            raise
        raise type(exc)(named_as_lazy(str(exc), node)) from None


def named_as_lazy(text: str, node: str) -> str:
    """A message of the backbone's reader with its MODEL.LAMBDA_RESNET keys named as the arguments of
    the LazyConfig's ``node`` (MODEL.LAMBDA_RESNET.DEPTH -> model.backbone.bottom_up.depth)."""
    text = re.sub(r"MODEL\.LAMBDA_RESNET\.([A-Z0-9_]+)", lambda m: f"{node}.{m[1].lower()}", text)
    text = text.replace("MODEL.BACKBONE.FREEZE_AT", f"{node}.freeze_at")
    # a key named alone (with NORM='GN', leave res2 out of SE_STAGES): the argument's name; the messages
    # quote values (norm='GN HEADS'), which are kept as they are
    keys = set(lambda_resnet_config().MODEL.LAMBDA_RESNET)
    # odd places: the quoted values (a quote inside a word, the stem's, opens none)
    parts = re.split(r"((?<!\w)'[^']*'(?!\w)|(?<!\w)\"[^\"]*\"(?!\w))", text)
    return "".join(part if i % 2 else re.sub(r"(?<![.\w])[A-Z][A-Z0-9_]*(?!\w|\.\w)",
                                             lambda m: m[0].lower() if m[0] in keys else m[0], part)
                   for i, part in enumerate(parts))


def build_lazy_model(cfg) -> torch.nn.Module:
    """``instantiate(cfg.model)`` on the CPU, its failures named by the LazyConfig's keys (ConfigError)."""
    with lambda_resnet_keys_named_as_lazy(cfg), explained_build_errors(cfg):
        model = instantiate(cfg.model)  # instantiate moves nothing
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model builds {type(model).__name__}, not a torch module: a LazyConfig's model is an "
                          "L(SomeModel)(...) node whose _target_ is a model class or a function returning a model")
    return model


def lazy_preflight(cfg, args) -> None:
    """Everything about a lazyconfig_train_net run that can be known to fail, checked before any
    process starts or file is written (the checks of train_net's ``preflight`` that apply)."""
    train, world_size = cfg.train, args.num_gpus * args.num_machines
    check_launch_args(args, str(train.device))  # the process counts first: the batch is split over them
    ConfigError.check(lazy_config_problems(cfg, training=not args.eval_only, world_size=world_size))
    test = evaluation_dataset(cfg)
    datasets = ([] if args.eval_only else dataset_names(cfg.dataloader.train.dataset.names)) + [test]
    num_classes = (OmegaConf.select(cfg, LAZY_KEYS.num_classes, default=None), LAZY_KEYS.num_classes, LAZY_KEYS.separator)
    if not args.eval_only:
        check_datasets(datasets[:-1], "dataloader.train.dataset.names", *num_classes)
    check_datasets([test], LAZY_KEYS.test, *num_classes)
    output_dir = str(train.output_dir)
    strict_weights = check_output_and_weights(
        LAZY_KEYS, output_dir, train.init_checkpoint, has_test=True, earlier=evaluation_files(output_dir, [test]),
        eval_only=args.eval_only, resume=args.resume, overwrite=args.overwrite, max_iter=train.max_iter,
    )
    masks = has_mask_head(cfg)
    if not args.eval_only:
        check_trainable(datasets[:-1], masks=masks)
    check_coco_files(test, masks=masks)
    model = build_lazy_model(cfg)  # names the backbone's arguments that cannot work, before their sizes are checked
    ConfigError.check(lazy_global_scope_problems(cfg))
    checkpoints = None if args.eval_only else train.max_iter // train.checkpointer.period + 1
    check_model_and_output(LAZY_KEYS, model, output_dir, strict_weights, checkpoints=checkpoints, fit_cfg=cfg)


def setup_lazy_run(args) -> DictConfig:
    """Per process: the datasets of --dataset, the config, the CPU threads it may use, logging, the
    config dump (never replacing an earlier run's), the seed (train.seed, as Detectron2's default_setup)."""
    register_datasets(args)
    cfg = load_lazy_run_config(args)
    share_cpu_cores(cfg, args.num_gpus, device=cfg.train.device)
    output_dir = Path(cfg.train.output_dir)
    if args.eval_only:
        targets = [output_dir / INFERENCE_FOLDER / evaluation_dataset(cfg) / "config.yaml"]
    else:
        targets = [output_dir / "config.yaml"]
    setup_process(output_dir, args, config_text=config_text(cfg), config_targets=targets, seed=cfg.train.get("seed", -1),
                  cudnn_benchmark=cfg.train.get("cudnn_benchmark", False), eval_only=args.eval_only)
    return cfg


# --------------------------------------------------------------------------------------------
# evaluation with provenance
# --------------------------------------------------------------------------------------------
def describe_lazy_model(cfg) -> str:
    """The model in words, as ``describe_model`` writes it for yacs configs: a LambdaResNet's
    layout from its ``build_lambda_resnet`` arguments (the callable itself, or its name in a saved
    config.yaml), another backbone by its callable."""
    node = lambda_resnet_node(cfg)
    if node is not None:
        yacs = lambda_resnet_config(**lambda_resnet_options(cfg, node))
        yacs.MODEL.BACKBONE.NAME = "build_lambda_resnet_fpn_backbone"
        return describe_model(yacs)
    bottom_up = OmegaConf.select(cfg, "model.backbone.bottom_up", default=None)
    target = bottom_up.get("_target_") if isinstance(bottom_up, DictConfig) else None
    name = getattr(target, "__qualname__", str(target))
    depth = OmegaConf.select(cfg, "model.backbone.bottom_up.stages.depth", default=None)
    return f"{name}" + (f" (depth {depth})" if depth else "")


def inference_input_size(cfg) -> dict:
    """The test resize of dataloader.test (Detectron2's ResizeShortestEdge), for the provenance."""
    for aug in OmegaConf.select(cfg, "dataloader.test.mapper.augmentations", default=None) or []:
        if isinstance(aug, DictConfig) and "short_edge_length" in aug:
            return {"min": aug.short_edge_length, "max": aug.get("max_size")}
    return {"min": None, "max": None}


def lazy_test(cfg, model, *, config_file: str, weights: Optional[str] = None, iteration: Optional[int] = None):
    """Detectron2's do_test (inference_on_dataset with dataloader.test and dataloader.evaluator), then
    ap_by_size.{json,md,png} with what produced them in train.output_dir/inference/<dataset>/."""
    name = evaluation_dataset(cfg)
    prepare_dataset(name)
    results = inference_on_dataset(model, instantiate(cfg.dataloader.test), lazy_evaluator(cfg))
    if not comm.is_main_process() or not results:
        return results
    print_csv_format(results)
    trained = iterations_trained(cfg.train.max_iter)
    if trained is None and iteration is not None:  # --eval-only of a checkpoint saved at ``iteration``
        trained = iteration + 1
    provenance = provenance_record(
        name, output_dir=cfg.train.output_dir, max_iter=cfg.train.max_iter, initialized_from=cfg.train.init_checkpoint,
        model=describe_lazy_model(cfg), input_size_test=inference_input_size(cfg), config_text=config_text(cfg), weights=weights,
        iterations_trained=trained, config_file=config_file, num_images=dataset_size(name),
    )
    out = Path(cfg.train.output_dir) / INFERENCE_FOLDER / name
    paths = write_ap_by_size(results, out, Path(cfg.train.output_dir).name, provenance=provenance,
                             extra={"dataset": name, "iterations_trained": trained})
    logger.info("AP by object size for %s: %s", name, ", ".join(str(p) for p in paths.values()))
    return results


# --------------------------------------------------------------------------------------------
# training and evaluation
# --------------------------------------------------------------------------------------------
def _ddp(cfg, model):
    """Detectron2's create_ddp_model; on CPUs DDP takes no device ids."""
    on_gpu = str(cfg.train.device).startswith("cuda")
    return create_ddp_model(model, device_ids=[comm.get_local_rank()] if on_gpu else None, **cfg.train.ddp)


def lazy_evaluate(cfg, args):
    """--eval-only: the run's last checkpoint (--resume) or train.init_checkpoint, which must fit exactly."""
    model = instantiate(cfg.model).to(cfg.train.device)
    checkpointer = Checkpointer(model, save_dir=cfg.train.output_dir, strict=True, cfg=cfg)
    weights = checkpointer.get_checkpoint_file() if args.resume and checkpointer.has_checkpoint() else cfg.train.init_checkpoint
    extra = checkpointer.load(weights)
    return lazy_test(cfg, _ddp(cfg, model), config_file=args.config_file, weights=weights, iteration=extra.get("iteration"))


def lazy_train(cfg, args):
    """Detectron2's do_train (tools/lazyconfig_train_net.py), with lambda_det's checkpointer (whole
    files; a resumed run's checkpoint must fit) and an evaluation that writes AP by size."""
    train = cfg.train
    model = instantiate(cfg.model).to(train.device)
    logger.info("Model:\n%s", model)
    cfg.optimizer.params.model = model  # Detectron2's way to hand the optimizer its parameters ...
    optimizer = instantiate(cfg.optimizer)
    cfg.optimizer.params.pop("model")  # ... taken back: the config stays what config.yaml and its hash record
    for name in dataset_names(cfg.dataloader.train.dataset.names):
        prepare_dataset(name)
    loader = instantiate(cfg.dataloader.train)
    model = _ddp(cfg, model)
    trainer = (AMPTrainer if train.amp.enabled else SimpleTrainer)(model, loader, optimizer)
    checkpointer = Checkpointer(model, train.output_dir, trainer=trainer)
    main_process = comm.is_main_process()
    trainer.register_hooks([
        hooks.IterationTimer(),
        hooks.LRScheduler(scheduler=instantiate(cfg.lr_multiplier)),
        hooks.PeriodicCheckpointer(checkpointer, **train.checkpointer) if main_process else None,
        CompletedRunEvalHook(train.eval_period, lambda: lazy_test(cfg, model, config_file=args.config_file)),
        hooks.PeriodicWriter(default_writers(train.output_dir, train.max_iter), period=train.log_period) if main_process else None,
    ])
    resumed = args.resume and checkpointer.has_checkpoint()
    if resumed and main_process:
        kept = keep_final_weights(train.output_dir, train.max_iter)
        if kept is not None:
            logger.info("the finished run trains on to train.max_iter=%d: its model_final.pth stays as %s", train.max_iter, kept)
    checkpointer.strict = resumed  # the same run goes on; new weights (fine-tuning) may differ, with warnings
    checkpointer.resume_or_load(train.init_checkpoint, resume=args.resume)
    checkpointer.strict = False
    # the checkpoint holds the iteration that finished: start at the next
    start_iter = trainer.iter + 1 if resumed else 0
    try:
        trainer.train(start_iter, train.max_iter)
    except FloatingPointError:  # Detectron2's check of a non-finite loss
        raise TrainingDiverged(f"training diverged at iteration {trainer.iter}: the loss is not finite. Look at "
                               f"optimizer.lr={cfg.optimizer.lr} and lr_multiplier (its warm-up)") from None


__all__ = [
    "LAZY_KEYS", "TEST_MAPPER", "box_predictor_keys", "build_lazy_model", "describe_lazy_model", "evaluation_dataset",
    "inference_augmentations", "inference_input_size", "inference_resize_problems", "lazy_argument_parser",
    "lazy_evaluate", "lazy_preflight", "lazy_test", "lazy_train", "load_lazy_run_config", "setup_lazy_run",
]
