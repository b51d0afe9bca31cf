"""timm's lambda_resnet26t / lambda_resnet50ts rebuilt from lambda_det's modules: the same features
as timm's own model from converted weights (every impl), the same parameter count, weights that load
into the Mask R-CNN configs, and the converter's handling of bad input."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import REPO, run_tool

from lambda_det.modeling import build_lambda_resnet
from lambda_det.modeling.timm_lambda import TIMM_MODELS, build_kwargs, convert_state_dict

MODELS = sorted(TIMM_MODELS)
IMPLS = ["auto", "conv2d", "conv3d", "einsum", "fft", "fused"]


def _randomized_timm(name: str, features_only: bool, seed: int = 0, dtype=torch.float32):
    """A timm model with random weights and random BN statistics and affine parameters."""
    import timm

    torch.manual_seed(seed)
    kwargs = dict(features_only=True, out_indices=(1, 2, 3, 4)) if features_only else {}
    model = timm.create_model(name, pretrained=False, **kwargs).to(dtype)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                c = module.num_features
                module.weight.copy_(torch.rand(c, generator=g) + 0.5)  # no zero gammas: every branch matters
                module.bias.copy_(torch.randn(c, generator=g) * 0.2)
                module.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
                module.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            if hasattr(module, "conv_lambda") and module.conv_lambda is not None:
                module.conv_lambda.bias.copy_(torch.randn(module.conv_lambda.bias.shape, generator=g))
    return model.eval()


def _ours(name: str, state_dict, dtype=torch.float32):
    _, converted, _ = convert_state_dict(state_dict, name)
    model = build_lambda_resnet(**build_kwargs(name)).to(dtype)
    model.load_state_dict(converted)
    return model.eval()


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_equals_timms_backbone(name):
    ours = build_lambda_resnet(**build_kwargs(name))
    theirs = _randomized_timm(name, features_only=True)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in theirs.parameters())


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_converted_weights_give_timms_features_for_every_impl(name, dtype, tolerance):
    timm_model = _randomized_timm(name, features_only=True, dtype=dtype)
    ours = _ours(name, timm_model.state_dict(), dtype)
    sizes = [(96, 160), (160, 64)] if dtype == torch.float64 else [(128, 96)]
    for height, width in sizes:
        x = torch.randn(2, 3, height, width, dtype=dtype)
        with torch.no_grad():
            expected = timm_model(x)
            for impl in IMPLS:
                for module in ours.modules():
                    if hasattr(module, "impl") and hasattr(module, "rel_pos_emb"):
                        module.impl = impl
                got = ours(x)
                for stage, want in zip(("res2", "res3", "res4", "res5"), expected):
                    assert got[stage].shape == want.shape, (impl, stage)
                    error = ((got[stage] - want).abs().max() / want.abs().max()).item()
                    assert error < tolerance, f"{name} {impl} {stage} at {height}x{width}: relative error {error:.2e}"


def test_full_model_checkpoints_convert_without_the_classifier():
    name = "lambda_resnet26t"
    full = _randomized_timm(name, features_only=False)
    _, converted, report = convert_state_dict(full.state_dict())  # recognized from its tensors
    assert report["model"] == name
    assert {"head.fc.weight", "head.fc.bias"} <= set(report["left_out"])
    assert set(report["left_out_kinds"]) == {"classifier", "num_batches_tracked"}
    features = _randomized_timm(name, features_only=True)
    features.load_state_dict({k.replace("stem.", "stem_", 1) if k.startswith("stem.") else k: v
                              for k, v in full.state_dict().items() if not k.startswith("head.")}, strict=False)
    _, from_features, _ = convert_state_dict(features.state_dict(), name)
    assert from_features.keys() == converted.keys()


@pytest.fixture(scope="module")
def converted_file(tmp_path_factory):
    """timm's lambda_resnet26t as it initializes itself (the hub is out of reach here), converted."""
    import timm

    folder = tmp_path_factory.mktemp("timm")
    torch.manual_seed(0)
    torch.save(timm.create_model("lambda_resnet26t", pretrained=False).state_dict(), folder / "timm26t.pth")
    assert run_tool("convert_timm_to_d2.py", folder / "timm26t.pth", "--output", folder / "d2.pth") == 0
    return folder / "d2.pth"


def _timm_cfg(weights, *extra):
    from lambda_det import load_config

    config = REPO / "configs" / "COCO-InstanceSegmentation" / "mask_rcnn_timm_lambda_resnet26t_FPN_1x.yaml"
    return load_config(str(config), ["MODEL.WEIGHTS", str(weights), "MODEL.DEVICE", "cpu", *extra])


@pytest.mark.parametrize("norm", ["FrozenBN", "BN"])
def test_converted_weights_load_into_the_mask_rcnn_config_with_no_backbone_keys_missing(converted_file, norm):
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from lambda_det.benchmark.detector import synthetic_batch
    from lambda_det.checkpoint import Checkpointer

    # BN trains every stage here: Detectron2's freezing turns BN of frozen stages into FrozenBN that
    # expects BN's num_batches_tracked, a counter no ImageNet checkpoint of its own carries either
    freeze = "2" if norm == "FrozenBN" else "0"
    cfg = _timm_cfg(converted_file, "MODEL.LAMBDA_RESNET.NORM", norm, "MODEL.ROI_HEADS.NUM_CLASSES", "3",
                    "MODEL.BACKBONE.FREEZE_AT", freeze)
    model = build_model(cfg)
    checkpointer = Checkpointer(model)
    incompatible = {}
    original = checkpointer._load_model

    def record(checkpoint):
        incompatible["keys"] = original(checkpoint)
        return incompatible["keys"]

    checkpointer._load_model = record
    checkpointer.load(cfg.MODEL.WEIGHTS)
    keys = incompatible["keys"]
    assert not [k for k in keys.missing_keys if k.startswith("backbone.bottom_up.")]
    assert not keys.unexpected_keys and not keys.incorrect_shapes
    assert any(k.startswith("backbone.fpn") for k in keys.missing_keys)  # FPN and heads start from scratch
    saved = torch.load(converted_file, weights_only=True)["model"]
    key = "backbone.bottom_up.res4.1.conv2.qkv.weight"
    torch.testing.assert_close(model.state_dict()[key], saved[key])
    model.train()
    with EventStorage():
        losses = model(synthetic_batch(128, 96, num_classes=3, num_images=1))
    sum(losses.values()).backward()
    assert all(torch.isfinite(v) for v in losses.values())


def test_fine_tuning_on_the_toy_data_from_converted_weights(converted_file, tmp_path, capsys):
    """The main job's machinery (train_net, toy data, evaluation) from the converted weights."""
    toy = ["MODEL.ROI_HEADS.NUM_CLASSES", "4", "DATASETS.TRAIN", "('toy_shapes_train',)", "DATASETS.TEST", "('toy_shapes_val',)",
           "INPUT.MIN_SIZE_TRAIN", "(128,)", "INPUT.MAX_SIZE_TRAIN", "128", "INPUT.MIN_SIZE_TEST", "128", "INPUT.MAX_SIZE_TEST", "128",
           "INPUT.MASK_FORMAT", "bitmask", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", "3", "SOLVER.STEPS", "()",
           "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "100", "DATALOADER.NUM_WORKERS", "0", "TEST.EVAL_PERIOD", "0",
           "OUTPUT_DIR", str(tmp_path / "run")]
    config = REPO / "configs" / "COCO-InstanceSegmentation" / "mask_rcnn_timm_lambda_resnet26t_FPN_1x.yaml"
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", str(config),
           "MODEL.WEIGHTS", str(converted_file), "MODEL.DEVICE", "cpu", *toy]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = (tmp_path / "run" / "log.txt").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if "are not found in the checkpoint" in line)
    missing = []
    for line in lines[start + 1:]:
        if line.startswith("["):  # the next log record
            break
        missing.append(line)
    assert any("backbone.fpn" in line for line in missing)  # FPN and heads start from scratch ...
    assert not any("bottom_up" in line for line in missing)  # ... the backbone does not
    assert not any("contains keys that are not used by the model" in line for line in lines)
    assert (tmp_path / "run" / "model_final.pth").exists()
    assert (tmp_path / "run" / "inference" / "toy_shapes_val" / "ap_by_size.json").exists()


def test_converter_refuses_what_it_cannot_convert(tmp_path, capsys):
    import timm

    other = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), other)
    assert run_tool("convert_timm_to_d2.py", other, "--output", tmp_path / "out.pth") == 2
    err = capsys.readouterr().err
    assert f"{other} is not a timm lambda_resnet" in err and "backbone tensors are missing" in err
    good = tmp_path / "26t.pth"
    torch.save(_randomized_timm("lambda_resnet26t", features_only=False).state_dict(), good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:5000])
    assert run_tool("convert_timm_to_d2.py", truncated, "--output", tmp_path / "out.pth") == 2
    assert f"{truncated} is truncated" in capsys.readouterr().err
    assert run_tool("convert_timm_to_d2.py", good, "--model", "lambda_resnet50ts", "--output", tmp_path / "out.pth") == 2
    assert "is not a timm lambda_resnet50ts state dict" in capsys.readouterr().err
    assert not (tmp_path / "out.pth").exists()
    # safetensors, as the hub serves them
    from safetensors.torch import save_file

    save_file(torch.load(good, weights_only=True), str(tmp_path / "26t.safetensors"))
    assert run_tool("convert_timm_to_d2.py", tmp_path / "26t.safetensors", "--output", tmp_path / "out.pth") == 0
    assert "timm lambda_resnet26t" in capsys.readouterr().out
    assert run_tool("convert_timm_to_d2.py", good, "--output", tmp_path / "out.pth") == 2  # not replaced unasked
    assert "would be overwritten" in capsys.readouterr().err


def test_timms_training_checkpoints_convert_and_the_input_is_never_the_output(tmp_path, capsys):
    """timm's CheckpointSaver files hold its argparse.Namespace next to state_dict / state_dict_ema."""
    import argparse

    model = _randomized_timm("lambda_resnet26t", features_only=False)
    ema = {k: v + 1 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    checkpoint = tmp_path / "model_best.pth.tar"
    torch.save({"epoch": 3, "arch": "lambda_resnet26t", "state_dict": model.state_dict(), "state_dict_ema": ema,
                "args": argparse.Namespace(lr=0.1, model="lambda_resnet26t"), "version": 2}, checkpoint)
    assert run_tool("convert_timm_to_d2.py", checkpoint, "--output", tmp_path / "d2.pth") == 0
    written = torch.load(tmp_path / "d2.pth", weights_only=True)["model"]
    _, from_ema, _ = convert_state_dict(ema)  # the EMA weights are the ones timm evaluates and publishes
    assert written.keys() == {f"backbone.bottom_up.{k}" for k in from_ema}
    assert all(torch.equal(written[f"backbone.bottom_up.{k}"], v) for k, v in from_ema.items())
    before = checkpoint.read_bytes()
    assert run_tool("convert_timm_to_d2.py", checkpoint, "--output", checkpoint, "--overwrite") == 2
    assert "is the input checkpoint" in capsys.readouterr().err and checkpoint.read_bytes() == before
