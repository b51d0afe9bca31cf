"""The Triton operator for the lambda output (lambda_det/layers/triton_lambda.py).

Without a GPU: the kernels run in Triton's CPU interpreter (a subprocess with TRITON_INTERPRET=1,
tests/triton_interp_worker.py) against a float64 reference, inside NaN guard buffers; every kernel
configuration the dispatcher can launch is compiled ahead of time for sm_80 and sm_90 and checked
with Triton's bundled ptxas; the auto choice and the error paths are checked directly.

Tests marked ``cuda`` need a GPU (``make gpu-check`` runs them). With LAMBDA_DET_TEST_DEVICE=cpu and
TRITON_INTERPRET=1 they run on the CPU at toy sizes instead: the dry run of scripts/gpu_check.sh.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch

from lambda_det.benchmark.kernels import ARITHMETIC, VARIANT_ARITHMETIC, variants
from lambda_det.benchmark.numerics import operator_precision
from lambda_det.layers import triton_lambda as T

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "triton_interp_worker.py"
_spec = importlib.util.spec_from_file_location("triton_interp_worker", WORKER)
W = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(W)

needs_triton = pytest.mark.skipif(T.triton is None, reason="triton is not installed")


def run_worker(*checks: str, timeout: int = 800) -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, str(WORKER), *checks], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=str(REPO))
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            results[record["check"]] = record
    missing = [c for c in checks if c not in results]
    assert not missing, f"the interpreter worker (exit {proc.returncode}) gave no result for {missing}:\n{proc.stderr[-5000:]}"
    return results


# every shape of the worker, forward and backward inside guards; "basic@2": two query rows per
# dq/dR program, so that a program adds to its partial dR sums (read, add, write) between rows
GUARD_CHECKS = [f"guards:{name}" for name in W.SHAPES] + ["guards:basic@2"]
# every tile variant the kernel benchmark may time (lambda_det.benchmark.kernels.variants), on a global
# scope (two tap chunks, two x segments) and on k 17 / v 70 (k and v in blocks)
VARIANT_CHECKS = ["variants:global", "variants:blocks"]
DEFAULT_CHECKS = GUARD_CHECKS + VARIANT_CHECKS + ["gradcheck:u2_global", "gradgradcheck", "half", "library_op", "precision_switch", "layer",
                                                  "layer_autocast", "kernel_benchmark"]


@pytest.fixture(scope="module")
def interpreter_results():
    """All default interpreter checks in one subprocess (its imports cost seconds on 2 cores)."""
    return run_worker(*DEFAULT_CHECKS)


def assert_passed(results: dict, check: str) -> None:
    record = results[check]
    assert not record["errors"], f"{check} ({record['seconds']} s):\n" + "\n".join(record["errors"])


def test_tap_loop_reference_matches_scalar_loops():
    """The reference every kernel check uses, against the contract written as scalar loops."""
    for shape in ((1, 2, 2, 2, 3, 3, 4, 3, 5), (2, 1, 3, 1, 2, 2, 3, 3, 5), (1, 1, 2, 1, 1, 2, 2, 3, 3)):
        inputs = W.make_inputs(shape, seed=3)
        assert W.relative_error(W.reference_taps(*inputs), W.reference_scalar(*inputs)) <= 1e-13


def test_guard_helper_detects_writes_outside():
    """The guard check itself: a write one element past the view is seen."""
    view, flat = W.in_guard(torch.zeros(2, 3, 4, dtype=torch.float64), W.SENTINEL, transpose_last=True)
    view.fill_(1.0)
    assert W.guard_intact(view, flat, W.SENTINEL)
    flat[view.storage_offset() - 1] = 0.0
    assert not W.guard_intact(view, flat, W.SENTINEL)


@needs_triton
@pytest.mark.parametrize("check", GUARD_CHECKS)
def test_interpreter_matches_float64_reference_inside_guards(interpreter_results, check):
    """Forward, backward and the torch.library op, float64, relative error <= 1e-10, guards intact."""
    assert_passed(interpreter_results, check)


@needs_triton
@pytest.mark.parametrize("check", VARIANT_CHECKS)
def test_interpreter_tile_variants_match_float64_reference_inside_guards(interpreter_results, check):
    assert_passed(interpreter_results, check)


@needs_triton
@pytest.mark.slow
def test_interpreter_stacked_rows_on_every_shape():
    """The variants that stack value rows (dV) or query rows (forward) on every other shape: rows past
    the map, u > 1, two images, small k / v (about a minute in the interpreter)."""
    assert_passed(run_worker("stacked_rows"), "stacked_rows")


@needs_triton
def test_kernel_benchmark_records_a_variant_that_cannot_launch_and_goes_on(interpreter_results):
    assert_passed(interpreter_results, "kernel_benchmark")


@needs_triton
def test_interpreter_gradcheck_fast(interpreter_results):
    """gradcheck's fast mode (random projections of the Jacobian), u 2, a global 3 x 5 scope."""
    assert_passed(interpreter_results, "gradcheck:u2_global")


@needs_triton
def test_interpreter_gradgradcheck(interpreter_results):
    """Second derivatives (create_graph), which the backward takes from the lambda convolution, and
    first-order gradients under create_graph equal to the plain ones."""
    assert_passed(interpreter_results, "gradgradcheck")


@needs_triton
@pytest.mark.slow
def test_interpreter_gradcheck_full_jacobian():
    """The whole Jacobian, element by element (about a minute in the interpreter)."""
    assert_passed(run_worker("gradcheck:tiny"), "gradcheck:tiny")


@needs_triton
def test_interpreter_half_precision_and_autocast(interpreter_results):
    assert_passed(interpreter_results, "half")


@needs_triton
def test_one_library_op_for_autograd_and_compile(interpreter_results):
    assert_passed(interpreter_results, "library_op")


@needs_triton
def test_tf32_follows_pytorchs_convolution_switch(interpreter_results):
    assert_passed(interpreter_results, "precision_switch")


# ------------------------------------------------------------------------------------------------
# availability and the auto choice
# ------------------------------------------------------------------------------------------------
@needs_triton
def test_the_layer_with_impl_triton_matches_the_float64_reference(interpreter_results):
    assert_passed(interpreter_results, "layer")


@needs_triton
def test_the_layer_under_autocast_hands_the_operator_its_projections_without_a_float32_round_trip(interpreter_results):
    assert_passed(interpreter_results, "layer_autocast")


@needs_triton
def test_auto_choice_picks_triton_for_cuda():
    """CUDA + a Triton with its NVIDIA backend -> the Triton operator; no GPU needed to decide."""
    assert "nvidia" in T.triton.backends.backends
    assert T.choose_triton("cuda")
    assert T.available("cuda") and T.unavailable_reason("cuda") is None
    assert not T.choose_triton("cpu")  # the fused CPU operator is the fast form there
    # and the layer's auto rule follows it
    from lambda_det.layers import LambdaLayer

    layer = LambdaLayer(8, 8, dim_k=4, heads=2, scope=5)
    assert layer.resolve_impl(16, 16, True, fused_ok=False, triton_ok=T.choose_triton("cuda")) == "triton"
    assert layer.resolve_impl(16, 16, True, fused_ok=True, triton_ok=T.choose_triton("cpu")) == "fused"


@needs_triton
def test_cpu_needs_the_interpreter(monkeypatch):
    if T.INTERPRETED:
        pytest.skip("this test process runs the kernels in the interpreter")
    assert not T.available("cpu")
    assert "TRITON_INTERPRET=1" in T.unavailable_reason(torch.device("cpu"))
    q, values, kernel, content = W.make_inputs((1, 1, 2, 1, 2, 3, 3, 3, 3))
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        T.lambda_output_triton(q, values, kernel, content)


def test_unavailable_reasons(monkeypatch):
    monkeypatch.setenv("LAMBDA_DET_TRITON", "0")
    assert not T.choose_triton("cuda")
    assert "LAMBDA_DET_TRITON=0" in T.unavailable_reason("cuda")
    monkeypatch.delenv("LAMBDA_DET_TRITON")
    monkeypatch.setattr(T, "triton", None)
    monkeypatch.setattr(T, "_IMPORT_ERROR", "ModuleNotFoundError: No module named 'triton'")
    assert not T.available("cuda") and not T.choose_triton("cuda")
    assert "not installed" in T.unavailable_reason("cuda")


def test_rejects_inputs_outside_the_contract():
    q, values, kernel, content = W.make_inputs((1, 2, 3, 1, 4, 5, 5, 3, 3))
    with pytest.raises(ValueError, match="odd"):
        T.lambda_output_triton(q, values, torch.zeros(3, 1, 4, 3, dtype=torch.float64), content)
    with pytest.raises(ValueError, match="inconsistent"):
        T.lambda_output_triton(q, values[:, :, :3], kernel, content)
    with pytest.raises(ValueError, match="expects"):
        T.lambda_output_triton(q[0], values, kernel, content)
    with pytest.raises(ValueError, match="one floating dtype"):
        T.lambda_output_triton(q.float(), values, kernel, content)


# ------------------------------------------------------------------------------------------------
# ahead-of-time compilation for real GPUs
# ------------------------------------------------------------------------------------------------
# Shared memory one block may use: sm_80 (A100) 163 KB, sm_90 (H100/H200) 227 KB.
SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
# Spill limits (bytes of spill stores that ptxas reports): none for the tensor-core paths the
# network trains with (TF32, float16, bfloat16) at res4, the main Table 6 shape; at most 256 for any
# configuration (the largest seen: 108, dV in IEEE float32 at k 64 on sm_80; docs/gpu.md has the table).
MAX_SPILL_BYTES = 256
MAX_SPILL_BYTES_TENSOR_CORE_RES4 = 0


def ptxas_report(ptx: str, arch: str) -> dict:
    import triton

    ptxas = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "kernel.ptx"
        src.write_text(ptx)
        proc = subprocess.run([str(ptxas), "-v", f"--gpu-name={arch}", str(src), "-o", str(Path(tmp) / "kernel.cubin")],
                              capture_output=True, text=True)
    assert proc.returncode == 0, f"ptxas failed for {arch}:\n{proc.stderr[-3000:]}"
    text = proc.stderr
    return {"registers": int(re.search(r"Used (\d+) registers", text).group(1)),
            "spill_stores": int(re.search(r"(\d+) bytes spill stores", text).group(1)),
            "spill_loads": int(re.search(r"(\d+) bytes spill loads", text).group(1))}


def compile_all(capability: int) -> list:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    arch = "sm_90a" if capability == 90 else f"sm_{capability}"
    rows = []
    for c in T.kernel_configurations():
        compiled = triton.compile(ASTSource(c.fn, c.signature, c.constexprs, c.attrs),
                                  target=GPUTarget("cuda", capability, 32),
                                  options={"num_warps": c.num_warps, "num_stages": c.num_stages})
        ptx = compiled.asm["ptx"]
        report = ptxas_report(ptx, arch)
        report.update(name=c.name, shared=compiled.metadata.shared,
                      unit="wgmma" if "wgmma" in ptx else "mma" if "mma.sync" in ptx else "fma",
                      async_copies=compiled.asm["ttgir"].count("ttg.async_copy_global_to_local"),
                      # the kernels' variable names, which Triton keeps as the TTGIR's value names
                      synchronous_loads=set(re.findall(r"%([a-z]+)_?\d* = tt\.load", compiled.asm["ttgir"])))
        rows.append(report)
    return rows


@needs_triton
@pytest.mark.parametrize("capability", [80, 90])
def test_every_kernel_configuration_compiles_for_gpus(capability):
    rows = compile_all(capability)
    assert len(rows) == 45  # 5 types/precisions x (forward, dq/dR, dV) x (one block of k or v, two unrolled, more looped)
    for r in rows:
        assert r["shared"] <= SHARED_LIMIT[capability], r
        assert r["spill_stores"] <= MAX_SPILL_BYTES, r
        tensor_core = "fp32 " not in r["name"] + " "  # every type but IEEE float32 multiplies on tensor cores
        if tensor_core:
            assert r["unit"] in ("mma", "wgmma"), f"{r['name']} on sm_{capability} compiled without tensor cores"
        if tensor_core and "fp64" not in r["name"] and not r["name"].endswith(("(v512)", "(k64)")):
            # the training paths' tiles are asynchronous copies to shared memory, which is how Triton
            # pipelines them (for 16-bit types only in operand_layouts: docs/gpu.md); synchronous loads
            # are left only outside the loop of steps (queries, content lambda) and for the partial dR
            # sums each step reads back. (With more blocks of k or v than MAX_UNROLLED_BLOCKS a block
            # loop is the innermost one: pipelined, but not across steps.)
            assert r["async_copies"] > 0, f"{r['name']} on sm_{capability}: no asynchronous copies (not pipelined)"
            assert r["synchronous_loads"] <= {"qk", "ck", "ct", "part"}, (r["name"], capability, r["synchronous_loads"])
        if tensor_core and "(res4)" in r["name"] and "fp64" not in r["name"]:
            assert r["spill_stores"] <= MAX_SPILL_BYTES_TENSOR_CORE_RES4, r
    print("\n" + "\n".join(f"sm_{capability} {r['name']:24s} {r['unit']:5s} regs {r['registers']:3d} spill {r['spill_stores']:3d} "
                           f"shared {r['shared']} async copies {r['async_copies']}" for r in rows))


@needs_triton
def test_every_kernel_benchmark_variant_compiles_for_sm90():
    """The tile variants the kernel benchmark times at res4 (lambda_det.benchmark.kernels.variants)
    compile for the H200 the GPU check runs on and fit its shared memory; registers and spills are
    printed (a variant may spill: it is timed, not dispatched)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from lambda_det.benchmark import kernels as K

    shape = dict(K.KERNEL_SHAPES)["res4 lambda block"]
    lines = []
    for arithmetic in [a for a in K.ARITHMETIC if a.name in K.VARIANT_ARITHMETIC]:
        inputs = K._inputs(shape, arithmetic.dtype, torch.device("meta"))
        for variant in K.variants():
            launch = K._Case(variant, arithmetic, inputs, shape).launch
            c = T._specialize(launch._replace(constexprs=dict(launch.constexprs, DOT_F32=False)), variant.name)
            compiled = triton.compile(ASTSource(c.fn, c.signature, c.constexprs, c.attrs), target=GPUTarget("cuda", 90, 32),
                                      options={"num_warps": c.num_warps, "num_stages": c.num_stages})
            report = ptxas_report(compiled.asm["ptx"], "sm_90a")
            assert compiled.metadata.shared <= SHARED_LIMIT[90], (arithmetic.name, variant, compiled.metadata.shared)
            lines.append(f"{arithmetic.name:8s} {variant.kernel:6s} {variant.name:22s} regs {report['registers']:3d} "
                         f"spill {report['spill_stores']:3d} shared {compiled.metadata.shared}")
    print("\n" + "\n".join(lines))


# ------------------------------------------------------------------------------------------------
# on a GPU (make gpu-check); with LAMBDA_DET_TEST_DEVICE=cpu + TRITON_INTERPRET=1: the dry run
# ------------------------------------------------------------------------------------------------
DEVICE = os.environ.get("LAMBDA_DET_TEST_DEVICE", "cuda")
TOY = DEVICE != "cuda"  # the dry run: toy sizes on the CPU
cuda = pytest.mark.cuda
needs_device = pytest.mark.skipif(
    not (torch.cuda.is_available() if DEVICE == "cuda" else T.INTERPRETED),
    reason="needs CUDA (or LAMBDA_DET_TEST_DEVICE=cpu with TRITON_INTERPRET=1: the dry run)")

# every interpreter shape but the two that add nothing new on a GPU (kept few: each shape's strides
# specialize the kernels anew, a second or two of compiling each)
DEVICE_SHAPES = {k: v for k, v in W.SHAPES.items() if k not in ("map_smaller_than_scope", "wide")}
if not TOY:
    DEVICE_SHAPES.update({
        # Table 6 shapes at batch 2: res4 (d 256), res5 (d 512), the stride-2 block's 64 x 64 map
        "res4": (2, 4, 16, 1, 64, 64, 64, 23, 23), "res5": (2, 4, 16, 1, 128, 32, 32, 23, 23),
        "stride2_block": (2, 4, 16, 1, 128, 64, 64, 23, 23),
        # a global scope over a 24 x 40 map, k 8 (padded to 16), 3 heads (a head group with a gap)
        "global_24x40": (1, 3, 8, 1, 32, 24, 40, 47, 79),
    })
else:
    DEVICE_SHAPES = {k: DEVICE_SHAPES[k] for k in ("basic", "global", "k2_heads8_v2")}


def _on(device, tensors, dtype=None):
    return [t.to(device=device, dtype=dtype or t.dtype) for t in tensors]


@cuda
@needs_device
@pytest.mark.parametrize("name", list(DEVICE_SHAPES))
def test_device_triton_matches_float64_reference(name):
    """float64 on the device: 1e-10; float32 without TF32: 1e-5; float32 with TF32: 1e-2 (10-bit
    mantissas); gradients likewise, and dR the same bits on a second run."""
    inputs = _on(DEVICE, W.make_inputs(DEVICE_SHAPES[name]))
    leaves = [t.clone().requires_grad_() for t in inputs]
    expected = W.reference_taps(*leaves)
    grad = torch.randn_like(expected)
    ref_grads = torch.autograd.grad(expected, leaves, grad)
    for dtype, tf32, tol in ((torch.float64, False, 1e-10), (torch.float32, False, 1e-5), (torch.float32, True, 1e-2)):
        with operator_precision(tf32):  # the switches the operator follows
            runs = []
            for _ in range(2):
                xs = [t.to(dtype).requires_grad_() for t in inputs]
                out = T.lambda_output_triton(*xs)
                runs.append((out, torch.autograd.grad(out, xs, grad.to(dtype))))
        out, grads = runs[0]
        assert W.relative_error(out, expected) <= tol, (name, dtype, tf32)
        for label, a, r in zip(("dq", "dvalues", "dkernel", "dcontent"), grads, ref_grads):
            assert W.relative_error(a, r) <= tol, (name, dtype, tf32, label, W.relative_error(a, r))
        assert all(torch.equal(a, b) for a, b in zip(grads, runs[1][1])), "gradients differ between two runs"


@cuda
@needs_device
@pytest.mark.parametrize("impl", ["einsum", "conv2d", "conv3d", "fft"])
def test_device_position_lambda_forms_match_float64_reference(impl):
    """Every other form of the position term on the device, with the content term, in float64."""
    from lambda_det.layers import POSITION_LAMBDA_IMPLS

    for name in ("basic", "global", "u3") + (() if TOY else ("res5",)):
        q, values, kernel, content = _on(DEVICE, W.make_inputs(DEVICE_SHAPES.get(name) or W.SHAPES[name]))
        if impl == "einsum" and q.shape[-1] * q.shape[-2] > 32 * 32:
            continue  # the masked global einsum is Theta(n^2 k u) memory: small maps only
        lam = POSITION_LAMBDA_IMPLS[impl](values, kernel) + content[:, :, :, None, None]
        b, heads, _, height, width = q.shape
        out = torch.einsum("bhkyx,bkvyx->bhvyx", q, lam).reshape(b, -1, height, width)
        assert W.relative_error(out, W.reference_taps(q, values, kernel, content)) <= 1e-10, (impl, name)


@cuda
@needs_device
def test_device_amp_forward_backward_close_to_float32():
    """float16 / bfloat16 inputs (what autocast gives the operator): finite, close to float32."""
    shape = (1, 4, 16, 1, 8, 4, 9, 5, 7) if TOY else (2, 4, 16, 1, 64, 64, 64, 23, 23)
    inputs = _on(DEVICE, W.make_inputs(shape, dtype=torch.float32, seed=1))
    inputs[2] = inputs[2] * 0.1  # R ~ N(0, 1) over 529 taps: keep the sums in float16's range as BN would
    leaves = [t.clone().requires_grad_() for t in inputs]
    with operator_precision(False):  # the float32 reference in IEEE float32, not TF32
        out32 = T.lambda_output_triton(*leaves)
        grads32 = torch.autograd.grad(out32.square().mean(), leaves)
    for dtype, tol in ((torch.float16, 1e-2), (torch.bfloat16, 4e-2)):
        with torch.autocast(device_type=DEVICE, dtype=dtype):
            out = T.lambda_output_triton(*leaves)
        grads = torch.autograd.grad(out.float().square().mean(), leaves)
        assert out.dtype == dtype
        for label, a, r in zip(("out", "dq", "dvalues", "dkernel", "dcontent"), (out, *grads), (out32, *grads32)):
            assert torch.isfinite(a).all(), (dtype, label)
            assert W.relative_error(a, r) <= tol, (dtype, label, W.relative_error(a, r))


@cuda
@needs_device
@pytest.mark.skipif(TOY, reason="inductor on the CPU needs a C++ toolchain and minutes; the interpreter checks torch.compile tracing")
def test_device_torch_compile_inductor():
    inputs = [t.float().requires_grad_() for t in _on(DEVICE, W.make_inputs(W.SHAPES["global"]))]
    compiled = torch.compile(T.lambda_output_triton, fullgraph=True)
    out = compiled(*inputs)
    grads = torch.autograd.grad(out.sum(), inputs)
    eager = torch.autograd.grad(T.lambda_output_triton(*inputs).sum(), inputs)
    assert all(torch.allclose(a, b, rtol=1e-4, atol=1e-5) for a, b in zip(grads, eager))


@cuda
@needs_device
def test_device_mask_rcnn_lambdaresnet101_training_step_amp():
    """One training step of the paper's LambdaResNet-101 Mask R-CNN, batch 2 at 1024 px, under AMP
    (the dry run: the tiny toy model at 128 px on the CPU, float32)."""
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from conftest import TINY, TOY_CONFIG
    from lambda_det import load_config
    from lambda_det.benchmark.detector import synthetic_batch

    if TOY:
        cfg, size, amp = load_config(str(TOY_CONFIG), TINY), 128, False
    else:
        # one process: synchronized BN computes what BN computes (as tools/benchmark_detector.py does)
        cfg = load_config(str(REPO / "configs" / "COCO-InstanceSegmentation" / "mask_rcnn_LambdaR_101_FPN_paper.yaml"),
                          ["MODEL.LAMBDA_RESNET.NORM", "BN", "MODEL.FPN.NORM", "BN"])
        size, amp = 1024, True
    cfg.MODEL.DEVICE = DEVICE
    model = build_model(cfg).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9)
    scaler = torch.amp.GradScaler(DEVICE, enabled=amp)
    batch = synthetic_batch(size, size, num_classes=cfg.MODEL.ROI_HEADS.NUM_CLASSES, num_images=2, device=DEVICE)
    with EventStorage(), torch.autocast(device_type=DEVICE, dtype=torch.float16, enabled=amp):
        losses = model(batch)
    total = sum(losses.values())
    assert torch.isfinite(total), {k: float(v) for k, v in losses.items()}
    scaler.scale(total).backward()
    scaler.step(optimizer)
    scaler.update()
    assert all(torch.isfinite(p).all() for p in model.parameters())


# ------------------------------------------------------------------------------------------------
# make gpu-check / make gpu-wheels
# ------------------------------------------------------------------------------------------------
def _gpu_check(*args, results, out=None, timeout=900):
    env = dict(os.environ, PYTHON=sys.executable, GPU_CHECK_RESULTS=str(results))
    env.pop("TRITON_INTERPRET", None)
    if out is not None:
        env["OUT"] = str(out)
    return subprocess.run(["bash", str(REPO / "scripts" / "gpu_check.sh"), *args], capture_output=True, text=True,
                          env=env, cwd=str(REPO), timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_check_without_cuda_fails_with_one_line(tmp_path):
    proc = _gpu_check(results=tmp_path / "results")
    assert proc.returncode != 0
    lines = (proc.stdout + proc.stderr).strip().splitlines()
    assert len(lines) == 1 and "no CUDA device" in lines[0] and "--dry-run" in lines[0], lines


def _assert_dry_run(proc, results, out, steps):
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    summary = (results / "summary.md").read_text()
    for name in steps:
        assert re.search(rf"^\| {name} \| ok \|", summary, re.M), summary
    assert "every step passed" in summary
    assert sorted(p.name for p in out.iterdir()) == ["gpu_check.tar.gz", "summary.md"]


@needs_triton
def test_gpu_check_dry_run_on_cpu(tmp_path):
    """The script end to end on the CPU but for the toy training and the kernel benchmark (the slow
    test below runs all of it): wheel check, the CUDA-marked tests in the interpreter, the benchmark
    flags, the results tarball."""
    steps = ["install", "tests", "bench_layer", "bench_detector"]
    proc = _gpu_check("--dry-run", "--steps", " ".join(steps), results=tmp_path / "results", out=tmp_path / "out")
    _assert_dry_run(proc, tmp_path / "results", tmp_path / "out", steps)
    report = (tmp_path / "results" / "tests.xml").read_text()
    assert re.search(r'tests="(\d+)"', report) and 'failures="0"' in report and 'errors="0"' in report
    assert not (tmp_path / "results" / "bench_kernels").exists()  # a step not asked for does not run


@needs_triton
@pytest.mark.slow
def test_gpu_check_full_dry_run_on_cpu(tmp_path):
    """Every step, as `make gpu-check` runs them, the toy training and the kernel benchmark included."""
    steps = ["install", "tests", "train", "bench_layer", "bench_kernels", "bench_detector"]
    proc = _gpu_check("--dry-run", results=tmp_path / "results", out=tmp_path / "out")
    _assert_dry_run(proc, tmp_path / "results", tmp_path / "out", steps)
    assert (tmp_path / "results" / "train" / "metrics.json").exists()
    # the kernel benchmark ran for real in the interpreter: every variant of every kernel, each
    # agreeing with the default tiles' result, timed
    kernels = json.loads((tmp_path / "results" / "bench_kernels" / "lambda_kernels_cpu.json").read_text())["records"]
    expected = {(a.name, v.kernel, v.name) for a in ARITHMETIC for v in variants()
                if v.name == "default" or a.name in VARIANT_ARITHMETIC}
    timed = {(r["arithmetic"], r["kernel"], r["variant"]) for r in kernels if r["kernel"] in ("forward", "dq/dR", "dV")}
    assert timed == expected
    assert all(r["agrees"] and r["time"]["median_s"] > 0 and r["gflop"] > 0 for r in kernels
               if r["kernel"] in ("forward", "dq/dR", "dV"))
    # and the whole operator as the layer calls it, in every arithmetic
    assert {(r["arithmetic"], r["variant"]) for r in kernels if r["kernel"] == "operator"} == {
        (a.name, step) for a in ARITHMETIC for step in ("operator forward", "operator forward+backward")}
    # the summary ends with the verdict on the tiles: a line per kernel with variants, per arithmetic
    verdict = (tmp_path / "results" / "summary.md").read_text().split("**Fastest tiles per kernel**")[1]
    assert {tuple(line[2:].split(":")[0].split(", ")[1:]) for line in verdict.splitlines() if line.startswith("- ")} == {
        (a, kernel) for a in VARIANT_ARITHMETIC for kernel in ("forward", "dq/dR", "dV")}


def _fake_wheel(folder: Path, name: str, requires=(), tag="py3-none-any") -> Path:
    import zipfile

    path = folder / f"{name.replace('-', '_')}-1.0-{tag}.whl"
    info = f"{name.replace('-', '_')}-1.0.dist-info"
    meta = f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{info}/METADATA", meta)
        z.writestr(f"{info}/WHEEL", f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def test_gpu_wheels_verify_and_missing(tmp_path):
    """The completeness check: a requirement neither carried nor on the GPU machine fails it, a wheel
    for another platform fails it; `missing` names only distributions this Python lacks."""
    script = [sys.executable, str(REPO / "scripts" / "gpu_wheels.py")]
    _fake_wheel(tmp_path, "lambda-det-fake-a", ["lambda-det-fake-b>=1", "numpy", "black; extra == 'dev'",
                                                "colorama; sys_platform == 'win32'"])
    proc = subprocess.run([*script, "verify", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode != 0 and "lambda-det-fake-b" in proc.stderr + proc.stdout
    _fake_wheel(tmp_path, "lambda-det-fake-b")
    proc = subprocess.run([*script, "verify", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    _fake_wheel(tmp_path, "pytest", tag="cp310-cp310-win_amd64")
    proc = subprocess.run([*script, "verify", str(tmp_path)], capture_output=True, text=True)
    assert proc.returncode != 0 and "not for CPython 3.12" in proc.stderr + proc.stdout
    proc = subprocess.run([*script, "missing", str(tmp_path)], capture_output=True, text=True, check=True)
    listed = sorted(Path(line).name.split("-")[0] for line in proc.stdout.split())
    assert listed == ["lambda_det_fake_a", "lambda_det_fake_b"]  # pytest is installed here
