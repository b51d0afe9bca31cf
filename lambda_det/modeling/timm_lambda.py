"""timm's ImageNet-trained lambda ResNets, ``lambda_resnet26t`` and ``lambda_resnet50ts``, rebuilt
from this package's modules (our LambdaLayer in every lambda block), and their state dicts converted
to this backbone's (``lambda_det.checkpoint`` reads and writes the files). timm is needed only to
fetch weights from its hub and in the tests.

The architectures (timm 1.0's byoanet.py / byobnet.py):

* stem "tiered": 3x3/2 conv 24, 3x3 conv 32, 3x3 conv 64 (each BN + activation), 3x3/2 max-pool;
* bottlenecks of width c/4 with a strided 1x1 projection shortcut, zero-initialized last BN;
  a lambda block is 1x1 -> lambda layer -> BN + activation -> 1x1 -> BN;
* lambda layers with k = 16, h = 4, u = 1, a local 9x9 scope, a bias on the position lambdas, and
  a 2x2 average pool inside stride-2 layers;
* lambda_resnet26t: blocks 2-2-2-2, ReLU, lambda in block 2 of c4 and all of c5;
  lambda_resnet50ts: blocks 3-4-6-3, SiLU, lambda in block 4 of c3, blocks 2, 4, 6 of c4, block 2 of c5.

timm trained them on RGB images normalized by the ImageNet mean / std (0-1 scale): in Detectron2's
terms INPUT.FORMAT "RGB", PIXEL_MEAN [123.675, 116.28, 103.53], PIXEL_STD [58.395, 57.12, 57.375].
"""
from __future__ import annotations

import copy
import re
from typing import Dict, List, Optional, Tuple

import torch

from ..errors import ConversionError
from .lambda_resnet import build_lambda_resnet

_SHARED = {"VARIANT": "custom", "STEM": "tiered", "STEM_WIDTH": 64, "SHORTCUT": "conv", "LAMBDA_POOL": "avg2x2",
           "POSITION_BIAS": True, "WIDTH_PER_GROUP": 64, "DIM_K": 16, "HEADS": 4, "DIM_U": 1, "SCOPE": 9, "SE_STAGES": []}
# The MODEL.LAMBDA_RESNET values of each model, as timm's model_cfgs. Base-TimmLambda-FPN.yaml and its
# leaves spell them out for their readers; tests/test_configs.py checks that they agree with these.
TIMM_MODELS: Dict[str, dict] = {
    "lambda_resnet26t": {**_SHARED, "STAGE_BLOCKS": [2, 2, 2, 2], "LAYOUT": ["CC", "CC", "CL", "LL"], "ACTIVATION": "relu"},
    "lambda_resnet50ts": {**_SHARED, "STAGE_BLOCKS": [3, 4, 6, 3], "LAYOUT": ["CCC", "CCCL", "CLCLCL", "CLC"],
                          "ACTIVATION": "silu"},
}


def config_values(name: str) -> Dict[str, object]:
    """MODEL.LAMBDA_RESNET values that build ``name``."""
    if name not in TIMM_MODELS:
        raise ValueError(f"{name!r} is not one of timm's lambda models here: {sorted(TIMM_MODELS)}")
    return copy.deepcopy(TIMM_MODELS[name])


def build_kwargs(name: str) -> dict:
    """``build_lambda_resnet`` keyword arguments that build ``name`` (res2..res5, no classifier)."""
    return {key.lower(): value for key, value in config_values(name).items()}


# ---------------------------------------------------------------------------------------------
# names: timm's state dict -> this package's backbone
# ---------------------------------------------------------------------------------------------
BN_FIELDS = ("weight", "bias", "running_mean", "running_var")


def _conv_bn(timm_prefix: str, ours: str, norm: Optional[str] = None) -> List[Tuple[str, str]]:
    """A timm ConvNormAct (.conv, .bn) -> a Detectron2 Conv2d with its norm (.weight, .norm.*)."""
    norm = norm or f"{ours}.norm"
    return [(f"{timm_prefix}.conv.weight", f"{ours}.weight")] + [(f"{timm_prefix}.bn.{f}", f"{norm}.{f}") for f in BN_FIELDS]


def key_map(name: str) -> List[Tuple[str, str]]:
    """(timm key, our key) for every tensor of the backbone; our keys are relative to the ResNet
    (prefix them with "backbone.bottom_up." for a Mask R-CNN + FPN)."""
    pairs: List[Tuple[str, str]] = []
    for i in range(3):
        pairs += _conv_bn(f"stem.conv{i + 1}", f"stem.convs.{i}")
    for s, letters in enumerate(TIMM_MODELS[name]["LAYOUT"]):
        for b, letter in enumerate(letters):
            t, o = f"stages.{s}.{b}", f"res{s + 2}.{b}"
            if b == 0:  # the first block of every stage changes width (and stride, but for the first stage)
                pairs += _conv_bn(f"{t}.shortcut", f"{o}.shortcut")
            pairs += _conv_bn(f"{t}.conv1_1x1", f"{o}.conv1")
            if letter == "L":
                a = f"{t}.self_attn"
                pairs.append((f"{a}.qkv.weight", f"{o}.conv2.qkv.weight"))
                pairs += [(f"{a}.norm_q.{f}", f"{o}.conv2.norm_q.{f}") for f in BN_FIELDS]
                pairs += [(f"{a}.norm_v.{f}", f"{o}.conv2.norm_v.{f}") for f in BN_FIELDS]
                pairs.append((f"{a}.conv_lambda.weight", f"{o}.conv2.rel_pos_emb"))
                pairs.append((f"{a}.conv_lambda.bias", f"{o}.conv2.position_bias"))
                pairs += [(f"{t}.post_attn.{f}", f"{o}.norm2.{f}") for f in BN_FIELDS]
            else:
                pairs.append((f"{t}.conv2_kxk.conv.weight", f"{o}.conv2.weight"))
                pairs += [(f"{t}.conv2_kxk.bn.{f}", f"{o}.norm2.{f}") for f in BN_FIELDS]
            pairs += _conv_bn(f"{t}.conv3_1x1", f"{o}.conv3")
    return pairs


def _timm_key(key: str) -> str:
    """timm's names from a full model, a features_only model (stem_conv1, stages_0) or a wrapper."""
    for wrapper in ("module.", "model."):
        if key.startswith(wrapper):
            key = key[len(wrapper):]
    return re.sub(r"^(stem)_(conv\d)", r"\1.\2", re.sub(r"^stages_(\d)", r"stages.\1", key))


def _convert_tensor(timm_key: str, value: torch.Tensor) -> torch.Tensor:
    if timm_key.endswith("conv_lambda.weight"):  # Conv3d (k, 1, r, r, 1) -> R[dy, dx, k, u]
        return value[..., 0].permute(2, 3, 0, 1).contiguous()
    return value


def convert_state_dict(state_dict: Dict[str, torch.Tensor], name: Optional[str] = None) -> Tuple[str, Dict[str, torch.Tensor], dict]:
    """(model name, our backbone state dict, report) from a timm state dict of ``name`` (None: the
    lambda model whose tensors it holds). Raises ConversionError naming what does not fit."""
    tensors = {_timm_key(k): v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    candidates = [name] if name else list(TIMM_MODELS)
    best = None
    for candidate in candidates:
        missing = [t for t, _ in key_map(candidate) if t not in tensors]
        if best is None or len(missing) < len(best[1]):
            best = (candidate, missing)
    candidate, missing = best
    if missing:
        expected = len(key_map(candidate))
        raise ConversionError(
            f"is not a timm {candidate} state dict: {len(missing)} of its {expected} backbone tensors are missing "
            f"(e.g. {', '.join(missing[:3])})" + ("" if name else f"; it is none of {sorted(TIMM_MODELS)} either")
        )
    reference = build_lambda_resnet(**build_kwargs(candidate)).state_dict()
    converted: Dict[str, torch.Tensor] = {}
    for timm_key, our_key in key_map(candidate):
        value = _convert_tensor(timm_key, tensors[timm_key])
        if tuple(value.shape) != tuple(reference[our_key].shape):
            raise ConversionError(
                f"is not a timm {candidate} state dict: {timm_key} has shape {tuple(tensors[timm_key].shape)}, "
                f"the model's {tuple(reference[our_key].shape)}"
            )
        converted[our_key] = value.clone()
    used = {t for t, _ in key_map(candidate)}
    left_out = sorted(k for k in tensors if k not in used)
    report = {
        "model": candidate,
        "mapped": len(converted),
        "left_out": left_out,  # the classifier, and BN's num_batches_tracked (bookkeeping, not weights)
        "left_out_kinds": sorted({("classifier" if k.startswith("head.") else
                                   "num_batches_tracked" if k.endswith("num_batches_tracked") else "other") for k in left_out}),
    }
    return candidate, converted, report


__all__ = ["TIMM_MODELS", "build_kwargs", "config_values", "convert_state_dict", "key_map"]
