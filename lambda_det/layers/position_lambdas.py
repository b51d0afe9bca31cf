"""Interchangeable forms of the lambda layer's position term (LambdaNetworks, Sec. 3.2, App. B/C).

Every function here computes the same quantity from the same tensors,

    out[b, k, v, y, x] = sum_{u, dy, dx} kernel[k, u, cy + dy, cx + dx] * values[b, u, v, y + dy, x + dx]

i.e. the position lambdas ``lambda^p_n = E_n^T V`` for every query position n = (y, x), with
``E_{n,m} = R[pos(m) - pos(n)]`` (relative, so translation equivariant) and values outside the map
taken as zero. ``kernel`` is the relative-position embedding R laid out as a convolution weight of
shape (k, u, rh, rw) with odd rh, rw and centre (cy, cx) = (rh // 2, rw // 2); a global scope is
the same thing with a kernel that spans every offset (rh = 2H - 1, rw = 2W - 1).

The forms differ only in speed and memory (Table 2):

* ``einsum``  the paper's masked global einsum: gathers E (n, m, k, u) and contracts it with V.
              Memory Theta(n m k u): only for small maps.
* ``conv2d``  the lambda convolution with the value depth folded into the batch.
* ``conv3d``  the paper's stated form: a 3-D convolution over (H, W, v), kernel (rh, rw, 1).
* ``fft``     the same correlation through the convolution theorem, on the smallest circular size
              that cannot alias into the output (H + rh // 2). Cost independent of the scope, which
              is why it wins for the paper's r = 23 on a CPU.

``position_term`` composes a named form with ``apply_position_lambdas``: (lambda^p_n)^T q_n for every
position. Inputs are float32/float64; autocast is the caller's business (see LambdaLayer). The forms and
``position_term`` are TorchScript-compatible (``torch.jit.script`` of the layer uses them as is);
``gradients_with_graph`` serves the operators' Python backward only.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


def position_lambdas_einsum(values: Tensor, kernel: Tensor) -> Tensor:
    """Masked global einsum: build E_{n,m} for all pairs and contract over m and u."""
    b, u, v, h, w = values.shape
    e = relative_embedding_matrix(kernel, h, w)  # (n, m, k, u)
    lam = torch.einsum("nmku,buvm->bkvn", e, values.reshape(b, u, v, h * w))
    return lam.reshape(b, kernel.shape[0], v, h, w)


def relative_embedding_matrix(kernel: Tensor, height: int, width: int) -> Tensor:
    """E[n, m, k, u] = kernel[k, u, pos(m) - pos(n) + centre], zero outside the kernel's window."""
    k, u, rh, rw = kernel.shape
    index, inside = _relative_index(height, width, rh, rw, kernel.device)
    flat = kernel.reshape(k * u, rh * rw).t()  # (rh*rw, k*u)
    e = flat[index] * inside.unsqueeze(-1).to(kernel.dtype)  # (n, m, k*u)
    return e.reshape(height * width, height * width, k, u)


def _relative_index(height: int, width: int, rh: int, rw: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    ys = torch.arange(height, device=device).repeat_interleave(width)
    xs = torch.arange(width, device=device).repeat(height)
    dy = ys.unsqueeze(0) - ys.unsqueeze(1) + rh // 2  # row n = query, column m = context
    dx = xs.unsqueeze(0) - xs.unsqueeze(1) + rw // 2
    inside = (dy >= 0) & (dy < rh) & (dx >= 0) & (dx < rw)
    index = dy.clamp(0, rh - 1) * rw + dx.clamp(0, rw - 1)
    return index, inside


def position_lambdas_conv2d(values: Tensor, kernel: Tensor) -> Tensor:
    """Lambda convolution with v folded into the batch: (b v, u, H, W) * (k, u, rh, rw)."""
    b, u, v, h, w = values.shape
    k, _, rh, rw = kernel.shape
    folded = values.transpose(1, 2).reshape(b * v, u, h, w)
    lam = F.conv2d(folded, kernel, padding=(rh // 2, rw // 2))  # (b v, k, H, W)
    return lam.reshape(b, v, k, h, w).transpose(1, 2)


def position_lambdas_conv3d(values: Tensor, kernel: Tensor) -> Tensor:
    """The paper's form: Conv3d over (H, W, v) with u input and k output channels, kernel (rh, rw, 1)."""
    rh, rw = kernel.shape[2], kernel.shape[3]
    volume = values.permute(0, 1, 3, 4, 2)  # (b, u, H, W, v)
    lam = F.conv3d(volume, kernel.unsqueeze(-1), padding=(rh // 2, rw // 2, 0))  # (b, k, H, W, v)
    return lam.permute(0, 1, 4, 2, 3)


def position_lambdas_fft(values: Tensor, kernel: Tensor) -> Tensor:
    """Correlation theorem: lambda = IFFT(FFT(V) * conj(FFT(kernel centred at index 0)))."""
    b, u, v, h, w = values.shape
    k, _, rh, rw = kernel.shape
    # A circular correlation of size P equals the zero-padded one on [0, H) once P >= H + rh // 2:
    # everything that wraps around lands on the zero padding.
    ph, pw = fft_size(h + rh // 2), fft_size(w + rw // 2)
    v_hat = torch.fft.rfft2(values, s=(ph, pw))  # (b, u, v, ph, pw//2+1)
    centred = F.pad(kernel, (0, pw - rw, 0, ph - rh)).roll(shifts=(-(rh // 2), -(rw // 2)), dims=(-2, -1))
    k_hat = torch.fft.rfft2(centred).conj()  # (k, u, ph, pw//2+1)
    if u == 1:
        lam_hat = v_hat[:, 0].unsqueeze(1) * k_hat[:, 0].unsqueeze(1)  # (b, k, v, ., .)
    else:
        lam_hat = torch.einsum("buvxy,kuxy->bkvxy", v_hat, k_hat)
    lam = torch.fft.irfft2(lam_hat, s=(ph, pw))
    return lam[..., :h, :w]


def fft_size(minimum: int) -> int:
    """Smallest 5-smooth integer >= minimum (pocketfft and cuFFT are fastest on those)."""
    n = minimum
    smooth = False
    while not smooth:
        m = n
        for p in (2, 3, 5):
            while m % p == 0:
                m = m // p
        smooth = m == 1
        n += 1
    return n - 1


def position_lambdas(values: Tensor, kernel: Tensor, impl: str) -> Tensor:
    """``POSITION_LAMBDA_IMPLS[impl](values, kernel)`` as TorchScript compiles it (it cannot index a
    dict of functions)."""
    if impl == "fft":
        return position_lambdas_fft(values, kernel)
    if impl == "conv2d":
        return position_lambdas_conv2d(values, kernel)
    if impl == "conv3d":
        return position_lambdas_conv3d(values, kernel)
    if impl == "einsum":
        return position_lambdas_einsum(values, kernel)
    raise ValueError("unknown position-lambda form " + impl)


def apply_position_lambdas(q: Tensor, lambdas: Tensor) -> Tensor:
    """out[b, h, v, n] = sum_k q[b, h, k, n] * lambdas[b, k, v, n]: every position has its own lambda.

    A loop over the small k of whole-map multiply-adds, not einsum, which would run n tiny
    (h x k)(k x v) products as a batched matmul.
    """
    # unbind, not indexing: indexing's backward would write k full-size zero gradients
    queries, per_k = q.unbind(2), lambdas.unbind(1)
    out = queries[0].unsqueeze(2) * per_k[0].unsqueeze(1)
    for i in range(1, len(queries)):
        out = out + queries[i].unsqueeze(2) * per_k[i].unsqueeze(1)
    return out


def position_term(q: Tensor, values: Tensor, kernel: Tensor, impl: str) -> Tensor:
    """(lambda^p_n)^T q_n for every position, the lambdas by the named form: q (b, h, k, n), values
    (b, u, v, H, W), kernel (k, u, rh, rw) -> (b, h, v, n)."""
    b, _, k, n = q.shape
    return apply_position_lambdas(q, position_lambdas(values, kernel, impl).reshape(b, k, values.shape[2], n))


def differentiable_output(q: Tensor, values: Tensor, kernel: Tensor, content_lambda: Tensor) -> Tensor:
    """The fused and Triton operators' function, (lambda^c + lambda^p_n)^T q_n for every position, in
    PyTorch operators (the lambda convolution): q (b, h, k, H, W), values (b, u, v, H, W), kernel
    (k, u, rh, rw), content_lambda (b, k, v) -> (b, h v, H, W). The operators' backward kernels have no
    derivative of their own; this function's backward has one, for when a second is asked for."""
    b, heads, k, height, width = q.shape
    flat_q = q.reshape(b, heads, k, height * width)
    out = torch.einsum("bkv,bhkn->bhvn", content_lambda, flat_q) + position_term(flat_q, values, kernel, "conv2d")
    return out.reshape(b, -1, height, width)


def gradients_with_graph(grad: Tensor, inputs: Tuple[Tensor, Tensor, Tensor, Tensor]) -> Tuple[Optional[Tensor], ...]:
    """The gradients of ``differentiable_output(*inputs)`` for ``grad``, themselves differentiable: an
    operator's backward when autograd records it (``create_graph=True``: gradient penalties, double
    backward), None for an input that needs none."""
    with torch.enable_grad():
        # each input through an alias of its own: the operator's gradient for one input is its partial
        # derivative, where the inputs themselves may depend on each other (the layer computes the content
        # lambda from the values), and autograd adds the paths between them after the operator
        aliases = tuple(t.view_as(t) for t in inputs)
        wanted = [a for a, t in zip(aliases, inputs) if t.requires_grad]
        found = iter(torch.autograd.grad(differentiable_output(*aliases), wanted, grad, create_graph=True) if wanted else ())
    return tuple(next(found) if t.requires_grad else None for t in inputs)


POSITION_LAMBDA_IMPLS: Dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "einsum": position_lambdas_einsum,
    "conv2d": position_lambdas_conv2d,
    "conv3d": position_lambdas_conv3d,
    "fft": position_lambdas_fft,
}
# "conv" is the name the paper and the issue use for the lambda convolution.
IMPL_ALIASES = {"conv": "conv2d"}
# The position term applied to the queries in one CPU operator (fused.py): it never
# materializes the position lambdas, so it is not a form of POSITION_LAMBDA_IMPLS.
FUSED = "fused"
# The same order on GPUs: Triton kernels (triton_lambda.py), on tensor cores.
TRITON = "triton"
TERM_IMPLS = (*sorted(POSITION_LAMBDA_IMPLS), FUSED, TRITON)  # every way the layer can compute its position term
IMPL_CHOICES = ("auto", "conv", *TERM_IMPLS)


def choose_impl(height: int, width: int, rh: int, rw: int, needs_grad: bool, fused_ok: bool = False,
                triton_ok: bool = False) -> str:
    """The fastest way to compute the position term for this shape and for what is computed.

    ``fused_ok``: the fused CPU operator can run (CPU input, operator built here); ``triton_ok``: the
    Triton operator can run (a CUDA input, Triton's NVIDIA backend here); ``needs_grad``: the forward
    is recorded for a backward pass (training), or not (evaluation).

    Both operators work in the relative-logits order, which needs fewer multiply-adds per tap than
    any lambda form and never materializes the lambdas, so each is chosen wherever it runs (what is
    measured on GPUs: docs/gpu.md). Without them (TorchScript, no compiler): the direct convolution
    for evaluation and for small kernels or maps, the FFT for training with larger ones (its cost does
    not grow with the scope). The measurements behind the rule: docs/benchmarks/auto_rule_*.md.
    """
    if triton_ok:
        return "triton"  # literals: TorchScript compiles this function and reads no str globals
    if fused_ok:
        return "fused"
    if not needs_grad or rh * rw <= 7 * 7 or height * width <= 16 * 16:
        return "conv2d"
    return "fft"
