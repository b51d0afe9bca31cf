"""The lambda layer of LambdaNetworks (Bello, ICLR 2021), Sec. 3 and App. B-E, for NCHW maps."""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Callable, Dict, List, Optional, Tuple, Union

import torch
from detectron2.layers import get_norm
from torch import nn

from .flops import counted_by_fvcore, position_term_op
from .fused import available as fused_available
from .fused import lambda_output_fused
from .position_lambdas import FUSED, IMPL_ALIASES, IMPL_CHOICES, POSITION_LAMBDA_IMPLS, TRITON, choose_impl, position_term
from .triton_lambda import choose_triton, lambda_output_triton

Tensor = torch.Tensor

# the pooling after a stride-2 layer: the paper's 3x3 average with stride 2 (App. D), or timm's 2x2
POOLS = ("avg3x3", "avg2x2")


class ContiguousGradient(torch.autograd.Function):
    """The identity, whose backward hands the gradient on contiguous.

    For a one-image batch (or a map of one row or column), the gradients of the queries and values can
    reach the norms channels-last with an odd stride on the size-1 axis (a view of the fused operator's
    permuted query gradient or of einsum's value gradient gives a size-1 axis any stride), and PyTorch's
    CPU batch-norm backward (BN, and SyncBN outside a process group) computes wrong input, weight and
    bias gradients from such a tensor (torch 2.13; ``test_gradcheck_one_image_through_the_norms``).
    Only those inputs take the copy. TorchScript cannot compile this function: a scripted layer with
    ``impl="einsum"`` keeps the wrong gradients for one image (its other forms do not make them).
    """

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad.contiguous()


class LambdaLayer(nn.Module):
    """Multi-query lambda layer with content and relative position lambdas.

    For each query position n (paper Sec. 3, App. B; symbols as in the paper):

        Q = BN(X W_Q)  (h*k channels)      K = X W_K  (k*u)      V = BN(X W_V)  (v*u), v = d_out / h
        content lambda    lc   = softmax_m(K)^T V          (k x v, shared by all positions)
        position lambdas  lp_n = E_n^T V, E_{n,m} = R[pos(m) - pos(n)]   (k x v per position)
        output            y_n  = concat_h (lc + lp_n)^T q_n^h              (d_out = h * v)

    The h queries share one lambda (keys and values have no head axis); keys are normalized by a
    softmax over context positions only; there is no 1/sqrt(k) scaling. With intra-depth u > 1 the
    sums also run over u. Context = the input map itself.

    Args:
        in_channels: d, channels of the input map.
        out_channels: d_out; must be divisible by ``heads``.
        dim_k: query/key depth k (paper default 16).
        heads: number of queries h (paper default 4).
        dim_u: intra-depth u (paper default 1; 4 with a 7x7 scope in its ablation).
        scope: odd r for local r x r position lambdas (the "lambda convolution"; any input size and
            aspect ratio, zero padding at the borders), or ``None`` for global position lambdas
            over the whole map. Global embeddings are a relative table sized for
            ``global_max_size`` and cropped to the input, so inputs up to that size work.
        stride: 1, or 2 for an average pool with stride 2 after the layer (``pool``).
        impl: how the position term is computed: "conv" / "conv2d", "conv3d", "einsum", "fft"
            (the position-lambda forms of ``lambda_det.layers.position_lambdas``), "fused" (the CPU
            operator of ``lambda_det.layers.fused``), "triton" (the CUDA operator of
            ``lambda_det.layers.triton_lambda``), or "auto": the fastest for the shape, the device and
            whether gradients are needed. All compute the same function from the same parameters.
        norm: normalization of queries and values: any name Detectron2's ``get_norm`` builds ("BN",
            "SyncBN", "FrozenBN", "GN", ...) or "" (none; an ablation that costs 2.2 points in App. A).
        global_max_size: (height, width) or side of the largest map a global layer accepts.
        pool: the pooling of a stride-2 layer: "avg3x3" (the paper's 3x3 average, App. D) or
            "avg2x2" (timm's lambda models).
        position_bias: a learned bias b (k) on every position lambda (timm's ``conv_lambda`` has
            one; the paper does not). It adds q_n^T b to the output and is computed with the content
            lambda.

    Under ``torch.autocast`` the projections run in the autocast dtype, while the key softmax,
    the lambdas and their application accumulate in float32 (public ports produced NaN in fp16
    here); the output is cast back to the autocast dtype.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        dim_k: int = 16,
        heads: int = 4,
        dim_u: int = 1,
        scope: Optional[int] = 23,
        stride: int = 1,
        impl: str = "auto",
        norm: str = "BN",
        global_max_size: Union[int, Tuple[int, int]] = 64,
        pool: str = "avg3x3",
        position_bias: bool = False,
    ) -> None:
        super().__init__()
        _check_positive("in_channels", in_channels)
        _check_positive("out_channels", out_channels)
        _check_positive("dim_k", dim_k)
        _check_positive("heads", heads)
        _check_positive("dim_u", dim_u)
        if out_channels % heads != 0:
            raise ValueError(f"out_channels={out_channels} must be divisible by heads={heads}")
        if scope is not None and (not _is_int(scope) or scope < 1 or scope % 2 == 0):
            raise ValueError(f"scope={scope!r} must be a positive odd integer, or None for global")
        if not _is_int(stride) or stride not in (1, 2):
            raise ValueError(f"stride={stride!r} must be 1 or 2")
        if impl not in IMPL_CHOICES:
            raise ValueError(f"impl={impl!r} is not one of {list(IMPL_CHOICES)}")
        if norm is None:
            norm = ""
        if norm and not is_norm_name(norm):
            raise ValueError(f"norm={norm!r} is no norm of Detectron2's get_norm (BN, SyncBN, FrozenBN, GN, ...; '' for none)")
        if pool not in POOLS:
            raise ValueError(f"pool={pool!r} is not one of {list(POOLS)}")
        if not isinstance(position_bias, bool):  # "no" or 0.0 would be read as a wish, or its opposite
            raise ValueError(f"position_bias={position_bias!r} must be True or False")
        if _is_int(global_max_size):
            global_max_size = (global_max_size, global_max_size)
        if (not isinstance(global_max_size, Sequence) or isinstance(global_max_size, str) or len(global_max_size) != 2
                or not all(_is_int(side) and side >= 1 for side in global_max_size)):
            raise ValueError(f"global_max_size={global_max_size!r} must be a positive integer side or (height, width)")

        self.in_channels = in_channels
        self.out_channels = out_channels
        self.dim_k = dim_k
        self.heads = heads
        self.dim_u = dim_u
        self.dim_v = out_channels // heads
        self.scope = scope
        self.stride = stride
        self.impl = IMPL_ALIASES.get(impl, impl)
        self.norm = norm
        self.global_max_size = tuple(global_max_size)

        # W_Q, W_K and W_V as one 1x1 convolution: one large product instead of three small ones, whose
        # time is mostly per-call overhead. Output channels: queries (h, k), keys (u, k), values (u, v)
        self.qkv = nn.Conv2d(in_channels, heads * dim_k + dim_k * dim_u + self.dim_v * dim_u, 1, bias=False)
        self.norm_q = _make_norm(norm, heads * dim_k)
        self.norm_v = _make_norm(norm, self.dim_v * dim_u)
        # R, the relative position embeddings, indexed [offset_y, offset_x, k, u] as in the paper.
        rh, rw = (scope, scope) if scope is not None else (2 * global_max_size[0] - 1, 2 * global_max_size[1] - 1)
        self.rel_pos_emb = nn.Parameter(torch.empty(rh, rw, dim_k, dim_u))
        # timm's lambda layer convolves with a bias: b_k added to every position lambda, which adds
        # q_n^T b to every output channel; the paper has none
        self.position_bias = nn.Parameter(torch.zeros(dim_k)) if position_bias else None
        self.pool_type = pool
        if stride == 2:
            self.pool = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False) if pool == "avg3x3" else nn.AvgPool2d(2, 2)
        else:
            self.pool = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialization of App. E.1: W_K, W_V ~ N(0, d^-1/2), W_Q ~ N(0, (k d)^-1/2), R ~ N(0, 1)."""
        d = self.in_channels
        w_q, w_k, w_v = self.projection_weights()
        with torch.no_grad():
            w_q.normal_(std=(self.dim_k * d) ** -0.5)
            w_k.normal_(std=d ** -0.5)
            w_v.normal_(std=d ** -0.5)
        nn.init.normal_(self.rel_pos_emb, std=1.0)

    def projection_weights(self) -> Tuple[Tensor, Tensor, Tensor]:
        """W_Q (h k, d, 1, 1), W_K (k u, d, 1, 1), W_V (v u, d, 1, 1): views of ``qkv.weight``."""
        return tuple(self.qkv.weight.split(self.split_sizes(), dim=0))

    def split_sizes(self) -> List[int]:
        return [self.heads * self.dim_k, self.dim_k * self.dim_u, self.dim_v * self.dim_u]

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # checkpoints of lambda_det 0.1 hold the projections as to_q / to_k / to_v
        old = [f"{prefix}to_{name}.weight" for name in "qkv"]
        if all(key in state_dict for key in old) and f"{prefix}qkv.weight" not in state_dict:
            state_dict[f"{prefix}qkv.weight"] = torch.cat([state_dict.pop(key) for key in old], dim=0)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def extra_repr(self) -> str:
        scope = "global" if self.scope is None else f"{self.scope}x{self.scope}"
        extra = (f", pool={self.pool_type}" if self.stride == 2 else "") + (", position_bias" if self.position_bias is not None else "")
        return (
            f"{self.in_channels}, {self.out_channels}, k={self.dim_k}, h={self.heads}, u={self.dim_u}, "
            f"scope={scope}, stride={self.stride}, impl={self.impl}, norm={self.norm or 'none'}{extra}"
        )

    def position_kernel(self, height: int, width: int) -> Tensor:
        """R as a convolution weight (k, u, rh, rw), cropped to the offsets a height x width map has.

        Offsets beyond (height - 1, width - 1) only ever meet zero padding, so cropping them is
        exact; for a global scope it is what makes one table serve every input size.
        """
        rh_full, rw_full = self.rel_pos_emb.shape[0], self.rel_pos_emb.shape[1]
        if self.scope is None and (height > self.global_max_size[0] or width > self.global_max_size[1]):
            raise ValueError(
                f"input map {height}x{width} is larger than global_max_size={self.global_max_size} of this "
                "global-scope LambdaLayer; build it with a larger global_max_size or use a local scope"
            )
        ch, cw = min(rh_full // 2, height - 1), min(rw_full // 2, width - 1)
        oy, ox = rh_full // 2 - ch, rw_full // 2 - cw
        emb = self.rel_pos_emb[oy : oy + 2 * ch + 1, ox : ox + 2 * cw + 1]
        return emb.permute(2, 3, 0, 1)

    def resolve_impl(self, height: int, width: int, needs_grad: bool = True, fused_ok: bool = False,
                     triton_ok: bool = False) -> str:
        """How the position term is computed for a map of this size (resolves impl="auto").

        ``needs_grad``: whether autograd records the forward (training) or not (evaluation,
        ``torch.no_grad`` / ``torch.inference_mode``); the fastest form differs. ``fused_ok`` /
        ``triton_ok``: whether the fused CPU operator / the Triton GPU operator can run here.
        """
        if self.impl != "auto":
            return self.impl
        rh_full, rw_full = self.rel_pos_emb.shape[0], self.rel_pos_emb.shape[1]
        rh, rw = min(rh_full, 2 * height - 1), min(rw_full, 2 * width - 1)
        return choose_impl(height, width, rh, rw, needs_grad, fused_ok, triton_ok)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            if x.dim() != 4 or x.shape[1] != self.in_channels:
                raise ValueError(
                    f"LambdaLayer expects an input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
                )
            if x.shape[0] == 0:  # an empty batch, as Detectron2's layers take it: an empty output (not linked to
                # the parameters, as nothing flows back from no images), in the type a batch's output has
                device = x.device.type
                dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
                out = x.new_zeros(0, self.out_channels, x.shape[2], x.shape[3], dtype=dtype)
                return self.pool(out) if self.pool is not None else out
        q, keys, values = self.qkv(x).split(self.split_sizes(), dim=1)  # (b, h k | k u | v u, H, W)
        if self.norm_q is not None and self.norm_v is not None:
            q, values = self.norm_q(q), self.norm_v(values)
            if not torch.jit.is_scripting():
                # tracing first: a traced shape is a tensor, and comparing it warns the exporting user
                if not torch.jit.is_tracing() and torch.is_grad_enabled() and min(x.shape[0], x.shape[2], x.shape[3]) == 1:
                    q, values = ContiguousGradient.apply(q), ContiguousGradient.apply(values)
        if torch.jit.is_scripting():  # TorchScript leaves autocast to the caller
            out = self._lambda_output(q, keys, values, x.dtype)
        else:
            # autocast would run the products below in its low precision again: they accumulate in
            # float32 (float64 for a float64 input), and only the output goes back to autocast's dtype
            device = x.device.type
            out_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype
            with torch.autocast(device_type=device, enabled=False):
                out = self._lambda_output(q, keys, values, x.dtype, out_dtype).to(out_dtype)
        if self.pool is not None:
            out = self.pool(out)
        return out

    def _lambda_output(self, q: Tensor, keys: Tensor, values: Tensor, input_dtype: torch.dtype,
                       autocast_dtype: Optional[torch.dtype] = None) -> Tensor:
        """y_n = concat_h (lambda^c + lambda^p_n)^T q_n^h, (b, h v, H, W), from the projections.
        ``autocast_dtype``: the caller's autocast type, which the Triton operator multiplies in (its
        sums stay float32); every other form computes in float32 throughout."""
        b, _, height, width = q.shape
        n, k, u, v = height * width, self.dim_k, self.dim_u, self.dim_v
        dtype = torch.float64 if input_dtype == torch.float64 else torch.float32
        q = q.reshape(b, self.heads, k, n)  # (b, h, k, n), in the projection's type until a form takes it
        keys = keys.to(dtype).reshape(b, u, k, n).softmax(dim=-1)  # (b, u, k, m), normalized over m only
        projected_values = values.reshape(b, u, v, height, width)  # (b, u, v, H, W)
        values = projected_values.to(dtype)
        # lambda^c = sum over u and m of softmax(K) V^T, (b, k, v): a matmul, which fvcore counts exactly
        flat_values = values.reshape(b, u, v, n).transpose(2, 3).reshape(b, -1, v)  # (b, u m, v)
        content_lambda = torch.matmul(keys.transpose(1, 2).reshape(b, k, -1), flat_values)
        if self.position_bias is not None:  # the same for every position: it joins the content lambda
            content_lambda = content_lambda + self.position_bias.to(dtype).reshape(1, k, 1)
        # the one place that decides how the position term is computed
        needs_grad = torch.is_grad_enabled() and (q.requires_grad or values.requires_grad)
        if torch.jit.is_scripting():
            out = self._scripted_output(q.to(dtype), values, content_lambda, needs_grad)
        elif counted_by_fvcore(self):
            out = self._counted_output(q.to(dtype), values, content_lambda)
        elif torch.jit.is_tracing():
            out = self._traced_output(q.to(dtype), values, content_lambda)
        else:
            device = q.device.type
            on_cpu = device == "cpu"  # the hot path: ask about each operator only on its own device
            impl = self.resolve_impl(height, width, needs_grad, on_cpu and fused_available(), not on_cpu and choose_triton(device))
            kernel = self.position_kernel(height, width)
            if impl == TRITON and autocast_dtype in (torch.float16, torch.bfloat16):
                # the operator multiplies in autocast's type: queries and values go to it from the
                # projections, which autocast already made that type, not through float32 and back
                # (the same forward without a cast pass each way, in the backward too; the values'
                # two gradients are then added in that type)
                operands = (q.to(autocast_dtype), projected_values.to(autocast_dtype), kernel.to(autocast_dtype),
                            content_lambda.to(autocast_dtype))
            else:
                operands = (q.to(dtype), values, kernel.to(dtype), content_lambda)
            out = OUTPUT_BY_IMPL[impl](*operands)
        return out.reshape(b, self.out_channels, height, width)

    def _scripted_output(self, q: Tensor, values: Tensor, content_lambda: Tensor, needs_grad: bool) -> Tensor:
        """TorchScript: a compiled operator is no part of a portable file, so "fused" and "triton" run
        as "fft" (literals: TorchScript reads no str globals)."""
        height, width = values.shape[-2], values.shape[-1]
        impl = self.resolve_impl(height, width, needs_grad)
        kernel = self.position_kernel(height, width).to(q.dtype)
        return lambda_output(q, values, kernel, content_lambda, "fft" if impl == "fused" or impl == "triton" else impl)

    def _counted_output(self, q: Tensor, values: Tensor, content_lambda: Tensor) -> Tensor:
        """Under fvcore: the position term as the one operator whose FLOPs it counts by the definition."""
        height, width = values.shape[-2], values.shape[-1]
        impl = self.resolve_impl(height, width, needs_grad=False)
        kernel = self.position_kernel(height, width).to(q.dtype)
        form = "conv2d" if impl in (FUSED, TRITON) else impl
        return content_output(q, content_lambda) + position_term_op(q, values, kernel, form)

    def _traced_output(self, q: Tensor, values: Tensor, content_lambda: Tensor) -> Tensor:
        """A trace records one path for all sizes: the convolution with the whole relative table is exact
        at every size (it never crops to the map), where the FFT's padded sizes and the kernel crop
        would be frozen at the traced size."""
        return lambda_output(q, values, self.rel_pos_emb.permute(2, 3, 0, 1).to(q.dtype), content_lambda, "conv2d")


def content_output(q: Tensor, content_lambda: Tensor) -> Tensor:
    """(lambda^c)^T q_n for every head and position: q (b, h, k, n), content_lambda (b, k, v) -> (b, h, v, n).
    One (v x k)(k x n) product per image and head."""
    b, heads, k, n = q.shape
    v = content_lambda.shape[2]
    lhs = content_lambda.transpose(1, 2).unsqueeze(1).expand(b, heads, v, k).reshape(b * heads, v, k)
    return torch.bmm(lhs, q.reshape(b * heads, k, n)).reshape(b, heads, v, n)


def lambda_output(q: Tensor, values: Tensor, kernel: Tensor, content_lambda: Tensor, impl: str) -> Tensor:
    """(lambda^c + lambda^p_n)^T q_n for every head and position, the position lambdas by the named form:
    q (b, h, k, n), values (b, u, v, H, W), kernel (k, u, rh, rw), content_lambda (b, k, v) -> (b, h, v, n)."""
    return content_output(q, content_lambda) + position_term(q, values, kernel, impl)


# impl -> the output from (q, values, kernel, content_lambda), in (b, h, v, n) order: what an eager forward runs
def _triton_output(q: Tensor, values: Tensor, kernel: Tensor, content_lambda: Tensor) -> Tensor:
    """The Triton operator takes the queries as a map: q (b, h, k, n) -> (b, h, k, H, W)."""
    return lambda_output_triton(q.reshape(*q.shape[:3], *values.shape[-2:]), values, kernel, content_lambda)


OUTPUT_BY_IMPL: Dict[str, Callable[..., Tensor]] = {
    **{form: partial(lambda_output, impl=form) for form in POSITION_LAMBDA_IMPLS},
    FUSED: lambda_output_fused,
    TRITON: _triton_output,
}


def lambda_layer_num_params(layer: LambdaLayer) -> int:
    """Closed-form parameter count: projections + norm affine parameters + embeddings (+ bias)."""
    h, k, u, v = layer.heads, layer.dim_k, layer.dim_u, layer.dim_v
    norms = 2 * (h * k + v * u) if layer.norm not in ("", "FrozenBN") else 0  # FrozenBN keeps buffers
    gh, gw = layer.global_max_size
    taps = (2 * gh - 1) * (2 * gw - 1) if layer.scope is None else layer.scope * layer.scope
    return layer.in_channels * (h * k + k * u + v * u) + norms + taps * k * u + (k if layer.position_bias is not None else 0)


def is_norm_name(norm) -> bool:
    """Whether Detectron2's get_norm builds a norm of this name: it decides which names it knows."""
    if not isinstance(norm, str) or not norm:
        return False
    try:
        get_norm(norm, 32)
    except KeyError:
        return False
    return True


def _is_int(value) -> bool:
    """An integer, not a bool (True would pass for 1) nor a float (2.0)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _check_positive(name: str, value: int) -> None:
    if not _is_int(value) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def _make_norm(norm: str, channels: int) -> Optional[nn.Module]:
    if not norm:
        return None
    if norm == "GN" and channels % 32 != 0:
        raise ValueError(
            f"norm='GN' is Detectron2's GroupNorm with 32 groups, which needs a multiple of 32 channels; "
            f"this lambda layer normalizes {channels} (queries h*k or values v*u): use BN/SyncBN or wider layers"
        )
    return get_norm(norm, channels)


__all__ = ["OUTPUT_BY_IMPL", "LambdaLayer", "POOLS", "content_output", "is_norm_name", "lambda_layer_num_params",
           "lambda_output"]
