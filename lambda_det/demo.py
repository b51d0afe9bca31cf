"""Inference demo: images, globs, directories and videos in; pictures with masks, boxes, class names
and scores (Detectron2's Visualizer) out. Used by tools/demo.py and the main job."""
from __future__ import annotations

import glob
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, List, Optional, Tuple

import cv2
import numpy as np
from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import ColorMode, Visualizer

logger = logging.getLogger("lambda_det")

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


@dataclass
class Inputs:
    images: List[Path] = field(default_factory=list)
    videos: List[Path] = field(default_factory=list)
    not_found: List[str] = field(default_factory=list)


def collect_inputs(patterns: Iterable[str]) -> Inputs:
    """Expand files, globs and directories (images inside, recursively) into images and videos."""
    found = Inputs()
    seen = set()
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            candidates = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS)
        elif path.is_file():
            candidates = [path]
        elif glob.has_magic(pattern):
            candidates = sorted(Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file())
            if not candidates:
                found.not_found.append(pattern)
        else:
            found.not_found.append(pattern)
            candidates = []
        for candidate in candidates:
            if candidate.resolve() in seen:
                continue
            seen.add(candidate.resolve())
            (found.videos if candidate.suffix.lower() in VIDEO_EXTENSIONS else found.images).append(candidate)
    return found


def to_bgr8(image: np.ndarray) -> np.ndarray:
    """Any image OpenCV reads -> 8-bit, 3-channel BGR: grayscale replicated, alpha dropped,
    16-bit scaled by 1/257 (full range to full range), float taken as 0..1 when it fits there."""
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif image.dtype in (np.float32, np.float64):
        scale = 255.0 if image.max(initial=0) <= 1.0 else 1.0
        image = np.clip(image * scale, 0, 255).round().astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ValueError(f"unsupported pixel type {image.dtype}")
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 1):
        return cv2.cvtColor(image.reshape(image.shape[0], image.shape[1]), cv2.COLOR_GRAY2BGR)
    if image.ndim == 3 and image.shape[2] == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ValueError(f"unsupported image shape {image.shape}")


def read_image_bgr(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise ValueError("not a readable image")
    return to_bgr8(image)


class Demo:
    """A predictor plus Detectron2's Visualizer, for the classes of the config's test dataset."""

    def __init__(self, cfg) -> None:
        if not cfg.MODEL.WEIGHTS:
            raise ValueError("the demo needs trained weights: add `--opts MODEL.WEIGHTS path/to/model_final.pth`")
        self.predictor = DefaultPredictor(cfg)
        names = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN)
        self.metadata = MetadataCatalog.get(names[0]) if names else MetadataCatalog.get("__unused")
        self.threshold = cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST

    def __call__(self, bgr: np.ndarray) -> Tuple[object, np.ndarray]:
        """(instances on the CPU, visualization as BGR uint8)."""
        instances = self.predictor(bgr)["instances"].to("cpu")
        visualizer = Visualizer(bgr[:, :, ::-1], self.metadata, instance_mode=ColorMode.IMAGE)
        drawn = visualizer.draw_instance_predictions(instances).get_image()[:, :, ::-1]
        return instances, np.ascontiguousarray(drawn)

    def describe(self, instances) -> str:
        if len(instances) == 0:
            return f"no detections above score {self.threshold:.2f}"
        classes = self.metadata.get("thing_classes", None)
        labels = [classes[c] if classes else str(c) for c in instances.pred_classes.tolist()]
        counts = {label: labels.count(label) for label in sorted(set(labels))}
        return f"{len(instances)} detections (" + ", ".join(f"{n} {label}" for label, n in counts.items()) + ")"


def _unique_output(out_dir: Path, stem: str, suffix: str, used: set) -> Path:
    candidate, i = out_dir / f"{stem}{suffix}", 1
    while candidate in used:
        candidate, i = out_dir / f"{stem}_{i}{suffix}", i + 1
    used.add(candidate)
    return candidate


def run_demo(demo: Demo, inputs: Inputs, out_dir: Path, report: Callable[[str], None] = print) -> int:
    """Process every input, write pictures / videos under ``out_dir``; return how many were processed."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for pattern in inputs.not_found:
        report(f"skipped {pattern}: no such file, directory or matching glob")
    processed, used = 0, set()
    for path in inputs.images:
        try:
            bgr = read_image_bgr(path)
        except ValueError as exc:
            report(f"skipped {path}: {exc}")
            continue
        instances, drawn = demo(bgr)
        target = _unique_output(out_dir, path.stem, ".png", used)
        cv2.imwrite(str(target), drawn)
        report(f"{path}: {demo.describe(instances)} -> {target}")
        processed += 1
    for path in inputs.videos:
        frames = _run_video(demo, path, _unique_output(out_dir, path.stem, ".mp4", used), report)
        processed += frames > 0
    return processed


def _run_video(demo: Demo, path: Path, target: Path, report: Callable[[str], None]) -> int:
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        report(f"skipped {path}: not a readable video")
        return 0
    fps = capture.get(cv2.CAP_PROP_FPS) or 10.0
    writer: Optional[cv2.VideoWriter] = None
    frames = detections = 0
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                break
            instances, drawn = demo(to_bgr8(frame))
            if writer is None:
                writer = cv2.VideoWriter(str(target), cv2.VideoWriter_fourcc(*"mp4v"), fps, (drawn.shape[1], drawn.shape[0]))
            writer.write(drawn)
            frames += 1
            detections += len(instances)
    finally:
        capture.release()
        if writer is not None:
            writer.release()
    if frames == 0:
        report(f"skipped {path}: no frames could be read")
    else:
        report(f"{path}: {frames} frames, {detections} detections in all -> {target}")
    return frames
