"""Which bottleneck of a LambdaResNet is a lambda block (LambdaNetworks App. D, Table 17-19), from
MODEL.LAMBDA_RESNET's DEPTH or STAGE_BLOCKS, VARIANT and LAYOUT.

A layout is four strings, one per stage res2..res5, one letter per block: "C" for a bottleneck
whose 3x3 is a convolution, "L" for one whose 3x3 is a lambda layer.
"""
from __future__ import annotations

from typing import Dict, List, Sequence, Tuple

from ..errors import ConfigError

STAGE_NAMES = ("res2", "res3", "res4", "res5")

# blocks per stage c2-c3-c4-c5 (App. D)
STAGE_BLOCKS: Dict[int, Tuple[int, int, int, int]] = {
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
    200: (3, 24, 36, 3),
    270: (4, 29, 53, 4),
    350: (4, 36, 72, 4),
    420: (4, 44, 87, 4),
}

# 1-based indices of the lambda blocks in c4 of the paper's LambdaResNets; all of c5 is lambda.
PAPER_C4_LAMBDA_BLOCKS: Dict[int, Tuple[int, ...]] = {
    50: (3,),
    101: (6, 12, 18),
    152: (5, 10, 15, 20, 25, 30),
    200: (5, 10, 15, 20, 25, 30),
    270: tuple(range(8, 49, 8)),
    350: tuple(range(10, 61, 10)),
    420: tuple(range(10, 81, 10)),
}

VARIANTS = ("lambda", "lambda-c4", "conv", "all-lambda", "custom")


def stage_layouts(c) -> List[str]:
    """The layout MODEL.LAMBDA_RESNET ``c`` asks for; ConfigError naming the key that gives none."""
    if c.VARIANT not in VARIANTS:
        raise ConfigError(f"MODEL.LAMBDA_RESNET.VARIANT={c.VARIANT!r} is not allowed; choose from {list(VARIANTS)}")
    if c.STAGE_BLOCKS:
        blocks = tuple(c.STAGE_BLOCKS)
        if len(blocks) != 4 or min(blocks) < 1:
            raise ConfigError(f"MODEL.LAMBDA_RESNET.STAGE_BLOCKS={list(blocks)!r} needs 4 positive block counts")
    elif c.DEPTH in STAGE_BLOCKS:
        blocks = STAGE_BLOCKS[c.DEPTH]
    else:
        raise ConfigError(f"MODEL.LAMBDA_RESNET.DEPTH={c.DEPTH!r} is not allowed; choose from {sorted(STAGE_BLOCKS)}")
    if c.VARIANT == "custom":
        if not c.LAYOUT:
            raise ConfigError("MODEL.LAMBDA_RESNET.VARIANT='custom' needs MODEL.LAMBDA_RESNET.LAYOUT (4 entries)")
        return parse_layout(c.LAYOUT, blocks)
    if c.LAYOUT:
        raise ConfigError(
            f"MODEL.LAMBDA_RESNET.LAYOUT={list(c.LAYOUT)!r} is only read with VARIANT='custom' (got VARIANT={c.VARIANT!r})"
        )
    return variant_layout(c.VARIANT, blocks, c.DEPTH)


def variant_layout(variant: str, blocks: Sequence[int], depth: int) -> List[str]:
    """The layout of a named variant.

    * "lambda":     the paper's LambdaResNet-<depth> (lambda blocks in c4 as tabulated, all of c5);
    * "lambda-c4":  LambdaResNet-<depth>-C4 (every block of c4 and c5);
    * "conv":       the ResNet-RS-style baseline, no lambda layers;
    * "all-lambda": every 3x3 is a lambda layer (the paper's ResNet-50 ablation, 15.0M params).
    """
    if variant == "conv":
        return ["C" * n for n in blocks]
    if variant == "all-lambda":
        return ["L" * n for n in blocks]
    if variant == "lambda-c4":
        return ["C" * blocks[0], "C" * blocks[1], "L" * blocks[2], "L" * blocks[3]]
    if depth not in PAPER_C4_LAMBDA_BLOCKS or tuple(blocks) != STAGE_BLOCKS[depth]:
        raise ConfigError(
            f"MODEL.LAMBDA_RESNET.VARIANT='lambda' places lambda blocks as the paper does for depths "
            f"{sorted(PAPER_C4_LAMBDA_BLOCKS)}; with STAGE_BLOCKS={list(blocks)} use VARIANT='custom' and LAYOUT"
        )
    c4 = "".join("L" if i + 1 in PAPER_C4_LAMBDA_BLOCKS[depth] else "C" for i in range(blocks[2]))
    return ["C" * blocks[0], "C" * blocks[1], c4, "L" * blocks[3]]


def parse_layout(layout: Sequence[str], blocks: Sequence[int]) -> List[str]:
    """An explicit layout: per stage either one letter for the whole stage or one per block.

    ["C", "C", "L", "L"] is the paper's C-C-L-L hybrid; ["C", "C", "CCLCCL", "L"] places per block.
    """
    if len(layout) != 4:
        raise ConfigError(f"MODEL.LAMBDA_RESNET.LAYOUT={list(layout)!r} needs 4 entries (res2..res5)")
    out = []
    for name, spec, n in zip(STAGE_NAMES, layout, blocks):
        spec = str(spec).upper()
        if not spec or set(spec) - {"C", "L"}:
            raise ConfigError(f"MODEL.LAMBDA_RESNET.LAYOUT entry {spec!r} for {name} must be letters C (conv) / L (lambda)")
        if len(spec) == 1:
            spec = spec * n
        if len(spec) != n:
            raise ConfigError(
                f"MODEL.LAMBDA_RESNET.LAYOUT entry {spec!r} for {name} has {len(spec)} letters; the stage has {n} blocks"
            )
        out.append(spec)
    return out
