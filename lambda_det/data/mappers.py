"""Dataset mappers: Detectron2's DatasetMapper with the large-scale-jitter recipe when INPUT.LSJ asks."""
from __future__ import annotations

import math
from numbers import Real
from typing import List

import detectron2.data.transforms as T
from detectron2.data import DatasetMapper

from ..errors import ConfigError


def lsj_problems(cfg) -> List[str]:
    """What makes INPUT.LSJ unusable (nothing when it is off), one line per key."""
    if not cfg.INPUT.LSJ.ENABLED:
        return []
    lsj, problems = cfg.INPUT.LSJ, []
    if isinstance(lsj.IMAGE_SIZE, bool) or not isinstance(lsj.IMAGE_SIZE, int) or lsj.IMAGE_SIZE < 32:
        problems.append(f"INPUT.LSJ.IMAGE_SIZE={lsj.IMAGE_SIZE!r}: must be an integer >= 32")
    scales = [lsj.MIN_SCALE, lsj.MAX_SCALE]
    if any(isinstance(s, bool) or not isinstance(s, Real) or not math.isfinite(s) for s in scales) or lsj.MIN_SCALE <= 0:
        problems.append(f"INPUT.LSJ.MIN_SCALE={lsj.MIN_SCALE!r}: must be a number in (0.0, inf]")
    elif lsj.MAX_SCALE < lsj.MIN_SCALE:
        problems.append(f"INPUT.LSJ.MAX_SCALE={lsj.MAX_SCALE!r}: must be >= INPUT.LSJ.MIN_SCALE={lsj.MIN_SCALE}")
    return problems


def build_lsj_augmentations(cfg) -> List[T.Augmentation]:
    """Large-scale jitter (Ghiasi et al. 2021): random scale in [MIN_SCALE, MAX_SCALE] of an
    IMAGE_SIZE square fit, IMAGE_SIZE x IMAGE_SIZE crop (padded), horizontal flip."""
    ConfigError.check(lsj_problems(cfg))
    size = cfg.INPUT.LSJ.IMAGE_SIZE
    lsj = cfg.INPUT.LSJ
    augs: List[T.Augmentation] = [
        T.ResizeScale(min_scale=lsj.MIN_SCALE, max_scale=lsj.MAX_SCALE, target_height=size, target_width=size),
        T.FixedSizeCrop(crop_size=(size, size)),
    ]
    if cfg.INPUT.RANDOM_FLIP != "none":
        augs.append(
            T.RandomFlip(horizontal=cfg.INPUT.RANDOM_FLIP == "horizontal", vertical=cfg.INPUT.RANDOM_FLIP == "vertical")
        )
    return augs


def build_train_mapper(cfg) -> DatasetMapper:
    """The training mapper the config asks for: LSJ when INPUT.LSJ.ENABLED, else Detectron2's default."""
    if cfg.INPUT.LSJ.ENABLED:
        # boxes are recomputed from the cropped masks, as Detectron2's LSJ recipe does
        return DatasetMapper(cfg, is_train=True, augmentations=build_lsj_augmentations(cfg), recompute_boxes=cfg.MODEL.MASK_ON)
    return DatasetMapper(cfg, is_train=True)
