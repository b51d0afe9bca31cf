"""Evaluation: COCO box/mask AP and the AP-by-object-size reports (paper Table 6 shape)."""
from .ap_by_size import (
    PAPER_TABLE6,
    ResultFileError,
    ap_table,
    compare,
    load_ap_by_size,
    load_run,
    provenance_table,
    summarize,
    write_ap_by_size,
)
from .coco import INFERENCE_FOLDER, TTA_FOLDER, WholeFilesCOCOEvaluator, build_coco_evaluator, evaluation_folders, has_detectron2_ops
from .provenance import describe_model, evaluation_provenance, provenance_record

__all__ = [
    "INFERENCE_FOLDER",
    "PAPER_TABLE6",
    "ResultFileError",
    "TTA_FOLDER",
    "WholeFilesCOCOEvaluator",
    "ap_table",
    "build_coco_evaluator",
    "compare",
    "describe_model",
    "evaluation_folders",
    "evaluation_provenance",
    "has_detectron2_ops",
    "load_ap_by_size",
    "load_run",
    "provenance_record",
    "provenance_table",
    "summarize",
    "write_ap_by_size",
]
