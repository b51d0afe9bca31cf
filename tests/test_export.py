"""Tracing, scripting and export: a model traced at one size gives eager's outputs at other sizes,
scripting compiles, and tools/export_model.py writes files that run without lambda_det."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import warnings

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, TINY, TOY_CONFIG, run_tool, small_cfg

from lambda_det.layers import IMPL_CHOICES, LambdaLayer
from lambda_det.layers.triton_lambda import available as triton_available

# "fused" and "triton" too: TorchScript runs them as the FFT, a trace as the convolution
IMPL_VALUES = list(IMPL_CHOICES)


def eager(layer: LambdaLayer, x: torch.Tensor) -> torch.Tensor:
    """The layer's eager output; for impl="triton" on a machine where its kernels cannot run, the same
    function by the FFT (the Triton operator is checked against the reference in test_triton_lambda)."""
    impl = layer.impl
    if impl == "triton" and not triton_available(x.device):
        layer.impl = "fft"
    try:
        with torch.no_grad():
            return layer(x)
    finally:
        layer.impl = impl
# larger, smaller, non-square, not multiples of 32, smaller than the 7x7 scope
OTHER_SIZES = [(40, 33), (6, 9), (3, 3), (17, 50)]
GLOBAL_OTHER_SIZES = [(30, 21), (6, 9), (3, 3), (13, 34)]  # global scope: up to global_max_size 34


def _trace(module, *inputs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Detectron2's and torch's TracerWarnings about constants
        with torch.no_grad():
            # the trace's own check reruns the module eagerly, which a Triton layer cannot do on a CPU
            runnable = getattr(module, "impl", None) != "triton" or triton_available(inputs[0].device)
            return torch.jit.trace(module, inputs, check_trace=runnable)


@pytest.mark.parametrize("impl", IMPL_VALUES)
@pytest.mark.parametrize("scope", [7, None])
def test_layer_traced_at_one_size_is_exact_at_others(impl, scope):
    torch.manual_seed(0)
    layer = LambdaLayer(16, 32, dim_k=4, heads=4, scope=scope, impl=impl, global_max_size=34).eval()
    with torch.no_grad():
        layer.norm_q.running_var.uniform_(0.5, 2.0)
        layer.norm_v.running_mean.normal_()
    traced = _trace(layer, torch.randn(1, 16, 24, 24))
    for height, width in OTHER_SIZES if scope else GLOBAL_OTHER_SIZES:
        x = torch.randn(2, 16, height, width)
        expected = eager(layer, x)
        with torch.no_grad():
            got = traced(x)
        assert got.shape == expected.shape
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max().item())


def test_stride_two_layer_traces_too():
    layer = LambdaLayer(16, 16, dim_k=4, heads=4, scope=5, stride=2).eval()
    traced = _trace(layer, torch.randn(1, 16, 16, 16))
    x = torch.randn(1, 16, 23, 10)
    with torch.no_grad():
        torch.testing.assert_close(traced(x), layer(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("impl", IMPL_VALUES)
def test_layer_scripts_and_matches_eager(impl):
    torch.manual_seed(0)
    layer = LambdaLayer(16, 32, dim_k=4, heads=4, dim_u=2, scope=5, impl=impl).eval()
    scripted = torch.jit.script(layer)
    for height, width in [(9, 7), (20, 20)]:
        x = torch.randn(2, 16, height, width)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), eager(layer, x), rtol=1e-5, atol=1e-5)


def test_lambda_resnet_fpn_backbone_scripts_with_detectron2s_patches():
    import detectron2.export  # noqa: F401  (Detectron2's scripting patches for ResNet / FPN)
    from detectron2.modeling import build_backbone

    backbone = build_backbone(small_cfg()).eval()
    scripted = torch.jit.script(backbone)
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected, got = backbone(x), scripted(x)
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=1e-5, atol=1e-5)


def test_mask_rcnn_traced_with_tracing_adapter_generalizes_to_other_sizes():
    from detectron2.modeling import build_model

    from lambda_det.export import reference_outputs, tracing_adapter

    cfg = small_cfg()  # impl auto: the FFT form in eager mode, the convolution in the trace
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # 100 detections at every size: every output compared
    model = build_model(cfg).eval()
    sample = torch.rand(3, 128, 160) * 255
    adapter = tracing_adapter(model, sample)
    traced = _trace(adapter, sample)
    for height, width in [(96, 200), (150, 111)]:
        image = torch.rand(3, height, width) * 255
        expected = reference_outputs(model, image)
        with torch.no_grad():
            got = traced(image)
        assert len(got) == len(expected) == 5
        for a, b in zip(got, expected):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------------------------------------
# tools/export_model.py
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def sample_image(tmp_path_factory):
    path = tmp_path_factory.mktemp("sample") / "sample.png"
    rng = np.random.default_rng(1)
    image = np.full((150, 200, 3), 90, np.uint8)
    cv2.circle(image, (60, 70), 30, (40, 200, 40), -1)
    cv2.rectangle(image, (120, 30), (180, 110), (200, 40, 40), -1)
    cv2.imwrite(str(path), (image + rng.integers(0, 20, image.shape)).astype(np.uint8))
    return path


def _export(tmp_path, weights, sample, *flags):
    return run_tool("export_model.py", "--config-file", TOY_CONFIG, *flags, "--sample-image", sample,
                    "--output", tmp_path, *TINY, "MODEL.WEIGHTS", weights, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.2")


def _tiny_model(weights):
    from detectron2.modeling import build_model

    from lambda_det import load_config
    from lambda_det.checkpoint import Checkpointer

    cfg = load_config(str(TOY_CONFIG), [*TINY, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.2", "MODEL.DEVICE", "cpu"])
    model = build_model(cfg).eval()
    Checkpointer(model, strict=True).load(str(weights))
    return model


FRESH_PROCESS = r"""
import sys, numpy as np, torch, torchvision  # torchvision registers roi_align / nms
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances
assert "lambda_det" not in sys.modules
module = torch.jit.load(sys.argv[1])
image = torch.from_numpy(np.load(sys.argv[2]))
with torch.no_grad():
    if sys.argv[3] == "tracing":
        boxes, classes, masks, scores, size = module(image)
    else:
        f = module(({"image": image},))[0]
        boxes, classes, masks, scores = f["pred_boxes"], f["pred_classes"], f["pred_masks"], f["scores"]
instances = Instances(tuple(image.shape[1:]), pred_boxes=Boxes(boxes), scores=scores, pred_classes=classes, pred_masks=masks)
final = detector_postprocess(instances, 300, 260)  # the caller's original image size
np.savez(sys.argv[4], boxes=final.pred_boxes.tensor.numpy(), scores=final.scores.numpy(),
         classes=final.pred_classes.numpy(), masks=final.pred_masks.numpy())
assert "lambda_det" not in sys.modules
"""


@pytest.mark.parametrize("method", ["tracing", "scripting"])
def test_torchscript_export_runs_without_lambda_det_at_another_size(tmp_path, tiny_weights, sample_image, method, capsys):
    assert _export(tmp_path / "out", tiny_weights, sample_image, "--format", "torchscript", "--export-method", method) == 0
    info = json.loads((tmp_path / "out" / "export_info.json").read_text())
    assert all(c["max_abs_difference"] < 1e-3 for c in info["checks"].values())
    assert "other_size" in capsys.readouterr().out

    # eager predictions, postprocessed as Detectron2 does, on an image of another size than the sample
    from detectron2.modeling.postprocessing import detector_postprocess

    model = _tiny_model(tiny_weights)
    image = torch.rand(3, 101, 87) * 255
    with torch.no_grad():
        raw = model.inference([{"image": image}], do_postprocess=False)[0]
    expected = detector_postprocess(raw, 300, 260)
    assert len(expected) > 0  # the comparison is about detections, not about two empty lists
    np.save(tmp_path / "image.npy", image.numpy())
    done = subprocess.run([sys.executable, "-c", FRESH_PROCESS, str(tmp_path / "out" / "model.ts"), str(tmp_path / "image.npy"),
                           method, str(tmp_path / "got.npz")], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    got = np.load(tmp_path / "got.npz")
    np.testing.assert_allclose(got["boxes"], expected.pred_boxes.tensor.numpy(), atol=1e-3)
    np.testing.assert_allclose(got["scores"], expected.scores.numpy(), atol=1e-5)
    np.testing.assert_array_equal(got["classes"], expected.pred_classes.numpy())
    np.testing.assert_array_equal(got["masks"], expected.pred_masks.numpy())


@pytest.mark.parametrize("backbone_only", [False, True])
def test_onnx_export_runs_in_onnxruntime_at_several_sizes(tmp_path, tiny_weights, sample_image, backbone_only):
    import onnxruntime

    from lambda_det.export import reference_outputs

    flags = ["--format", "onnx", "--export-method", "tracing"] + (["--backbone-only"] if backbone_only else [])
    assert _export(tmp_path, tiny_weights, sample_image, *flags) == 0
    path = tmp_path / ("backbone.onnx" if backbone_only else "model.onnx")
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    # each output by its name, in the file and in export_info.json (the whole model's were once one "output")
    names = ["p2", "p3", "p4", "p5", "p6"] if backbone_only else ["pred_boxes", "pred_classes", "pred_masks", "scores", "image_size"]
    assert [o.name for o in session.get_outputs()] == names
    assert json.loads((tmp_path / "export_info.json").read_text())["outputs"] == names
    model = _tiny_model(tiny_weights)
    for height, width in [(128, 128), (77, 140), (200, 61)]:
        image = torch.rand(3, height, width) * 255
        expected = reference_outputs(model, image, backbone_only=backbone_only)
        got = session.run(None, {"image": image.numpy()})
        assert len(got) == len(expected)
        for a, b in zip(got, expected):
            assert a.shape == tuple(b.shape)
            np.testing.assert_allclose(a, b.numpy(), rtol=1e-4, atol=1e-3)


def test_export_refuses_what_it_cannot_do(tmp_path, tiny_weights, sample_image, capsys):
    assert run_tool("export_model.py", "--config-file", TOY_CONFIG, "--format", "onnx", "--export-method", "scripting",
                    "--output", tmp_path) == 2
    assert "use --format torchscript" in capsys.readouterr().err
    assert run_tool("export_model.py", "--config-file", TOY_CONFIG, "--format", "torchscript", "--export-method",
                    "tracing", "--output", tmp_path, *TINY) == 2
    assert "exporting needs trained weights" in capsys.readouterr().err
    # a required flag after the overrides: named as misplaced, not as missing
    assert run_tool("export_model.py", "--config-file", TOY_CONFIG, "--format", "torchscript", "--export-method", "tracing",
                    "MODEL.WEIGHTS", tiny_weights, "--output", tmp_path) == 2
    assert "--output comes after the config overrides" in capsys.readouterr().err
    assert _export(tmp_path, tiny_weights, tmp_path / "missing.png", "--format", "torchscript", "--export-method", "tracing") == 2
    assert "missing.png: not a readable image" in capsys.readouterr().err
    assert not (tmp_path / "model.ts").exists()


def test_a_full_disk_during_a_torchscript_export_is_one_line_naming_the_file_and_leaves_nothing(tmp_path, tiny_weights,
                                                                                                  sample_image):
    """TorchScript's own file writer aborted the process (a C++ error) when a write failed, leaving a
    partial model; a file-size limit makes every write past 200 kB fail as a full disk does."""
    def small_disk():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "export_model.py"), "--config-file", str(TOY_CONFIG), "--format", "torchscript",
         "--export-method", "tracing", "--sample-image", str(sample_image), "--output", str(out), *TINY,
         "MODEL.WEIGHTS", str(tiny_weights)],
        capture_output=True, text=True, timeout=600, preexec_fn=small_disk,
        env=dict(os.environ, PYTHONPATH=str(REPO), LAMBDA_DET_FUSED="0"))
    assert done.returncode == 2, done.stderr[-3000:]
    assert f"error: could not write {out / 'model.ts'}: File too large" in done.stderr, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert sorted(p.name for p in out.iterdir()) == [".lambda_det.lock"]  # no partial model, no export_info.json


def test_detections_are_compared_by_match_and_ties_at_the_cut_are_left_out():
    """Near-equal scores leave the sort (and a cut to the detection limit) in another order in an
    export: a reordering is no difference, a moved box, a NaN or other boxes of a whole tie are."""
    from lambda_det.export import max_difference, near_ties, tied_at_the_cut

    names = ["pred_boxes", "pred_classes", "pred_masks", "scores", "image_size"]
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 45], [50, 0, 60, 8]])
    expected = [boxes, torch.tensor([1, 2, 1, 0]), torch.rand(4, 1, 28, 28), torch.tensor([0.9, 0.8, 0.80001, 0.3]),
                torch.tensor([64, 64])]
    order = torch.tensor([0, 2, 1, 3])  # the near-tie 0.8 / 0.80001 the other way round
    got = [t[order] if t.dim() and t.shape[0] == 4 else t for t in expected]
    assert max_difference(got, expected, names) == 0.0
    assert max_difference(got, expected) > 1.0  # compared as lists, it differs
    moved = [t.clone() for t in got]
    moved[0][1] += 3.0
    assert max_difference(moved, expected, names) == pytest.approx(3.0)
    moved[0][1] = float("nan")
    assert max_difference(moved, expected, names) == float("inf")
    assert near_ties(expected, names) == 2 and tied_at_the_cut(expected, names, limit=4) is None

    # two detections tie at the lowest score of a full list (limit 4): which of them the cut kept is arbitrary
    expected[3] = torch.tensor([0.9, 0.8, 0.3, 0.3])
    other = [t.clone() for t in expected]
    other[0][3] = torch.tensor([70.0, 70, 80, 80])  # another of the tied boxes kept
    assert tied_at_the_cut(expected, names, limit=4).tolist() == [False, False, True, True]
    assert max_difference(other, expected, names, limit=4) == 0.0
    assert max_difference(other, expected, names, limit=100) > 1.0  # no cut: every box is compared
    other[3][3] = 0.31  # a tied detection's score is still compared
    assert max_difference(other, expected, names, limit=4) == pytest.approx(0.01)
    other[0][0] += 1.0
    assert max_difference(other, expected, names, limit=4) == pytest.approx(1.0)
    # every detection tied: nothing would be compared, so all are
    expected[3] = torch.full((4,), 0.5)
    assert tied_at_the_cut(expected, names, limit=4) is None
    shifted = [t.clone() for t in expected]
    shifted[0] += 5.0
    assert max_difference(shifted, expected, names, limit=4) == pytest.approx(5.0)


def test_a_sample_image_the_resize_leaves_empty_or_of_one_flat_colour_is_explained(tmp_path, tiny_weights, capsys):
    thin = tmp_path / "thin.png"
    cv2.imwrite(str(thin), np.full((1, 2000, 3), 128, np.uint8))
    assert _export(tmp_path / "out", tiny_weights, thin, "--format", "torchscript", "--export-method", "tracing") == 2
    assert "the sample image of 2000x1 pixels is too thin: the test-time resize" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    flat = tmp_path / "grey.png"
    cv2.imwrite(str(flat), np.full((128, 128, 3), 128, np.uint8))
    # the tiny model's boxes on a flat image tie by the dozen, and the export keeps other boxes: the
    # failure says why it may
    assert _export(tmp_path / "out2", tiny_weights, flat, "--format", "torchscript", "--export-method", "tracing") == 1
    assert "of the model's detections score within 0.0001 of another" in capsys.readouterr().err

    # INPUT.MIN_SIZE_TEST 0 is Detectron2's "no resize at test time": any image goes as it is
    from detectron2.config import get_cfg

    from lambda_det.export import resize_for_model

    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TEST = 0
    assert tuple(resize_for_model(cfg, np.zeros((480, 640, 3), np.uint8)).shape) == (3, 480, 640)


def test_an_export_that_differs_is_flagged_and_replaces_nothing_half_way(tmp_path, tiny_weights, sample_image, capsys, monkeypatch):
    import lambda_det.export as export

    flags = ("--format", "torchscript", "--export-method", "tracing")
    assert _export(tmp_path, tiny_weights, sample_image, *flags) == 0
    assert json.loads((tmp_path / "export_info.json").read_text())["passed"] is True
    earlier = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def crash(*args, **kwargs):
        raise RuntimeError("the exported file cannot be run")

    monkeypatch.setattr(export, "run_exported", crash)
    with pytest.raises(RuntimeError):
        _export(tmp_path, tiny_weights, sample_image, *flags, "--overwrite")
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == earlier  # the earlier export, whole, and no partial files

    def other_outputs(*args, **kwargs):
        raise export.ExportError("the exported model returns 3 outputs, the model 4")

    monkeypatch.undo()
    monkeypatch.setattr(export, "max_difference", other_outputs)
    capsys.readouterr()
    assert _export(tmp_path, tiny_weights, sample_image, *flags, "--overwrite") == 1
    assert "returns 3 outputs" in capsys.readouterr().err
    info = json.loads((tmp_path / "export_info.json").read_text())
    assert info["passed"] is False and info["checks"]["sample"]["max_abs_difference"] is None
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lambda_det.lock", "export_info.json", "model.ts"]
