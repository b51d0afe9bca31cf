"""FLOPs of the lambda layer, counted the same for every position-lambda form.

fvcore (and Detectron2's ``FlopCountAnalysis``, built on it) counts a model by tracing it and
adding up per-operator handles, one fused multiply-add = one flop. Each form of the position
lambdas traces to different operators (FFTs fvcore does not know, a convolution over zero padding,
an einsum over all pairs), so counting them as traced would give each form its own number, and the
per-position application of the lambdas (elementwise multiply-adds) would not be counted at all.

So, while fvcore traces a LambdaLayer, the layer computes its position term as one operator,
``lambda_det::position_term``, whose handle counts what the definition computes (paper Sec. 3):

* position lambdas ``lambda^p_n = sum_m E_{n,m}^T v_m``: k * v * u multiply-adds for every pair
  (n, m) with m inside n's scope and inside the map (``taps``; the zero padding of the
  convolution form is not work the definition does), and
* their application ``y^p_n = (lambda^p_n)^T q_n``: h * k * v per position.

Everything else of the layer is ordinary operators that fvcore counts itself: the three 1x1
projections (d * (h k + k u + v u) per position), the content lambda (matmul, k * v * u per
position) and its application (bmm, h * k * v per position); matmuls rather than einsums, which
fvcore counts only to 4 significant digits. Softmax, normalization and the
stride-2 average pool are not multiply-adds (Detectron2's analysis ignores them).
``lambda_layer_flops`` is the closed form of a whole layer.

``import lambda_det`` registers the handles in fvcore's defaults, so ``fvcore.nn.FlopCountAnalysis``,
``detectron2.utils.analysis.FlopCountAnalysis`` and ``tools/analyze_model.py`` all use them.
Tracing for export (``torch.jit.trace``, ONNX, ``TracingAdapter``) never sees this operator.
"""
from __future__ import annotations

from typing import Any, List

import torch
from fvcore.nn.activation_count import _DEFAULT_SUPPORTED_OPS as ACTIVATION_HANDLES
from fvcore.nn.flop_count import _DEFAULT_SUPPORTED_OPS as FLOP_HANDLES
from fvcore.nn.jit_handles import get_shape

from .position_lambdas import position_term

Tensor = torch.Tensor


def taps_inside(size: int, window: int) -> int:
    """sum over positions y in [0, size) of #{dy in [-c, c] : 0 <= y + dy < size}, c = window // 2."""
    c = window // 2
    return sum(min(y, c) + min(size - 1 - y, c) + 1 for y in range(size))


def position_term_flops(batch: int, heads: int, dim_k: int, dim_v: int, dim_u: int, height: int, width: int,
                        kernel_h: int, kernel_w: int) -> int:
    """Multiply-adds of the position lambdas (taps inside the map) and of applying them to the queries."""
    taps = taps_inside(height, kernel_h) * taps_inside(width, kernel_w)
    return batch * (dim_k * dim_v * dim_u * taps + heads * dim_k * dim_v * height * width)


def lambda_layer_flops(layer: torch.nn.Module, height: int, width: int, batch: int = 1) -> int:
    """Closed-form multiply-adds of one forward of a LambdaLayer on a (batch, d, height, width) map.

    A global scope (None) covers the whole map; a local r x r scope is clipped at the borders.
    """
    h, k, u, v, n = layer.heads, layer.dim_k, layer.dim_u, layer.dim_v, height * width
    window_h, window_w = (2 * height - 1, 2 * width - 1) if layer.scope is None else (layer.scope, layer.scope)
    projections = n * layer.in_channels * (h * k + k * u + v * u)
    content = n * k * v * u + n * h * k * v
    return batch * (projections + content + position_term_flops(1, h, k, v, u, height, width, window_h, window_w))


# ---------------------------------------------------------------------------------------------
# the operator fvcore sees, and its handles
# ---------------------------------------------------------------------------------------------
def _define_position_term_op():
    """``position_term`` as the operator lambda_det::position_term, defined once per process (a
    re-import finds it registered)."""
    try:
        return torch.ops.lambda_det.position_term
    except (AttributeError, RuntimeError):
        pass
    op = torch.library.custom_op("lambda_det::position_term", position_term, mutates_args=())

    @op.register_fake
    def _fake(q: Tensor, values: Tensor, kernel: Tensor, impl: str) -> Tensor:
        return q.new_empty((q.shape[0], q.shape[1], values.shape[2], q.shape[3]))

    return torch.ops.lambda_det.position_term


position_term_op = _define_position_term_op()


def position_term_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore handle of lambda_det::position_term: the closed form, from the traced shapes."""
    b, heads, dim_k, _ = get_shape(inputs[0])
    _, dim_u, dim_v, height, width = get_shape(inputs[1])
    _, _, kernel_h, kernel_w = get_shape(inputs[2])
    return position_term_flops(b, heads, dim_k, dim_v, dim_u, height, width, kernel_h, kernel_w)


def position_term_activation_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore activation handle: the elements the operator writes (as fvcore counts an einsum)."""
    count = 1
    for size in get_shape(outputs[0]):
        count *= size
    return count


def counted_by_fvcore(module: torch.nn.Module) -> bool:
    """Whether fvcore's JitModelAnalysis is tracing this module now (it hooks a ScopePushHook on every
    module it traces); plain tracing for export is not."""
    if not torch.jit.is_tracing():
        return False
    return any(type(hook).__name__ == "ScopePushHook" and type(hook).__module__.startswith("fvcore")
               for hook in module._forward_pre_hooks.values())


def register_fvcore_handles() -> None:
    """Add the handles to fvcore's default tables (idempotent), for every FlopCountAnalysis /
    ActivationCountAnalysis created afterwards, Detectron2's included."""
    FLOP_HANDLES["lambda_det::position_term"] = position_term_flop_jit
    ACTIVATION_HANDLES["lambda_det::position_term"] = position_term_activation_jit


__all__ = ["counted_by_fvcore", "lambda_layer_flops", "position_term_flops", "position_term_op", "register_fvcore_handles",
           "taps_inside"]
