"""Detectron2's DefaultTrainer, adapted: LSJ mapper, COCO evaluation with AP-by-size reports that
record what produced them, weights that must fit when resuming, and DDP / AMP that also work (or
fail clearly) on the CPU."""
from __future__ import annotations

import logging
import os
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np
from detectron2.data import DatasetCatalog, build_detection_train_loader, get_detection_dataset_dicts
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.modeling import GeneralizedRCNNWithTTA
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..checkpoint import Checkpointer, intact_checkpoints, keep_final_weights
from ..data import build_train_mapper, check_dataset_dicts, prepare_dataset
from ..errors import TrainingDiverged
from ..evaluation import INFERENCE_FOLDER, TTA_FOLDER, build_coco_evaluator, evaluation_provenance, write_ap_by_size

logger = logging.getLogger("lambda_det")


class CompletedRunEvalHook(hooks.EvalHook):
    """Detectron2's EvalHook, whose evaluation after the last iteration runs only when the iterations
    completed: Detectron2 calls ``after_train`` in a ``finally``, so a run stopped by an error in its
    last step (a final checkpoint that could not be written) evaluated weights it never saved, and an
    error of that evaluation (the same full disk) hid the first."""

    def after_train(self):
        if self.trainer.iter >= self.trainer.max_iter:  # the loop's end; an error leaves it at max_iter - 1
            super().after_train()


class Trainer(DefaultTrainer):
    """DefaultTrainer with lambda_det's data, evaluation and CPU-aware distributed training."""

    def __init__(self, cfg, *, config_file: Optional[str] = None):
        """``config_file``: the file the config came from, recorded with every evaluation."""
        # Same construction as DefaultTrainer.__init__ (Detectron2 0.7), except that DDP of a CPU
        # model needs device_ids=None (preflight refuses AMP without CUDA).
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        on_gpu = cfg.MODEL.DEVICE.startswith("cuda")
        model = create_ddp_model(
            model, broadcast_buffers=False, device_ids=[comm.get_local_rank()] if on_gpu else None
        )
        self._trainer = (AMPTrainer if cfg.SOLVER.AMP.ENABLED else SimpleTrainer)(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = Checkpointer(model, cfg.OUTPUT_DIR, cfg=cfg, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.config_file = config_file
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        """Detectron2's hooks; its evaluation hook evaluates through ``test`` with this run's provenance."""
        built = super().build_hooks()
        for i, hook in enumerate(built):
            if isinstance(hook, hooks.EvalHook):
                built[i] = CompletedRunEvalHook(self.cfg.TEST.EVAL_PERIOD, self._evaluate)
        if self.cfg.TEST.AUG.ENABLED:  # as Detectron2's train_net: once more after training, augmented
            built.append(CompletedRunEvalHook(0, self._evaluate_with_tta))
        return built

    def _evaluate(self):
        self._last_eval_results = self.test(self.cfg, self.model, provenance={"config_file": self.config_file})
        return self._last_eval_results

    def _evaluate_with_tta(self):
        return self.test_with_TTA(self.cfg, self.model, provenance={"config_file": self.config_file})

    # a total loss this many times the median of the run's first iterations means it diverged
    DIVERGENCE_FACTOR = 100.0

    def run_step(self):
        """Detectron2's step, stopped with one line when the loss is no longer finite or explodes,
        before the checkpointer can save the diverged weights."""
        self._trainer.iter = self.iter
        try:
            self._trainer.run_step()
        except FloatingPointError:  # Detectron2's check of a non-finite loss
            raise TrainingDiverged(self._diverged("is not finite")) from None
        if "total_loss" not in self.storage.histories():
            return  # written by the main process only
        losses = [value for value, _ in self.storage.history("total_loss").values()]
        reference = float(np.median(losses[:5]))
        if len(losses) > 5 and losses[-1] > self.DIVERGENCE_FACTOR * reference:
            raise TrainingDiverged(self._diverged(f"is {losses[-1]:.3g}, {losses[-1] / reference:.0f}x the first iterations' {reference:.3g}"))

    def _diverged(self, what: str) -> str:
        solver = self.cfg.SOLVER
        intact = intact_checkpoints(Path(self.cfg.OUTPUT_DIR))
        kept = f"the checkpoints written before are intact (newest: {intact[0][0]})" if intact else "no checkpoint was written"
        return (f"training diverged at iteration {self.iter}: the total loss {what}. Look at SOLVER.BASE_LR={solver.BASE_LR} "
                f"and SOLVER.WARMUP_ITERS={solver.WARMUP_ITERS} (gradient clipping: SOLVER.CLIP_GRADIENTS.ENABLED="
                f"{solver.CLIP_GRADIENTS.ENABLED}); {kept}")

    def resume_or_load(self, resume=True):
        """Detectron2's: a resumed run's checkpoint must fit the model exactly (the same run goes on);
        MODEL.WEIGHTS for a new run may differ (fine-tuning with new heads), with Detectron2's warnings."""
        self.checkpointer.strict = bool(resume and self.checkpointer.has_checkpoint())
        if resume and comm.is_main_process():
            kept = keep_final_weights(self.cfg.OUTPUT_DIR, self.cfg.SOLVER.MAX_ITER)
            if kept is not None:
                logger.info("the finished run trains on to SOLVER.MAX_ITER=%d: its model_final.pth stays as %s",
                            self.cfg.SOLVER.MAX_ITER, kept)
        try:
            super().resume_or_load(resume=resume)
        finally:
            self.checkpointer.strict = False

    @classmethod
    def build_train_loader(cls, cfg):
        for name in cfg.DATASETS.TRAIN:
            prepare_dataset(name)
        dataset = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN,
            filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS,
            min_keypoints=cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE if cfg.MODEL.KEYPOINT_ON else 0,
            proposal_files=cfg.DATASETS.PROPOSAL_FILES_TRAIN if cfg.MODEL.LOAD_PROPOSALS else None,
        )
        check_dataset_dicts(cfg, dataset, cfg.DATASETS.TRAIN)  # before the first iteration, not in it
        return build_detection_train_loader(cfg, mapper=build_train_mapper(cfg), dataset=dataset)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        prepare_dataset(dataset_name)
        return super().build_test_loader(cfg, dataset_name)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        prepare_dataset(dataset_name)
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, INFERENCE_FOLDER, dataset_name)
        return build_coco_evaluator(cfg, dataset_name, output_folder)

    @classmethod
    def test(cls, cfg, model, evaluators=None, provenance: Optional[dict] = None, augmented: bool = False):
        """Detectron2's evaluation, then ap_by_size.{json,md,png} per dataset (main process), in
        OUTPUT_DIR/inference/<dataset>/ (``augmented``: the model is test-time augmented, inference_TTA/).

        ``provenance``: what is evaluated, for ap_by_size.json: ``config_file``, and for weights
        loaded from a file (--eval-only) ``weights`` and the ``iteration`` they were saved at.
        """
        provenance = provenance or {}
        folder = TTA_FOLDER if augmented else INFERENCE_FOLDER
        results = super().test(cfg, model, evaluators)
        if comm.is_main_process() and results:
            per_dataset = results if len(cfg.DATASETS.TEST) > 1 else {cfg.DATASETS.TEST[0]: results}
            run_name = Path(cfg.OUTPUT_DIR).name
            trained = iterations_trained(cfg.SOLVER.MAX_ITER)
            if trained is None and provenance.get("iteration") is not None:  # --eval-only of a checkpoint
                trained = provenance["iteration"] + 1
            for dataset_name, dataset_results in per_dataset.items():
                if not dataset_results:
                    continue
                out = Path(cfg.OUTPUT_DIR) / folder / dataset_name
                record = evaluation_provenance(
                    cfg,
                    dataset_name,
                    augmented=augmented,
                    weights=provenance.get("weights"),
                    iterations_trained=trained,
                    config_file=provenance.get("config_file"),
                    num_images=dataset_size(dataset_name),
                )
                paths = write_ap_by_size(
                    dataset_results, out, run_name, extra={"dataset": dataset_name, "iterations_trained": trained},
                    provenance=record,
                )
                logger.info("AP by object size for %s: %s", dataset_name, ", ".join(str(p) for p in paths.values()))
        return results

    @classmethod
    def test_with_TTA(cls, cfg, model, provenance: Optional[dict] = None):
        """Detectron2's test-time augmentation (TEST.AUG: each short side of MIN_SIZES, flipped too
        with FLIP, detections merged, masks from the merged boxes), evaluated as ``test`` does into
        OUTPUT_DIR/inference_TTA/<dataset>/; the result keys end in "_TTA", as Detectron2's."""
        augmented = GeneralizedRCNNWithTTA(cfg, model)
        evaluators = [cls.build_evaluator(cfg, name, output_folder=os.path.join(cfg.OUTPUT_DIR, TTA_FOLDER, name))
                      for name in cfg.DATASETS.TEST]
        results = cls.test(cfg, augmented, evaluators, provenance=provenance, augmented=True)
        return OrderedDict((name + "_TTA", value) for name, value in results.items())


def iterations_trained(max_iter: int) -> Optional[int]:
    """Iterations behind the model evaluated during training (None outside training).

    Detectron2's storage holds the iteration being run (periodic evaluation, after its step), or
    MAX_ITER and beyond after training (a finished run resumed again counts one more).
    """
    from detectron2.utils.events import get_event_storage

    try:
        current = get_event_storage().iter
    except AssertionError:  # evaluation outside training (--eval-only)
        return None
    return min(current + 1, max_iter)


def dataset_size(name: str) -> Optional[int]:
    try:
        return len(DatasetCatalog.get(name))
    except Exception:  # the count is informative only
        return None
