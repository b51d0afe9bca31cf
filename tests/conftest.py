"""Shared helpers: small configs and synthetic inputs that keep the suite fast on a 2-core CPU."""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TOY_CONFIG = REPO / "configs" / "Toy" / "mask_rcnn_LambdaR_26_FPN_toy.yaml"
# a tiny network and small images keep each iteration near a second on 2 cores
TINY = [
    "MODEL.LAMBDA_RESNET.STAGE_BLOCKS", "[1,1,1,1]", "MODEL.LAMBDA_RESNET.WIDTH_PER_GROUP", "32",
    "MODEL.LAMBDA_RESNET.DIM_K", "8", "MODEL.FPN.OUT_CHANNELS", "32",
    "MODEL.ROI_BOX_HEAD.FC_DIM", "64", "MODEL.ROI_MASK_HEAD.CONV_DIM", "32",
    "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "128",
    "INPUT.MAX_SIZE_TEST", "128", "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
    "TEST.AUG.ENABLED", "False",  # the toy recipe's test-time augmentation has its own test
]


def save_tiny_weights(path: Path, *overrides: str, iteration=None) -> Path:
    """A checkpoint of the tiny toy model (random weights), as Detectron2's checkpointer writes it,
    with the config that built it beside it (config.yaml, as training leaves it); ``iteration``: the
    one a training run records in its checkpoints (weights saved outside training record none)."""
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from lambda_det import load_config

    cfg = load_config(str(TOY_CONFIG), [*TINY, *overrides])
    path.mkdir(parents=True, exist_ok=True)
    extra = {} if iteration is None else {"iteration": iteration}
    DetectionCheckpointer(build_model(cfg), save_dir=str(path)).save("model_final", **extra)
    (path / "config.yaml").write_text(cfg.dump())
    return path / "model_final.pth"


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory):
    return save_tiny_weights(tmp_path_factory.mktemp("weights"))


def run_tool(script: str, *argv: str):
    """Run tools/<script> in this process as `python tools/<script> ARGV` would: its exit status.

    In-process saves the ~5 s of imports a subprocess costs; capture output with pytest's capsys.
    """
    old = sys.argv
    sys.argv = [str(REPO / "tools" / script), *map(str, argv)]
    try:
        runpy.run_path(str(REPO / "tools" / script), run_name="__main__")
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        sys.argv = old
    return 0


def small_cfg(**lambda_resnet):
    """Mask R-CNN config from the base yaml with a 1-block-per-stage LambdaResNet (C-C-L-L) unless overridden."""
    from lambda_det import load_config

    cfg = load_config(str(REPO / "configs" / "Base-LambdaResNet-FPN.yaml"))
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 3
    c = cfg.MODEL.LAMBDA_RESNET
    c.STAGE_BLOCKS = [1, 1, 1, 1]
    c.VARIANT = "custom"
    c.LAYOUT = ["C", "C", "L", "L"]
    c.WIDTH_PER_GROUP = 16
    c.DIM_K = 8
    c.SCOPE = 7
    cfg.MODEL.FPN.OUT_CHANNELS = 64
    for key, value in lambda_resnet.items():
        c[key.upper()] = value
    return cfg


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_logging():
    """Tools run in-process set up Detectron2's loggers (console on the test's captured streams, a log
    file in its tmp dir); take those handlers away again so later tests do not write into them."""
    import logging

    from detectron2.utils.logger import setup_logger

    before = {name: list(lg.handlers) for name, lg in logging.Logger.manager.loggerDict.items() if isinstance(lg, logging.Logger)}
    yield
    for name, lg in list(logging.Logger.manager.loggerDict.items()):
        if not isinstance(lg, logging.Logger):
            continue
        for handler in lg.handlers[:]:
            if handler not in before.get(name, []):
                lg.removeHandler(handler)
                handler.close()
    setup_logger.cache_clear()


def toy_eval_dataset(tmp_path_factory, images: int = 6) -> str:
    """A small COCO-format toy validation set registered under a fresh name."""
    import uuid

    from detectron2.data import MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    from lambda_det.data import TOY_CLASSES, generate_toy_dataset

    root = generate_toy_dataset(tmp_path_factory.mktemp("toy"), splits={"val": images}, seed=5)
    name = f"toy_small_{uuid.uuid4().hex[:6]}"
    register_coco_instances(name, {}, str(root / "annotations/instances_val.json"), str(root / "val"))
    MetadataCatalog.get(name).thing_classes = list(TOY_CLASSES)
    return name


@pytest.fixture(scope="module")
def small_val(tmp_path_factory):
    return toy_eval_dataset(tmp_path_factory)
