"""Detectron2's DefaultTrainer, adapted: LSJ mapper, COCO evaluation with AP-by-size reports,
and DDP / AMP that also work (or fail clearly) on the CPU."""
from __future__ import annotations

import logging
import os
import weakref
from pathlib import Path

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import build_detection_train_loader
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data import build_train_mapper, prepare_dataset
from ..evaluation import build_coco_evaluator, write_ap_by_size

logger = logging.getLogger("lambda_det")


class Trainer(DefaultTrainer):
    """DefaultTrainer with lambda_det's data, evaluation and CPU-aware distributed training."""

    def __init__(self, cfg):
        # Same construction as DefaultTrainer.__init__ (Detectron2 0.7), except for two things it
        # cannot do on CPUs: DDP of a CPU model needs device_ids=None, and AMP needs CUDA.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        if cfg.SOLVER.AMP.ENABLED and cfg.MODEL.DEVICE == "cpu":
            raise ValueError(
                "SOLVER.AMP.ENABLED=True needs a CUDA device (Detectron2's AMPTrainer); on the CPU set "
                "SOLVER.AMP.ENABLED False (the lambda layers compute in float32 either way)"
            )
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_gpu = cfg.MODEL.DEVICE.startswith("cuda")
        model = create_ddp_model(
            model, broadcast_buffers=False, device_ids=[comm.get_local_rank()] if on_gpu else None
        )
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DetectionCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    @classmethod
    def build_train_loader(cls, cfg):
        for name in cfg.DATASETS.TRAIN:
            prepare_dataset(name)
        return build_detection_train_loader(cfg, mapper=build_train_mapper(cfg))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        prepare_dataset(dataset_name)
        return super().build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        prepare_dataset(dataset_name)
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_coco_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Detectron2's evaluation, then ap_by_size.{json,md,png} per dataset (main process)."""
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and results:
            per_dataset = results if len(cfg.DATASETS.TEST) > 1 else {cfg.DATASETS.TEST[0]: results}
            run_name = Path(cfg.OUTPUT_DIR).name
            storage_iter = _current_iteration()
            for dataset_name, dataset_results in per_dataset.items():
                if not dataset_results:
                    continue
                out = Path(cfg.OUTPUT_DIR) / "inference" / dataset_name
                paths = write_ap_by_size(
                    dataset_results, out, run_name, extra={"dataset": dataset_name, "iteration": storage_iter}
                )
                logger.info("AP by object size for %s: %s", dataset_name, ", ".join(str(p) for p in paths.values()))
        return results


def _current_iteration():
    from detectron2.utils.events import get_event_storage

    try:
        return get_event_storage().iter
    except AssertionError:  # evaluation outside training (--eval-only)
        return None

