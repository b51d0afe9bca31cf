"""The arithmetic a CUDA benchmark runs in, set around each timed step and recorded beside its times.

* ``float32``: PyTorch's defaults, unchanged: cuDNN's convolutions (and the Triton lambda operator,
  which follows the convolution switch: ``float32_on_tf32``) on TF32 tensor cores, matmuls in IEEE
  float32;
* ``ieee``: exact float32 everywhere (``torch.backends.cuda.matmul`` and ``torch.backends.cudnn.conv``
  both on IEEE), the FMA units' rate;
* ``amp``: autocast to float16 (Detectron2's ``SOLVER.AMP``), the switches at their defaults.

The records say which switch was on, so a ratio is read with its arithmetic.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Tuple

import torch

from ..layers.triton_lambda import conv_tf32_enabled, float32_on_tf32

CUDA_PRECISIONS = ("float32", "ieee", "amp")
PRECISION_TEXT = {
    "float32": "float32 (PyTorch's defaults: TF32 convolutions and lambda operator, IEEE matmuls)",
    "ieee": "IEEE float32 (matmul and cuDNN switches off TF32)",
    "amp": "AMP float16 (autocast)",
}


def precisions_for(device_type: str) -> Tuple[str, ...]:
    """The arithmetic a benchmark compares on this device type: TF32 and float16 tensor cores are CUDA's."""
    return CUDA_PRECISIONS if device_type == "cuda" else ("float32",)


def matmul_tf32_enabled() -> bool:
    """PyTorch's switch for float32 matmuls on TF32 (torch >= 2.9 ``fp32_precision``, else the legacy flag)."""
    matmul = torch.backends.cuda.matmul
    for setting in (getattr(matmul, "fp32_precision", None), getattr(torch.backends, "fp32_precision", None)):
        if setting in ("tf32", "ieee"):
            return setting == "tf32"
    try:
        return bool(matmul.allow_tf32)
    except RuntimeError:
        return False


def tf32_switches() -> Dict[str, bool]:
    return {"matmul_tf32": matmul_tf32_enabled(), "conv_tf32": conv_tf32_enabled(), "lambda_operator_tf32": float32_on_tf32()}


@contextlib.contextmanager
def _switch(owner, tf32: bool) -> Iterator[None]:
    """``owner``'s float32 switch (torch.backends.cuda.matmul or torch.backends.cudnn.conv) set to TF32
    or IEEE, restored afterwards (torch >= 2.9 ``fp32_precision``, else the legacy ``allow_tf32``)."""
    if hasattr(owner, "fp32_precision"):
        saved = owner.fp32_precision
        owner.fp32_precision = "tf32" if tf32 else "ieee"
        try:
            yield
        finally:
            owner.fp32_precision = saved
        return
    owner = owner if hasattr(owner, "allow_tf32") else torch.backends.cudnn
    saved = owner.allow_tf32
    owner.allow_tf32 = tf32
    try:
        yield
    finally:
        owner.allow_tf32 = saved


@contextlib.contextmanager
def operator_precision(tf32: bool) -> Iterator[None]:
    """The switches the Triton lambda operator reads for float32 (``float32_on_tf32``), both set to
    TF32 or IEEE for the context."""
    with _switch(torch.backends.cuda.matmul, tf32), _switch(getattr(torch.backends.cudnn, "conv", torch.backends.cudnn), tf32):
        yield


def precision_context(precision: str, device: torch.device):
    """The context a step of ``precision`` runs in (see the module's docstring)."""
    if precision == "float32":
        return contextlib.nullcontext()
    if precision == "ieee":
        return operator_precision(False)
    if precision == "amp":
        return torch.autocast(device.type, dtype=torch.float16 if device.type == "cuda" else torch.bfloat16)
    raise ValueError(f"unknown precision {precision!r}; have {CUDA_PRECISIONS}")


def switches_under(precision: str, device: torch.device) -> Dict[str, bool]:
    """The TF32 switches as a step of ``precision`` sees them."""
    with precision_context(precision, device):
        return tf32_switches()


__all__ = ["CUDA_PRECISIONS", "PRECISION_TEXT", "matmul_tf32_enabled", "operator_precision", "precision_context",
           "precisions_for", "switches_under", "tf32_switches"]
