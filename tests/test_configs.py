"""Every YAML under configs/ builds, and builds the model its file name says."""
import re
from pathlib import Path

import pytest
import torch
from detectron2.data import transforms as T
from detectron2.modeling import build_model

import lambda_det
from lambda_det.data import build_train_mapper
from lambda_det.layers import LambdaLayer
from lambda_det.modeling.layouts import PAPER_C4_LAMBDA_BLOCKS, STAGE_BLOCKS

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
TIMM = re.compile(r"mask_rcnn_timm_(?P<model>lambda_resnet(26t|50ts))_FPN_(?P<schedule>1x|3x)\.yaml")
# Base-TimmLambda-FPN.yaml leaves the architecture to its leaves (TIMM): not a model by itself
ALL_CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if p.name != "Base-TimmLambda-FPN.yaml" and not TIMM.fullmatch(p.name))
TIMM_CONFIGS = sorted(p for p in CONFIG_DIR.rglob("*.yaml") if TIMM.fullmatch(p.name))
LEAF = re.compile(r"mask_rcnn_(?P<family>LambdaR|R)_(?P<depth>\d+)(?P<se>_SE)?_FPN_(?P<schedule>paper|100ep)\.yaml")


def load(path: Path):
    cfg = lambda_det.load_config(str(path))
    cfg.MODEL.DEVICE = "cpu"
    return cfg


def test_configs_exist():
    names = {p.name for p in ALL_CONFIGS}
    assert "Base-LambdaResNet-FPN.yaml" in names
    assert sum(bool(LEAF.fullmatch(n)) for n in names) == 12  # Table 6 rows x (paper, 100ep)


def test_base_is_self_contained():
    lines = (CONFIG_DIR / "Base-LambdaResNet-FPN.yaml").read_text().splitlines()
    assert not any(line.startswith("_BASE_") for line in lines)


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=[str(p.relative_to(CONFIG_DIR)) for p in ALL_CONFIGS])
def test_config_builds_the_model_its_name_says(path):
    cfg = load(path)
    model = build_model(cfg)
    bottom_up = model.backbone.bottom_up
    assert model.__class__.__name__ == "GeneralizedRCNN" and cfg.MODEL.MASK_ON
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.BACKBONE.FREEZE_AT == 0  # from scratch
    match = LEAF.fullmatch(path.name)
    if not match:
        return
    depth = int(match["depth"])
    stages = [list(getattr(bottom_up, n)) for n in bottom_up.stage_names]
    assert tuple(len(s) for s in stages) == STAGE_BLOCKS[depth]
    lambda_c4 = tuple(i + 1 for i, b in enumerate(stages[2]) if b.use_lambda)
    if match["family"] == "LambdaR":
        assert lambda_c4 == PAPER_C4_LAMBDA_BLOCKS[depth]
        assert all(b.use_lambda for b in stages[3])
        layer = next(m for m in bottom_up.modules() if isinstance(m, LambdaLayer))
        assert (layer.dim_k, layer.heads, layer.dim_u, layer.scope) == (16, 4, 1, 23)
        se_stages = {0, 1}
    else:
        assert not any(b.use_lambda for s in stages for b in s)
        se_stages = {0, 1, 2, 3} if match["se"] else set()
    for index, stage in enumerate(stages):
        for block in stage:
            assert (block.se is not None) == (index in se_stages and not block.use_lambda), (path.name, index)
    # the paper's recipe: SyncBN, LSJ at 1024, batch/lr/schedule
    assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in bottom_up.modules())
    assert not any(type(m) is torch.nn.BatchNorm2d for m in bottom_up.modules())
    assert cfg.MODEL.FPN.NORM == "SyncBN"
    assert cfg.INPUT.LSJ.ENABLED and cfg.INPUT.LSJ.IMAGE_SIZE == 1024
    assert (cfg.INPUT.LSJ.MIN_SCALE, cfg.INPUT.LSJ.MAX_SCALE) == (0.1, 2.0)
    assert cfg.INPUT.MIN_SIZE_TEST == 1024 and cfg.DATASETS.TEST == ("coco_2017_val",)
    augs = build_train_mapper(cfg).augmentations.augs
    assert [type(a) for a in augs] == [T.ResizeScale, T.FixedSizeCrop, T.RandomFlip]
    assert augs[1].crop_size == (1024, 1024)
    s = cfg.SOLVER
    assert s.WEIGHT_DECAY == 4e-5 and s.MOMENTUM == 0.9 and s.WARMUP_ITERS == 1000 and s.GAMMA == 0.1
    if match["schedule"] == "paper":
        assert (s.IMS_PER_BATCH, s.BASE_LR, s.MAX_ITER) == (256, 0.32, 130000)
    else:
        assert s.IMS_PER_BATCH == 64 and s.BASE_LR == pytest.approx(0.32 * 64 / 256)
    fractions = [step / s.MAX_ITER for step in s.STEPS]
    assert fractions == pytest.approx([0.9, 0.95, 0.975], abs=1e-4)


@pytest.mark.parametrize("path", TIMM_CONFIGS, ids=[p.name for p in TIMM_CONFIGS])
def test_timm_configs_fine_tune_imagenet_weights_in_detectron2s_conventions(path):
    from detectron2.config import get_cfg
    from detectron2.layers import FrozenBatchNorm2d

    from lambda_det.modeling.timm_lambda import TIMM_MODELS, config_values

    match = TIMM.fullmatch(path.name)
    cfg = load(path)
    preset = config_values(match["model"])
    defaults = lambda_det.add_lambda_config(get_cfg()).MODEL.LAMBDA_RESNET
    assert set(preset) <= set(defaults)
    for key, value in cfg.MODEL.LAMBDA_RESNET.items():  # the preset, NORM, and nothing else of the yaml's own
        expected = preset.get(key, "FrozenBN" if key == "NORM" else defaults[key])
        assert value == expected, key
    model = build_model(cfg)
    bottom_up = model.backbone.bottom_up
    stages = [list(getattr(bottom_up, n)) for n in bottom_up.stage_names]
    layout = ["".join("L" if b.use_lambda else "C" for b in stage) for stage in stages]
    assert layout == TIMM_MODELS[match["model"]]["LAYOUT"]
    assert not any(type(m) is torch.nn.BatchNorm2d for m in bottom_up.modules())
    assert any(isinstance(m, FrozenBatchNorm2d) for m in bottom_up.modules())
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 2 and cfg.MODEL.WEIGHTS == f"weights/{match['model']}_d2.pth"
    assert cfg.INPUT.FORMAT == "RGB" and list(cfg.MODEL.PIXEL_MEAN) == pytest.approx([123.675, 116.28, 103.53])
    assert list(cfg.MODEL.PIXEL_STD) == pytest.approx([58.395, 57.12, 57.375])
    assert cfg.INPUT.MIN_SIZE_TRAIN == (640, 672, 704, 736, 768, 800)
    assert (cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST) == (800, 1333)
    s = cfg.SOLVER
    assert (s.IMS_PER_BATCH, s.BASE_LR) == (16, 0.02)
    expected = {"1x": (90000, (60000, 80000)), "3x": (270000, (210000, 250000))}[match["schedule"]]
    assert (s.MAX_ITER, tuple(s.STEPS)) == expected
