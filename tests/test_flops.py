"""FLOPs of the lambda layer: the same count for every form, equal to the closed form, and counted
by fvcore / Detectron2 / tools/analyze_model.py with nothing more than `import lambda_det`."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY, TOY_CONFIG, run_tool, small_cfg

from lambda_det.data import generate_toy_dataset
from lambda_det.layers import IMPL_CHOICES, LambdaLayer, lambda_layer_flops
from lambda_det.layers.flops import taps_inside

IMPLS = list(IMPL_CHOICES)


def _fvcore_flops(module, *inputs):
    from fvcore.nn import FlopCountAnalysis

    analysis = FlopCountAnalysis(module, inputs)
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return analysis


@pytest.mark.parametrize("size,window", [(1, 23), (5, 3), (24, 7), (20, 23), (6, 11)])
def test_taps_inside_counts_pairs_within_the_scope_and_the_map(size, window):
    c = window // 2
    brute = sum(1 for y in range(size) for m in range(size) if abs(m - y) <= c)
    assert taps_inside(size, window) == brute


@pytest.mark.parametrize("scope,height,width", [(7, 24, 20), (23, 12, 30), (None, 9, 11)])
def test_one_layer_counts_the_closed_form_for_every_impl(scope, height, width):
    d, d_out, k, h, u = 32, 64, 8, 4, 2
    v = d_out // h
    counts = set()
    for impl in IMPLS:
        # without norms: fvcore counts batch norm by its own rule, as in every model
        layer = LambdaLayer(d, d_out, dim_k=k, heads=h, dim_u=u, scope=scope, impl=impl, norm="", global_max_size=32)
        counts.add(_fvcore_flops(layer, torch.randn(2, d, height, width)).total())
    assert len(counts) == 1, counts  # the form does not change the count
    # the closed form, written out here from the definition (one multiply-add = one flop), batch 2
    n = height * width
    window = (2 * height - 1, 2 * width - 1) if scope is None else (scope, scope)
    pairs = sum(1 for y in range(height) for yy in range(height) if abs(yy - y) <= window[0] // 2) * \
        sum(1 for x in range(width) for xx in range(width) if abs(xx - x) <= window[1] // 2)
    by_hand = 2 * (n * d * (h * k + k * u + v * u)  # projections
                   + n * k * v * u + n * h * k * v  # content lambda and its application
                   + pairs * k * v * u + n * h * k * v)  # position lambdas (pairs inside the map) and application
    assert counts == {by_hand}
    assert lambda_layer_flops(layer, height, width, batch=2) == by_hand


def test_position_term_is_counted_not_reported_unsupported():
    layer = LambdaLayer(16, 16, dim_k=4, heads=4, scope=5).eval()
    analysis = _fvcore_flops(layer, torch.randn(1, 16, 10, 10))
    assert analysis.by_operator()["position_term"] > 0
    # what is left unsupported is the size arithmetic every trace records (aten::mul / sub on ints)
    # and the softmax, not the position lambdas' FFTs or their per-position multiply-adds
    assert not {"aten::fft_rfftn", "aten::fft_irfftn", "aten::fft_rfft2", "aten::fft_irfft2"} & set(analysis.unsupported_ops())
    assert analysis.unsupported_ops()["aten::mul"] <= 6  # k = 4 products per position would be 4 more per image


def test_tracing_for_export_does_not_see_the_counting_operator():
    layer = LambdaLayer(16, 16, dim_k=4, heads=4, scope=5).eval()
    traced = torch.jit.trace(layer, torch.randn(1, 16, 10, 10))
    assert "lambda_det::" not in str(traced.graph)


def test_detectron2_flop_count_analysis_on_a_lambda_mask_rcnn():
    from detectron2.modeling import build_model
    from detectron2.utils.analysis import FlopCountAnalysis

    cfg = small_cfg()
    model = build_model(cfg).eval()
    inputs = [{"image": torch.rand(3, 100, 124) * 255}]
    with torch.no_grad():
        analysis = FlopCountAnalysis(model, inputs)
        analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        by_module = analysis.by_module()
    lambda_blocks = [name for name, m in model.named_modules() if isinstance(m, LambdaLayer)]
    assert lambda_blocks
    for name in lambda_blocks:
        assert by_module[f"model.{name}"] > 0


def test_analyze_model_tool_reports_flops_and_parameters(tmp_path, capsys):
    out = tmp_path / "analysis.json"
    code = run_tool("analyze_model.py", "--config-file", TOY_CONFIG, "--tasks", "flop", "parameter", "activation",
                    "-n", "2", "--input-size", "128", "96", "--worst-case", "--json", out, *TINY)
    assert code == 0
    printed = capsys.readouterr().out
    assert "Total GFLOPs" in printed and "Parameters:" in printed and "position_term" in printed
    summary = json.loads(out.read_text())
    assert 0 < summary["bottom_up_gflops"] < summary["backbone_fpn_gflops"] < summary["model_gflops"]
    assert summary["model_gflops_std"] == pytest.approx(0.0, abs=1e-9)  # --worst-case: weights and content do not matter
    from detectron2.modeling import build_model

    from lambda_det import load_config

    model = build_model(load_config(str(TOY_CONFIG), TINY))
    assert summary["model_params_m"] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)
    assert run_tool("analyze_model.py", "--config-file", TOY_CONFIG, "--tasks", "parameter", "--json", out, *TINY) == 2
    assert "would be overwritten" in capsys.readouterr().err


def test_analyze_model_takes_overrides_right_after_tasks_and_names_a_late_flag(tmp_path, capsys):
    out = tmp_path / "analysis.json"
    # Detectron2's usage without -n: the overrides follow --tasks directly
    assert run_tool("analyze_model.py", "--config-file", TOY_CONFIG, "--json", out, "--tasks", "parameter", *TINY) == 0
    from detectron2.modeling import build_model

    from lambda_det import load_config

    tiny = build_model(load_config(str(TOY_CONFIG), TINY))
    record = json.loads(out.read_text())
    assert record["model_params_m"] == pytest.approx(sum(p.numel() for p in tiny.parameters()) / 1e6)
    assert record["num_inputs"] is None  # no image was counted
    capsys.readouterr()
    # argparse's REMAINDER would hand a flag after the overrides over as a config key
    for before in (["--tasks", "parameter"], ["--tasks", "parameter", "-n", "1"]):
        assert run_tool("analyze_model.py", "--config-file", TOY_CONFIG, *before, *TINY, "--json", tmp_path / "late.json") == 2
        err = capsys.readouterr().err
        assert "--json comes after the config overrides" in err and not (tmp_path / "late.json").exists()


def test_analyze_model_counts_ones_own_dataset_and_names_an_unknown_flag(tmp_path, capsys):
    """--dataset registers a COCO-format dataset, as in train_net; an unknown flag before the overrides was
    reported as the required flags after it missing."""
    root = generate_toy_dataset(tmp_path / "mine", splits={"val": 2}, seed=3)
    out = tmp_path / "analysis.json"
    assert run_tool("analyze_model.py", "--config-file", TOY_CONFIG, "--dataset", "mine", root / "annotations" / "instances_val.json",
                    root / "val", "--tasks", "flop", "--json", out, *TINY, "DATASETS.TEST", "('mine',)") == 0
    assert json.loads(out.read_text())["num_inputs"] == 2  # its two images
    capsys.readouterr()
    assert run_tool("analyze_model.py", "--foo", "1", "--config-file", TOY_CONFIG, "--tasks", "parameter") == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --foo" in err and "required" not in err
    assert run_tool("analyze_model.py", "--tasks", "parameter", "--json-file", out, "--config-file", TOY_CONFIG) == 2
    assert "unrecognized arguments: --json-file; did you mean --json?" in capsys.readouterr().err
    assert run_tool("analyze_model.py", "--config-file", TOY_CONFIG, "-n1", "--tasks", "parameter", *TINY) == 0  # argparse's -n 1


def test_analyze_model_names_only_the_unknown_task_not_the_overrides_after_it(capsys):
    assert run_tool("analyze_model.py", "--config-file", TOY_CONFIG, "--tasks", "nosuch", "MODEL.DEVICE", "cpu") == 2
    assert "--tasks: ['nosuch'] not among" in capsys.readouterr().err


def test_analyze_model_names_an_input_size_too_small_for_the_model(capsys):
    """With a channel per FPN group (the tiny test model) a 32 x 32 input leaves one value per group at
    the 1 x 1 top level: GroupNorm's ValueError was a traceback."""
    assert run_tool("analyze_model.py", "--config-file", TOY_CONFIG, "--tasks", "flop", "--input-size", "32", "32", *TINY) == 2
    err = capsys.readouterr().err
    assert "--input-size 32 32: too small for this model" in err and "Traceback" not in err


def test_analyze_model_worst_case_refuses_a_model_whose_heads_get_nothing(capsys):
    """Detectron2's R-101 from random weights: features of ~1e7, no proposals, so the heads' FLOPs
    would silently be left out of a --worst-case count."""
    from detectron2 import model_zoo

    config = model_zoo.get_config_file("COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x.yaml")
    code = run_tool("analyze_model.py", "--config-file", config, "--tasks", "flop", "-n", "1",
                    "--input-size", "128", "128", "--worst-case", "MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu")
    assert code == 2
    assert "instead of TEST.DETECTIONS_PER_IMAGE=100" in capsys.readouterr().err
