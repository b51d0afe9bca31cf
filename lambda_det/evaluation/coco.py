"""COCO box and mask evaluation with Detectron2's COCOEvaluator."""
from __future__ import annotations

import importlib.util
from typing import Tuple

from detectron2.evaluation import COCOEvaluator

# Detectron2's folder names under OUTPUT_DIR: plain evaluation, and test-time augmentation (TEST.AUG)
INFERENCE_FOLDER = "inference"
TTA_FOLDER = "inference_TTA"


def evaluation_folders(cfg) -> Tuple[str, ...]:
    """The folders under OUTPUT_DIR an evaluation of ``cfg`` writes into (one per kind, then <dataset>/)."""
    return (INFERENCE_FOLDER, TTA_FOLDER) if cfg.TEST.AUG.ENABLED else (INFERENCE_FOLDER,)


def has_detectron2_ops() -> bool:
    """Whether detectron2's compiled _C (and so its fast COCO evaluator) is present."""
    return importlib.util.find_spec("detectron2._C") is not None


def build_coco_evaluator(cfg, dataset_name: str, output_dir: str) -> COCOEvaluator:
    """bbox (+ segm when MODEL.MASK_ON) AP; pycocotools' evaluator when detectron2 has no _C."""
    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    return COCOEvaluator(
        dataset_name, tasks=tasks, distributed=True, output_dir=output_dir, use_fast_impl=has_detectron2_ops()
    )
