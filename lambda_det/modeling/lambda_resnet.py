"""LambdaResNets (LambdaNetworks App. D, E.1) as Detectron2 backbones.

The base network is the ResNet-RS-style ResNet-v1 the paper builds on:

* ResNet-D deep stem: three 3x3 convs (32, 32, 64 channels, the first with stride 2), and a
  stride-2 3x3 conv (64) where ResNet has its max-pool; stride 4 in all.
* ResNet-D projection shortcuts: a 2x2 average pool before the 1x1 conv when downsampling.
* Bottlenecks 1x1 -> 3x3 -> 1x1 (stride on the 3x3); in a lambda block the 3x3 conv is a lambda
  layer, followed by a 3x3 average pool with stride 2 when the block downsamples.
* Optional squeeze-excite (hidden = ratio x block output channels) on conv blocks only.
* The gamma of every block's last norm starts at zero.

``build_lambda_resnet_backbone`` reads MODEL.LAMBDA_RESNET as Detectron2's ``build_resnet_backbone``
reads MODEL.RESNETS, and Detectron2's ``ResNet`` assembles stem and stages, names them res2..res5,
and provides ``output_shape()`` and ``freeze(freeze_at)`` with Detectron2's meaning.

Options, each off by default, reproduce timm's ImageNet-trained lambda ResNets
(``lambda_det.modeling.timm_lambda``): a tiered stem with a max-pool, strided 1x1 projection
shortcuts, SiLU, and lambda layers with timm's position bias and 2x2 pooling.
"""
from __future__ import annotations

import difflib
import numbers
from typing import List, Optional, Sequence, Tuple

import fvcore.nn.weight_init as weight_init
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.config import get_cfg
from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from torch import nn

from ..config import add_lambda_config, set_checked
from ..errors import ConfigError
from ..layers import LambdaLayer, is_norm_name
from ..layers.lambda_layer import POOLS
from ..layers.position_lambdas import IMPL_CHOICES
from .layouts import STAGE_NAMES, stage_layouts

# MODEL.LAMBDA_RESNET keys with a fixed set of values (VARIANT and DEPTH: stage_layouts)
CHOICES = {
    "IMPL": IMPL_CHOICES,
    "STEM": ("deep", "tiered"),
    "SHORTCUT": ("avg", "conv"),
    "ACTIVATION": ("relu", "silu"),
    "LAMBDA_POOL": POOLS,
    "POSITION_BIAS": (True, False),
}
POSITIVE_INTEGERS = ("WIDTH_PER_GROUP", "DIM_K", "HEADS", "DIM_U", "GLOBAL_MAX_SIZE", "STEM_WIDTH")


def activate(x: torch.Tensor, activation: str) -> torch.Tensor:
    """The block's non-linearity, in place."""
    if activation == "silu":
        return F.silu(x, inplace=True)
    return F.relu_(x)


class DeepStem(CNNBlockBase):
    """Three 3x3 convs (the first with stride 2), each with norm and activation, then stride 2 again:
    a fourth 3x3 conv (ResNet-D's deep stem with its max-pool replaced, as ResNet-RS does) or, with
    ``max_pool``, a 3x3 max-pool (timm's "tiered" stem). Stride 4."""

    def __init__(self, in_channels: int = 3, widths: Sequence[int] = (32, 32, 64), norm: str = "BN",
                 activation: str = "relu", max_pool: bool = False) -> None:
        super().__init__(in_channels, widths[-1], 4)
        self.activation = activation
        self.max_pool = max_pool
        channels = [in_channels, *widths] + ([] if max_pool else [widths[-1]])
        self.convs = nn.ModuleList(
            Conv2d(cin, cout, 3, stride=s, padding=1, bias=False, norm=get_norm(norm, cout))
            for cin, cout, s in zip(channels[:-1], channels[1:], (2, 1, 1, 2))
        )
        for conv in self.convs:
            weight_init.c2_msra_fill(conv)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv in self.convs:
            x = activate(conv(x), self.activation)
        return F.max_pool2d(x, kernel_size=3, stride=2, padding=1) if self.max_pool else x


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation: channel gates from the globally pooled features."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.reduce = nn.Conv2d(channels, hidden, 1)
        self.expand = nn.Conv2d(hidden, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.expand(F.relu(self.reduce(x.mean(dim=(2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class LambdaBottleneck(CNNBlockBase):
    """ResNet-D bottleneck whose 3x3 is either a convolution or a lambda layer.

    ``shortcut``: "avg" (ResNet-D: a 2x2 average pool before the 1x1 projection when downsampling)
    or "conv" (a strided 1x1 projection, as timm's lambda models); ``activation``: "relu" or "silu".
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        *,
        bottleneck_channels: int,
        stride: int = 1,
        use_lambda: bool = False,
        lambda_kwargs: Optional[dict] = None,
        se_ratio: float = 0.0,
        norm: str = "BN",
        zero_init_residual: bool = True,
        shortcut: str = "avg",
        activation: str = "relu",
    ) -> None:
        super().__init__(in_channels, out_channels, stride)
        self.use_lambda = use_lambda
        self.activation = activation
        convs = []
        if stride != 1 or in_channels != out_channels:
            if shortcut == "conv":
                self.shortcut = Conv2d(in_channels, out_channels, 1, stride=stride, bias=False, norm=get_norm(norm, out_channels))
                convs.append(self.shortcut)
            else:
                projection = Conv2d(in_channels, out_channels, 1, bias=False, norm=get_norm(norm, out_channels))
                convs.append(projection)
                # ResNet-D: downsample by averaging, not by a strided 1x1 that skips 3/4 of the inputs
                pool = nn.AvgPool2d(2, stride=2, ceil_mode=True, count_include_pad=False)
                self.shortcut = nn.Sequential(pool, projection) if stride != 1 else projection
        else:
            self.shortcut = None
        self.conv1 = Conv2d(in_channels, bottleneck_channels, 1, bias=False, norm=get_norm(norm, bottleneck_channels))
        if use_lambda:
            self.conv2 = LambdaLayer(bottleneck_channels, bottleneck_channels, stride=stride, norm=norm, **(lambda_kwargs or {}))
        else:
            self.conv2 = nn.Conv2d(bottleneck_channels, bottleneck_channels, 3, stride=stride, padding=1, bias=False)
        self.norm2 = get_norm(norm, bottleneck_channels)
        self.conv3 = Conv2d(bottleneck_channels, out_channels, 1, bias=False, norm=get_norm(norm, out_channels))
        # Lambda blocks never carry SE (App. D).
        self.se = SqueezeExcite(out_channels, int(round(out_channels * se_ratio))) if se_ratio > 0 and not use_lambda else None

        # the lambda layer keeps the paper's own initialization
        convs += [self.conv1, self.conv3] + ([] if use_lambda else [self.conv2])
        for conv in convs:
            weight_init.c2_msra_fill(conv)
        if zero_init_residual:
            with torch.no_grad():
                self.conv3.norm.weight.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = activate(self.conv1(x), self.activation)
        out = activate(self.norm2(self.conv2(out)), self.activation)
        out = self.conv3(out)
        if self.se is not None:
            out = self.se(out)
        shortcut = x if self.shortcut is None else self.shortcut(x)
        return activate(out + shortcut, self.activation)


def check_lambda_resnet_keys(cfg) -> List[str]:
    """The stage layouts MODEL.LAMBDA_RESNET asks for, once each of its keys (and MODEL.BACKBONE.FREEZE_AT)
    is checked on its own; ConfigError naming the first key that cannot work."""
    c = cfg.MODEL.LAMBDA_RESNET
    layouts = stage_layouts(c)
    for key, choices in CHOICES.items():
        if c[key] not in choices:
            raise ConfigError(f"MODEL.LAMBDA_RESNET.{key}={c[key]!r} is not allowed; choose from {list(choices)}")
    if not is_norm_name(c.NORM):  # the stem and the blocks need one
        raise ConfigError(f"MODEL.LAMBDA_RESNET.NORM={c.NORM!r} is no norm of Detectron2's get_norm (BN, SyncBN, FrozenBN, GN, ...)")
    for key in POSITIVE_INTEGERS:
        if not isinstance(c[key], int) or c[key] < 1:
            raise ConfigError(f"MODEL.LAMBDA_RESNET.{key}={c[key]!r} must be a positive integer")
    if not isinstance(c.SCOPE, int) or c.SCOPE < 0 or (c.SCOPE > 0 and c.SCOPE % 2 == 0):
        raise ConfigError(f"MODEL.LAMBDA_RESNET.SCOPE={c.SCOPE!r} must be an odd size r (r x r scope) or 0 for global")
    if not 0.0 <= c.SE_RATIO <= 1.0:
        raise ConfigError(f"MODEL.LAMBDA_RESNET.SE_RATIO={c.SE_RATIO!r} must lie in [0, 1]")
    unknown = set(c.SE_STAGES) - set(STAGE_NAMES)
    if unknown:
        raise ConfigError(f"MODEL.LAMBDA_RESNET.SE_STAGES has {sorted(unknown)}; allowed: {list(STAGE_NAMES)}")
    unknown = set(c.OUT_FEATURES) - set(STAGE_NAMES) - {"stem"}
    if not c.OUT_FEATURES or unknown:
        raise ConfigError(f"MODEL.LAMBDA_RESNET.OUT_FEATURES={list(c.OUT_FEATURES)!r}: choose from {['stem', *STAGE_NAMES]}")
    freeze_at = cfg.MODEL.BACKBONE.FREEZE_AT
    if not isinstance(freeze_at, int) or not 0 <= freeze_at <= 5:
        raise ConfigError(f"MODEL.BACKBONE.FREEZE_AT={freeze_at!r} must be 0 (nothing) .. 5 (stem and all stages)")
    return layouts


def stem_widths(c) -> Tuple[int, int, int]:
    """The deep stem's three 3x3 convolutions (ResNet-D, ResNet-RS; timm's tiered stem: 3/8, 1/2, 1)."""
    w = c.STEM_WIDTH
    return (3 * w // 8 if c.STEM == "tiered" else w // 2, w // 2, w)


def lambda_width_problems(cfg, layouts: List[str]) -> List[str]:
    """HEADS, squeeze-excite and GroupNorm against the widths of the stem and the stages (keys that are
    each fine alone but do not fit together), all of them."""
    c = cfg.MODEL.LAMBDA_RESNET
    stem = stem_widths(c)
    problems = [
        f"MODEL.LAMBDA_RESNET.STEM_WIDTH={c.STEM_WIDTH}: the {c.STEM} stem's convolutions would have {list(stem)} "
        f"channels; it must be at least {3 if c.STEM == 'tiered' else 2}"
    ] if min(stem) < 1 else []
    widths = [(name, c.WIDTH_PER_GROUP * 2**i) for i, (name, letters) in enumerate(zip(STAGE_NAMES, layouts)) if "L" in letters]
    problems += [
        f"MODEL.LAMBDA_RESNET.SE_RATIO={c.SE_RATIO}: squeeze-excite in {name} would have "
        f"round({4 * c.WIDTH_PER_GROUP * 2**i} x {c.SE_RATIO}) = 0 channels; raise it or leave {name} out of SE_STAGES"
        for i, (name, letters) in enumerate(zip(STAGE_NAMES, layouts))
        if name in c.SE_STAGES and 0 < c.SE_RATIO and "C" in letters and round(4 * c.WIDTH_PER_GROUP * 2**i * c.SE_RATIO) < 1
    ]
    problems += [
        f"MODEL.LAMBDA_RESNET.HEADS={c.HEADS}: must divide the bottleneck width of every stage with lambda "
        f"blocks; {stage} has WIDTH_PER_GROUP x {width // c.WIDTH_PER_GROUP} = {width}"
        for stage, width in widths if width % c.HEADS
    ]
    if c.NORM == "GN":
        for stage, width in widths:
            for what, channels in (("queries HEADS x DIM_K", c.HEADS * c.DIM_K), ("values", width // c.HEADS * c.DIM_U)):
                if channels % 32:
                    problems.append(
                        f"MODEL.LAMBDA_RESNET.NORM='GN' (GroupNorm of 32 groups) needs a multiple of 32 channels; the "
                        f"lambda layers of {stage} normalize {channels} ({what})"
                    )
        if c.WIDTH_PER_GROUP % 32:
            problems.append("MODEL.LAMBDA_RESNET.WIDTH_PER_GROUP must be a multiple of 32 with NORM='GN'")
        if min(stem) >= 1 and any(width % 32 for width in stem):
            problems.append(f"MODEL.LAMBDA_RESNET.STEM_WIDTH={c.STEM_WIDTH}: with NORM='GN' (32 groups) each of the "
                            f"{c.STEM} stem's convolutions needs a multiple of 32 channels; they would have {list(stem)}")
    return problems


def global_scope_problems(cfg, layouts: List[str]) -> List[str]:
    """A global-scope layer has a table for maps up to GLOBAL_MAX_SIZE: check the largest map it will
    see, from the largest image sides the INPUT keys give."""
    if "LSJ" in cfg.INPUT and cfg.INPUT.LSJ.ENABLED:
        sides = [(f"INPUT.LSJ.IMAGE_SIZE={cfg.INPUT.LSJ.IMAGE_SIZE}", cfg.INPUT.LSJ.IMAGE_SIZE)]
    else:
        sides = [(f"INPUT.MAX_SIZE_TRAIN={cfg.INPUT.MAX_SIZE_TRAIN}", cfg.INPUT.MAX_SIZE_TRAIN)]
    sides.append(("INPUT.MIN_SIZE_TEST=0 (test images are not resized: set INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST)", None)
                 if cfg.INPUT.MIN_SIZE_TEST == 0 else (f"INPUT.MAX_SIZE_TEST={cfg.INPUT.MAX_SIZE_TEST}", cfg.INPUT.MAX_SIZE_TEST))
    return largest_map_problems(cfg.MODEL.LAMBDA_RESNET, layouts, sides)


def largest_map_problems(c, layouts: List[str], sides: List[Tuple[str, Optional[int]]]) -> List[str]:
    """The global-scope problems of the MODEL.LAMBDA_RESNET node ``c``, given the largest image sides
    the inputs have: (what gives it, in words with its key; the side, or None where nothing bounds it)."""
    # a downsampling block's layer runs at the previous stage's resolution, then pools
    strides = [4 * 2**i // (2 if b == 0 and i > 0 else 1) for i, letters in enumerate(layouts) for b, letter in enumerate(letters)
               if letter == "L"]
    if c.SCOPE != 0 or not strides:
        return []
    limit = c.GLOBAL_MAX_SIZE
    unbounded = [what for what, side in sides if side is None]
    if unbounded:
        return [f"{what} cannot be bounded for a global-scope lambda layer (MODEL.LAMBDA_RESNET.SCOPE=0): bound the "
                "image size or use a local SCOPE" for what in unbounded]
    problems = []
    for what, side in sides:
        padded = -(-side // 32) * 32  # images are padded to the FPN's size divisibility
        largest_map = -(-padded // min(strides))
        if largest_map > limit:
            problems.append(
                f"MODEL.LAMBDA_RESNET.GLOBAL_MAX_SIZE={limit}: {what} gives lambda-layer maps of up to "
                f"{largest_map}x{largest_map} (stride {min(strides)}); raise GLOBAL_MAX_SIZE to >= {largest_map}, "
                "lower the input size, or use a local SCOPE"
            )
    return problems


def lambda_resnet_config_problems(cfg) -> List[str]:
    """What makes a LambdaResNet config unbuildable or unable to take the inputs it will get, all at
    once where the keys can be read at all; [] for other backbones."""
    if "LAMBDA_RESNET" not in cfg.MODEL or "lambda_resnet" not in str(cfg.MODEL.BACKBONE.NAME):
        return []
    try:
        layouts = check_lambda_resnet_keys(cfg)
    except ConfigError as exc:
        return [str(exc)]
    return lambda_width_problems(cfg, layouts) + global_scope_problems(cfg, layouts)


def build_lambda_resnet_backbone(cfg, input_shape: ShapeSpec, num_classes: Optional[int] = None) -> ResNet:
    """Detectron2 builder (MODEL.BACKBONE.NAME = "build_lambda_resnet_backbone"): reads and checks
    MODEL.LAMBDA_RESNET as Detectron2's build_resnet_backbone reads MODEL.RESNETS. ``num_classes``
    adds the global pool and classifier of the ImageNet form."""
    layouts = check_lambda_resnet_keys(cfg)
    problems = lambda_width_problems(cfg, layouts)
    if problems:
        raise ConfigError("\n".join(problems))
    c = cfg.MODEL.LAMBDA_RESNET
    stem = DeepStem(input_shape.channels, stem_widths(c), norm=c.NORM, activation=c.ACTIVATION, max_pool=c.STEM == "tiered")
    lambda_kwargs = dict(dim_k=c.DIM_K, heads=c.HEADS, dim_u=c.DIM_U, scope=c.SCOPE or None, impl=c.IMPL,
                         global_max_size=c.GLOBAL_MAX_SIZE, pool=c.LAMBDA_POOL, position_bias=c.POSITION_BIAS)
    stages, in_channels = [], stem.out_channels
    for index, (name, letters) in enumerate(zip(STAGE_NAMES, layouts)):
        width = c.WIDTH_PER_GROUP * 2**index
        stages.append(ResNet.make_stage(
            LambdaBottleneck, len(letters), in_channels=in_channels, out_channels=4 * width, bottleneck_channels=width,
            stride_per_block=[2 if index > 0 else 1] + [1] * (len(letters) - 1),
            use_lambda_per_block=[letter == "L" for letter in letters], lambda_kwargs=lambda_kwargs,
            se_ratio=c.SE_RATIO if name in c.SE_STAGES else 0.0, norm=c.NORM, zero_init_residual=c.ZERO_INIT_RESIDUAL,
            shortcut=c.SHORTCUT, activation=c.ACTIVATION,
        ))
        in_channels = 4 * width
    return ResNet(stem, stages, num_classes=num_classes, out_features=list(c.OUT_FEATURES), freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


def build_lambda_resnet(*, in_channels: int = 3, freeze_at: int = 0, num_classes: Optional[int] = None, **options) -> ResNet:
    """A LambdaResNet (or its conv / SE baseline) from MODEL.LAMBDA_RESNET values named in lower case
    (``depth=101, se_stages=["res2", "res3"]``; the other keys at lambda_det/config.py's defaults),
    through the same reader as a config. A LazyConfig calls it as ``L(build_lambda_resnet)(depth=101, ...)``
    (configs/new_baselines/)."""
    cfg = lambda_resnet_config(freeze_at=freeze_at, **options)
    return build_lambda_resnet_backbone(cfg, ShapeSpec(channels=in_channels), num_classes)


def lambda_resnet_config(*, freeze_at: int = 0, **options):
    """The yacs config ``build_lambda_resnet(**options)`` reads: Detectron2's and lambda_det's defaults,
    MODEL.BACKBONE.FREEZE_AT and the MODEL.LAMBDA_RESNET keys given in lower case (lists of a
    LazyConfig arrive as OmegaConf lists: they are stored as plain lists)."""
    cfg = add_lambda_config(get_cfg())
    cfg.MODEL.BACKBONE.FREEZE_AT = freeze_at
    keys = cfg.MODEL.LAMBDA_RESNET
    for name, value in options.items():
        if name.upper() not in keys:
            close = difflib.get_close_matches(name.lower(), [key.lower() for key in keys], n=1)
            raise ConfigError(f"build_lambda_resnet() got {name!r}, which is no MODEL.LAMBDA_RESNET key in lower case"
                              + (f"; did you mean {close[0]!r}?" if close else ""))
        set_checked(cfg, f"MODEL.LAMBDA_RESNET.{name.upper()}", as_yacs_value(value, keys[name.upper()]))
    return cfg


def as_yacs_value(value, default):
    """A Python or LazyConfig value as yacs keeps it, beside the key's default: sequences (OmegaConf lists,
    tuples, numpy arrays) as lists, numbers as int or float (se_ratio=1: yacs wants 1.0), numpy's and
    inside lists too (a config holding them could not be saved as YAML)."""
    if isinstance(value, (np.generic, np.ndarray)):  # numpy's str_ is a str, and yaml cannot write it
        value = value.tolist()
    if isinstance(value, Sequence) and not isinstance(value, str):
        inner = default[0] if isinstance(default, list) and default else None
        return [as_yacs_value(item, inner) for item in value]
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return float(value) if isinstance(default, float) else int(value)
    if isinstance(value, numbers.Real) and not isinstance(value, bool):
        return float(value)
    return value


def build_lambda_resnet_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    """Detectron2 builder: a LambdaResNet under Detectron2's FPN with a max-pooled P6 (P2-P6)."""
    bottom_up = build_lambda_resnet_backbone(cfg, input_shape)
    missing = set(cfg.MODEL.FPN.IN_FEATURES) - set(bottom_up.output_shape())
    if missing:
        raise ConfigError(
            f"MODEL.FPN.IN_FEATURES={list(cfg.MODEL.FPN.IN_FEATURES)} asks for {sorted(missing)}, which "
            f"MODEL.LAMBDA_RESNET.OUT_FEATURES={list(cfg.MODEL.LAMBDA_RESNET.OUT_FEATURES)} does not provide"
        )
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


def register_backbones() -> None:
    """Register the builders in BACKBONE_REGISTRY; a second call (re-import, reload) is a no-op."""
    for builder in (build_lambda_resnet_backbone, build_lambda_resnet_fpn_backbone):
        if builder.__name__ not in BACKBONE_REGISTRY:
            BACKBONE_REGISTRY.register(builder)


def imagenet_num_params(**options) -> int:
    """Parameters of a backbone's ImageNet form (backbone + global pool + 1000-way FC), as the paper counts."""
    return sum(p.numel() for p in build_lambda_resnet(num_classes=1000, **options).parameters())
