"""Detectron2's LazyConfig world: the LSJ baselines with a LambdaResNet inside (configs/new_baselines/),
the timm fine-tuning pair, and tools/lazyconfig_train_net.py.

The LazyConfig models are checked against their yacs twins (configs/COCO-InstanceSegmentation/*.yaml):
the same module tree, parameter count and, with the same weights, the same outputs.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog
from detectron2.data import transforms as T
from detectron2.layers import Conv2d
from detectron2.model_zoo import get_config as detectron2_config
from detectron2.modeling import build_model
from detectron2.modeling.roi_heads import StandardROIHeads
from omegaconf import OmegaConf

from conftest import REPO, TINY, TOY_CONFIG, run_tool
from test_reliability import hashes

from lambda_det import model_zoo  # importing lambda_det registers the backbones and the toy datasets
from lambda_det.analysis import detections_limit, worst_case
from lambda_det.data import build_train_mapper
from lambda_det.engine.lazy import (build_lazy_model, describe_lazy_model, lambda_resnet_keys_named_as_lazy, lazy_evaluator,
                                    load_lazy_run_config)
from lambda_det.errors import ConfigError
from lambda_det.evaluation import WholeFilesCOCOEvaluator
from lambda_det.config import load_config
from lambda_det.demo import Demo, class_names
from lambda_det.lazy_config import accepts_argument, config_text, load_lazy_config
from lambda_det.modeling import lambda_resnet_config

NEW_BASELINES = REPO / "configs" / "new_baselines"
# the paper's Table 6 rows: LazyConfig at 100 epochs -> the yacs config of the same model
TABLE6 = {
    "LambdaR_101": "mask_rcnn_LambdaR_101_FPN_paper.yaml",
    "R_101_RS": "mask_rcnn_R_101_FPN_paper.yaml",
    "R_101_RS_SE": "mask_rcnn_R_101_SE_FPN_paper.yaml",
    "LambdaR_152": "mask_rcnn_LambdaR_152_FPN_paper.yaml",
    "R_152_RS": "mask_rcnn_R_152_FPN_paper.yaml",
    "R_152_RS_SE": "mask_rcnn_R_152_SE_FPN_paper.yaml",
}
EPOCHS = (100, 200, 400)
TOY_LSJ = REPO / "configs" / "Toy" / "mask_rcnn_LambdaR_26_FPN_toy_LSJ.py"
# the toy LazyConfig at the size of conftest.TINY: a 1-block-per-stage network, 128 px, batch 2
LAZY_TINY = [
    "model.backbone.bottom_up.stage_blocks=[1,1,1,1]", "model.backbone.bottom_up.dim_k=8", "model.backbone.out_channels=32",
    "model.roi_heads.box_head.conv_dims=[32]", "model.roi_heads.box_head.fc_dims=[64]",
    "model.roi_heads.mask_head.conv_dims=[32,32]", "dataloader.train.mapper.augmentations.0.target_height=128",
    "dataloader.train.mapper.augmentations.0.target_width=128", "dataloader.train.mapper.augmentations.1.crop_size=[128,128]",
    "dataloader.test.mapper.augmentations.0.short_edge_length=128", "dataloader.test.mapper.augmentations.0.max_size=128",
    "dataloader.train.num_workers=0", "dataloader.test.num_workers=0", "dataloader.train.total_batch_size=2",
]

# the yacs toy model of TINY with the heads of LAZY_TINY's: one GN conv + one fc for boxes, one GN conv for
# masks, the RPN head's two convs, adaptive ROIAlign sampling (the same module tree, checked below)
YACS_TWIN_OF_LAZY_TINY = [
    *TINY, "MODEL.ROI_BOX_HEAD.NUM_CONV", "1", "MODEL.ROI_BOX_HEAD.CONV_DIM", "32", "MODEL.ROI_BOX_HEAD.NUM_FC", "1",
    "MODEL.ROI_BOX_HEAD.NORM", "GN", "MODEL.ROI_MASK_HEAD.NUM_CONV", "1", "MODEL.ROI_MASK_HEAD.NORM", "GN",
    "MODEL.RPN.CONV_DIMS", "[-1,-1]", "MODEL.ROI_BOX_HEAD.POOLER_SAMPLING_RATIO", "0", "MODEL.ROI_MASK_HEAD.POOLER_SAMPLING_RATIO", "0",
]


def flat(cfg) -> dict:
    """A LazyConfig as {dotted key: value}, callables by name (what config.yaml records)."""
    out = {}

    def walk(node, prefix):
        if isinstance(node, dict):
            for key, value in node.items():
                walk(value, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = node

    walk(yaml.safe_load(config_text(cfg)), "")
    return out


def backbone_options(cfg) -> dict:
    return {k: v for k, v in cfg.model.backbone.bottom_up.items() if k != "_target_"}


# ---------------------------------------------------------------------------------------------
# the configs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("epochs", EPOCHS)
def test_each_lazyconfig_is_detectron2s_r101_lsj_baseline_but_for_the_backbone(epochs):
    """Model, data, optimizer and schedule are Detectron2's own file of the same length, key for key."""
    theirs = flat(detectron2_config(f"new_baselines/mask_rcnn_R_101_FPN_{epochs}ep_LSJ.py"))
    assert theirs["model.backbone.bottom_up._target_"] == "detectron2.modeling.backbone.resnet.ResNet"
    for model in TABLE6:
        ours = flat(model_zoo.get_config(f"new_baselines/mask_rcnn_{model}_FPN_{epochs}ep_LSJ.py"))
        differ = {k for k in set(ours) | set(theirs) if ours.get(k, "absent") != theirs.get(k, "absent")}
        assert differ and all(k.startswith("model.backbone.bottom_up.") for k in differ), (model, sorted(differ)[:8])
        assert ours["model.backbone.bottom_up._target_"] == "lambda_det.modeling.lambda_resnet.build_lambda_resnet"
        assert ours["train.max_iter"] == 184375 * epochs // 100 and ours["optimizer.weight_decay"] == 4e-5


def test_the_lazyconfig_backbones_are_the_table6_yacs_backbones():
    """build_lambda_resnet's arguments read by the same reader give the yacs config's MODEL.LAMBDA_RESNET
    exactly (depth, lambda placement, SE stages, SyncBN), and nothing is frozen in either."""
    for model, yacs_file in TABLE6.items():
        lazy = model_zoo.get_config(f"new_baselines/mask_rcnn_{model}_FPN_100ep_LSJ.py")
        yacs = model_zoo.get_config(f"COCO-InstanceSegmentation/{yacs_file}")
        read = lambda_resnet_config(**backbone_options(lazy))
        assert dict(read.MODEL.LAMBDA_RESNET) == dict(yacs.MODEL.LAMBDA_RESNET), model
        assert read.MODEL.BACKBONE.FREEZE_AT == yacs.MODEL.BACKBONE.FREEZE_AT == 0
        for epochs in (200, 400):  # the longer files change the schedule only
            longer = model_zoo.get_config(f"new_baselines/mask_rcnn_{model}_FPN_{epochs}ep_LSJ.py")
            assert backbone_options(longer) == backbone_options(lazy)


def _same_model(lazy_model, yacs_model) -> None:
    assert [(n, type(m)) for n, m in lazy_model.named_modules()] == [(n, type(m)) for n, m in yacs_model.named_modules()]
    assert [(n, p.shape) for n, p in lazy_model.named_parameters()] == [(n, p.shape) for n, p in yacs_model.named_parameters()]
    assert sum(p.numel() for p in lazy_model.parameters()) == sum(p.numel() for p in yacs_model.parameters())


def _same_outputs(lazy_model, yacs_model) -> None:
    """The same weights give the same detections (boxes, scores, classes, masks) on the same image."""
    lazy_model.load_state_dict(yacs_model.state_dict())  # strict: every tensor has its place in both
    image = torch.randint(0, 256, (3, 96, 128), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    outputs = []
    for model in (lazy_model, yacs_model):
        model.eval()
        # a few proposals and detections of any score (random weights score every class alike)
        model.proposal_generator.post_nms_topk[False] = 16
        model.roi_heads.box_predictor.test_score_thresh = 0.0
        model.roi_heads.box_predictor.test_topk_per_image = 8
        with torch.no_grad():
            outputs.append(model([{"image": image}])[0]["instances"])
    ours, theirs = outputs
    assert len(ours) == len(theirs) == 8
    for field in ("pred_classes", "scores", "pred_masks"):
        torch.testing.assert_close(ours.get(field), theirs.get(field), rtol=0, atol=0, msg=field)
    torch.testing.assert_close(ours.pred_boxes.tensor, theirs.pred_boxes.tensor, rtol=0, atol=0)


def _yacs_twin(yacs_file: str, lazy):
    """The yacs model with the LazyConfig's input normalization: Detectron2's LSJ baselines subtract
    the mean only (pixel_std 1, its from-scratch convention), the yacs configs divide by the
    ImageNet std as well; nothing else of the two Mask R-CNNs differs."""
    return build_model(model_zoo.get_config(yacs_file, ["MODEL.DEVICE", "cpu", "MODEL.PIXEL_STD", str(list(lazy.model.pixel_std)),
                                                        "MODEL.PIXEL_MEAN", str(list(lazy.model.pixel_mean))]))


@pytest.mark.parametrize("model", list(TABLE6))
def test_lazyconfig_models_equal_their_yacs_twins(model):
    lazy = model_zoo.get_config(f"new_baselines/mask_rcnn_{model}_FPN_100ep_LSJ.py")
    lazy_model, yacs_model = instantiate(lazy.model), _yacs_twin(f"COCO-InstanceSegmentation/{TABLE6[model]}", lazy)
    _same_model(lazy_model, yacs_model)
    _same_outputs(lazy_model, yacs_model)


@pytest.mark.parametrize("name", ["lambda_resnet26t", "lambda_resnet50ts"])
def test_timm_lazyconfigs_equal_their_yacs_twins(name):
    """The fine-tuning pair: Detectron2's mask_rcnn_R_50_FPN_1x.py with timm's architecture, its weights
    file and RGB normalization, is the yacs config's model."""
    lazy = model_zoo.get_config(f"COCO-InstanceSegmentation/mask_rcnn_timm_{name}_FPN_1x.py")
    yacs = model_zoo.get_config(f"COCO-InstanceSegmentation/mask_rcnn_timm_{name}_FPN_1x.yaml", ["MODEL.DEVICE", "cpu"])
    assert lazy.train.init_checkpoint == yacs.MODEL.WEIGHTS == f"weights/{name}_d2.pth"
    assert lazy.dataloader.test.mapper.image_format == lazy.model.input_format == yacs.INPUT.FORMAT == "RGB"
    assert (list(lazy.model.pixel_mean), list(lazy.model.pixel_std)) == (list(yacs.MODEL.PIXEL_MEAN), list(yacs.MODEL.PIXEL_STD))
    assert lazy.train.max_iter == yacs.SOLVER.MAX_ITER == 90000 and lazy.optimizer.lr == yacs.SOLVER.BASE_LR
    lazy_model, yacs_model = instantiate(lazy.model), build_model(yacs)
    _same_model(lazy_model, yacs_model)
    assert lazy_model.backbone.bottom_up.stem.convs[0].weight.requires_grad is False  # stem frozen (freeze_at 2)
    _same_outputs(lazy_model, yacs_model)


def test_the_paper_schedule_file_is_table6s_recipe_and_reaches_every_row_by_overrides():
    from detectron2.solver import build_lr_scheduler

    paper = model_zoo.get_config("new_baselines/mask_rcnn_LambdaR_101_FPN_paper_LSJ.py")
    yacs = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_LambdaR_101_FPN_paper.yaml")
    assert (paper.dataloader.train.total_batch_size, paper.optimizer.lr, paper.train.max_iter) == (
        yacs.SOLVER.IMS_PER_BATCH, yacs.SOLVER.BASE_LR, yacs.SOLVER.MAX_ITER) == (256, 0.32, 130000)
    # the lr at every iteration: the LazyConfig's multiplier as Detectron2's LRScheduler hook applies it
    multiplier = instantiate(paper.lr_multiplier)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=yacs.SOLVER.BASE_LR)
    scheduler = build_lr_scheduler(yacs, optimizer)
    for it in range(0, 130000, 250):
        assert paper.optimizer.lr * multiplier(it / 130000) == pytest.approx(scheduler.get_last_lr()[0], rel=1e-9), it
        for _ in range(250):
            scheduler.step()
    rows = {  # the overrides of the file's docstring -> the 100-epoch file of that row
        "LambdaR_152": ["model.backbone.bottom_up.depth=152"],
        "R_101_RS": ["model.backbone.bottom_up.variant=conv", "model.backbone.bottom_up.se_stages=[]"],
        "R_101_RS_SE": ["model.backbone.bottom_up.variant=conv", "model.backbone.bottom_up.se_stages=[res2,res3,res4,res5]"],
        "R_152_RS_SE": ["model.backbone.bottom_up.variant=conv", "model.backbone.bottom_up.se_stages=[res2,res3,res4,res5]",
                        "model.backbone.bottom_up.depth=152"],
    }
    for model, overrides in rows.items():
        row = model_zoo.get_config("new_baselines/mask_rcnn_LambdaR_101_FPN_paper_LSJ.py", overrides)
        assert backbone_options(row) == backbone_options(model_zoo.get_config(f"new_baselines/mask_rcnn_{model}_FPN_100ep_LSJ.py"))


def test_a_box_only_lazyconfig_model_has_no_mask_head_for_the_dataset_checks():
    """StandardROIHeads predicts masks only with mask_in_features: box-only data must pass then."""
    from lambda_det.engine.lazy import has_mask_head

    path = "new_baselines/mask_rcnn_LambdaR_101_FPN_100ep_LSJ.py"
    assert has_mask_head(model_zoo.get_config(path))
    box_only = model_zoo.get_config(path, ["model.roi_heads.mask_in_features=null"])
    assert box_only.model.roi_heads.mask_head is not None and not has_mask_head(box_only)
    assert not instantiate(box_only.model.roi_heads).mask_on  # what Detectron2 builds from it


def test_misspelt_overrides_and_files_that_are_no_lazyconfig_are_named(tmp_path):
    path = "new_baselines/mask_rcnn_LambdaR_101_FPN_100ep_LSJ.py"
    with pytest.raises(ConfigError, match=r"train\.max_iters is not a config key; did you mean train\.max_iter\?"):
        model_zoo.get_config(path, ["train.max_iters=10"])
    with pytest.raises(ConfigError, match=r"is not a config key: modle does not exist; did you mean model\?"):
        model_zoo.get_config(path, ["modle.backbone.bottom_up.depth=152"])
    with pytest.raises(ConfigError, match="StandardRPNHead takes no argument 'dpeth'"):
        model_zoo.get_config(path, ["model.proposal_generator.head.dpeth=3"])
    with pytest.raises(ConfigError, match="is not key=value"):
        model_zoo.get_config(path, ["train.max_iter", "10"])
    # Python's indexing in a key: the advice was to quote the value
    with pytest.raises(ConfigError, match=r"an entry of a list is a key part by its index: "
                                          r"dataloader\.test\.mapper\.augmentations\.0\.short_edge_length=640$"):
        model_zoo.get_config(path, ["dataloader.test.mapper.augmentations[0].short_edge_length=640"])
    assert model_zoo.get_config(path, ["dataloader.test.mapper.augmentations.0.short_edge_length=640"]
                                ).dataloader.test.mapper.augmentations[0].short_edge_length == 640
    # an argument its L(...) callable takes may be added (build_lambda_resnet takes MODEL.LAMBDA_RESNET keys)
    assert model_zoo.get_config(path, ["model.backbone.bottom_up.scope=7"]).model.backbone.bottom_up.scope == 7
    broken = tmp_path / "broken.py"
    broken.write_text("from detectron2.model_zoo import get_config\nmodel = get_config('new_baselines/no_such_file.py').model\n")
    with pytest.raises(ConfigError, match=rf"config file {broken} failed while it was loaded: RuntimeError: .*no_such_file"):
        load_lazy_config(str(broken))
    yacs = REPO / "configs" / "Toy" / "mask_rcnn_LambdaR_26_FPN_toy.yaml"
    with pytest.raises(ConfigError, match="It is a yacs config .*use tools/train_net.py"):
        load_lazy_config(str(yacs))
    # and the other way round: the yacs tools (train_net, export, analyze_model) name the lazy one, also
    # the config.yaml a LazyConfig run saved
    with pytest.raises(ConfigError, match=r"is a LazyConfig \(Python\), .*tools/lazyconfig_train_net.py"):
        load_config(str(TOY_LSJ))
    saved = tmp_path / "config.yaml"
    saved.write_text(config_text(load_lazy_config(str(TOY_LSJ))))
    with pytest.raises(ConfigError, match=r"is a LazyConfig \(YAML with a LazyConfig's keys: model, .*tools/lazyconfig_train_net.py"):
        load_config(str(saved))


# ---------------------------------------------------------------------------------------------
# large-scale jitter: Detectron2's augmentations, the same crops as the yacs mapper
# ---------------------------------------------------------------------------------------------
def test_lsj_of_the_lazyconfigs_is_detectron2s_and_crops_as_the_yacs_mapper():
    lazy = model_zoo.get_config("new_baselines/mask_rcnn_LambdaR_101_FPN_100ep_LSJ.py",
                                ["dataloader.train.mapper.instance_mask_format=bitmask"])
    lazy_mapper = instantiate(lazy.dataloader.train.mapper)
    augs = lazy_mapper.augmentations.augs
    assert [type(a) for a in augs] == [T.ResizeScale, T.FixedSizeCrop, T.RandomFlip]
    assert (augs[0].min_scale, augs[0].max_scale, augs[0].target_height, augs[0].target_width) == (0.1, 2.0, 1024, 1024)
    assert tuple(augs[1].crop_size) == (1024, 1024)
    yacs = model_zoo.get_config("COCO-InstanceSegmentation/mask_rcnn_LambdaR_101_FPN_paper.yaml",
                                ["INPUT.MASK_FORMAT", "bitmask", "MODEL.DEVICE", "cpu"])
    yacs_mapper = build_train_mapper(yacs)
    record = DatasetCatalog.get("toy_shapes_train")[0]  # 256 px, RLE masks
    crops = set()
    for seed in range(6):
        outputs = []
        for mapper in (lazy_mapper, yacs_mapper):
            np.random.seed(seed)  # Detectron2's augmentations draw from numpy's global state
            outputs.append(mapper(dict(record)))
        ours, theirs = outputs
        assert torch.equal(ours["image"], theirs["image"]), seed
        assert torch.equal(ours["instances"].gt_boxes.tensor, theirs["instances"].gt_boxes.tensor), seed
        assert torch.equal(ours["instances"].gt_masks.tensor, theirs["instances"].gt_masks.tensor), seed
        crops.add((tuple(ours["image"].shape), float(ours["image"].float().mean())))
    assert len(crops) == 6  # six different scales and crops, each the same in both


# ---------------------------------------------------------------------------------------------
# tools/lazyconfig_train_net.py on the toy data
# ---------------------------------------------------------------------------------------------
def lazy_train(out: Path, small_val: str, *extra: str) -> int:
    flags = [e for e in extra if e.startswith("--")]
    overrides = [e for e in extra if not e.startswith("--")]
    return run_tool("lazyconfig_train_net.py", "--config-file", TOY_LSJ, *flags, *LAZY_TINY, "train.max_iter=2",
                    "train.checkpointer.period=1", f"dataloader.test.dataset.names={small_val}", *overrides,
                    f"train.output_dir={out}")


def files(run: Path) -> dict:
    """The run's files by hash; log.txt aside: the tool runs in this process, where the log handlers
    of its earlier runs stay attached (a new process writes nothing there before it starts a run)."""
    return {name: digest for name, digest in hashes(run).items() if name != "log.txt"}


def test_lazyconfig_train_net_trains_evaluates_resumes_and_protects_the_run(tmp_path, small_val, capsys):
    run = tmp_path / "run"
    assert lazy_train(run, small_val) == 0
    report = json.loads((run / "inference" / small_val / "ap_by_size.json").read_text())
    record = report["provenance"]
    assert report["iterations_trained"] == record["iterations_trained"] == 2
    assert record["weights"] == str((run / "model_final.pth").resolve()) and record["initialized_from"] == "scratch"
    # the hash of the weights evaluated, as --eval-only records it: the final checkpoint, saved before the evaluation
    assert record["weights_sha256"] == hashlib.sha256((run / "model_final.pth").read_bytes()).hexdigest()[:16]
    assert record["config_file"] == str(TOY_LSJ.resolve()) and record["images"] == 6
    assert record["model"] == "LambdaResNet blocks [1, 1, 1, 1], custom C-C-L-L, width 32, GN, r=23"
    assert record["input_size_test"] == {"min": 128, "max": 128}
    saved = yaml.safe_load((run / "config.yaml").read_text())  # the whole config, callables by name
    assert saved["train"]["max_iter"] == 2
    assert saved["model"]["backbone"]["bottom_up"]["_target_"] == "lambda_det.modeling.lambda_resnet.build_lambda_resnet"

    # an existing run is refused without --resume, and nothing of it changes
    before = files(run)
    assert lazy_train(run, small_val) == 2
    err = capsys.readouterr().err
    assert f"train.output_dir {run} already holds a run" in err and "--resume" in err and "train.output_dir=path" in err
    assert files(run) == before

    # --resume of the finished run to more iterations would evaluate it again at its new end: asked for
    before = files(run)
    assert lazy_train(run, small_val, "--resume", "train.max_iter=3") == 2
    assert "of the finished run's evaluation would be overwritten" in capsys.readouterr().err and files(run) == before
    # with --overwrite it trains on from the last checkpoint: one more iteration, evaluated again
    assert lazy_train(run, small_val, "--resume", "--overwrite", "train.max_iter=3") == 0
    assert torch.load(run / "model_final.pth", weights_only=False)["iteration"] == 2  # iterations 0, 1, then 2
    metrics = [json.loads(line) for line in (run / "metrics.json").read_text().splitlines()]
    assert [m["iteration"] for m in metrics if "total_loss" in m][-1] == 2
    assert json.loads((run / "inference" / small_val / "ap_by_size.json").read_text())["iterations_trained"] == 3
    config_files = sorted(p.name for p in run.glob("config*.yaml"))
    assert config_files == ["config.1.yaml", "config.yaml"]  # the changed config kept the earlier one

    # a finished run resumed again changes nothing and says so
    before = files(run)
    assert lazy_train(run, small_val, "--resume", "train.max_iter=3") == 0
    out = capsys.readouterr().out
    assert "holds a finished run (model_final.pth: 3 of train.max_iter=3 iterations)" in out
    assert "train.init_checkpoint=" in out and files(run) == before

    # evaluation of the run: not over the earlier one unasked; weights that do not fit are refused
    assert lazy_train(run, small_val, "--eval-only", "--resume") == 2
    assert "--overwrite" in capsys.readouterr().err and files(run) == before
    assert lazy_train(tmp_path / "other", small_val, "--eval-only", f"train.init_checkpoint={run / 'model_final.pth'}",
                      "model.backbone.bottom_up.width_per_group=64") == 2
    err = capsys.readouterr().err
    assert f"weights {run / 'model_final.pth'} do not fit the model" in err and "Traceback" not in err
    assert f"the run that saved it used {run / 'config.yaml'}, which differs in: model.backbone.bottom_up.width_per_group = 32 there, 64 here" in err
    assert lazy_train(run, small_val, "--eval-only", "--resume", "--overwrite") == 0
    record = json.loads((run / "inference" / small_val / "ap_by_size.json").read_text())["provenance"]
    assert record["weights"] == str((run / "model_final.pth").resolve()) and record["iterations_trained"] == 3
    assert "weights_sha256" in record

    # a run stopped during its final evaluation: --resume writes that evaluation (and nothing it replaces)
    shutil.rmtree(run / "inference")
    weights = (run / "model_final.pth").read_bytes()
    assert lazy_train(run, small_val, "--resume", "train.max_iter=3") == 0
    assert "whose final evaluation was never finished" in capsys.readouterr().out
    assert json.loads((run / "inference" / small_val / "ap_by_size.json").read_text())["iterations_trained"] == 3
    assert (run / "model_final.pth").read_bytes() == weights


def test_lazyconfig_train_net_names_bad_flags_and_overrides_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--config-file", TOY_LSJ, f"train.output_dir={out}"]
    assert run_tool("lazyconfig_train_net.py", *args, "--resume") == 2
    assert "--resume comes after the config overrides" in capsys.readouterr().err
    for flag in ("--num-gpus", "--num-machines"):  # a ZeroDivisionError when the batch was split over 0 processes
        assert run_tool("lazyconfig_train_net.py", flag, "0", *args) == 2
        assert f"{flag} 0: give 1 or more" in capsys.readouterr().err
    assert run_tool("lazyconfig_train_net.py", *args, "train.max_iters=3") == 2
    assert "did you mean train.max_iter?" in capsys.readouterr().err
    # a class taking **kwargs hands them to its base (StandardROIHeads to ROIHeads), which does not take this one
    assert run_tool("lazyconfig_train_net.py", *args, "model.roi_heads.num_clases=3") == 2
    assert "model.roi_heads.num_clases is not a config key" in (err := capsys.readouterr().err), err
    assert "did you mean model.roi_heads.num_classes?" in err
    assert run_tool("lazyconfig_train_net.py", *args, "train.amp.enabled=True") == 2
    assert "train.amp.enabled=True: needs a CUDA device" in capsys.readouterr().err
    # values that failed only once the run had started (tracebacks, a half-made run folder), all named at once
    assert run_tool("lazyconfig_train_net.py", *args, "optimizer.lr=-1", "train.checkpointer.period=0", "train.device=tpu",
                    "dataloader.train.total_batch_size=0", "train.eval_period=abc") == 2
    err = capsys.readouterr().err
    # build_lambda_resnet's arguments: checked as the yacs keys they are read as, and named as the LazyConfig's keys
    assert run_tool("lazyconfig_train_net.py", *args, "model.backbone.bottom_up.depth=abc") == 2  # once trained on
    assert "error: model.backbone.bottom_up.depth takes an integer (its default is 50), not text" in capsys.readouterr().err
    assert run_tool("lazyconfig_train_net.py", *args, "model.backbone.bottom_up.depht=50") == 2
    assert "build_lambda_resnet() got 'depht', which is no MODEL.LAMBDA_RESNET key in lower case; did you mean 'depth'?" in (
        capsys.readouterr().err)
    assert run_tool("lazyconfig_train_net.py", *args, "model.backbone.bottom_up.freeze_at=9") == 2
    assert "error: model.backbone.bottom_up.freeze_at=9 must be 0 (nothing) .. 5" in capsys.readouterr().err
    assert run_tool("lazyconfig_train_net.py", *args, "model.backbone.bottom_up.stem_width=48") == 2
    assert ("error: model.backbone.bottom_up.stem_width=48: with norm='GN' (32 groups) each of the deep stem's convolutions "
            "needs a multiple of 32 channels") in capsys.readouterr().err
    for line in ("optimizer.lr=-1: must be a number in (0.0, inf]", "train.checkpointer.period=0: must be an integer >= 1",
                 "train.device='tpu': must be 'cpu', 'cuda' or 'cuda:N'",
                 "dataloader.train.total_batch_size=0: must be an integer >= 1", "train.eval_period='abc': must be an integer >= 0"):
        assert line in err
    # a global scope's table against the images the loaders give (train_net checks it on INPUT.*): it failed in a layer
    assert run_tool("lazyconfig_train_net.py", *args, "model.backbone.bottom_up.scope=0", "model.backbone.bottom_up.global_max_size=8") == 2
    assert ("model.backbone.bottom_up.global_max_size=8: dataloader.train.mapper.augmentations (images of up to 256 pixels a "
            "side) gives lambda-layer maps of up to 32x32 (stride 8); raise global_max_size to >= 32") in capsys.readouterr().err
    assert run_tool("lazyconfig_train_net.py", *args, "model.backbone.bottom_up.scope=0",
                    "dataloader.test.mapper.augmentations.0.short_edge_length=0") == 2
    assert ("dataloader.test.mapper.augmentations cannot be bounded for a global-scope lambda layer "
            "(model.backbone.bottom_up.scope=0)") in capsys.readouterr().err
    assert run_tool("lazyconfig_train_net.py", *args, "model.roi_heads.num_classes=80") == 2
    assert ("model.roi_heads.num_classes=80, but dataset 'toy_shapes_train' (dataloader.train.dataset.names) has 4 classes "
            "(circle, square, triangle, star): set model.roi_heads.num_classes=4") in capsys.readouterr().err
    assert run_tool("lazyconfig_train_net.py", "--config-file", REPO / "configs" / "Toy" / "mask_rcnn_LambdaR_26_FPN_toy.yaml") == 2
    assert "use tools/train_net.py" in capsys.readouterr().err
    assert not out.exists()
    # a folder named like a log file (Detectron2's logger would take it for one): refused, as by train_net
    log_like = tmp_path / "run.txt"
    assert run_tool("lazyconfig_train_net.py", "--config-file", TOY_LSJ, f"train.output_dir={log_like}") == 2
    assert f"train.output_dir={str(log_like)!r}: ends like a file name" in capsys.readouterr().err
    assert not log_like.exists()
    # hydra's reason for an override it cannot parse, not only its link to the grammar
    assert run_tool("lazyconfig_train_net.py", "--config-file", TOY_LSJ, f"train.output_dir={tmp_path}/run(2)") == 2
    assert "cannot be parsed: mismatched input '(' expecting <EOF>; a value with characters" in capsys.readouterr().err
    assert run_tool("lazyconfig_train_net.py", "--config-file", TOY_LSJ, "train.output_dir=~/run") == 2
    assert "cannot be parsed: '~' at position 18 is not allowed there; a value" in capsys.readouterr().err
    assert run_tool("lazyconfig_train_net.py", "--config-file", TOY_LSJ, "model.backbone.bottom_up.stage_blocks=[1,1") == 2
    err = capsys.readouterr().err
    assert "cannot be parsed: no viable alternative at input '[1,1'" in err and "quotes" not in err


def test_backbone_errors_are_named_by_lazy_keys_past_values_left_for_the_command_line():
    """A saved config's string _target_, a '???' elsewhere in the model, a key ending a sentence, a
    value that is a key's name."""
    cfg = OmegaConf.create({"model": {"pixel_mean": "???", "backbone": {"bottom_up": {
        "_target_": "lambda_det.modeling.lambda_resnet.build_lambda_resnet"}}}})
    with pytest.raises(ConfigError) as raised, lambda_resnet_keys_named_as_lazy(cfg):
        raise ConfigError("MODEL.LAMBDA_RESNET.SE_RATIO=0.001: round(256 x 0.001) = 0; leave res2 out of SE_STAGES.")
    assert str(raised.value) == (
        "model.backbone.bottom_up.se_ratio=0.001: round(256 x 0.001) = 0; leave res2 out of se_stages.")
    with pytest.raises(ConfigError) as raised, lambda_resnet_keys_named_as_lazy(cfg):
        raise ConfigError("MODEL.LAMBDA_RESNET.NORM='GN HEADS' is no norm; the stem's width with NORM=\"DIM_K\" "
                          "(WIDTH_PER_GROUP x 4): HEADS must divide it")
    assert str(raised.value) == ("model.backbone.bottom_up.norm='GN HEADS' is no norm; the stem's width with "
                                 "norm=\"DIM_K\" (width_per_group x 4): heads must divide it")


def test_the_documented_152_control_is_detectron2s_r101_file_with_depth_152():
    """Detectron2 publishes no R-152 LSJ baseline: README's control is its R-101 file with one override."""
    from detectron2.model_zoo import get_config_file

    control = load_lazy_config(get_config_file("new_baselines/mask_rcnn_R_101_FPN_100ep_LSJ.py"),
                               ["model.backbone.bottom_up.stages.depth=152"])
    stages = instantiate(control.model.backbone.bottom_up.stages)
    assert [len(stage) for stage in stages] == [3, 8, 36, 3]


def test_the_demo_draws_a_lazyconfig_model(tmp_path, tiny_weights, capsys):
    """tools/demo.py takes a LazyConfig (the .py, or the config.yaml a run saves) with key=value overrides:
    its model with train.init_checkpoint's weights, dataloader.test's resize, its test dataset's class
    names and the --confidence-threshold in the model's box predictor."""
    cfg = load_lazy_config(str(TOY_LSJ), LAZY_TINY)
    run = tmp_path / "run"
    run.mkdir()
    DetectionCheckpointer(instantiate(cfg.model), save_dir=str(run)).save("model_final")
    (run / "config.yaml").write_text(config_text(cfg))  # as lazyconfig_train_net.py saves it
    weights = f"train.init_checkpoint={run / 'model_final.pth'}"
    rng = np.random.default_rng(0)
    (tmp_path / "DCIM").mkdir()
    photo, thin = tmp_path / "DCIM" / "IMG_0001.JPG", tmp_path / "DCIM" / "thin.png"
    cv2.imwrite(str(photo), rng.integers(0, 256, (120, 160, 3), dtype=np.uint8))
    cv2.imwrite(str(thin), rng.integers(0, 256, (1, 900, 3), dtype=np.uint8))

    assert run_tool("demo.py", "--config-file", TOY_LSJ, "--input", photo, thin, tmp_path / "DCIM" / "IMG_0002.JPG",
                    "--output", tmp_path / "drawn", "--confidence-threshold", "0", "--opts", *LAZY_TINY, weights) == 0
    out = capsys.readouterr()
    assert "skipped " + str(tmp_path / "DCIM" / "IMG_0002.JPG") + ": no such file" in out.out  # a picture missing, not an override
    assert "note:" not in out.err  # toy_shapes_val names the model's 4 classes
    assert re.search(r"IMG_0001.JPG: \d+ detections \(\d+ (circle|square|star|triangle)", out.out), out.out
    assert ("thin.png: 900x1 pixels is too thin: the test-time resize (dataloader.test.mapper.augmentations.0: "
            "short_edge_length=128, max_size=128) leaves 128x0") in out.out
    assert cv2.imread(str(tmp_path / "drawn" / "IMG_0001.png")) is not None
    # the run's config.yaml; the threshold reaches the model (a random model scores about 1/5 per class)
    assert run_tool("demo.py", "--config-file", run / "config.yaml", "--input", photo, "--output", tmp_path / "drawn_saved",
                    "--confidence-threshold", "1", "--opts", weights) == 0
    assert "IMG_0001.JPG: no detections above score 1.00" in capsys.readouterr().out

    # no weights, or weights of another model: refused before anything is written
    assert run_tool("demo.py", "--config-file", TOY_LSJ, "--input", photo, "--output", tmp_path / "refused") == 2
    assert "add `--opts train.init_checkpoint=path/to/model_final.pth`" in capsys.readouterr().err
    assert run_tool("demo.py", "--config-file", TOY_LSJ, "--input", photo, "--output", tmp_path / "refused",
                    "--opts", *LAZY_TINY, f"train.init_checkpoint={tiny_weights}") == 2
    assert f"weights {tiny_weights} do not fit the model" in capsys.readouterr().err
    assert run_tool("demo.py", "--config-file", run / "config.yaml", "--input", photo, "--output", tmp_path / "refused",
                    "--opts", weights, "model.backbone.out_channels=64", "model.roi_heads.box_predictor.test_score_thresh=0.3") == 2
    assert ("which differs in: model.backbone.out_channels = 32 there, 64 here\n"  # not the test-time threshold
            in capsys.readouterr().err)
    # overrides given without --opts would be skipped as missing inputs, and the model drawn without them
    assert run_tool("demo.py", "--config-file", run / "config.yaml", "--output", tmp_path / "refused", "--input", photo,
                    weights) == 2
    assert f"--input {weights}: no such file, and it has the form of a config override" in capsys.readouterr().err
    # a test resize that cannot work, named before the model is built
    assert run_tool("demo.py", "--config-file", run / "config.yaml", "--input", photo, "--output", tmp_path / "refused",
                    "--opts", weights, "dataloader.test.mapper.augmentations.0.short_edge_length=-5", "train.device=gpu") == 2
    err = capsys.readouterr().err
    assert "dataloader.test.mapper.augmentations.0: short_edge_length=-5, max_size=128: must be integers >= 0" in err
    assert "train.device='gpu': must be 'cpu', 'cuda' or 'cuda:N'" in err
    assert not (tmp_path / "refused").exists()


def test_the_demo_reads_a_lazyconfig_as_evaluation_does(tmp_path, monkeypatch):
    """The image format of dataloader.test's mapper (what evaluation feeds the model), weights at "~/...",
    the class count of a RetinaNet (its own, not roi_heads'), an argument a saved config.yaml leaves at
    its default."""
    cfg = load_lazy_config(str(TOY_LSJ), [*LAZY_TINY, "dataloader.train.mapper.image_format=RGB"])
    assert cfg.dataloader.test.mapper.image_format == "RGB"  # Detectron2's test mapper follows the train one
    weights = tmp_path / "model_final.pth"
    torch.save({"model": instantiate(cfg.model).state_dict()}, weights)
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg.train.init_checkpoint = "~/model_final.pth"  # no shell expands it in a config
    demo = Demo(cfg)
    assert demo.predictor.input_format == "RGB" and demo.notes == []
    cfg.dataloader.test.mapper.augmentations[0]._target_ = "detectron2.data.transforms.NoSuchResize"
    with pytest.raises(ConfigError, match="dataloader.test.mapper.augmentations cannot be built: ImportError: .*NoSuchResize"):
        Demo(cfg)
    assert class_names(detectron2_config("COCO-Detection/retinanet_R_50_FPN_1x.py"))[1] is None  # 80 COCO classes
    saved = tmp_path / "config.yaml"
    saved.write_text(config_text(load_lazy_config(str(TOY_LSJ))))
    loaded = load_lazy_config(str(saved), ["model.roi_heads.box_predictor.test_topk_per_image=10"])
    assert loaded.model.roi_heads.box_predictor.test_topk_per_image == 10
    # the evaluation record's model: the layout, whether the backbone is the callable or its saved name
    described = describe_lazy_model(load_lazy_config(str(TOY_LSJ)))
    assert "C-C-L-L" in described and describe_lazy_model(loaded) == described


def test_a_lazyconfig_run_evaluates_with_whole_files_and_saves_detectron2s_evaluator(tmp_path):
    """Detectron2's COCOEvaluator writes in place; a run builds its subclass that removes a half file
    (tests/test_reliability.py), while the config (config.yaml) keeps the config's own evaluator."""
    cfg = load_lazy_run_config(argparse.Namespace(config_file=str(TOY_LSJ), opts=[f"train.output_dir={tmp_path}"]))
    before = config_text(cfg)
    evaluator = lazy_evaluator(cfg)
    assert type(evaluator) is WholeFilesCOCOEvaluator and evaluator._output_dir == str(tmp_path / "inference" / "toy_shapes_val")
    assert config_text(cfg) == before and "detectron2.evaluation.coco_evaluation.COCOEvaluator" in before


def test_an_argument_is_taken_where_a_class_takes_it_or_keeps_any_keyword_for_itself():
    """A class taking **kwargs: a near miss of its bases' arguments is a misspelling; a keyword it keeps
    (Detectron2's Conv2d pops norm and activation) is taken."""
    assert not accepts_argument(StandardROIHeads, "num_clases") and accepts_argument(StandardROIHeads, "num_classes")
    assert accepts_argument(Conv2d, "norm") and accepts_argument(Conv2d, "activation")
    assert not accepts_argument(Conv2d, "kernel_sise") and not accepts_argument(torch.nn.Linear, "bias_")


def test_a_function_written_in_the_config_file_is_saved_by_where_it_is_written(tmp_path):
    """Its repr carries a memory address, which made config.yaml (and its hash) differ on every load."""
    config = tmp_path / "mine.py"
    config.write_text("from detectron2.config import LazyCall as L\n\n\ndef head(n=1):\n    return n\n\n\nmodel = L(head)(n=3)\n")
    texts = {config_text(load_lazy_config(str(config))) for _ in range(2)}
    assert texts == {"model:\n  n: 3\n  _target_: <head at mine.py:4>\n"}


def test_analyze_model_counts_a_lazyconfig_model_as_its_yacs_twin(tmp_path, capsys):
    """tools/analyze_model.py reads LazyConfigs, as Detectron2's does: the same Mask R-CNN counts the same
    FLOPs, activations and parameters from either kind of config, on dataloader.test's images (DATASETS.TEST's)
    and under --worst-case, whose thresholds a LazyConfig keeps in its RPN and box predictor: a score
    threshold of 0.99 left in place would drop the detections, and the mask head's FLOPs with them."""
    lazy_model = instantiate(load_lazy_config(str(TOY_LSJ), LAZY_TINY).model)
    assert str(lazy_model) == str(build_model(load_config(str(TOY_CONFIG), YACS_TWIN_OF_LAZY_TINY)))
    counts = {}
    for kind, config, overrides in (  # the lazy loader in batches of 2: counts are per image still
        ("lazy", TOY_LSJ, [*LAZY_TINY, "model.roi_heads.box_predictor.test_score_thresh=0.99", "dataloader.test.batch_size=2"]),
        ("yacs", TOY_CONFIG, [*YACS_TWIN_OF_LAZY_TINY, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.99"]),
    ):
        out = tmp_path / f"{kind}.json"
        assert run_tool("analyze_model.py", "--config-file", config, "--tasks", "flop", "activation", "parameter", "-n", "2",
                        "--worst-case", "--json", out, *overrides) == 0
        counts[kind] = {k: v for k, v in json.loads(out.read_text()).items() if isinstance(v, float)}
    assert counts["lazy"] == pytest.approx(counts["yacs"], rel=1e-12)
    assert counts["lazy"]["model_params_m"] == pytest.approx(sum(p.numel() for p in lazy_model.parameters()) / 1e6)
    assert "position_term" in capsys.readouterr().out

    # what cannot work is named by the LazyConfig's keys, in one line, before anything is counted
    refused = {
        "dataloader.test.dataset.names=[]": "--tasks flop/activation need inputs: dataloader.test, or --input-size H W",
        "train.max_iters=5": "did you mean train.max_iter?",
        "dataloader.test.mapper.augmentations.0.short_edge_length=-5":
            "dataloader.test.mapper.augmentations.0: short_edge_length=-5, max_size=128: must be integers >= 0",
        "dataloader.test.mapper.image_format=XYZ": "dataloader.test cannot give the images: ValueError: image has wrong mode",
        "model.backbone.bottom_up._target_=no_such_module.build":
            "model.backbone.bottom_up._target_='no_such_module.build': cannot be imported: ModuleNotFoundError",
        "--worst_case": "is no flag of this tool; did you mean --worst-case?",
        "--worst": "--worst comes after the config overrides",  # argparse takes a flag's unique abbreviation
        "-n": "-n comes after the config overrides",
    }
    for override, message in refused.items():
        assert run_tool("analyze_model.py", "--config-file", TOY_LSJ, "--tasks", "flop", *LAZY_TINY, override) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def test_a_saved_config_yaml_names_the_functions_it_cannot_hold_and_models_that_cannot_build_are_named(tmp_path):
    """Detectron2's LSJ heads' norm is a lambda, which config.yaml can only name by where it was written:
    loading the run's config.yaml failed inside the model's build with a KeyError of that text. A config
    of only a model takes train.* overrides for inference; a model that is no module is named."""
    saved = tmp_path / "config.yaml"
    saved.write_text(config_text(load_lazy_config(str(NEW_BASELINES / "mask_rcnn_LambdaR_101_FPN_100ep_LSJ.py"))))
    with pytest.raises(ConfigError, match=r"holds model.roi_heads.box_head.conv_norm = <lambda at mask_rcnn_R_50_FPN_100ep_LSJ.py:\d+>, "
                                          r"model.roi_heads.mask_head.conv_norm = .*Give the .py config the run was made from"):
        load_lazy_config(str(saved))
    norms = ["model.roi_heads.box_head.conv_norm=SyncBN", "model.roi_heads.mask_head.conv_norm=SyncBN"]
    assert load_lazy_config(str(saved), norms).model.roi_heads.box_head.conv_norm == "SyncBN"
    only_a_model = tmp_path / "model.py"
    only_a_model.write_text("model = dict(a=1)\n")
    cfg = load_lazy_config(str(only_a_model), ["train.device=cpu"], for_inference=True)  # no train node of its own
    assert (cfg.train.device, cfg.train.init_checkpoint) == ("cpu", "")
    with pytest.raises(ConfigError, match="train.device is not a config key"):
        load_lazy_config(str(only_a_model), ["train.device=cpu"])
    (tmp_path / "no_device.py").write_text("model = dict(a=1)\ntrain = dict(init_checkpoint='w.pth')\n")
    cfg_without_device = load_lazy_config(str(tmp_path / "no_device.py"), for_inference=True)
    assert (cfg_without_device.train.device, cfg_without_device.train.init_checkpoint) == ("cuda", "w.pth")  # Detectron2's default
    nested = tmp_path / "nested.py"  # a function defined inside another: its name holds <locals>
    nested.write_text("from detectron2.config import LazyCall as L\nimport torch\n\n\ndef make():\n    def norm(c):\n"
                      "        return c\n    return norm\n\n\nmodel = L(torch.nn.Linear)(in_features=2, out_features=2)\n"
                      "model.norm = make()\n")
    (tmp_path / "nested.yaml").write_text(config_text(load_lazy_config(str(nested))))
    with pytest.raises(ConfigError, match=r"holds model.norm = <make.<locals>.norm at nested.py:6>: a function"):
        load_lazy_config(str(tmp_path / "nested.yaml"))
    with pytest.raises(ConfigError, match="model builds .*, not a torch module"):
        build_lazy_model(cfg)
    with pytest.raises(ConfigError, match=r"model=1 in .*: a LazyConfig's model is a node"):
        load_lazy_config(str(TOY_LSJ), ["model=1"])
    # the backbone's own error handler read the config resolved, and failed on what the build failed on
    with pytest.raises(ConfigError, match="cannot be built: InterpolationResolutionError: .*backbone.out_channels"):
        build_lazy_model(load_lazy_config(str(TOY_LSJ), ["model.backbone=null"]))


@pytest.mark.parametrize("config, limit_key", [
    ("new_baselines/mask_rcnn_R_50_FPN_100ep_LSJ.py", "model.roi_heads.box_predictor.test_topk_per_image=100"),
    ("COCO-Detection/retinanet_R_50_FPN_1x.py", "model.max_detections_per_image=100"),
])
def test_worst_case_reaches_the_thresholds_of_a_lazyconfig_model(config, limit_key):
    """No NMS and no score threshold in the model that is built: RPN and box predictor (each stage of a
    cascade), or RetinaNet's own; the detection limit read from the model, named by its key."""
    cfg = detectron2_config(config)
    worst_case(cfg)
    model = instantiate(cfg.model)
    if hasattr(model, "roi_heads"):
        assert model.proposal_generator.nms_thresh == 1.0
        predictor = model.roi_heads.box_predictor
        assert (predictor.test_nms_thresh, predictor.test_score_thresh) == (1.0, 0.0)
    else:
        assert (model.test_nms_thresh, model.test_score_thresh) == (1.0, 0.0)
    assert detections_limit(cfg, model) == (100, limit_key)


def test_worst_case_of_a_yacs_retinanet_is_named_by_yacs_keys():
    cfg = detectron2_config("COCO-Detection/retinanet_R_50_FPN_1x.yaml")  # a yacs CfgNode
    cfg.MODEL.DEVICE = "cpu"
    worst_case(cfg)
    model = build_model(cfg)
    assert (model.test_nms_thresh, model.test_score_thresh) == (1.0, 0.0)
    assert detections_limit(cfg, model) == (100, "TEST.DETECTIONS_PER_IMAGE=100")


def test_worst_case_reaches_every_stage_of_a_cascade_and_names_a_model_without_thresholds():
    cfg = detectron2_config("common/models/cascade_rcnn.py")
    worst_case(cfg)
    model = instantiate(cfg.model)
    assert [(p.test_nms_thresh, p.test_score_thresh) for p in model.roi_heads.box_predictor] == [(1.0, 0.0)] * 3
    assert detections_limit(cfg, model) == (100, "model.roi_heads.box_predictors.2.test_topk_per_image=100")
    # fewer proposals x classes than the limit, or no limit (-1): every class of every proposal
    cfg.model.proposal_generator.post_nms_topk = [1, 1]
    assert detections_limit(cfg, instantiate(cfg.model)) == (80, "1 proposals (model.proposal_generator.post_nms_topk) x 80 "
                                                             "classes, fewer than model.roi_heads.box_predictors.2.test_topk_per_image=100")
    cfg.model.roi_heads.box_predictors[2].test_topk_per_image = -1
    assert detections_limit(cfg, instantiate(cfg.model))[0] == 80
    other = OmegaConf.create({"model": {"_target_": "torch.nn.Linear", "in_features": 2, "out_features": 2}})
    with pytest.raises(ConfigError, match=r"no model.roi_heads.box_predictor .*where --worst-case sets the test-time thresholds"):
        worst_case(other)
