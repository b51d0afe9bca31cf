"""COCO box and mask evaluation with Detectron2's COCOEvaluator."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Optional, Tuple

from detectron2.evaluation import COCOEvaluator

from ..errors import raised_while_handling

# Detectron2's folder names under OUTPUT_DIR: plain evaluation, and test-time augmentation (TEST.AUG)
INFERENCE_FOLDER = "inference"
TTA_FOLDER = "inference_TTA"


def evaluation_folders(cfg) -> Tuple[str, ...]:
    """The folders under OUTPUT_DIR an evaluation of ``cfg`` writes into (one per kind, then <dataset>/)."""
    return (INFERENCE_FOLDER, TTA_FOLDER) if cfg.TEST.AUG.ENABLED else (INFERENCE_FOLDER,)


def has_detectron2_ops() -> bool:
    """Whether detectron2's compiled _C (and so its fast COCO evaluator) is present."""
    return importlib.util.find_spec("detectron2._C") is not None


class WholeFilesCOCOEvaluator(COCOEvaluator):
    """Detectron2's COCOEvaluator, which writes its files in place, under their own names: when one
    of those writes fails (a full disk), this removes the half-written file and raises the OSError
    naming it (torch's zip writer raises a RuntimeError in its cleanup)."""

    OUTPUTS = ("instances_predictions.pth", "box_proposals.pkl", "coco_instances_results.json")  # in the order written

    def evaluate(self, img_ids=None):
        paths = [Path(self._output_dir) / name for name in self.OUTPUTS] if self._output_dir else []
        before = {path: _identity(path) for path in paths}
        try:
            return super().evaluate(img_ids)
        except BaseException as exc:
            failed = raised_while_handling(exc, OSError)
            if failed is None or not paths or raised_while_handling(exc, KeyboardInterrupt):
                raise
            # the file being written is the last one changed, in the order they are written (times can tie)
            changed = [path for path in paths if _identity(path) not in (None, before[path])]
            partial = changed[-1] if changed else None
            if partial is not None:
                partial.unlink(missing_ok=True)
            raise OSError(failed.errno, failed.strerror or str(failed), str(partial or failed.filename or self._output_dir)) from None


def _identity(path: Path) -> Optional[Tuple[int, int, int]]:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return stat.st_ino, stat.st_size, stat.st_mtime_ns


def build_coco_evaluator(cfg, dataset_name: str, output_dir: str) -> COCOEvaluator:
    """bbox (+ segm when MODEL.MASK_ON) AP; pycocotools' evaluator when detectron2 has no _C."""
    tasks = ("bbox", "segm") if cfg.MODEL.MASK_ON else ("bbox",)
    return WholeFilesCOCOEvaluator(
        dataset_name, tasks=tasks, distributed=True, output_dir=output_dir, use_fast_impl=has_detectron2_ops()
    )
