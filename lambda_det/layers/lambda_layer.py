"""The lambda layer of LambdaNetworks (Bello, ICLR 2021), Sec. 3 and App. B-E, for NCHW maps."""
from __future__ import annotations

from typing import List, Optional, Tuple, Union

import torch
from torch import nn

from .flops import counted_by_fvcore, position_term
from .fused import available as fused_available
from .fused import lambda_output_fused
from .position_lambdas import IMPL_ALIASES, IMPL_CHOICES, choose_impl, position_lambdas, position_lambdas_conv2d

Tensor = torch.Tensor

NORM_CHOICES = ("BN", "SyncBN", "FrozenBN", "GN", "")
# the pooling after a stride-2 layer: the paper's 3x3 average with stride 2 (App. D), or timm's 2x2
POOLS = ("avg3x3", "avg2x2")


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
            operator of ``lambda_det.layers.fused``), or "auto": the fastest for the shape, the
            device and whether gradients are needed. All compute the same function from the same
            parameters.
        norm: normalization of queries and values, by Detectron2's ``get_norm``: "BN", "SyncBN",
            "FrozenBN", "GN" or "" (none; an ablation that costs 2.2 points in App. A).
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
        if scope is not None and (not isinstance(scope, int) or scope < 1 or scope % 2 == 0):
            raise ValueError(f"scope={scope!r} must be a positive odd integer, or None for global")
        if stride not in (1, 2):
            raise ValueError(f"stride={stride!r} must be 1 or 2")
        if impl not in IMPL_CHOICES:
            raise ValueError(f"impl={impl!r} is not one of {list(IMPL_CHOICES)}")
        if norm is None:
            norm = ""
        if norm not in NORM_CHOICES:
            raise ValueError(f"norm={norm!r} is not one of {list(NORM_CHOICES)}")
        if pool not in POOLS:
            raise ValueError(f"pool={pool!r} is not one of {list(POOLS)}")
        if isinstance(global_max_size, int):
            global_max_size = (global_max_size, global_max_size)
        if len(global_max_size) != 2 or min(global_max_size) < 1:
            raise ValueError(f"global_max_size={global_max_size!r} must be a positive side or (height, width)")

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

        # W_Q, W_K and W_V as one 1x1 convolution (one oneDNN call instead of three small ones, up
        # to 4x faster), output channels in that order: queries (h, k), keys (u, k), values (u, v)
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

    def resolve_impl(self, height: int, width: int, needs_grad: bool = True, fused_ok: bool = False) -> str:
        """How the position term is computed for a map of this size (resolves impl="auto").

        ``needs_grad``: whether autograd records the forward (training) or not (evaluation,
        ``torch.no_grad`` / ``torch.inference_mode``); the fastest form differs. ``fused_ok``:
        whether the fused CPU operator can run (a CPU input, the operator built here).
        """
        if self.impl != "auto":
            return self.impl
        rh_full, rw_full = self.rel_pos_emb.shape[0], self.rel_pos_emb.shape[1]
        rh, rw = min(rh_full, 2 * height - 1), min(rw_full, 2 * width - 1)
        return choose_impl(height, width, rh, rw, needs_grad, fused_ok)

    def forward(self, x: Tensor) -> Tensor:
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            if x.dim() != 4 or x.shape[1] != self.in_channels:
                raise ValueError(
                    f"LambdaLayer expects an input of shape (N, {self.in_channels}, H, W), got {tuple(x.shape)}"
                )
        q, keys, values = self.qkv(x).split(self.split_sizes(), dim=1)
        if self.norm_q is not None and self.norm_v is not None:
            q = self.norm_q(q)
            values = self.norm_v(values)

        if torch.jit.is_scripting():
            out = self._lambdas(q, keys, values, x.dtype == torch.float64)
        else:
            # the softmax and the sums over positions run in float32 even under autocast
            out_dtype = _autocast_dtype(x)
            with torch.autocast(device_type=x.device.type, enabled=False):
                out = self._lambdas(q, keys, values, x.dtype == torch.float64)
            out = out.to(out_dtype)
        if self.pool is not None:
            out = self.pool(out)
        return out

    def _lambdas(self, q: Tensor, keys: Tensor, values: Tensor, double: bool) -> Tensor:
        """y_n = concat_h (lambda_c + lambda^p_n)^T q_n^h from the projected queries, keys, values."""
        b, height, width = q.shape[0], q.shape[2], q.shape[3]
        n = height * width
        dtype = torch.float64 if double else torch.float32
        q = q.to(dtype).reshape(b, self.heads, self.dim_k, n)
        keys = keys.to(dtype).reshape(b, self.dim_u, self.dim_k, n).softmax(dim=-1)
        values = values.to(dtype).reshape(b, self.dim_u, self.dim_v, height, width)
        # content lambda: sum over u and m of softmax(K) V^T, (b, k, v); matmuls, which fvcore counts exactly
        flat_values = values.reshape(b, self.dim_u, self.dim_v, n)
        content_lambda = torch.matmul(keys[:, 0], flat_values[:, 0].transpose(1, 2))
        for i in range(1, self.dim_u):
            content_lambda = content_lambda + torch.matmul(keys[:, i], flat_values[:, i].transpose(1, 2))
        if self.position_bias is not None:
            # the bias b of every position lambda is position-independent: it joins the content lambda
            content_lambda = content_lambda + self.position_bias.to(dtype).reshape(1, self.dim_k, 1)
        if not torch.jit.is_scripting() and not torch.jit.is_tracing():
            needs_grad = torch.is_grad_enabled() and (q.requires_grad or values.requires_grad)
            impl = self.resolve_impl(height, width, needs_grad, q.device.type == "cpu" and fused_available())
            if impl == "fused":
                if q.device.type != "cpu":
                    raise ValueError(f"impl='fused' runs on CPUs; this input is on {q.device}: use impl='auto'")
                kernel = self.position_kernel(height, width).to(dtype)
                return lambda_output_fused(q.reshape(b, self.heads, self.dim_k, height, width), values, kernel, content_lambda)
        # lambda_c^T q_n for every head and position: one (v x k)(k x n) product per image and head
        lhs = content_lambda.transpose(1, 2).unsqueeze(1).expand(b, self.heads, self.dim_v, self.dim_k)
        content = torch.bmm(lhs.reshape(b * self.heads, self.dim_v, self.dim_k), q.reshape(b * self.heads, self.dim_k, n))
        out = content.reshape(b, self.heads, self.dim_v, n) + self._position_term(q, values, height, width)
        return out.reshape(b, self.out_channels, height, width)

    def _position_term(self, q: Tensor, values: Tensor, height: int, width: int) -> Tensor:
        """(lambda^p_n)^T q_n for every position n, (b, h, v, n), by a position-lambda form."""
        b = q.shape[0]
        dtype = q.dtype
        if not torch.jit.is_scripting():
            if counted_by_fvcore(self):  # one operator whose FLOPs fvcore counts by the definition
                kernel = self.position_kernel(height, width).to(dtype)
                impl = self.resolve_impl(height, width, False)
                return position_term(q, values, kernel, "conv2d" if impl == "fused" else impl)
            if torch.jit.is_tracing():
                # A trace records one path for all sizes: the convolution with the whole table is
                # exact at every size (it never crops to the map), where the FFT's padded sizes and
                # the kernel crop would be frozen at the traced size.
                kernel = self.rel_pos_emb.permute(2, 3, 0, 1).to(dtype)
                lam = position_lambdas_conv2d(values, kernel)
                return apply_position_lambdas(q, lam.reshape(b, self.dim_k, self.dim_v, height * width))
        kernel = self.position_kernel(height, width).to(dtype)
        needs_grad = torch.is_grad_enabled() and (q.requires_grad or values.requires_grad)
        impl = self.resolve_impl(height, width, needs_grad, False)
        if impl == "fused":  # TorchScript, or fused explicitly where it cannot run: the same function by the FFT
            impl = "fft"
        lam = position_lambdas(values, kernel, impl)
        return apply_position_lambdas(q, lam.reshape(b, self.dim_k, self.dim_v, height * width))


def apply_position_lambdas(q: Tensor, lambdas: Tensor) -> Tensor:
    """out[b, h, v, n] = sum_k q[b, h, k, n] * lambdas[b, k, v, n]: every position has its own lambda.

    A loop over the small k of whole-map multiply-adds: about 1.6x faster forward+backward on a
    CPU than einsum's per-position batched matmul (which has n tiny (h x k)(k x v) products).
    """
    # unbind, not indexing: indexing's backward would write k full-size zero gradients
    queries, per_k = q.unbind(2), lambdas.unbind(1)
    out = queries[0].unsqueeze(2) * per_k[0].unsqueeze(1)
    for i in range(1, len(queries)):
        out = out + queries[i].unsqueeze(2) * per_k[i].unsqueeze(1)
    return out


def lambda_layer_num_params(
    in_channels: int,
    out_channels: int,
    *,
    dim_k: int = 16,
    heads: int = 4,
    dim_u: int = 1,
    scope: Optional[int] = 23,
    norm: str = "BN",
    global_max_size: Union[int, Tuple[int, int]] = 64,
    position_bias: bool = False,
) -> int:
    """Closed-form parameter count: projections + norm affine parameters + embeddings (+ bias)."""
    dim_v = out_channels // heads
    projections = in_channels * (heads * dim_k + dim_k * dim_u + dim_v * dim_u)
    norms = 2 * (heads * dim_k + dim_v * dim_u) if norm in ("BN", "SyncBN", "GN") else 0
    if scope is None:
        gh, gw = (global_max_size, global_max_size) if isinstance(global_max_size, int) else global_max_size
        taps = (2 * gh - 1) * (2 * gw - 1)
    else:
        taps = scope * scope
    return projections + norms + taps * dim_k * dim_u + (dim_k if position_bias else 0)


def _check_positive(name: str, value: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def _make_norm(norm: str, channels: int) -> Optional[nn.Module]:
    from detectron2.layers import get_norm

    if not norm:
        return None
    if norm == "GN" and channels % 32 != 0:
        raise ValueError(
            f"norm='GN' is Detectron2's GroupNorm with 32 groups, which needs a multiple of 32 channels; "
            f"this lambda layer normalizes {channels} (queries h*k or values v*u): use BN/SyncBN or wider layers"
        )
    return get_norm(norm, channels)


def _autocast_dtype(x: Tensor) -> torch.dtype:
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return x.dtype


__all__ = ["LambdaLayer", "lambda_layer_num_params"]
