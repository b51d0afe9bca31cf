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
ALL_CONFIGS = sorted(CONFIG_DIR.rglob("*.yaml"))
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
