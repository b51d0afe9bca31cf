"""Data: dataset registration (the embedded toy dataset, COCO checks) and mappers (large-scale jitter)."""
from .datasets import (
    TOY_DATASETS, check_coco_files, check_dataset_dicts, check_datasets, check_registered, check_trainable, model_num_classes,
    prepare_dataset, register_coco_dataset, register_toy_datasets,
)
from .mappers import build_lsj_augmentations, build_train_mapper, lsj_problems
from .toy import TOY_CLASSES, generate_toy_dataset

register_toy_datasets()

__all__ = [
    "TOY_CLASSES",
    "TOY_DATASETS",
    "check_coco_files",
    "check_dataset_dicts",
    "check_datasets",
    "check_registered",
    "check_trainable",
    "build_lsj_augmentations",
    "build_train_mapper",
    "generate_toy_dataset",
    "model_num_classes",
    "lsj_problems",
    "prepare_dataset",
    "register_coco_dataset",
    "register_toy_datasets",
]
