"""The lambda layer against a slow reference written straight from the paper's definitions."""
from __future__ import annotations

import re
from typing import Dict, List, Tuple

import numpy as np
import pytest
import torch
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd

from lambda_det.layers import POSITION_LAMBDA_IMPLS, TERM_IMPLS, LambdaLayer, lambda_layer_num_params
from lambda_det.layers.fused import lambda_output_fused
from lambda_det.layers.triton_lambda import available as triton_available

IMPLS = sorted(POSITION_LAMBDA_IMPLS)  # the position-lambda forms (values, kernel) -> lambdas
# what runs here in this process: the Triton operator needs a GPU, or its interpreter in a subprocess
# (tests/test_triton_lambda.py checks the layer with impl="triton" against the same reference)
HERE_IMPLS = [impl for impl in TERM_IMPLS if impl != "triton" or triton_available("cpu")]


# --------------------------------------------------------------------------------------------
# Reference: loops over query and context positions, float64, embeddings looked up by offset.
# Channel layout of the projections (the layer's documented convention): queries (h, k),
# keys (u, k), values (u, v).
# --------------------------------------------------------------------------------------------
def _batch_norm(z: np.ndarray, bn: torch.nn.Module, training: bool) -> np.ndarray:
    gamma = bn.weight.detach().double().numpy()[None, :, None, None]
    beta = bn.bias.detach().double().numpy()[None, :, None, None]
    if training:
        mean = z.mean(axis=(0, 2, 3), keepdims=True)
        var = z.var(axis=(0, 2, 3), keepdims=True)  # biased, as BN normalizes with it
    else:
        mean = bn.running_mean.double().numpy()[None, :, None, None]
        var = bn.running_var.double().numpy()[None, :, None, None]
    return (z - mean) / np.sqrt(var + bn.eps) * gamma + beta


def reference_lambda_layer(layer: LambdaLayer, x: torch.Tensor) -> np.ndarray:
    x = x.detach().double().numpy()
    b, d, height, width = x.shape
    h, k, u, v = layer.heads, layer.dim_k, layer.dim_u, layer.dim_v

    def project(weight):
        w = weight.detach().double().numpy()[:, :, 0, 0]
        return np.einsum("od,bdyx->boyx", w, x)

    w_q, w_k, w_v = layer.projection_weights()
    q = _batch_norm(project(w_q), layer.norm_q, layer.training)
    keys = project(w_k)
    values = _batch_norm(project(w_v), layer.norm_v, layer.training)
    emb = layer.rel_pos_emb.detach().double().numpy()  # R[offset_y, offset_x, k, u]
    # timm's option: a bias b (k) on every position lambda, the same for every v
    bias = np.zeros(k) if layer.position_bias is None else layer.position_bias.detach().double().numpy()
    cy, cx = emb.shape[0] // 2, emb.shape[1] // 2
    positions = [(y, x_) for y in range(height) for x_ in range(width)]

    out = np.zeros((b, h * v, height, width))
    for bi in range(b):
        Q = {p: q[bi, :, p[0], p[1]].reshape(h, k) for p in positions}
        K = {p: keys[bi, :, p[0], p[1]].reshape(u, k).T for p in positions}  # (k, u)
        V = {p: values[bi, :, p[0], p[1]].reshape(u, v).T for p in positions}  # (v, u)
        # softmax over context positions m, separately for every (k, u)
        logits = np.stack([K[p] for p in positions])  # (m, k, u)
        sm = np.exp(logits - logits.max(axis=0)) / np.exp(logits - logits.max(axis=0)).sum(axis=0)
        content = np.zeros((k, v))
        for mi, m in enumerate(positions):
            for kk in range(k):
                for uu in range(u):
                    content[kk] += sm[mi, kk, uu] * V[m][:, uu]
        for n in positions:
            lam_p = np.zeros((k, v))
            for m in positions:
                dy, dx = m[0] - n[0], m[1] - n[1]
                if abs(dy) > cy or abs(dx) > cx:
                    continue  # outside the local scope: contributes nothing
                e = emb[cy + dy, cx + dx]  # (k, u) = R[pos(m) - pos(n)]
                lam_p += e @ V[m].T
            lam = content + lam_p + bias[:, None]
            for head in range(h):
                out[bi, head * v : (head + 1) * v, n[0], n[1]] = lam.T @ Q[n][head]
    if layer.stride == 2:
        out = _avg_pool_3x3_s2(out) if layer.pool_type == "avg3x3" else _avg_pool_2x2_s2(out)
    return out


def _avg_pool_2x2_s2(a: np.ndarray) -> np.ndarray:
    """timm's 2x2 average with stride 2 (an odd last row or column is dropped)."""
    b, c, height, width = a.shape
    oh, ow = height // 2, width // 2
    return a[:, :, : 2 * oh, : 2 * ow].reshape(b, c, oh, 2, ow, 2).mean(axis=(3, 5))


def _avg_pool_3x3_s2(a: np.ndarray) -> np.ndarray:
    """3x3 average with stride 2, padding 1, averaging only the positions inside the map."""
    b, c, height, width = a.shape
    oh, ow = (height + 1) // 2, (width + 1) // 2
    out = np.zeros((b, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            ys = range(max(0, 2 * i - 1), min(height, 2 * i + 2))
            xs = range(max(0, 2 * j - 1), min(width, 2 * j + 2))
            out[:, :, i, j] = np.mean([a[:, :, y, x_] for y in ys for x_ in xs], axis=0)
    return out


def _randomize_norms(layer: LambdaLayer, seed: int) -> None:
    """Non-trivial BN affine parameters and running statistics, so eval mode tests them."""
    g = torch.Generator().manual_seed(seed)
    for bn in (layer.norm_q, layer.norm_v):
        c = bn.num_features
        bn.weight.data = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
        bn.bias.data = torch.randn(c, generator=g, dtype=torch.float64)
        bn.running_mean = torch.randn(c, generator=g, dtype=torch.float64)
        bn.running_var = torch.rand(c, generator=g, dtype=torch.float64) + 0.5


# (batch, height, width, heads, dim_u, scope, stride, training) — together every value the issue
# lists: square/non-square, odd/even sides, u 1/4, heads 1/4/8, scope 3/7/23/global, stride 1/2,
# batch 1/3, eval/train.
REFERENCE_CASES = [
    (1, 5, 5, 4, 1, 3, 1, False),
    (3, 4, 6, 1, 1, 7, 1, True),
    (1, 6, 6, 8, 4, 3, 2, True),
    (3, 5, 7, 4, 4, 23, 1, False),
    (1, 7, 4, 4, 1, None, 1, True),
    (3, 6, 5, 8, 1, 7, 2, False),
    (1, 8, 6, 1, 4, None, 2, False),
    (1, 9, 10, 4, 1, 23, 2, True),
    (2, 6, 9, 4, 1, 13, 1, True),  # the fused operator's paired positions (odd row: one left over)
]


@pytest.mark.parametrize("batch,height,width,heads,dim_u,scope,stride,training", REFERENCE_CASES)
def test_every_impl_matches_reference_float64(batch, height, width, heads, dim_u, scope, stride, training):
    torch.manual_seed(batch * 1000 + height * 10 + width)
    layer = LambdaLayer(
        6, 8 * heads, dim_k=3, heads=heads, dim_u=dim_u, scope=scope, stride=stride, global_max_size=10
    ).double()
    _randomize_norms(layer, seed=height)
    layer.train(training)
    x = torch.randn(batch, 6, height, width, dtype=torch.float64)
    expected = reference_lambda_layer(layer, x)
    assert np.abs(expected).max() > 1e-3  # the comparison below is not against zeros
    for impl in [*HERE_IMPLS, "auto", "conv"]:
        layer.impl = {"conv": "conv2d"}.get(impl, impl)
        got = layer(x).detach().numpy()
        assert got.shape == expected.shape, impl
        err = np.abs(got - expected).max()
        assert err <= 1e-10 * max(1.0, np.abs(expected).max()), f"impl={impl}: max error {err:.3g}"


@pytest.mark.parametrize("height,width,dim_u,scope,stride,training", [
    (6, 7, 1, 9, 2, True), (5, 5, 1, 3, 1, False), (7, 6, 4, 7, 2, False), (9, 4, 1, None, 1, True),
])
def test_timm_options_match_reference_float64(height, width, dim_u, scope, stride, training):
    """The options timm's lambda models need (a position-lambda bias, a 2x2 pool for stride 2),
    every impl, against the loop reference."""
    torch.manual_seed(height * 10 + width)
    layer = LambdaLayer(6, 32, dim_k=3, heads=4, dim_u=dim_u, scope=scope, stride=stride, global_max_size=10,
                        pool="avg2x2", position_bias=True).double()
    _randomize_norms(layer, seed=width)
    with torch.no_grad():
        layer.position_bias.normal_()
    layer.train(training)
    x = torch.randn(2, 6, height, width, dtype=torch.float64)
    expected = reference_lambda_layer(layer, x)
    for impl in [*HERE_IMPLS, "auto"]:
        layer.impl = impl
        got = layer(x).detach().numpy()
        assert got.shape == expected.shape, impl
        err = np.abs(got - expected).max()
        assert err <= 1e-10 * max(1.0, np.abs(expected).max()), f"impl={impl}: max error {err:.3g}"


def test_fused_operator_in_float32_at_the_papers_shapes_matches_float64():
    """The paper's k = 16, h = 4, r = 23 in float32 (the vectorized kernels' float path, with paired
    positions) against the float64 reference form, forward and every gradient."""
    from lambda_det.layers.position_lambdas import apply_position_lambdas, position_lambdas_conv2d

    torch.manual_seed(0)
    b, h, k, v, height, width = 2, 4, 16, 48, 13, 14
    q = torch.randn(b, h, k, height, width, requires_grad=True)
    values = torch.randn(b, 1, v, height, width, requires_grad=True)
    kernel = torch.randn(k, 1, 23, 23, requires_grad=True)
    content = torch.randn(b, k, v, requires_grad=True)
    out = lambda_output_fused(q, values, kernel, content)
    q64, v64, k64, c64 = (t.detach().double().requires_grad_(True) for t in (q, values, kernel, content))
    flat_q = q64.reshape(b, h, k, height * width)
    position = apply_position_lambdas(flat_q, position_lambdas_conv2d(v64, k64).reshape(b, k, v, height * width))
    expected = (torch.einsum("bhkn,bkv->bhvn", flat_q, c64) + position).reshape(b, h * v, height, width)
    grad = torch.randn_like(expected)
    got = torch.autograd.grad(out, (q, values, kernel, content), grad.float())
    want = torch.autograd.grad(expected, (q64, v64, k64, c64), grad)
    for a, b_ in [(out, expected), *zip(got, want)]:
        assert ((a.double() - b_).abs().max() / b_.abs().max()).item() < 1e-5


def test_without_the_fused_operator_auto_uses_the_other_forms_and_fused_says_why():
    import subprocess
    import sys

    code = (
        "import torch\n"
        "from lambda_det.layers import LambdaLayer\n"
        "layer = LambdaLayer(16, 16, dim_k=4, heads=4, scope=7)\n"
        "x = torch.randn(1, 16, 20, 20)\n"
        "assert layer.resolve_impl(20, 20, True, False) != 'fused'\n"
        "layer(x).sum().backward()\n"
        "layer.impl = 'fused'\n"
        "try:\n"
        "    layer(x)\n"
        "except RuntimeError as exc:\n"
        "    print(exc)\n"
    )
    env = dict(__import__("os").environ, LAMBDA_DET_FUSED="0")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "fused lambda operator is unavailable here: turned off by LAMBDA_DET_FUSED=0" in done.stdout


def test_fused_operator_is_one_library_op_for_autograd_and_compile():
    """torch.library's own checks of the operator and its backward (schema, fake tensors, which
    torch.compile traces with, autograd registration), and a whole layer compiled with
    fullgraph=True: one graph holding the operator, the same output and gradients as eager."""
    torch.manual_seed(0)
    q = torch.randn(2, 2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    values = torch.randn(2, 2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    kernel = torch.randn(3, 2, 5, 3, dtype=torch.float64, requires_grad=True)
    content = torch.randn(2, 3, 3, dtype=torch.float64, requires_grad=True)
    utils = ("test_schema", "test_faketensor", "test_autograd_registration")
    torch.library.opcheck(torch.ops.lambda_det.lambda_output_fused.default, (q, values, kernel, content), test_utils=utils)
    grad = torch.randn(2, 6, 5, 4, dtype=torch.float64)
    torch.library.opcheck(torch.ops.lambda_det.lambda_output_fused_backward.default,
                          (grad, *(t.detach() for t in (q, values, kernel, content))), test_utils=utils)
    assert lambda_output_fused(q, values, kernel, content).grad_fn is not None

    ops, differences = compiled_layer_against_eager("fused")
    assert ops == {"forward": ["lambda_det.lambda_output_fused.default"],
                   "backward": ["lambda_det.lambda_output_fused_backward.default"]}, ops
    assert max(differences) <= 1e-12, differences


@pytest.mark.slow
def test_fused_operator_under_inductor():
    """Inductor generates the code around the operator from its fake implementation's layouts."""
    assert max(compiled_layer_against_eager("fused", backend="inductor")[1]) <= 1e-12


def compiled_layer_against_eager(impl: str, backend=None) -> Tuple[Dict[str, List[str]], List[float]]:
    """A float64 layer with this impl compiled whole (fullgraph=True) against eager: the lambda_det
    operators in the forward and backward graphs AOT autograd traced from the fake implementations
    (with backend=None: the graphs run as traced), and the relative differences of the output and of
    every gradient."""
    graphs = {"forward": [], "backward": []}

    def keeping(kind):
        def compiler(gm, example_inputs):
            graphs[kind].append(gm)
            return make_boxed_func(gm.forward)
        return compiler

    torch.manual_seed(0)
    layer = LambdaLayer(6, 8, dim_k=4, heads=2, scope=5, stride=2, impl=impl).double()
    x = torch.randn(2, 6, 7, 6, dtype=torch.float64, requires_grad=True)
    backend = backend or aot_autograd(fw_compiler=keeping("forward"), bw_compiler=keeping("backward"))
    out = torch.compile(layer, backend=backend, fullgraph=True)(x)
    got = torch.autograd.grad(out.square().sum(), (x, *layer.parameters()))
    expected = layer(x)
    want = torch.autograd.grad(expected.square().sum(), (x, *layer.parameters()))
    differences = [((a - b).abs().max() / b.abs().max().clamp(min=1.0)).item()
                   for a, b in [(out, expected), *zip(got, want)]]
    ops = {kind: [str(n.target) for g in found for n in g.graph.nodes
                  if n.op == "call_function" and str(n.target).startswith("lambda_det.")] + ([] if len(found) == 1 else [f"{len(found)} graphs"])
           for kind, found in graphs.items()}
    return ops, differences


@pytest.mark.parametrize("impl", IMPLS)
def test_position_term_is_translation_equivariant(impl):
    """Values nonzero only on an interior patch: shifting them shifts the position lambdas exactly."""
    torch.manual_seed(0)
    kernel = torch.randn(4, 2, 5, 5, dtype=torch.float64)
    values = torch.zeros(2, 2, 3, 20, 20, dtype=torch.float64)
    values[..., 6:10, 5:9] = torch.randn(2, 2, 3, 4, 4, dtype=torch.float64)
    shifted = values.roll(shifts=(4, 5), dims=(-2, -1))  # patch stays >= 2 (= scope // 2) from borders
    f = POSITION_LAMBDA_IMPLS[impl]
    expected = f(values, kernel).roll(shifts=(4, 5), dims=(-2, -1))
    torch.testing.assert_close(f(shifted, kernel), expected, rtol=0, atol=1e-12)
    assert f(values, kernel).abs().max() > 0.1


def test_content_output_is_permutation_equivariant_without_position_lambdas():
    """With R = 0 the output is q_n^T lambda_c; lambda_c sums over context positions, so permuting
    the pixels of the input permutes the output the same way (and nothing else changes)."""
    torch.manual_seed(0)
    layer = LambdaLayer(8, 16, dim_k=4, heads=2, scope=5).double().eval()
    _randomize_norms(layer, seed=1)
    with torch.no_grad():
        layer.rel_pos_emb.zero_()
    x = torch.randn(2, 8, 6, 7, dtype=torch.float64)
    perm = torch.randperm(6 * 7)
    x_perm = x.flatten(2)[:, :, perm].reshape_as(x)
    out = layer(x).flatten(2)[:, :, perm]
    torch.testing.assert_close(layer(x_perm).flatten(2), out, rtol=0, atol=1e-12)
    # with position lambdas switched back on, the same permutation is no longer an invariance
    with torch.no_grad():
        layer.rel_pos_emb.normal_()
    assert (layer(x_perm).flatten(2) - layer(x).flatten(2)[:, :, perm]).abs().max() > 1e-3


@pytest.mark.parametrize("impl", HERE_IMPLS)
@pytest.mark.parametrize("scope", [3, None])
def test_gradcheck_float64(impl, scope):
    torch.manual_seed(0)
    layer = LambdaLayer(3, 4, dim_k=2, heads=2, dim_u=2, scope=scope, impl=impl, global_max_size=4).double()
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)
    params = [layer.rel_pos_emb, layer.qkv.weight]

    def f(inp, *_):
        return layer(inp)

    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("impl", HERE_IMPLS)
def test_gradgradcheck_float64(impl):
    """Second derivatives (a gradient penalty's create_graph): the fused operator's backward once
    returned gradients autograd could not differentiate, so they came out wrong without an error."""
    torch.manual_seed(0)
    layer = LambdaLayer(3, 4, dim_k=2, heads=2, dim_u=2, scope=3, impl=impl, norm="").double()
    x = torch.randn(2, 3, 3, 4, dtype=torch.float64, requires_grad=True)

    def f(inp, *_):
        return layer(inp)

    assert torch.autograd.gradgradcheck(f, (x, layer.rel_pos_emb), eps=1e-6, atol=1e-7, fast_mode=True)


@pytest.mark.parametrize("impl", HERE_IMPLS)
@pytest.mark.parametrize("out_channels,channels_last", [(4, False), (4, True), (2, False)])
def test_gradients_with_create_graph_equal_plain_ones(impl, out_channels, channels_last):
    """create_graph=True takes the operators' differentiable backward; its first-order gradients must be
    the plain ones. The content lambda is computed from the same values the operator takes, so a
    backward that differentiated through that dependency itself counted it twice (v 2 = 4 / 2 heads,
    and v 1)."""
    torch.manual_seed(0)
    layer = LambdaLayer(3, out_channels, dim_k=2, heads=2, dim_u=2, scope=3, impl=impl).double()
    x = torch.randn(2, 3, 4, 5, dtype=torch.float64)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    weights = torch.randn(2, out_channels, 4, 5, dtype=torch.float64)
    wrt = (x, layer.qkv.weight, layer.rel_pos_emb)
    plain = torch.autograd.grad((layer(x) * weights).sum(), wrt)
    recorded = torch.autograd.grad((layer(x) * weights).sum(), wrt, create_graph=True)
    for a, b in zip(recorded, plain):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("impl", HERE_IMPLS)
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck_one_image_through_the_norms(impl, training):
    """One image per batch (a process of a 2-process CPU run with 2 images): the fused operator's
    query gradient and einsum's value gradient reach the norms channels-last with a batch stride other
    than C*H*W, from which PyTorch's CPU batch-norm backward computed wrong input, weight and bias
    gradients."""
    torch.manual_seed(0)
    layer = LambdaLayer(6, 8, dim_k=4, heads=2, dim_u=2, scope=3, impl=impl, norm="BN").double().train(training)
    _randomize_norms(layer, seed=1)
    x = torch.randn(1, 6, 4, 5, dtype=torch.float64, requires_grad=True)
    norms = [p for norm in (layer.norm_q, layer.norm_v) for p in (norm.weight, norm.bias)]
    params = [layer.qkv.weight, layer.rel_pos_emb, *norms]

    def f(inp, *_):
        return layer(inp)

    # fast mode (random projections of the Jacobian): the wrong gradients were off by far more than that tests
    assert torch.autograd.gradcheck(f, (x, *params), eps=1e-6, atol=1e-7, fast_mode=True)


@pytest.mark.parametrize(
    "d,d_out,k,h,u,scope,norm",
    [(64, 64, 16, 4, 1, 23, "BN"), (128, 256, 16, 4, 4, 7, "GN"), (32, 32, 8, 8, 1, None, ""),
     (32, 32, 8, 4, 1, 3, "LN"), (32, 32, 8, 4, 1, 3, "naiveSyncBN"), (32, 32, 8, 4, 1, 3, "FrozenBN")],
)
def test_parameter_count_closed_form(d, d_out, k, h, u, scope, norm):
    """Every norm of Detectron2's get_norm is taken (it decides which names exist); FrozenBN has no parameters."""
    layer = LambdaLayer(d, d_out, dim_k=k, heads=h, dim_u=u, scope=scope, norm=norm, global_max_size=12)
    v = d_out // h
    taps = scope * scope if scope else (2 * 12 - 1) ** 2
    by_hand = d * h * k + d * k * u + d * v * u + (2 * (h * k + v * u) if norm not in ("", "FrozenBN") else 0) + taps * k * u
    assert sum(p.numel() for p in layer.parameters()) == by_hand
    assert lambda_layer_num_params(layer) == by_hand


def test_initialization_follows_the_paper():
    d, k = 256, 16
    layer = LambdaLayer(d, 256, dim_k=k, heads=4, scope=23)
    w_q, w_k, w_v = layer.projection_weights()
    assert w_q.std().item() == pytest.approx((k * d) ** -0.5, rel=0.05)
    assert w_k.std().item() == pytest.approx(d**-0.5, rel=0.05)
    assert w_v.std().item() == pytest.approx(d**-0.5, rel=0.05)
    assert layer.rel_pos_emb.std().item() == pytest.approx(1.0, rel=0.05)
    assert layer.qkv.bias is None


def test_checkpoints_with_separate_projections_load():
    """lambda_det 0.1 saved W_Q, W_K, W_V as to_q / to_k / to_v: they load into qkv, in that order."""
    layer = LambdaLayer(8, 16, dim_k=4, heads=2, dim_u=2, scope=3)
    w_q, w_k, w_v = (torch.randn(n, 8, 1, 1) for n in (8, 8, 16))
    old = {k: v for k, v in layer.state_dict().items() if k != "qkv.weight"}
    old.update({"to_q.weight": w_q, "to_k.weight": w_k, "to_v.weight": w_v})
    layer.load_state_dict(old)
    for got, want in zip(layer.projection_weights(), (w_q, w_k, w_v)):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_bf16_autocast_large_inputs_are_finite_and_close_to_float32():
    torch.manual_seed(0)
    layer = LambdaLayer(32, 32, scope=7).eval()
    with torch.no_grad():  # running statistics far from the input's, as in an untrained model
        layer.norm_v.running_var.fill_(1e-4)
        layer.norm_q.running_var.fill_(1e-4)
    x = 300.0 * torch.randn(2, 32, 24, 24)
    expected = layer(x)
    xa = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(xa)
    assert out.dtype == torch.bfloat16
    assert torch.isfinite(out).all()
    rel = ((out.float() - expected).norm() / expected.norm()).item()
    assert rel < 3e-2, rel
    out.float().square().mean().backward()
    assert torch.isfinite(xa.grad).all() and xa.grad.abs().sum() > 0
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters() if p.grad is not None)


def test_global_scope_accepts_sizes_up_to_the_maximum():
    layer = LambdaLayer(8, 8, heads=2, dim_k=4, scope=None, global_max_size=(6, 9))
    assert layer(torch.randn(1, 8, 6, 9)).shape == (1, 8, 6, 9)
    assert layer(torch.randn(1, 8, 3, 2)).shape == (1, 8, 3, 2)
    with pytest.raises(ValueError, match="larger than global_max_size"):
        layer(torch.randn(1, 8, 7, 9))


def test_local_scope_accepts_any_size_and_stride_two_halves():
    layer = LambdaLayer(8, 16, heads=4, dim_k=4, scope=23, stride=2)
    assert layer(torch.randn(2, 8, 37, 3)).shape == (2, 16, 19, 2)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(in_channels=8, out_channels=10, heads=4), "out_channels=10"),
        (dict(in_channels=8, out_channels=8, scope=4), "scope=4"),
        (dict(in_channels=8, out_channels=8, scope=-3), "scope=-3"),
        (dict(in_channels=8, out_channels=8, scope=0), "scope=0"),
        (dict(in_channels=8, out_channels=8, dim_k=0), "dim_k=0"),
        (dict(in_channels=8, out_channels=8, impl="fast"), "impl='fast'"),
        (dict(in_channels=8, out_channels=8, norm="LayerNorm"), "norm='LayerNorm' is no norm of Detectron2's get_norm"),
        (dict(in_channels=8, out_channels=8, norm=3), "norm=3 is no norm"),
        (dict(in_channels=8, out_channels=8, stride=3), "stride=3"),
        (dict(in_channels=8, out_channels=8, dim_u=0), "dim_u=0"),
        # bools and floats were accepted (stride=True ran as stride 1) or failed inside torch
        (dict(in_channels=8, out_channels=8, scope=True), "scope=True"),
        (dict(in_channels=8, out_channels=8, stride=True), "stride=True"),
        (dict(in_channels=8, out_channels=8, stride=2.0), "stride=2.0"),
        (dict(in_channels=8, out_channels=8, scope=None, global_max_size=8.5), "global_max_size=8.5"),
        (dict(in_channels=8, out_channels=8, scope=None, global_max_size=(8, True)), "global_max_size=(8, True)"),
        (dict(in_channels=8, out_channels=8, position_bias="no"), "position_bias='no'"),  # it made the bias
    ],
)
def test_bad_arguments_raise_value_error_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        LambdaLayer(**kwargs)


def test_group_norm_with_too_few_channels_is_explained():
    with pytest.raises(ValueError, match="norm='GN'.*16"):
        LambdaLayer(64, 64, heads=4, norm="GN")


@pytest.mark.parametrize("stride", [1, 2])
def test_an_empty_batch_gives_an_empty_output(stride):
    """As Detectron2's own layers do; the projections' reshape failed on it."""
    layer = LambdaLayer(8, 8, heads=2, dim_k=4, scope=3, stride=stride).eval()
    assert layer(torch.randn(0, 8, 7, 9)).shape == (0, *layer(torch.randn(1, 8, 7, 9)).shape[1:])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(torch.randn(0, 8, 7, 9)).dtype == layer(torch.randn(1, 8, 7, 9)).dtype == torch.bfloat16


def test_global_max_size_from_a_lazyconfig_list():
    """instantiate() passes a LazyConfig's list as an OmegaConf ListConfig."""
    from omegaconf import OmegaConf

    assert LambdaLayer(8, 8, heads=2, dim_k=4, scope=None, global_max_size=OmegaConf.create([6, 9])).global_max_size == (6, 9)


def test_wrong_channel_count_at_forward():
    layer = LambdaLayer(8, 8, heads=2, dim_k=4, scope=3)
    with pytest.raises(ValueError, match=r"\(N, 8, H, W\), got \(1, 5, 4, 4\)"):
        layer(torch.randn(1, 5, 4, 4))


@pytest.mark.parametrize("norm", ["BN", "SyncBN", "FrozenBN", "GN"])
def test_norms_from_detectron2(norm):
    from detectron2.layers import FrozenBatchNorm2d

    layer = LambdaLayer(64, 128, norm=norm, scope=3)
    out = layer(torch.randn(2, 64, 5, 5))
    assert torch.isfinite(out).all()
    if norm == "FrozenBN":
        assert isinstance(layer.norm_q, FrozenBatchNorm2d)
