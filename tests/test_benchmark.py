"""The benchmark's own logic on a tiny layer: every method runs, outputs are written, nothing is lost."""
import json

import pytest

from lambda_det.benchmark import LayerSpec, markdown_table, merge, run


def test_benchmark_writes_json_markdown_and_plot(tmp_path):
    spec = LayerSpec(channels=64, dim_k=4, heads=4, scope=7, batch=1)
    methods = ["lambda/auto", "lambda/fft", "lambda/conv2d", "lambda/einsum", "conv3x3", "attention"]
    # memory at 64x64 (1 MiB tensors): peak RSS resolves about that, not a few pages (see peak_memory_bytes)
    result = run(tmp_path, sides=[8, 16], memory_sides=[64], repeats=1, methods=methods, spec=spec, log=lambda _: None)
    data = json.loads((tmp_path / "lambda_layer_cpu.json").read_text())
    assert data == json.loads(json.dumps(result))
    cells = {(r["method"], r["side"]): r for r in data["records"]}
    for method in methods:
        for side in (8, 16):
            assert cells[(method, side)]["median_s"] > 0
        if method != "lambda/einsum":  # capped at 32x32 for memory: its E tensor is n x m x k
            assert cells[(method, 64)]["peak_bytes"] > 0, method
    # every form computes the same function as conv2d
    assert all(v < 1e-4 * max(1.0, data["max_abs_difference_to_conv2d"]["scale"])
               for k, v in data["max_abs_difference_to_conv2d"].items() if k != "scale")
    assert (tmp_path / "lambda_layer_cpu.png").stat().st_size > 10_000
    table = (tmp_path / "lambda_layer_cpu.md").read_text()
    assert "| lambda/fft |" in table and "64x64 peak mem" in table
    assert not (tmp_path / "lambda_layer_cpu.timing.json").exists()


def test_unknown_method_is_named(tmp_path):
    with pytest.raises(ValueError, match="lambda/quantum"):
        run(tmp_path, sides=[8], memory_sides=[8], methods=["lambda/quantum"], log=lambda _: None)


def test_speedup_column_is_relative_to_the_reference():
    records = merge(
        [{"method": "timm", "side": 8, "median_s": 0.4}, {"method": "lambda/fft", "side": 8, "median_s": 0.1}],
        [{"method": "timm", "side": 8, "peak_bytes": 2**20}, {"method": "lambda/fft", "side": 8, "failed": "worker killed"}],
    )
    table = markdown_table(records)
    assert "| lambda/fft | 100 ms (4.0x) | failed |" in table
    assert "| timm | 400 ms | 1 MiB |" in table
