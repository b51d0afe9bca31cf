"""What produced an evaluation: weights, config, input size, dataset, versions. Stored in
ap_by_size.json so that runs can be told apart later (tools/compare_runs.py shows it)."""
from __future__ import annotations

import datetime
import hashlib
from pathlib import Path
from typing import Optional

from .. import __version__
from ..utils.file_safety import file_sha256


def describe_model(cfg) -> str:
    """A short line that tells architectures apart: backbone and, for LambdaResNets, its layout."""
    name = str(cfg.MODEL.BACKBONE.NAME)
    if "lambda_resnet" in name and "LAMBDA_RESNET" in cfg.MODEL:
        c = cfg.MODEL.LAMBDA_RESNET
        depth = f"blocks {list(c.STAGE_BLOCKS)}" if c.STAGE_BLOCKS else f"depth {c.DEPTH}"
        layout = f" {'-'.join(c.LAYOUT)}" if c.VARIANT == "custom" else ""
        scope = "global" if c.SCOPE == 0 else f"r={c.SCOPE}"
        se = f", SE {list(c.SE_STAGES)}" if c.SE_STAGES else ""
        return f"LambdaResNet {depth}, {c.VARIANT}{layout}, width {c.WIDTH_PER_GROUP}, {c.NORM}, {scope}{se}"
    if "resnet" in name.lower():
        return f"{name} (ResNet-{cfg.MODEL.RESNETS.DEPTH})"
    return name


def evaluation_provenance(cfg, dataset_name: str, *, augmented: bool = False, **evaluated) -> dict:
    """The record stored under "provenance" in ap_by_size.json, for a yacs config; ``evaluated``:
    ``weights``, ``iterations_trained``, ``config_file``, ``num_images`` (see ``provenance_record``).
    ``augmented``: the model was evaluated with Detectron2's test-time augmentation (TEST.AUG)."""
    if augmented:
        size = {"min": list(cfg.TEST.AUG.MIN_SIZES), "max": cfg.TEST.AUG.MAX_SIZE, "flip": bool(cfg.TEST.AUG.FLIP)}
    else:
        size = {"min": cfg.INPUT.MIN_SIZE_TEST, "max": cfg.INPUT.MAX_SIZE_TEST}
    return provenance_record(
        dataset_name, output_dir=cfg.OUTPUT_DIR, max_iter=cfg.SOLVER.MAX_ITER, initialized_from=cfg.MODEL.WEIGHTS,
        model=describe_model(cfg), input_size_test=size, config_text=cfg.dump(), **evaluated,
    )


def provenance_record(
    dataset_name: str,
    *,
    output_dir: str,
    max_iter: int,
    initialized_from: str,
    model: str,
    input_size_test: dict,
    config_text: str,
    weights: Optional[str] = None,
    iterations_trained: Optional[int] = None,
    config_file: Optional[str] = None,
    num_images: Optional[int] = None,
) -> dict:
    """The record stored under "provenance" in ap_by_size.json, from what any config says: the run
    folder, its length, the weights it started from, the model in words, the test size and the
    whole config as text (a yacs dump, a LazyConfig's lambda_det.lazy_config.config_text).

    ``weights``: the file evaluated (--eval-only, the demo), or None for the model being trained
    (then the run directory and, once training is done, its model_final.pth are recorded).
    ``iterations_trained``: training iterations behind the weights (None: unknown).
    """
    import detectron2
    import torch

    record: dict = {"dataset": dataset_name}
    if num_images is not None:
        record["images"] = num_images
    if weights:
        path = Path(weights)
        record["weights"] = str(path.resolve()) if path.is_file() else str(weights)
        if path.is_file():
            record["weights_sha256"] = file_sha256(path)
    else:
        final = Path(output_dir) / "model_final.pth"
        finished = iterations_trained is not None and iterations_trained >= max_iter and final.is_file()
        record["weights"] = str(final.resolve()) if finished else f"training state of {Path(output_dir).resolve()}"
        if finished:  # the checkpoint of the last iteration, saved before the evaluation at its end
            record["weights_sha256"] = file_sha256(final)
        record["initialized_from"] = initialized_from or "scratch"
    record["iterations_trained"] = iterations_trained
    record["model"] = model
    record["input_size_test"] = input_size_test
    record["config_file"] = str(Path(config_file).resolve()) if config_file else None
    # the file as it is on disk (what its label names), and the whole config the run used
    record["config_sha256"] = file_sha256(Path(config_file)) if config_file and Path(config_file).is_file() else None
    record["merged_config_sha256"] = hashlib.sha256(config_text.encode()).hexdigest()[:16]
    record["output_dir"] = str(Path(output_dir).resolve())
    record["evaluated_at"] = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    record["versions"] = {"lambda_det": __version__, "torch": torch.__version__, "detectron2": detectron2.__version__}
    return record


__all__ = ["describe_model", "evaluation_provenance", "provenance_record"]
