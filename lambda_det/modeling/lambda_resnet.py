"""LambdaResNets (LambdaNetworks App. D, E.1) as Detectron2 backbones.

The base network is the ResNet-RS-style ResNet-v1 the paper builds on:

* ResNet-D deep stem: three 3x3 convs (32, 32, 64 channels, the first with stride 2), and a
  stride-2 3x3 conv (64) where ResNet has its max-pool; stride 4 in all.
* ResNet-D projection shortcuts: a 2x2 average pool before the 1x1 conv when downsampling.
* Bottlenecks 1x1 -> 3x3 -> 1x1 (stride on the 3x3); in a lambda block the 3x3 conv is a lambda
  layer, followed by a 3x3 average pool with stride 2 when the block downsamples.
* Optional squeeze-excite (hidden = ratio x block output channels) on conv blocks only.
* The gamma of every block's last norm starts at zero.

Detectron2's ``ResNet`` assembles stem and stages, names them res2..res5, and provides
``output_shape()`` and ``freeze(freeze_at)`` with Detectron2's meaning.

Options, each off by default, reproduce timm's ImageNet-trained lambda ResNets
(``lambda_det.modeling.timm_lambda``): a tiered stem with a max-pool, strided 1x1 projection
shortcuts, SiLU, and lambda layers with timm's position bias and 2x2 pooling.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.layers import CNNBlockBase, Conv2d, ShapeSpec, get_norm
from detectron2.modeling.backbone import BACKBONE_REGISTRY, FPN, ResNet
from detectron2.modeling.backbone.fpn import LastLevelMaxPool
from torch import nn

from ..errors import ConfigError
from ..layers import LambdaLayer
from ..layers.lambda_layer import POOLS
from ..layers.position_lambdas import IMPL_CHOICES
from .layouts import STAGE_BLOCKS, STAGE_NAMES, VARIANTS, parse_layout, stage_blocks, variant_layout

NORMS = ("BN", "SyncBN", "FrozenBN", "GN")


ACTIVATIONS = ("relu", "silu")
STEMS = ("deep", "tiered")
SHORTCUTS = ("avg", "conv")


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


def build_lambda_resnet(
    *,
    depth: int = 50,
    variant: str = "lambda",
    layout: Sequence[str] = (),
    blocks_per_stage: Sequence[int] = (),
    width_per_group: int = 64,
    norm: str = "BN",
    se_ratio: float = 0.25,
    se_stages: Sequence[str] = (),
    zero_init_residual: bool = True,
    dim_k: int = 16,
    heads: int = 4,
    dim_u: int = 1,
    scope: Optional[int] = 23,
    global_max_size: int = 64,
    impl: str = "auto",
    in_channels: int = 3,
    out_features: Sequence[str] = STAGE_NAMES,
    freeze_at: int = 0,
    num_classes: Optional[int] = None,
    stem: str = "deep",
    stem_width: int = 64,
    shortcut: str = "avg",
    activation: str = "relu",
    lambda_pool: str = "avg3x3",
    position_bias: bool = False,
) -> ResNet:
    """A LambdaResNet (or its conv / SE baseline) as a Detectron2 ``ResNet``.

    ``num_classes=1000`` with ``out_features=["res5", "linear"]`` gives the ImageNet form whose parameters
    the paper reports.
    """
    stage_layouts = resolve_layout(depth=depth, variant=variant, layout=layout, blocks_per_stage=blocks_per_stage)
    unknown = set(se_stages) - set(STAGE_NAMES)
    if unknown:
        raise ConfigError(f"MODEL.LAMBDA_RESNET.SE_STAGES has {sorted(unknown)}; allowed: {list(STAGE_NAMES)}")

    lambda_kwargs = dict(dim_k=dim_k, heads=heads, dim_u=dim_u, scope=scope, impl=impl, global_max_size=global_max_size,
                         pool=lambda_pool, position_bias=position_bias)
    w, tiered = stem_width, stem == "tiered"
    stem_module = DeepStem(in_channels, (3 * w // 8 if tiered else w // 2, w // 2, w), norm=norm, activation=activation, max_pool=tiered)
    stages = []
    channels = stem_module.out_channels
    for index, (name, letters) in enumerate(zip(STAGE_NAMES, stage_layouts)):
        width = width_per_group * 2**index
        stage = []
        for i, letter in enumerate(letters):
            stage.append(
                LambdaBottleneck(
                    channels,
                    4 * width,
                    bottleneck_channels=width,
                    stride=2 if (i == 0 and index > 0) else 1,
                    use_lambda=letter == "L",
                    lambda_kwargs=lambda_kwargs,
                    se_ratio=se_ratio if name in se_stages else 0.0,
                    norm=norm,
                    zero_init_residual=zero_init_residual,
                    shortcut=shortcut,
                    activation=activation,
                )
            )
            channels = 4 * width
        stages.append(stage)
    model = ResNet(stem_module, stages, num_classes=num_classes, out_features=list(out_features), freeze_at=freeze_at)
    model.layout = stage_layouts
    return model


def resolve_layout(*, depth: int, variant: str, layout: Sequence[str] = (), blocks_per_stage: Sequence[int] = ()):
    """One string per stage, one letter per block: "C" conv block, "L" lambda block."""
    blocks = tuple(blocks_per_stage) if blocks_per_stage else stage_blocks(depth)
    if len(blocks) != 4 or min(blocks) < 1:
        raise ConfigError(f"MODEL.LAMBDA_RESNET.STAGE_BLOCKS={list(blocks)!r} needs 4 positive block counts")
    if variant == "custom":
        if not layout:
            raise ConfigError("MODEL.LAMBDA_RESNET.VARIANT='custom' needs MODEL.LAMBDA_RESNET.LAYOUT (4 entries)")
        return parse_layout(layout, blocks)
    if layout:
        raise ConfigError(
            f"MODEL.LAMBDA_RESNET.LAYOUT={list(layout)!r} is only read with VARIANT='custom' (got VARIANT={variant!r})"
        )
    return variant_layout(variant, blocks, depth)


def lambda_block_input_strides(kwargs: Dict) -> Dict[str, int]:
    """{"res4.1": 16, ...}: the stride of the map each lambda block's layer runs on (a downsampling
    block's layer runs at the previous stage's resolution, then pools)."""
    layouts = resolve_layout(
        depth=kwargs["depth"], variant=kwargs["variant"], layout=kwargs["layout"], blocks_per_stage=kwargs["blocks_per_stage"]
    )
    strides = {}
    for index, (name, letters) in enumerate(zip(STAGE_NAMES, layouts)):
        stage_stride = 4 * 2**index
        for i, letter in enumerate(letters):
            if letter == "L":
                strides[f"{name}.{i}"] = stage_stride // 2 if (i == 0 and index > 0) else stage_stride
    return strides


def lambda_resnet_kwargs_from_cfg(cfg, input_channels: int) -> Dict:
    """Read MODEL.LAMBDA_RESNET (see lambda_det/config.py), checking every value."""
    c = cfg.MODEL.LAMBDA_RESNET

    def allowed(key: str, value, choices) -> None:
        if value not in choices:
            raise ConfigError(f"MODEL.LAMBDA_RESNET.{key}={value!r} is not allowed; choose from {list(choices)}")

    def positive(key: str, value) -> None:
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"MODEL.LAMBDA_RESNET.{key}={value!r} must be a positive integer")

    allowed("VARIANT", c.VARIANT, VARIANTS)
    allowed("NORM", c.NORM, NORMS)
    allowed("IMPL", c.IMPL, IMPL_CHOICES)
    allowed("STEM", c.STEM, STEMS)
    allowed("SHORTCUT", c.SHORTCUT, SHORTCUTS)
    allowed("ACTIVATION", c.ACTIVATION, ACTIVATIONS)
    allowed("LAMBDA_POOL", c.LAMBDA_POOL, POOLS)
    allowed("POSITION_BIAS", c.POSITION_BIAS, (True, False))
    for key in ("WIDTH_PER_GROUP", "DIM_K", "HEADS", "DIM_U", "GLOBAL_MAX_SIZE", "STEM_WIDTH"):
        positive(key, c[key])
    if not c.STAGE_BLOCKS:
        allowed("DEPTH", c.DEPTH, sorted(STAGE_BLOCKS))
    if not isinstance(c.SCOPE, int) or c.SCOPE < 0 or (c.SCOPE > 0 and c.SCOPE % 2 == 0):
        raise ConfigError(f"MODEL.LAMBDA_RESNET.SCOPE={c.SCOPE!r} must be an odd size r (r x r scope) or 0 for global")
    if not 0.0 <= c.SE_RATIO <= 1.0:
        raise ConfigError(f"MODEL.LAMBDA_RESNET.SE_RATIO={c.SE_RATIO!r} must lie in [0, 1]")
    unknown = set(c.OUT_FEATURES) - set(STAGE_NAMES) - {"stem"}
    if not c.OUT_FEATURES or unknown:
        raise ConfigError(f"MODEL.LAMBDA_RESNET.OUT_FEATURES={list(c.OUT_FEATURES)!r}: choose from {['stem', *STAGE_NAMES]}")
    freeze_at = cfg.MODEL.BACKBONE.FREEZE_AT
    if not isinstance(freeze_at, int) or not 0 <= freeze_at <= 5:
        raise ConfigError(f"MODEL.BACKBONE.FREEZE_AT={freeze_at!r} must be 0 (nothing) .. 5 (stem and all stages)")
    return dict(
        depth=c.DEPTH,
        variant=c.VARIANT,
        layout=list(c.LAYOUT),
        blocks_per_stage=list(c.STAGE_BLOCKS),
        width_per_group=c.WIDTH_PER_GROUP,
        norm=c.NORM,
        se_ratio=c.SE_RATIO,
        se_stages=list(c.SE_STAGES),
        zero_init_residual=c.ZERO_INIT_RESIDUAL,
        dim_k=c.DIM_K,
        heads=c.HEADS,
        dim_u=c.DIM_U,
        scope=c.SCOPE or None,
        global_max_size=c.GLOBAL_MAX_SIZE,
        impl=c.IMPL,
        in_channels=input_channels,
        out_features=list(c.OUT_FEATURES),
        freeze_at=freeze_at,
        stem=c.STEM,
        stem_width=c.STEM_WIDTH,
        shortcut=c.SHORTCUT,
        activation=c.ACTIVATION,
        lambda_pool=c.LAMBDA_POOL,
        position_bias=c.POSITION_BIAS,
    )


def lambda_resnet_config_problems(cfg) -> List[str]:
    """What makes a LambdaResNet config unbuildable or unable to take the inputs it will get."""
    if "LAMBDA_RESNET" not in cfg.MODEL or "lambda_resnet" not in str(cfg.MODEL.BACKBONE.NAME):
        return []
    try:
        kwargs = lambda_resnet_kwargs_from_cfg(cfg, len(cfg.MODEL.PIXEL_MEAN))
        strides = lambda_block_input_strides(kwargs)
    except ConfigError as exc:
        return [str(exc)]
    problems = []
    c = cfg.MODEL.LAMBDA_RESNET
    for stage, width in _lambda_stage_widths(kwargs, strides):
        if width % c.HEADS:
            problems.append(
                f"MODEL.LAMBDA_RESNET.HEADS={c.HEADS}: must divide the bottleneck width of every stage with "
                f"lambda blocks; {stage} has WIDTH_PER_GROUP x {width // c.WIDTH_PER_GROUP} = {width}"
            )
    if c.NORM == "GN":
        for stage, width in _lambda_stage_widths(kwargs, strides):
            for what, channels in (("queries HEADS x DIM_K", c.HEADS * c.DIM_K), ("values", width // c.HEADS * c.DIM_U)):
                if channels % 32:
                    problems.append(
                        f"MODEL.LAMBDA_RESNET.NORM='GN' (GroupNorm of 32 groups) needs a multiple of 32 channels; the "
                        f"lambda layers of {stage} normalize {channels} ({what})"
                    )
        if c.WIDTH_PER_GROUP % 32:
            problems.append("MODEL.LAMBDA_RESNET.WIDTH_PER_GROUP must be a multiple of 32 with NORM='GN'")
    if c.SCOPE == 0 and strides:
        problems += _global_scope_problems(cfg, min(strides.values()))
    return sorted(set(problems), key=problems.index)


def _lambda_stage_widths(kwargs: dict, strides: dict) -> Iterable:
    for stage in sorted({name.split(".")[0] for name in strides}):
        index = int(stage[-1]) - 2
        yield stage, kwargs["width_per_group"] * 2**index


def _global_scope_problems(cfg, smallest_stride: int) -> List[str]:
    """A global-scope layer has a table for maps up to GLOBAL_MAX_SIZE: check the largest map it will see."""
    limit = cfg.MODEL.LAMBDA_RESNET.GLOBAL_MAX_SIZE
    sources = []
    if "LSJ" in cfg.INPUT and cfg.INPUT.LSJ.ENABLED:
        sources.append(("INPUT.LSJ.IMAGE_SIZE", cfg.INPUT.LSJ.IMAGE_SIZE))
    else:
        sources.append(("INPUT.MAX_SIZE_TRAIN", cfg.INPUT.MAX_SIZE_TRAIN))
    if cfg.INPUT.MIN_SIZE_TEST == 0:
        return [
            "INPUT.MIN_SIZE_TEST=0 (test images are not resized) cannot be bounded for a global-scope lambda layer "
            "(MODEL.LAMBDA_RESNET.SCOPE=0): set INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST or use a local SCOPE"
        ]
    sources.append(("INPUT.MAX_SIZE_TEST", cfg.INPUT.MAX_SIZE_TEST))
    problems = []
    for key, side in sources:
        padded = -(-side // 32) * 32  # images are padded to the FPN's size divisibility
        largest_map = -(-padded // smallest_stride)
        if largest_map > limit:
            problems.append(
                f"MODEL.LAMBDA_RESNET.GLOBAL_MAX_SIZE={limit}: {key}={side} gives lambda-layer maps of up to "
                f"{largest_map}x{largest_map} (stride {smallest_stride}); raise GLOBAL_MAX_SIZE to >= {largest_map}, "
                "lower the input size, or use a local SCOPE"
            )
    return problems


def build_lambda_resnet_backbone(cfg, input_shape: ShapeSpec) -> ResNet:
    """Detectron2 builder: MODEL.BACKBONE.NAME = "build_lambda_resnet_backbone"."""
    return build_lambda_resnet(**lambda_resnet_kwargs_from_cfg(cfg, input_shape.channels))


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


def imagenet_num_params(**kwargs) -> int:
    """Parameters of a backbone's ImageNet form (backbone + global pool + 1000-way FC), as the paper counts."""
    # "res5" too: Detectron2's ResNet keeps only the stages up to the last stage named in out_features
    model = build_lambda_resnet(num_classes=1000, out_features=["res5", "linear"], **kwargs)
    return sum(p.numel() for p in model.parameters())
