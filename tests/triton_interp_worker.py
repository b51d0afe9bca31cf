"""Runs lambda_det's Triton kernels in Triton's CPU interpreter for tests/test_triton_lambda.py.

TRITON_INTERPRET=1 must be set before ``@triton.jit`` decorates the kernels (at import), so the tests
start this file in a subprocess with the variable set; it runs the named checks and prints one JSON
line per check: {"check": name, "errors": [...], "seconds": s}. An empty error list is a pass.

    TRITON_INTERPRET=1 python tests/triton_interp_worker.py reference_loops guards:basic gradcheck:tiny
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

# Shapes (b, heads, k, u, v, H, W, rh, rw), each chosen for what it reaches in the kernels
SHAPES = {
    # non-square map, v not a power of two, two images
    "basic": (2, 2, 3, 1, 5, 5, 7, 3, 5),
    # the scope (5 x 7) larger than the map (3 x 4): taps on every side fall outside
    "map_smaller_than_scope": (1, 2, 4, 1, 3, 3, 4, 5, 7),
    # u > 1: sums over the intra-depth
    "u3": (1, 2, 4, 3, 3, 4, 6, 3, 3),
    # the smallest k, v and the most heads: every tl.dot dimension padded up to 16, two head groups
    "k2_heads8_v2": (1, 8, 2, 1, 2, 4, 5, 3, 5),
    # a global scope (rh = 2H - 1, rw = 2W - 1): 27 scope columns, two tap chunks in every kernel,
    # k = 16 exactly (one block), two x segments
    "global": (1, 4, 16, 1, 6, 3, 14, 5, 27),
    # the stride-2 block's map: odd sides (its average pool comes after this operator)
    "stride2_block_odd": (1, 4, 8, 1, 4, 9, 7, 7, 7),
    # k 17 and v 70: the queries in two k blocks, the values in two v blocks (unrolled); one head
    "blocks": (1, 1, 17, 1, 70, 3, 3, 3, 5),
    # k 40 and v 140: three blocks of each, more than MAX_UNROLLED_BLOCKS (looped)
    "many_blocks": (1, 2, 40, 1, 140, 2, 3, 3, 5),
    # a row wider than three forward segments and the dV segment (16); scope 9 x 11
    "wide": (1, 4, 5, 2, 3, 2, 21, 3, 11),
}


def make_inputs(shape, dtype=torch.float64, seed=0):
    b, heads, k, u, v, height, width, rh, rw = shape
    g = torch.Generator().manual_seed(seed)

    def rand(*size):
        return torch.randn(*size, generator=g, dtype=torch.float64).to(dtype)

    return (rand(b, heads, k, height, width), rand(b, u, v, height, width), rand(k, u, rh, rw), rand(b, k, v))


# ------------------------------------------------------------------------------------------------
# references
# ------------------------------------------------------------------------------------------------
def reference_scalar(q, values, kernel, content):
    """The contract written out element by element: plain Python loops over every output element,
    k, u and every tap, reading values outside the map as zero. Tiny shapes only."""
    b, heads, k, height, width = q.shape
    u, v = values.shape[1], values.shape[2]
    rh, rw = kernel.shape[2], kernel.shape[3]
    cy, cx = rh // 2, rw // 2
    qa, va, ra, ca = (t.tolist() for t in (q, values, kernel, content))
    out = torch.zeros(b, heads * v, height, width, dtype=torch.float64)
    for bi in range(b):
        for h in range(heads):
            for j in range(v):
                for y in range(height):
                    for x in range(width):
                        total = 0.0
                        for kk in range(k):
                            lam = ca[bi][kk][j]
                            for uu in range(u):
                                for dy in range(-cy, cy + 1):
                                    for dx in range(-cx, cx + 1):
                                        yy, xx = y + dy, x + dx
                                        if 0 <= yy < height and 0 <= xx < width:
                                            lam += ra[kk][uu][cy + dy][cx + dx] * va[bi][uu][j][yy][xx]
                            total += qa[bi][h][kk][y][x] * lam
                        out[bi, h * v + j, y, x] = total
    return out


def reference_taps(q, values, kernel, content):
    """The same sum with a Python loop over the taps (u, dy, dx) and whole-map tensor slices of the
    zero-padded values: fast enough for every test shape, differentiable for the gradients."""
    b, heads, k, height, width = q.shape
    u, v = values.shape[1], values.shape[2]
    rh, rw = kernel.shape[2], kernel.shape[3]
    cy, cx = rh // 2, rw // 2
    padded = torch.nn.functional.pad(values, (cx, cx, cy, cy))
    lam = content[:, :, :, None, None].expand(b, k, v, height, width)
    for uu in range(u):
        for dy in range(rh):
            for dx in range(rw):
                lam = lam + kernel[None, :, uu, dy, dx, None, None, None] * padded[:, uu, None, :, dy:dy + height, dx:dx + width]
    return torch.einsum("bhkyx,bkvyx->bhvyx", q, lam).reshape(b, heads * v, height, width)


def relative_error(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-300)).item()


# ------------------------------------------------------------------------------------------------
# guard buffers: inputs as views inside NaN-filled tensors, outputs inside sentinel-filled ones
# ------------------------------------------------------------------------------------------------
SENTINEL = 12345.0
MARGIN = 37  # elements of guard before and after every view (more than a row of any test map)


def in_guard(t, fill=float("nan"), transpose_last=False):
    """A copy of t as a strided view inside a larger buffer filled with ``fill``: the buffer has MARGIN
    elements on both ends and every dimension padded by 2, so an index one past any edge of any
    dimension lands on ``fill``. transpose_last: the view's last two dimensions are swapped in memory."""
    size = list(t.shape)
    alloc = [s + 2 for s in size]
    if transpose_last and len(size) >= 2:
        alloc[-1], alloc[-2] = alloc[-2], alloc[-1]
    numel = 1
    for s in alloc:
        numel *= s
    flat = torch.full((numel + 2 * MARGIN,), fill, dtype=t.dtype)
    body = flat[MARGIN:MARGIN + numel].view(alloc)
    if transpose_last and len(size) >= 2:
        body = body.transpose(-1, -2)
    view = body[tuple(slice(1, 1 + s) for s in size)]
    view.copy_(t)
    return view, flat


def guard_intact(view, flat, fill):
    """Everything in ``flat`` outside ``view`` still holds ``fill``."""
    mask = torch.ones_like(flat, dtype=torch.bool)
    inside = view.storage_offset() + sum((torch.arange(s) * st).view([-1 if i == d else 1 for i in range(view.dim())])
                                         for d, (s, st) in enumerate(zip(view.shape, view.stride())))
    mask[inside.reshape(-1)] = False
    rest = flat[mask]
    return bool(torch.isnan(rest).all()) if fill != fill else bool((rest == fill).all())


# ------------------------------------------------------------------------------------------------
# checks
# ------------------------------------------------------------------------------------------------
def check_reference_loops(errors):
    """The tap-loop reference (used for every other check) against the element-by-element loops."""
    for shape in ((1, 2, 2, 2, 3, 3, 4, 3, 5), (2, 1, 3, 1, 2, 2, 3, 3, 5)):
        inputs = make_inputs(shape, seed=3)
        err = relative_error(reference_taps(*inputs), reference_scalar(*inputs))
        if not err <= 1e-13:
            errors.append(f"{shape}: tap-loop reference differs from the scalar loops by {err:.3g}")


def check_guards(errors, name, rows=None, variant=None):
    """Forward and backward of the kernels on views inside NaN guards, outputs inside sentinels,
    against the float64 reference: relative error <= 1e-10, no guard element touched.
    ``variant``: one of the kernel benchmark's tile variants (lambda_det.benchmark.kernels) in place
    of its kernel's default tiles."""
    from lambda_det.layers import triton_lambda as T

    fwd_tiles = qr_tiles = v_tiles = None
    if variant is not None:
        fwd_tiles = variant.tiles if variant.kernel == "forward" else None
        qr_tiles = variant.tiles if variant.kernel == "dq/dR" else None
        v_tiles = variant.tiles if variant.kernel == "dV" else None
        b_, heads_, _, _, _, height_, width_, _, _ = SHAPES[name]
        rows = T.qr_rows_per_program(b_, heads_, height_, width_, target=variant.programs, tiles=qr_tiles)
        name_label = f"{name} ({variant.kernel} {variant.name})"  # guards' views: strided, as any layout
    else:
        name_label = name

    shape = SHAPES[name]
    inputs = make_inputs(shape)
    q, values, kernel, content = inputs
    b, heads, k, u, v, height, width, rh, rw = shape
    guarded = [in_guard(t, transpose_last=(i % 2 == 1)) for i, t in enumerate(inputs)]
    gq, gv, gr, gc = (view for view, _ in guarded)

    out, out_flat = in_guard(torch.zeros(b, heads * v, height, width, dtype=torch.float64), SENTINEL)
    T.forward_into(gq, gv, gr, gc, out, tiles=fwd_tiles)
    expected = reference_taps(*inputs)
    err = relative_error(out, expected)
    if not err <= 1e-10:
        errors.append(f"{name_label}: forward relative error {err:.3g} > 1e-10")
    if not guard_intact(out, out_flat, SENTINEL):
        errors.append(f"{name_label}: the forward wrote outside its output")

    leaves = [t.clone().requires_grad_() for t in inputs]
    grad = torch.randn(expected.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    ref_grads = torch.autograd.grad(reference_taps(*leaves), leaves, grad)
    gg, gg_flat = in_guard(grad, transpose_last=True)
    outs = [in_guard(torch.zeros_like(t), SENTINEL) for t in inputs]
    rows = rows or T.qr_rows_per_program(b, heads, height, width)
    # the partial dR sums: a contiguous zeroed block between sentinels (the kernel takes it contiguous)
    partial_shape = T.qr_partial_shape(q, values, kernel, rows, tiles=qr_tiles)
    partial_numel = int(torch.Size(partial_shape).numel())
    partial_flat = torch.full((partial_numel + 2 * MARGIN,), SENTINEL, dtype=torch.float64)
    partial = partial_flat[MARGIN:MARGIN + partial_numel].view(partial_shape).zero_()
    T.backward_into(gg, gq, gv, gr, gc, *(view for view, _ in outs), rows=rows, partial=partial, qr_tiles=qr_tiles,
                    v_tiles=v_tiles)
    for label, (view, flat), ref in zip(("dq", "dvalues", "dkernel", "dcontent"), outs, ref_grads):
        err = relative_error(view, ref)
        if not err <= 1e-10:
            errors.append(f"{name_label}: {label} relative error {err:.3g} > 1e-10")
        if not guard_intact(view, flat, SENTINEL):
            errors.append(f"{name_label}: the backward wrote outside {label}")
    if not (partial_flat[:MARGIN] == SENTINEL).all() or not (partial_flat[MARGIN + partial.numel():] == SENTINEL).all():
        errors.append(f"{name_label}: the dq/dR kernel wrote outside its partial dR buffer")
    for i, (view, flat) in enumerate(guarded + [(gg, gg_flat)]):
        if not guard_intact(view, flat, float("nan")):
            errors.append(f"{name_label}: input {i}'s guard changed")

    # the public operator (torch.library op + autograd) on the guarded views: the same numbers
    leaves = [view.detach().requires_grad_() for view in (gq, gv, gr, gc)]
    op_out = T.lambda_output_triton(*leaves)
    op_grads = torch.autograd.grad(op_out, leaves, grad)
    err = max([relative_error(op_out, expected)] + [relative_error(a, r) for a, r in zip(op_grads, ref_grads)])
    if not err <= 1e-10:
        errors.append(f"{name_label}: lambda_output_triton (op + autograd) relative error {err:.3g} > 1e-10")


def check_gradcheck(errors, name):
    from lambda_det.layers import triton_lambda as T

    shapes = {"tiny": (1, 2, 2, 1, 2, 3, 4, 3, 3), "u2_global": (1, 2, 3, 2, 2, 2, 3, 3, 5)}
    inputs = [t.requires_grad_() for t in make_inputs(shapes[name], seed=5)]
    # tiny: the full Jacobian, element by element; u2_global: gradcheck's fast mode (random projections)
    try:
        ok = torch.autograd.gradcheck(T.lambda_output_triton, inputs, eps=1e-6, atol=1e-8, rtol=1e-6,
                                      fast_mode=(name != "tiny"))
    except Exception as exc:  # gradcheck raises with the mismatching Jacobian
        errors.append(f"{name}: gradcheck failed: {str(exc)[:2000]}")
        return
    if not ok:
        errors.append(f"{name}: gradcheck returned False")


def check_gradgradcheck(errors):
    """Second derivatives through the operator (create_graph: gradient penalties), which its backward
    takes from the lambda convolution's autograd: gradgradcheck in fast mode."""
    from lambda_det.layers import triton_lambda as T

    inputs = [t.requires_grad_() for t in make_inputs((1, 2, 3, 2, 2, 3, 4, 3, 5), seed=6)]
    try:
        ok = torch.autograd.gradgradcheck(T.lambda_output_triton, inputs, eps=1e-6, atol=1e-8, rtol=1e-6, fast_mode=True)
    except Exception as exc:  # gradgradcheck raises with the mismatching Jacobian
        errors.append(f"gradgradcheck failed: {str(exc)[:2000]}")
        return
    if not ok:
        errors.append("gradgradcheck returned False")
    # create_graph's first-order gradients are the plain ones, through the layer (which computes the content
    # lambda from the values the operator takes), with inputs channels-last or v 1, where the operator's
    # layouts copy nothing between the two
    from lambda_det.layers import LambdaLayer

    for out_channels, channels_last in ((4, True), (2, False)):
        torch.manual_seed(0)
        layer = LambdaLayer(3, out_channels, dim_k=2, heads=2, dim_u=1, scope=3, impl="triton").double()
        x = torch.randn(1, 3, 3, 4, dtype=torch.float64)
        x = (x.contiguous(memory_format=torch.channels_last) if channels_last else x).requires_grad_()
        wrt = (x, layer.qkv.weight, layer.rel_pos_emb)
        plain = torch.autograd.grad(layer(x).square().sum(), wrt)
        recorded = torch.autograd.grad(layer(x).square().sum(), wrt, create_graph=True)
        err = max(relative_error(a, b) for a, b in zip(recorded, plain))
        if not err <= 1e-10:
            errors.append(f"v {out_channels // 2}, channels_last {channels_last}: create_graph gradients differ from "
                          f"the plain ones by {err:.3g} (relative)")


def check_half(errors):
    """float16 / bfloat16 through the kernels (bfloat16 dots run as float32 in the interpreter) and the
    autocast path of the wrapper: finite, and close to float32."""
    from lambda_det.layers import triton_lambda as T

    shape = (1, 4, 16, 1, 8, 4, 9, 5, 7)
    inputs = make_inputs(shape, dtype=torch.float32, seed=11)
    inputs = [t * s for t, s in zip(inputs, (1.0, 1.0, 0.1, 1.0))]
    leaves = [t.clone().requires_grad_() for t in inputs]
    out32 = T.lambda_output_triton(*leaves)
    grads32 = torch.autograd.grad(out32.square().sum(), leaves)
    for dtype in (torch.float16, torch.bfloat16):
        low = [t.to(dtype).requires_grad_() for t in inputs]
        out = T.lambda_output_triton(*low)
        grads = torch.autograd.grad(out.float().square().sum(), low)
        tol = 1e-2 if dtype == torch.float16 else 4e-2
        if out.dtype != dtype or any(g.dtype != dtype for g in grads):
            errors.append(f"{dtype}: output/gradient dtypes {out.dtype}, {[str(g.dtype) for g in grads]}")
        for label, a, ref in zip(["out", "dq", "dvalues", "dkernel", "dcontent"], [out, *grads], [out32, *grads32]):
            if not torch.isfinite(a).all():
                errors.append(f"{dtype}: {label} not finite")
            elif not relative_error(a, ref) <= tol:
                errors.append(f"{dtype}: {label} relative error {relative_error(a, ref):.3g} vs float32 > {tol}")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = T.lambda_output_triton(*leaves)
    if out.dtype != torch.bfloat16 or not relative_error(out, out32) <= 4e-2:
        errors.append(f"autocast: output {out.dtype}, relative error {relative_error(out, out32):.3g}")


def check_library_op(errors):
    """One operator to PyTorch: torch.library's own checks (schema, fake tensor, autograd registration),
    a torch.compile trace that keeps it as one node, forward and backward, and a whole layer compiled
    with fullgraph=True."""
    from lambda_det.layers import triton_lambda as T

    inputs = [t.requires_grad_() for t in make_inputs((1, 2, 2, 1, 2, 3, 4, 3, 3), seed=2)]
    try:
        torch.library.opcheck(torch.ops.lambda_det.lambda_output_triton.default, inputs,
                              test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    except Exception as exc:
        errors.append(f"opcheck: {str(exc)[:1500]}")
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    try:
        compiled = torch.compile(T.lambda_output_triton, backend=backend, fullgraph=True)
        out = compiled(*inputs)
        grads = torch.autograd.grad(out.sum(), inputs)
        eager = torch.autograd.grad(T.lambda_output_triton(*inputs).sum(), inputs)
    except Exception as exc:
        errors.append(f"torch.compile: {type(exc).__name__}: {str(exc)[:1500]}")
        return
    targets = [str(n.target) for g in graphs for n in g.graph.nodes if n.op == "call_function"]
    if not any("lambda_output_triton" in t for t in targets):
        errors.append(f"torch.compile graph has no lambda_det::lambda_output_triton node: {targets}")
    if any(relative_error(a, b) > 1e-12 for a, b in zip(grads, eager)):
        errors.append("torch.compile gradients differ from eager")
    # the whole layer, as a model compiles it: one graph, the operator in it, eager's numbers
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_lambda_layer import compiled_layer_against_eager

    try:
        ops, differences = compiled_layer_against_eager("triton")
    except Exception as exc:
        errors.append(f"torch.compile of LambdaLayer(impl='triton'): {type(exc).__name__}: {str(exc)[:1500]}")
        return
    if ops != {"forward": ["lambda_det.lambda_output_triton.default"],
               "backward": ["lambda_det.lambda_output_triton_backward.default"]} or max(differences) > 1e-12:
        errors.append(f"torch.compile of LambdaLayer(impl='triton'): operators {ops}, differences {differences}")


def check_precision_switch(errors):
    """float32 takes TF32 by PyTorch's switch for convolutions (torch.backends.cudnn.conv, its
    fp32_precision API and the legacy allow_tf32, on by default), unless exact float32 matmuls were
    asked for (matmul.fp32_precision "ieee", torch.set_float32_matmul_precision("highest"))."""
    from lambda_det.layers import triton_lambda as T

    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    if T.dot_precision(torch.float32) != "tf32":
        errors.append("float32 multiplies in IEEE float32 at PyTorch's defaults, where its convolutions take TF32")
    if hasattr(cudnn, "conv") and hasattr(cudnn.conv, "fp32_precision"):
        saved = cudnn.conv.fp32_precision
        for conv, mm, expected in (("ieee", "none", "ieee"), ("ieee", "tf32", "ieee"), ("tf32", "none", "tf32"),
                                   ("tf32", "tf32", "tf32"), ("tf32", "ieee", "ieee")):
            cudnn.conv.fp32_precision, matmul.fp32_precision = conv, mm
            if T.dot_precision(torch.float32) != expected:
                errors.append(f"cudnn.conv.fp32_precision = {conv!r}, matmul {mm!r} did not select {expected}")
        cudnn.conv.fp32_precision, matmul.fp32_precision = "tf32", "none"
        for request in (lambda: torch.set_float32_matmul_precision("highest"), lambda: setattr(matmul, "allow_tf32", False)):
            request()  # explicit requests for exact matmuls (both set matmul.fp32_precision = "ieee")
            if T.dot_precision(torch.float32) != "ieee":
                errors.append("an explicit request for IEEE float32 matmuls did not select IEEE float32")
            matmul.fp32_precision = "none"
        mkldnn = getattr(getattr(torch.backends, "mkldnn", None), "matmul", None)
        if hasattr(mkldnn, "fp32_precision"):  # set_float32_matmul_precision sets oneDNN's too
            mkldnn.fp32_precision = "none"
        cudnn.conv.fp32_precision = "none"  # falls back to cuDNN's, then the global setting
        torch.backends.fp32_precision = "ieee"
        if T.dot_precision(torch.float32) != "ieee":
            errors.append("torch.backends.fp32_precision = 'ieee' did not select IEEE float32")
        torch.backends.fp32_precision = "none"
        cudnn.conv.fp32_precision = saved
    else:  # torch < 2.9: the legacy flags; the matmul one's default cannot be told from a request
        for flag in (False, True):
            cudnn.allow_tf32 = flag
            matmul.allow_tf32 = not flag
            if T.dot_precision(torch.float32) != ("tf32" if flag else "ieee"):
                errors.append(f"cudnn.allow_tf32 = {flag} did not select {'TF32' if flag else 'IEEE float32'}")
        matmul.allow_tf32 = False
    if T.dot_precision(torch.float64) != "ieee" or T.dot_precision(torch.float16) != "ieee":
        errors.append("float64/float16 must not ask for TF32")


def check_layer(errors):
    """LambdaLayer(impl="triton") through the layer, at every shape of the layer's own reference
    tests (non-square maps, maps smaller than the scope, u > 1, 1-8 heads, global scopes, stride 2)
    and at k 2 / heads 8 / v 2, against the float64 loop reference written from the paper."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import numpy as np
    from test_lambda_layer import REFERENCE_CASES, reference_lambda_layer

    from lambda_det.layers import LambdaLayer

    cases = [(batch, height, width, dict(heads=heads, dim_u=dim_u, scope=scope, stride=stride), training)
             for batch, height, width, heads, dim_u, scope, stride, training in REFERENCE_CASES]
    cases.append((1, 5, 6, dict(heads=8, dim_u=1, scope=5, stride=1), True))  # k 2, heads 8, v 2
    for batch, height, width, options, training in cases:
        torch.manual_seed(height * 10 + width)
        dim_k = 2 if options["heads"] == 8 and batch == 1 and height == 5 else 3
        out = 16 if dim_k == 2 else 8 * options["heads"]
        layer = LambdaLayer(6, out, dim_k=dim_k, impl="triton", global_max_size=10, **options).double().train(training)
        x = torch.randn(batch, 6, height, width, dtype=torch.float64)
        expected = reference_lambda_layer(layer, x)
        got = layer(x).detach().numpy()
        err = np.abs(got - expected).max() / max(1.0, np.abs(expected).max())
        if got.shape != expected.shape or not err <= 1e-10:
            errors.append(f"layer {batch}x{height}x{width} {options}: shape {got.shape} vs {expected.shape}, error {err:.3g}")


def check_layer_autocast(errors):
    """LambdaLayer(impl="triton") under autocast (CPU, bfloat16): the queries and values reach the
    operator from their projections (already bfloat16) without a float32 copy of the queries, the values
    copied to float32 once (for the content lambda), and the result close to float32."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from lambda_det.layers import LambdaLayer

    class Casts(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.casts = []  # (source storage, result dtype) of every copy to another dtype

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            result = func(*args, **(kwargs or {}))
            if func is torch.ops.aten._to_copy.default:
                self.casts.append((args[0].untyped_storage().data_ptr(), result.dtype))
            return result

    torch.manual_seed(5)
    layer = LambdaLayer(8, 16, dim_k=16, heads=4, scope=5, impl="triton").train()
    x = torch.randn(2, 8, 6, 7)
    projections = {}
    layer.norm_q.register_forward_hook(lambda _m, _i, out: projections.__setitem__("q", out))
    layer.norm_v.register_forward_hook(lambda _m, _i, out: projections.__setitem__("values", out))
    expected = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16), Casts() as mode:
        out = layer(x)
    q, values = projections["q"], projections["values"]
    if q.dtype != torch.bfloat16 or values.dtype != torch.bfloat16:
        errors.append(f"autocast layer: projections are {q.dtype}, {values.dtype}, not bfloat16 (the check assumes it)")
        return
    to_float = {name: sum(1 for ptr, dtype in mode.casts if ptr == t.untyped_storage().data_ptr() and dtype == torch.float32)
                for name, t in (("q", q), ("values", values))}
    if to_float != {"q": 0, "values": 1}:
        errors.append(f"autocast layer: float32 copies of the projections {to_float}, expected q 0, values 1 "
                      "(the operator takes them in autocast's type)")
    if out.dtype != torch.bfloat16 or not relative_error(out.float(), expected) <= 4e-2:
        errors.append(f"autocast layer: output {out.dtype}, relative error {relative_error(out.float(), expected):.3g} vs float32")
    params = [t for t in layer.parameters() if t.requires_grad]
    grads32 = torch.autograd.grad(expected.square().sum(), params)
    grads = torch.autograd.grad(out.float().square().sum(), params)
    worst = max(relative_error(g, r) for g, r in zip(grads, grads32))
    if not all(torch.isfinite(g).all() for g in grads) or not worst <= 5e-2:
        errors.append(f"autocast layer: parameter gradients finite {all(torch.isfinite(g).all() for g in grads)}, "
                      f"largest relative error {worst:.3g} vs float32")


def check_kernel_benchmark_keeps_going(errors):
    """The kernel benchmark records a variant that cannot launch (here: tiles the kernels reject) with
    its error and times the rest, instead of losing the GPU run."""
    import tempfile

    from lambda_det.benchmark import kernels as KB
    from lambda_det.layers import triton_lambda as T

    good = [v for v in KB.variants() if v.name == "default"]
    bad = KB.Variant("forward", "bad tiles", T.FORWARD_TILES._replace(bv=48))
    original, KB.variants = KB.variants, lambda: good + [bad]
    try:
        with tempfile.TemporaryDirectory() as tmp:
            records = KB.kernel_benchmark(Path(tmp), "cpu", 1, arithmetic=[KB.ARITHMETIC[2]], log=lambda _: None)["records"]
    finally:
        KB.variants = original
    by_name = {(r["kernel"], r["variant"]): r for r in records}
    failed = by_name.get(("forward", "bad tiles"), {}).get("failed", "")
    if "bv=48" not in failed:
        errors.append(f"the rejected variant was not recorded with its error: {by_name.get(('forward', 'bad tiles'))}")
    if not all("time" in by_name[(k, "default")] for k in ("forward", "dq/dR", "dV")):
        errors.append("the default tiles were not all timed")


def run(check: str):
    errors = []
    kind, _, arg = check.partition(":")
    if kind == "reference_loops":
        check_reference_loops(errors)
    elif kind == "guards":
        name, _, rows = arg.partition("@")
        check_guards(errors, name, int(rows) if rows else None)
    elif kind == "kernel_benchmark":
        check_kernel_benchmark_keeps_going(errors)
    elif kind == "variants":  # every tile variant the kernel benchmark times, on one shape
        from lambda_det.benchmark.kernels import variants

        for variant in variants():
            if variant.name != "default":
                check_guards(errors, arg, variant=variant)
    elif kind == "stacked_rows":  # dV's stacked value rows and the forward's stacked query rows on the
        from lambda_det.benchmark.kernels import variants  # shapes "variants:" leaves out: rows past the
        # map, u > 1, two images, small k / v
        for variant in variants():
            if variant.tiles is not None and (variant.tiles.vr > 1 or variant.tiles.qrows > 1):
                for name in SHAPES:
                    if name not in ("global", "blocks"):
                        check_guards(errors, name, variant=variant)
    elif kind == "gradcheck":
        check_gradcheck(errors, arg)
    elif kind == "gradgradcheck":
        check_gradgradcheck(errors)
    elif kind == "half":
        check_half(errors)
    elif kind == "library_op":
        check_library_op(errors)
    elif kind == "precision_switch":
        check_precision_switch(errors)
    elif kind == "layer":
        check_layer(errors)
    elif kind == "layer_autocast":
        check_layer_autocast(errors)
    else:
        errors.append(f"unknown check {check}")
    return errors


def main(argv):
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("set TRITON_INTERPRET=1: this worker runs the kernels in Triton's interpreter", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    for check in argv:
        start = time.time()
        try:
            errors = run(check)
        except Exception:
            errors = [traceback.format_exc()[-3000:]]
        print(json.dumps({"check": check, "errors": errors, "seconds": round(time.time() - start, 2)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
