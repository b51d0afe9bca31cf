"""Data: dataset mappers (large-scale jitter) and datasets."""
from .mappers import build_lsj_augmentations, build_train_mapper

__all__ = ["build_lsj_augmentations", "build_train_mapper"]
