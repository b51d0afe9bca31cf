"""The benchmarks' own logic on tiny sizes: every method and form runs in both modes, outputs are
written whole, auto is checked against the fastest form, nothing is lost."""
import json

import pytest
import torch

from lambda_det.benchmark import LayerSpec, form_sweep, layer_table, run_layer_benchmark, vs_conv, write_sweep
from lambda_det.benchmark.layer import auto_check, layer_benchmark_paths, sweep_paths, vs_conv_paths
from lambda_det.benchmark.timing import interleaved


def test_layer_benchmark_times_both_modes_and_writes_json_markdown_and_plot(tmp_path):
    spec = LayerSpec(channels=64, dim_k=4, heads=4, scope=7, batch=1)
    methods = ["lambda/auto", "lambda/fft", "lambda/conv2d", "lambda/fused", "lambda/einsum", "conv3x3", "attention"]
    # memory at 64x64 (1 MiB tensors): peak RSS resolves about that, not a few pages
    result = run_layer_benchmark(tmp_path, sides=[8, 16], memory_sides=[64], repeats=2, methods=methods, spec=spec, log=lambda _: None)
    data = json.loads((tmp_path / "lambda_layer_cpu.json").read_text())
    assert data == json.loads(json.dumps(result))
    cells = {(r["method"], r["side"]): r for r in data["records"]}
    for method in methods:
        for side in (8, 16):
            for mode in ("forward", "forward+backward"):
                timing = cells[(method, side)][mode]
                assert 0 < timing["min_s"] <= timing["median_s"] <= timing["max_s"] and timing["runs"] == 2
        if method != "lambda/einsum":  # capped at 32x32 for memory: its E tensor is n x m x k
            assert cells[(method, 64)]["peak_bytes"] > 0, method
    # every form computes the same function as conv2d
    assert all(v < 1e-4 * max(1.0, data["max_abs_difference_to_conv2d"]["scale"])
               for k, v in data["max_abs_difference_to_conv2d"].items() if k != "scale")
    assert {(c["side"], c["mode"]) for c in data["auto_check"]} == {(s, m) for s in (8, 16) for m in ("forward", "forward+backward")}
    for check in data["auto_check"]:  # the pick's own row, and the fastest row
        assert check["picks_s"] == cells[(check["picks"], check["side"])][check["mode"]]["median_s"]
        assert check["fastest_s"] == min(cells[(m, check["side"])][check["mode"]]["median_s"] for m in methods
                                         if m.startswith("lambda/") and m != "lambda/auto" and (m, check["side"]) in cells)
    assert (tmp_path / "lambda_layer_cpu.png").stat().st_size > 10_000
    table = (tmp_path / "lambda_layer_cpu.md").read_text()
    assert "| lambda/fused |" in table and "16x16 fwd+bwd" in table and "`impl=\"auto\"`: the form it picks against the fastest form" in table
    assert not list(tmp_path.glob(".*partial*"))
    assert sorted(layer_benchmark_paths(tmp_path, "cpu").values()) == sorted(tmp_path.iterdir())  # what the tool checks


class FakeClock:
    """Seconds that pass only when a step says what it costs: the harness's rules without timing."""

    def __init__(self):
        self.now = 0.0
        self.calls = []

    def __call__(self):
        return self.now

    def step(self, name, *seconds):
        """A step costing ``seconds[i]`` on its i-th call (the last one from then on)."""
        def run_step():
            self.calls.append(name)
            self.now += seconds[min(self.calls.count(name), len(seconds)) - 1]
        return run_step


def test_interleaved_rotates_the_order_and_times_one_call_of_short_steps():
    clock = FakeClock()
    steps = {"a": clock.step("a", 0.002), "b": clock.step("b", 0.03), "c": clock.step("c", 0.03)}
    timings = interleaved(steps, repeats=3, device=torch.device("cpu"), min_sample_s=0.02, clock=clock)
    calls = clock.calls
    assert calls[:3] == list("abc")  # one warm-up each
    rounds = [name for i, name in enumerate(calls[3:]) if i == 0 or calls[3 + i - 1] != name]
    assert rounds == list("abc" "bca" "cab")  # each round starts one step later
    assert calls[3:].count("a") == 3 * calls[3:].index("b") and calls[3:].index("b") == 10  # a short step fills 20 ms
    assert calls[3:].count("b") == calls[3:].count("c") == 3  # a long one runs once per round
    assert timings["a"].times == pytest.approx([0.002] * 3) and timings["b"].times == pytest.approx([0.03] * 3)  # per call
    assert all(len(t.times) == 3 for t in timings.values())


def test_interleaved_times_a_step_slow_in_its_warm_up_once_and_counts_calls_from_the_last_warm_up():
    clock = FakeClock()
    # "a" is slow in its first warm-up only: its call count follows the last one
    steps = {"a": clock.step("a", 0.5, 0.01), "b": clock.step("b", 0.02), "slow": clock.step("slow", 0.2)}
    timings = interleaved(steps, repeats=4, device=torch.device("cpu"), warmup=2, slow_factor=5.0, min_sample_s=0.05,
                          clock=clock)
    assert clock.calls[:6] == list("aabb") + ["slow", "slow"]  # warm-ups, step by step
    timed = clock.calls[6:]
    assert timed.count("slow") == 1 and len(timings["slow"].times) == 1  # out of the race after one round
    assert timed.count("a") == 4 * 5 and timed.count("b") == 4 * 3  # ceil(50 ms / warm-up time) calls per round
    assert timings["slow"].times == pytest.approx([0.2])
    assert timings["a"].times == pytest.approx([0.01] * 4) and timings["b"].times == pytest.approx([0.02] * 4)


def test_unknown_method_is_named(tmp_path):
    with pytest.raises(ValueError, match="lambda/quantum"):
        run_layer_benchmark(tmp_path, sides=[8], memory_sides=[8], methods=["lambda/quantum"], log=lambda _: None)


def test_auto_check_compares_autos_pick_with_the_fastest_form():
    records = [
        {"method": "lambda/auto", "side": 8, "forward": {"median_s": 0.25}, "forward+backward": {"median_s": 0.33},
         "picks": {"forward": "conv2d", "forward+backward": "fft"}},
        {"method": "lambda/fft", "side": 8, "forward": {"median_s": 0.1}, "forward+backward": {"median_s": 0.3}},
        {"method": "lambda/conv2d", "side": 8, "forward": {"median_s": 0.2}, "forward+backward": {"median_s": 0.6}},
        {"method": "conv3x3", "side": 8, "forward": {"median_s": 0.01}, "forward+backward": {"median_s": 0.02}},
    ]
    checks = {c["mode"]: c for c in auto_check(records)}
    forward, training = checks["forward"], checks["forward+backward"]
    assert forward["fastest"] == "lambda/fft" and forward["picks"] == "lambda/conv2d" and forward["ratio"] == pytest.approx(2.0)
    assert forward["auto_vs_pick"] == pytest.approx(1.25)  # auto's own row against its pick's: noise
    assert training["ratio"] == pytest.approx(1.0) and training["auto_vs_pick"] == pytest.approx(1.1)  # conv3x3 is no form
    table = layer_table(records + [{"method": "timm", "side": 8, "forward": {"median_s": 0.4},
                                    "forward+backward": {"median_s": 1.2}}])
    assert "| lambda/fft | 100 ms (4.0x) | 300 ms (4.0x) |" in table and "speed-up over `timm`" in table
    assert "speed-up over" not in layer_table(records)  # no timm row: no ratios, no legend for them


def test_form_sweep_reports_what_auto_picks_and_the_fastest_form(tmp_path):
    cells = [{"channels": 32, "side": 8, "stride": 1, "batch": 1, "scope": 5},
             {"channels": 32, "side": 12, "stride": 2, "batch": 2, "scope": 7}]
    records = form_sweep(cells, repeats=2, log=lambda _: None)
    for record in records:
        for mode in ("forward", "forward+backward"):
            m = record[mode]
            assert set(m["times"]) >= {"fft", "conv2d", "conv3d", "einsum"}
            assert m["fastest"] in m["times"] and m["auto_picks"] in m["times"]
            assert m["auto_vs_fastest"] >= 1.0
    paths = write_sweep(tmp_path, "auto_rule", "test", records, "cpu", 2)
    assert paths == sweep_paths(tmp_path, "auto_rule", "cpu") and sorted(paths.values()) == sorted(tmp_path.iterdir())
    assert "auto / fastest" in paths["md"].read_text()
    assert json.loads(paths["json"].read_text())["records"] == json.loads(json.dumps(records))


def test_vs_conv_compares_layer_and_block_with_memory(tmp_path):
    result = vs_conv(tmp_path, batches=[1], repeats=2, log=lambda _: None, shapes=(("small", 32, 16, 1), ("small s2", 32, 16, 2)))
    levels = {(r["shape"], r["level"]) for r in result["records"]}
    assert levels == {("small", "layer"), ("small", "block"), ("small s2", "layer"), ("small s2", "block")}
    for r in result["records"]:
        assert r["forward"]["ratio"] > 0 and r["forward+backward"]["ratio"] > 0
        if r["level"] == "layer":
            assert set(r["peak_bytes"]) == {"lambda", "conv3x3"}
    assert "Worst ratios" in (tmp_path / "lambda_vs_conv_cpu.md").read_text()
    assert sorted(vs_conv_paths(tmp_path, "cpu").values()) == sorted(tmp_path.iterdir())


def test_vs_conv_times_each_form_in_each_arithmetic(tmp_path):
    """The CUDA table's columns, reached on the CPU: forms beside auto, and a second arithmetic
    (autocast, bfloat16 on the CPU) whose records and memory are kept apart from float32's."""
    result = vs_conv(tmp_path, batches=[1], repeats=1, log=lambda _: None, shapes=(("small", 32, 16, 1),),
                     precisions=("float32", "amp"), forms=["conv2d", "fft"])
    layer_rows = [r for r in result["records"] if r["level"] == "layer"]
    assert [r["precision"] for r in layer_rows] == ["float32", "amp"]
    for r in layer_rows:
        assert {"lambda", "conv3x3", "lambda/conv2d", "lambda/fft"} <= set(r["forward"])
        assert set(r["picks"]) == {"forward", "forward+backward"} and set(r["picks"].values()) <= {"fused", "conv2d", "fft"}
        assert set(r["peak_bytes"]) == {"lambda", "conv3x3"}  # (on a CPU, peak RSS may not resolve a tiny layer)
    report = (tmp_path / "lambda_vs_conv_cpu.md").read_text()
    assert "## Every form of the position term" in report and "lambda/fft" in report
    assert "amp, layer, stride 1, forward" in report


def test_precision_contexts_set_and_restore_the_switches():
    from lambda_det.benchmark.numerics import precision_context, tf32_switches

    before = tf32_switches()
    assert before == {"matmul_tf32": False, "conv_tf32": True, "lambda_operator_tf32": True}  # PyTorch's defaults
    with precision_context("ieee", torch.device("cuda")):
        assert tf32_switches() == {"matmul_tf32": False, "conv_tf32": False, "lambda_operator_tf32": False}
    assert tf32_switches() == before
    with precision_context("amp", torch.device("cpu")):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        precision_context("fp8", torch.device("cpu"))


def test_kernel_report_names_the_fastest_agreeing_tiles_and_what_they_change():
    """What the next GPU run decides: the defaults to set. A variant that disagrees with the default's
    result is never the fastest; a lead inside the rounds' spread is said to be one."""
    from lambda_det.benchmark.kernels import fastest_variants
    from lambda_det.layers import triton_lambda as T

    def record(kernel, variant, median, low, high, tiles, rows=1, agrees=True, arithmetic="TF32"):
        return {"shape": "res4", "arithmetic": arithmetic, "kernel": kernel, "variant": variant, "tiles": tiles._asdict(),
                "rows": rows, "agrees": agrees, "time": {"median_s": median, "min_s": low, "max_s": high, "runs": 3}}

    v, f, q = T.V_GRAD_TILES, T.FORWARD_TILES, T.QR_GRAD_TILES
    records = [
        record("dV", "default", 1.0, 0.95, 1.05, v),
        record("dV", "4 value rows of 8 columns", 0.6, 0.58, 0.62, v._replace(vr=4, bx=8)),
        record("dV", "wrong but fast", 0.1, 0.1, 0.1, v._replace(vr=2), agrees=False),
        record("forward", "default", 1.0, 0.9, 1.1, f),
        record("forward", "2 query rows", 0.95, 0.92, 1.02, f._replace(qrows=2)),
        record("dq/dR", "default", 1.0, 0.99, 1.01, q, rows=8),
        record("dq/dR", "2048 programs", 1.2, 1.1, 1.3, q, rows=4),
        record("dq/dR", "one row per program", 0.8, 0.7, 0.9, q, rows=1),
        record("dV", "default", 1.0, 0.95, 1.05, v, arithmetic="float16"),
        record("dV", "2 value rows", 1.1, 1.0, 1.2, v._replace(vr=2), arithmetic="float16"),
        dict(record("forward", "default", 1.0, 1.0, 1.0, f, arithmetic="float16"), time={"median_s": 1.0, "min_s": 1.0,
                                                                                          "max_s": 1.0, "runs": 1}),
        dict(record("forward", "as first measured", 0.5, 0.5, 0.5, f._replace(flat=False), arithmetic="float16"),
             operator_layouts=False),
        {"shape": "res4", "arithmetic": "TF32", "kernel": "torch", "variant": "content", "time": {"median_s": 0.01}},
    ]
    assert fastest_variants(records) == [
        'res4, TF32, dV: "4 value rows of 8 columns", 0.60x the default\'s time (beyond the rounds\' spread): bx=8, vr=4',
        'res4, TF32, forward: "2 query rows", 0.95x the default\'s time (within the rounds\' spread): qrows=2',
        'res4, TF32, dq/dR: "one row per program", 0.80x the default\'s time (beyond the rounds\' spread): '
        "1 query rows per program (default 8)",
        "res4, float16, dV: the default tiles",
        'res4, float16, forward: "as first measured", 0.50x the default\'s time (one round: no spread): flat=False, '
        "operands in other layouts than the operator launches with",
    ]


def test_executed_flop_counts_every_iteration_of_the_kernels_loops():
    """The kernel benchmark's FLOP count against the kernels' loops walked program by program."""
    import itertools
    import math

    from lambda_det.benchmark.kernels import executed_flop
    from lambda_det.layers import triton_lambda as T

    shape = dict(b=2, heads=5, k=20, u=2, v=70, side=11, r=7)
    b, heads, k, u, v, side, r = (shape[n] for n in ("b", "heads", "k", "u", "v", "side", "r"))
    c = r // 2

    def walk(kernel, t, rows=1):
        macs, m, kb = 0, t.hb * t.bx, math.ceil(k / t.bk)
        if kernel == "dV":  # programs of t.vr value rows from y0, stepping over the query rows that reach them
            for _image, y0, x0 in itertools.product(range(b), range(0, side, t.vr), range(0, side, t.bx)):
                x_end = min(x0 + t.bx, side)
                query_rows = [y for y in range(side) if any(0 <= y0 + i - y + c < r for i in range(t.vr) if y0 + i < side)]
                taps = range(max(x0 + c - side + 1, 0), min(x_end + c, r), t.taps)
                for _vb in range(math.ceil(v / t.bv)):
                    s_rows = t.hb * t.bxh
                    macs += u * len(query_rows) * len(taps) * math.ceil(heads / t.hb) * (
                        kb * s_rows * t.bk * t.vr * t.rt + t.vr * t.bx * s_rows * t.bv)
            return 2 * macs
        for _image in range(b):
            for y in range(0, side, t.qrows):  # forward: programs of t.qrows query rows from y
                for x0 in range(0, side, t.bx):
                    x_end = min(x0 + t.bx, side)
                    dys = range(max(c - y, 0), min(c - y + side, r))
                    # forward: the value rows some query row of the program reaches, one step each
                    value_rows = [yv for yv in range(side) if any(0 <= yv - y - i + c < r for i in range(t.qrows) if y + i < side)]
                    taps = range(max(c - x_end + 1, 0), min(c - x0 + side, r), t.taps)
                    for _group in range(math.ceil(heads / t.hb)):
                        for _vb in range(math.ceil(v / t.bv) if kernel != "dq/dR" else 1):
                            if kernel == "forward":
                                mq = t.qrows * m
                                macs += kb * mq * t.bk * t.bv + u * len(value_rows) * len(taps) * (
                                    kb * mq * t.bk * t.qrows * t.rt + mq * t.bxh * t.bv)
                            else:
                                vb = math.ceil(v / t.bv)
                                macs += kb * (vb * m * t.bv * t.bk + u * len(dys) * len(taps) * (vb * m * t.bv * t.bxh + 2 * m * t.rt * t.bk))
        return 2 * macs

    for kernel, tiles in (("forward", T.FORWARD_TILES), ("dq/dR", T.QR_GRAD_TILES), ("dV", T.V_GRAD_TILES),
                          ("forward", T.FORWARD_TILES._replace(bx=16)), ("dV", T.V_GRAD_TILES._replace(vr=4)),
                          ("forward", T.FORWARD_TILES._replace(qrows=4))):
        assert executed_flop(kernel, shape, tiles) == walk(kernel, tiles), kernel


def test_detector_benchmark_quick(tmp_path, capsys):
    from conftest import run_tool

    assert run_tool("benchmark_detector.py", "--quick", "--output", tmp_path) == 0
    data = json.loads((tmp_path / "detector_cpu_quick.json").read_text())
    names = {r["model"] for r in data["records"]}
    assert names == {"toy LambdaResNet", "toy LambdaResNet conv twin"}
    for r in data["records"]:
        assert r["train"]["median_s"] > 0 and r["inference"]["median_s"] > 0 and r["train_peak_bytes"] > 0
        assert r["model_gflops"] > r["backbone_gflops"] > 0
        assert {"stem", "res2", "res3", "res4", "res5", "FPN", "RPN", "ROI heads"} <= set(r["breakdown_train_forward"])
    assert data["targets"][0]["model"] == "toy LambdaResNet"
    first = data["records"][0]
    assert (f"proposals ({first['test_proposals']}) and detections ({first['test_detections']})"
            in (tmp_path / "detector_cpu_quick.md").read_text())
    assert (tmp_path / "detector_cpu_quick.png").stat().st_size > 5_000
    assert run_tool("benchmark_detector.py", "--quick", "--output", tmp_path) == 2  # not replaced unasked
    assert "would be overwritten" in capsys.readouterr().err
    assert run_tool("benchmark_detector.py", "--quick", "--output", tmp_path, "--amp") == 2  # the real problem first
    assert "--amp needs --device cuda" in capsys.readouterr().err
    before = (tmp_path / "detector_cpu_quick.json").read_bytes()
    assert run_tool("benchmark_detector.py", "--quick", "--output", tmp_path, "--tag", "again") == 0  # a run of its own
    assert (tmp_path / "detector_cpu_quick_again.md").exists() and (tmp_path / "detector_cpu_quick.json").read_bytes() == before


def test_a_benchmark_into_a_folder_another_benchmark_is_writing_is_refused(tmp_path, capsys):
    """Two benchmarks into one folder both passed the check for earlier results, and the second to end
    replaced the first's files; now the folder is locked while one runs."""
    from conftest import run_tool

    from lambda_det.engine import run_folder_lock

    with run_folder_lock(tmp_path, "--output"):  # another benchmark running there
        for argv in (("benchmark_detector.py", "--quick", "--no-flops"), ("benchmark_lambda.py", "--sides", "8", "--repeats", "1")):
            assert run_tool(*argv, "--output", tmp_path) == 2, argv
            assert f"--output {tmp_path} is in use by another run" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == [".lambda_det.lock"]
    # an unknown method is named before the output folder is made
    assert run_tool("benchmark_lambda.py", "--methods", "bogus", "--output", tmp_path / "new") == 2
    assert "unknown or unavailable methods ['bogus']" in capsys.readouterr().err and not (tmp_path / "new").exists()


def test_detectron2_reference_gets_the_worst_case_work_from_random_weights(monkeypatch):
    """Detectron2's R-101 from random weights has features of ~1e7 and no proposals unless its
    residual branches start at zero: its inference would then time heads that do nothing."""
    from lambda_det.benchmark import detector

    reference = next(m for m in detector.table6_models() if m.name == "Detectron2 R-101-FPN")
    runner = detector.Runner(reference, 128, 1, torch.device("cpu"), False)
    runner.check_worst_case()
    monkeypatch.setattr(detector, "zero_init_residual_branches", lambda model: None)
    untamed = detector.Runner(reference, 128, 1, torch.device("cpu"), False)
    with pytest.raises(RuntimeError, match="detections per image instead of 100"):
        untamed.check_worst_case()


def test_times_keep_two_digits_below_ten_milliseconds():
    from lambda_det.benchmark.timing import spread

    assert spread({"median_s": 0.1234, "min_s": 0.118, "max_s": 0.131, "runs": 3}) == "123 ms (118-131)"
    assert spread({"median_s": 0.00031, "min_s": 0.0003, "max_s": 0.00042, "runs": 3}) == "0.31 ms (0.3-0.42)"
    assert spread({"median_s": 0.0042, "min_s": 0.0042, "max_s": 0.0042, "runs": 1}) == "4.2 ms"
