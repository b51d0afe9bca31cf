"""The lambda layer's output as one fused CPU operator: y_n = (lambda^c + lambda^p_n)^T q_n for every
position, forward and backward, without materializing the per-position lambdas
(``csrc/fused_lambda.cpp``).

It sums the position term in the order of the relative logits, a_n = q_n^T R then
y_n = sum_t a_{n,t} v_{n+t} (h (k + v) multiply-adds per tap instead of the lambda form's k v), with
every intermediate in registers, starts each position's sum with the content term, and writes the
output once; its backward recomputes the logits instead of storing them. The result
is the same function as every other form (tests/test_lambda_layer.py checks it in float64 against
the loop reference, gradcheck checks its backward).

The operator is compiled on first use with PyTorch's C++ extension loader (g++ and ninja), for
this machine's CPU (``-march=native``), and cached under
``$LAMBDA_DET_CACHE/extensions`` (default ``~/.cache/lambda_det``). If it cannot be built,
``available()`` is False with the reason in ``unavailable_reason()``, and ``impl="auto"`` uses the
other forms. ``LAMBDA_DET_FUSED=0`` turns it off.
"""
from __future__ import annotations

import hashlib
import logging
import os
import platform
import tempfile
import threading
import time
from pathlib import Path
from typing import List, Optional

import torch

from .position_lambdas import gradients_with_graph

Tensor = torch.Tensor
logger = logging.getLogger("lambda_det")

SOURCE = Path(__file__).resolve().parent / "csrc" / "fused_lambda.cpp"
# -fopenmp: ATen's parallel_for runs its loop in OpenMP threads only where the extension is built with it
# tuples: torch's loader appends to the lists it is given, which would change the build folder's name
CFLAGS = ("-O3", "-march=native", "-fno-math-errno", "-fopenmp")
LDFLAGS = ("-fopenmp",)
VECTOR_BYTES = 64  # the kernel's vector length: 16 floats, 8 doubles
STALE_BUILD_SECONDS = 600  # many times what a build of the operator takes

_lock = threading.Lock()
_module = None
_failure: Optional[str] = None


def _cpu_signature() -> str:
    """What -march=native compiles for: a binary built for one CPU may not run on another."""
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("flags", "model name", "Features", "CPU part")):
                    flags += line
    except OSError:
        pass
    return platform.machine() + flags


def build_directory() -> Path:
    cache = Path(os.environ.get("LAMBDA_DET_CACHE", Path.home() / ".cache" / "lambda_det"))
    key = hashlib.sha256()
    for part in (SOURCE.read_bytes(), " ".join(CFLAGS + LDFLAGS).encode(), torch.__version__.encode(), _cpu_signature().encode()):
        key.update(part)
    return cache / "extensions" / f"fused_lambda_{key.hexdigest()[:16]}"


def _source_copy(directory: Path) -> Path:
    """The source, copied into its build folder: ninja rebuilds when a build command changes, and the
    command names the source's path, so two checkouts (or installs) of the same version that compiled
    their own copies would rebuild the shared operator each time the other one had run."""
    copy = directory / SOURCE.name
    text = SOURCE.read_bytes()
    if not copy.is_file() or copy.read_bytes() != text:
        fd, staged = tempfile.mkstemp(dir=directory, prefix=f".{SOURCE.name}.")  # a name no other process has
        try:
            os.fchmod(fd, 0o644)  # (mkstemp's 0600 would keep other users of a shared cache out)
            with os.fdopen(fd, "wb") as f:
                f.write(text)
            os.replace(staged, copy)  # whole or not at all, for a process building at the same moment
        except BaseException:
            Path(staged).unlink(missing_ok=True)
            raise
    return copy


def extension():
    """The compiled module, building it on first use; None if it cannot be built here."""
    global _module, _failure
    if _module is not None or _failure is not None:
        return _module
    with _lock:
        if _module is not None or _failure is not None:
            return _module
        if os.environ.get("LAMBDA_DET_FUSED", "1") == "0":
            _failure = "turned off by LAMBDA_DET_FUSED=0"
            return None
        try:
            # its import warns that no CUDA runtime exists; this operator is CPU-only anyway
            logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
            from torch.utils.cpp_extension import load

            directory = build_directory()
            directory.mkdir(parents=True, exist_ok=True)
            lock = directory / "lock"
            if lock.exists() and time.time() - lock.stat().st_mtime > STALE_BUILD_SECONDS:
                # a build killed half-way leaves torch's lock behind, and every later process would wait on it
                logger.warning("removing %s, left by a build that stopped %.0f minutes ago", lock,
                               (time.time() - lock.stat().st_mtime) / 60)
                lock.unlink(missing_ok=True)
            if not (directory / "build.ninja").exists():
                logger.info("building lambda_det's fused lambda operator (once per machine and version) in %s", directory)
            _module = load(name=f"lambda_det_{directory.name}", sources=[str(_source_copy(directory))],
                           extra_cflags=list(CFLAGS), extra_ldflags=list(LDFLAGS), build_directory=str(directory),
                           verbose=False)
        except Exception as exc:  # a missing compiler / ninja / headers: the other forms still work
            _failure = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
            logger.warning("lambda_det's fused lambda operator is unavailable (%s); using the other forms", _failure)
    return _module


@torch.compiler.assume_constant_result  # a torch.compile trace asks once, outside the graph
def available() -> bool:
    return extension() is not None


def unavailable_reason() -> Optional[str]:
    extension()
    return _failure


def _padded(size: int, dtype: torch.dtype) -> int:
    lanes = VECTOR_BYTES // dtype.itemsize
    return -(-size // lanes) * lanes


def _channels_last_padded(x: Tensor, dims, padded: int) -> Tensor:
    """x permuted to ``dims`` with its last dimension zero-padded to ``padded``, contiguous."""
    moved = x.permute(*dims)
    if moved.shape[-1] == padded:
        return moved.contiguous()
    out = x.new_zeros((*moved.shape[:-1], padded))
    out[..., : moved.shape[-1]] = moved
    return out


# ------------------------------------------------------------------------------------------------
# one operator to PyTorch (autograd and torch.compile see lambda_det::lambda_output_fused; the compiled
# extension is called inside the operators, where a torch.compile trace does not look)
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("lambda_det::lambda_output_fused", mutates_args=(), device_types="cpu")
def _lambda_output_op(q: Tensor, values: Tensor, kernel: Tensor, content: Tensor) -> Tensor:
    v, rw, dtype = values.shape[2], kernel.shape[-1], q.dtype
    vp = _padded(v, dtype)
    q_cl = q.permute(0, 3, 4, 1, 2).contiguous()  # (b, H, W, h, k)
    v_cl = _channels_last_padded(values, (0, 1, 3, 4, 2), vp)  # (b, u, H, W, VP)
    c_v = _channels_last_padded(content, (0, 1, 2), vp)  # (b, k, VP)
    return extension().forward(q_cl, v_cl, _kernel_by_logits(kernel), c_v, v, rw)  # (b, h v, H, W)


@_lambda_output_op.register_fake
def _lambda_output_fake(q, values, kernel, content):
    b, heads, _, height, width = q.shape
    return q.new_empty((b, heads * values.shape[2], height, width))


@torch.library.custom_op("lambda_det::lambda_output_fused_backward", mutates_args=(), device_types="cpu")
def _lambda_output_backward_op(grad: Tensor, q: Tensor, values: Tensor, kernel: Tensor,
                               content: Tensor) -> List[Tensor]:
    """The gradients in the kernel's padded channels-last layouts (contiguous, which is what the fake
    promises): dq (b, H, W, h, k), dv (b, u, H, W, VP), dR (u, rh, rw, KP), dc (b, k, VP)."""
    b, _, k, _, _ = q.shape
    v, rw, dtype = values.shape[2], kernel.shape[-1], q.dtype
    vp, kp = _padded(v, dtype), _padded(k, dtype)
    q_cl = q.permute(0, 3, 4, 1, 2).contiguous()  # (b, H, W, h, k), as the forward had it
    r_k = _channels_last_padded(kernel, (1, 2, 3, 0), kp)  # (u, rh, rw, KP)
    c_k = content.new_zeros((b, vp, kp))
    c_k[:, :v, :k] = content.transpose(1, 2)
    v_px, wp = _values_padded_x(values, rw, dtype)
    return list(extension().backward(grad.contiguous(), q_cl, v_px, _kernel_by_logits(kernel), r_k, c_k, wp))


@_lambda_output_backward_op.register_fake
def _lambda_output_backward_fake(grad, q, values, kernel, content):
    b, heads, k, height, width = q.shape
    u, rh, rw = kernel.shape[1:]
    vp, kp = _padded(values.shape[2], q.dtype), _padded(k, q.dtype)
    return [q.new_empty((b, height, width, heads, k)), q.new_empty((b, u, height, width, vp)),
            q.new_empty((u, rh, rw, kp)), q.new_empty((b, k, vp))]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad: Tensor):
    q, values, kernel, content = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph: the kernels have no derivative of their own
        return gradients_with_graph(grad, (q, values, kernel, content))
    k, v = q.shape[2], values.shape[2]
    dq_cl, dv_cl, dr, dc = _lambda_output_backward_op(grad, q, values, kernel, content)
    return (dq_cl.permute(0, 3, 4, 1, 2),  # (b, h, k, H, W)
            dv_cl[..., :v].permute(0, 1, 4, 2, 3),  # (b, u, v, H, W)
            dr[..., :k].permute(3, 0, 1, 2),  # (k, u, rh, rw)
            dc[..., :v])  # (b, k, v)


torch.library.register_autograd("lambda_det::lambda_output_fused", _backward, setup_context=_setup_context)


def _kernel_by_logits(kernel: Tensor) -> Tensor:
    """R (k, u, rh, rw) as the kernel reads it for the logits q . R: (u, rh, k, RWP)."""
    return _channels_last_padded(kernel, (1, 2, 0, 3), _padded(kernel.shape[-1], kernel.dtype))


def _values_padded_x(values: Tensor, rw: int, dtype: torch.dtype):
    """((b, u, v, CS), WP): each channel H rows of WP = W + RWP (rw // 2 zeros on the left, room for a
    vector load on the right), channels CS >= H * WP apart, CS an odd multiple of 64 bytes (see the C++)."""
    b, u, v, height, width = values.shape
    wp = width + _padded(rw, dtype)
    lanes = VECTOR_BYTES // values.element_size()
    cs = _padded(height * wp, dtype)
    if (cs // lanes) % 2 == 0:
        cs += lanes
    padded = values.new_zeros((b, u, v, cs))
    padded[..., : height * wp].view(b, u, v, height, wp)[..., rw // 2 : rw // 2 + width] = values
    return padded, wp


def lambda_output_fused(q: Tensor, values: Tensor, kernel: Tensor, content_lambda: Tensor) -> Tensor:
    """y_n = (lambda^c + lambda^p_n)^T q_n for every position: q (b, h, k, H, W) or (b, h, k, H W), values
    (b, u, v, H, W), kernel (k, u, rh, rw) with odd rh, rw, content_lambda (b, k, v) -> (b, h v, H, W).
    CPU, float32 / float64."""
    if q.device.type != "cpu":
        raise ValueError(f"impl='fused' runs on CPUs; this input is on {q.device}: use impl='auto'")
    if not available():
        raise RuntimeError(f"the fused lambda operator is unavailable here: {unavailable_reason()}")
    q = q.reshape(*q.shape[:3], *values.shape[3:])
    return _lambda_output_op(q.contiguous(), values.contiguous(), kernel.contiguous(), content_lambda.contiguous())


__all__ = ["available", "build_directory", "extension", "lambda_output_fused", "unavailable_reason"]
