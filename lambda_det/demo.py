"""Inference demo: images, globs, directories and videos in; pictures with masks, boxes, class names
and scores (Detectron2's Visualizer) out. Used by tools/demo.py and the main job.

Images are read as Detectron2's dataset loading reads them (``detection_utils.read_image``: EXIF
orientation applied), so the demo sees what training and evaluation see. The user's files are
safe: an output folder that is an input folder or an existing file is refused, pictures of an
earlier run are not replaced without ``overwrite``, the output folder is never scanned as input,
and every write is checked.
"""
from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import cv2
import detectron2.data.transforms as T
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.detection_utils import _apply_exif_orientation, convert_PIL_to_numpy
from detectron2.engine import DefaultPredictor
from detectron2.utils.visualizer import ColorMode, Visualizer
from omegaconf import DictConfig, OmegaConf
from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from .checkpoint import Checkpointer
from .data import model_num_classes
from .engine.lazy import (LAZY_KEYS, TEST_MAPPER, box_predictor_keys, build_lazy_model, dataset_names, inference_augmentations,
                          inference_resize_problems)
from .engine.preflight import ConfigProblems, explained_build_errors
from .errors import ConfigError, OutputError, WeightsError
from .utils.file_safety import (
    ensure_writable_dir, file_sha256, imwrite, normalized, not_a_file, refuse_file, refuse_overwrite, same_file, temporary_path,
    write_text,
)

logger = logging.getLogger("lambda_det")

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_EXTENSIONS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}


@dataclass
class Inputs:
    images: List[Path] = field(default_factory=list)
    videos: List[Path] = field(default_factory=list)
    not_found: List[str] = field(default_factory=list)
    empty_dirs: List[Path] = field(default_factory=list)  # directories without images or videos
    directories: List[Path] = field(default_factory=list)  # every directory named as input
    unreadable: List[Tuple[Path, str]] = field(default_factory=list)  # entries a scan could not read, and why


# In the output folder: the pictures the demo wrote there, by name and content hash. Only those are
# the demo's own; every other file a glob or folder scan finds is one of the user's inputs.
MANIFEST = ".lambda_det_demo.json"


def collect_inputs(patterns: Iterable[str], exclude: Optional[Path] = None) -> Inputs:
    """Expand files, globs and directories (images inside, recursively, through symbolic links) into
    images and videos.

    Whatever the user names is an input wherever it is, with one exception: pictures the demo
    itself wrote into ``exclude`` (the output folder; listed in its manifest, unchanged since) are
    left out of folder and glob scans, so a later run does not take them for inputs.
    """
    found = Inputs()
    seen = set()
    media = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS
    own = demo_pictures(Path(exclude)) if exclude is not None else set()

    def keep(p: Path) -> bool:
        return p.suffix.lower() in media and p.resolve() not in own

    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            found.directories.append(path)
            candidates = [p for p in _walk(path, found.unreadable) if keep(p)]
            if not candidates:
                found.empty_dirs.append(path)
        elif path.is_file():
            candidates = [path]
        elif glob.has_magic(pattern):
            candidates = [p for p in sorted(Path(p) for p in glob.glob(pattern, recursive=True)) if _is_file(p, found.unreadable) and keep(p)]
            if not candidates:
                found.not_found.append(pattern)
        elif path.exists():  # a pipe, socket or device: reading it would wait for a writer
            found.unreadable.append((path, not_a_file(path)))
            candidates = []
        else:
            found.not_found.append(pattern)
            candidates = []
        for candidate in candidates:
            if candidate.resolve() in seen:
                continue
            seen.add(candidate.resolve())
            (found.videos if candidate.suffix.lower() in VIDEO_EXTENSIONS else found.images).append(candidate)
    return found


def _walk(folder: Path, unreadable: List[Tuple[Path, str]]) -> List[Path]:
    """Files under a folder, sorted, following symbolic links to folders (each real folder once).

    A link to a folder that contains the scanned one (``/``, a parent) would scan it all again and
    is skipped, as are entries that cannot be read; both are listed in ``unreadable`` with the reason.
    """
    files, visited = [], set()
    top = os.path.realpath(folder)

    def failed(error: OSError) -> None:
        unreadable.append((Path(error.filename or folder), error.strerror or str(error)))

    for root, dirs, names in os.walk(folder, followlinks=True, onerror=failed):
        real = os.path.realpath(root)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        for name in list(dirs):
            link = Path(root) / name
            target = os.path.realpath(link)
            if link.is_symlink() and (top == target or top.startswith(target.rstrip(os.sep) + os.sep)):
                unreadable.append((link, f"a link to {target}, which holds the folder being scanned"))
                dirs.remove(name)
        dirs.sort()
        files += [Path(root) / n for n in names if _is_file(Path(root) / n, unreadable)]
    return sorted(files)


def _is_file(path: Path, unreadable: List[Tuple[Path, str]]) -> bool:
    try:
        return path.is_file()
    except OSError as exc:
        unreadable.append((path, exc.strerror or str(exc)))
        return False


def demo_pictures(out_dir: Path) -> set:
    """Resolved paths of the pictures the demo wrote into ``out_dir`` that are unchanged since."""
    try:
        written = json.loads((Path(out_dir) / MANIFEST).read_text())
    except (OSError, ValueError):
        return set()
    own = set()
    for name, digest in written.items() if isinstance(written, dict) else ():
        path = Path(out_dir) / str(name)
        if path.parent == Path(out_dir) and path.is_file() and file_sha256(path) == digest:
            own.add(path.resolve())
    return own


def _record_pictures(out_dir: Path, written: List[Path]) -> None:
    try:
        listed = json.loads((out_dir / MANIFEST).read_text())
    except (OSError, ValueError):
        listed = {}
    listed = listed if isinstance(listed, dict) else {}
    listed.update({path.name: file_sha256(path) for path in written})
    write_text(out_dir / MANIFEST, json.dumps(listed, indent=1, sort_keys=True))


def to_bgr8(image: np.ndarray) -> np.ndarray:
    """Any decoded image -> 8-bit, 3-channel BGR: grayscale replicated, alpha dropped,
    16-bit scaled by 1/257 (full range to full range), float taken as 0..1 when it fits there."""
    if image.dtype == np.uint16:
        image = (image.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif image.dtype in (np.int32, np.uint32):  # PIL's mode "I" holds 16-bit data
        image = (np.clip(image, 0, 65535).astype(np.float32) / 257.0).round().astype(np.uint8)
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


# The demo draws each picture at its own size, and drawing takes many times the decoded bytes in memory:
# larger images are scaled down to this many pixels first (detections come from the test-time resize anyway).
MAX_PIXELS = 4096 * 4096


def read_image_bgr(path: Path) -> np.ndarray:
    """The image as Detectron2's ``read_image(path, "BGR")`` gives it (EXIF orientation applied), but for
    PIL's 16-bit and float modes: scaled to 8 bits here, where Detectron2's ``convert("RGB")`` clips them
    at 255 (so training and evaluation on such images see them mostly white)."""
    return read_image_within(path)[0]


def read_image_within(path: Path, max_pixels: Optional[int] = None) -> Tuple[np.ndarray, Tuple[int, int]]:
    """(``read_image_bgr``'s image, scaled down to at most ``max_pixels`` pixels, (width, height) before)."""
    try:
        with Image.open(path) as image:
            width, height = image.size
            if max_pixels and width * height > max_pixels:
                scale = math.sqrt(max_pixels / (width * height))
                size = (max(1, int(width * scale)), max(1, int(height * scale)))
                image.draft("RGB", size)  # JPEG decodes at a fraction of its size instead of in full
                image = image.resize(size, Image.BILINEAR)
            unrotated = image.size
            image = _apply_exif_orientation(image)
            original = (width, height) if image.size == unrotated else (height, width)
            if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                return to_bgr8(np.asarray(image)), original
            return np.ascontiguousarray(convert_PIL_to_numpy(image, "BGR")), original
    except Image.DecompressionBombError as exc:
        raise ValueError(f"too large to read safely ({exc}); Detectron2's loading refuses it too") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ValueError(f"not a readable image ({type(exc).__name__})") from None


@contextlib.contextmanager
def _quiet(*names: str):
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


# Detectron2's Visualizer writes labels of at least 10 pixels at the image's own scale: on a
# 256-pixel image the labels of neighbouring objects cover each other, so small images are drawn larger.
MIN_DRAWN_SIDE = 640


def drawing_scale(shape: Tuple[int, int]) -> float:
    """The Visualizer's scale for an image of ``shape`` (h, w): 1, or more for small images."""
    return max(1.0, MIN_DRAWN_SIDE / max(shape))


def class_names(cfg) -> Tuple[object, Optional[str]]:
    """(the metadata whose thing_classes label the detections, a note when the labels are class numbers
    instead): the test dataset's, as Detectron2's demo takes them (DATASETS.TEST[0], else
    DATASETS.TRAIN[0]; a LazyConfig's dataloader.test.dataset.names, else dataloader.train's), when it
    is registered here and names as many classes as the model predicts; names of another dataset (a
    model trained on one's own data, drawn with the toy config's test set) would be wrong."""
    if isinstance(cfg, DictConfig):
        names = (dataset_names(OmegaConf.select(cfg, LAZY_KEYS.test, default=None))
                 or dataset_names(OmegaConf.select(cfg, "dataloader.train.dataset.names", default=None)))
        # RetinaNet keeps its class count in the model itself
        count = OmegaConf.select(cfg, LAZY_KEYS.num_classes, default=None) or OmegaConf.select(cfg, "model.num_classes", default=None)
        test_key, name_it = LAZY_KEYS.test, f"--opts {LAZY_KEYS.test}=NAME"
    else:
        names, count = list(cfg.DATASETS.TEST) or list(cfg.DATASETS.TRAIN), model_num_classes(cfg)[0]
        test_key, name_it = "DATASETS.TEST", "--opts DATASETS.TEST \"('NAME',)\""
    numbers = MetadataCatalog.get("__unused")
    if not names:
        return numbers, f"the config names no dataset ({test_key}): detections are labelled by class number"
    name = names[0]
    if name not in DatasetCatalog.list():
        return numbers, (f"the config's dataset {name!r} is not registered here: detections are labelled by class number "
                         f"(--dataset {name} JSON IMAGES gives its class names)")
    classes = MetadataCatalog.get(name).get("thing_classes", None)
    if classes is None or len(classes) != count:
        have = "no class names" if classes is None else f"{len(classes)} classes"
        return numbers, (f"the config's dataset {name!r} has {have}, the model {count}: detections are labelled by class "
                         f"number (name the model's dataset: --dataset NAME JSON IMAGES {name_it})")
    return MetadataCatalog.get(name), None


class LazyPredictor:
    """Detectron2's DefaultPredictor for a model built from a LazyConfig, which DefaultPredictor cannot
    read: one BGR image in, turned into the model's input format and resized by dataloader.test's
    augmentations (the test resize, as evaluation has it); the predictions for that image at its size."""

    def __init__(self, model, augmentations: List[T.Augmentation], input_format: str) -> None:
        self.model = model.eval()
        self.aug = T.AugmentationList(augmentations)
        self.input_format = input_format

    def __call__(self, original_image: np.ndarray) -> dict:
        with torch.no_grad():
            if self.input_format == "RGB":
                original_image = original_image[:, :, ::-1]
            height, width = original_image.shape[:2]
            resized = T.AugInput(original_image)
            self.aug(resized)
            image = torch.as_tensor(resized.image.astype("float32").transpose(2, 0, 1))
            return self.model([{"image": image, "height": height, "width": width}])[0]


def score_threshold_keys(cfg: DictConfig) -> List[str]:
    """Where a LazyConfig's detector keeps the least score it reports (MODEL.ROI_HEADS.SCORE_THRESH_TEST of
    a yacs config)."""
    return [f"{node}.test_score_thresh" for node in box_predictor_keys(cfg, "the demo sets --confidence-threshold")]


def set_score_threshold(cfg: DictConfig, threshold: float) -> None:
    for key in score_threshold_keys(cfg):
        OmegaConf.update(cfg, key, threshold, merge=False)


class Demo:
    """A predictor whose weights must fit the config (a yacs config or a LazyConfig), plus Detectron2's
    Visualizer; ``notes``: what the user should know of how the pictures are made (class numbers for
    labels, no test resize)."""

    def __init__(self, cfg) -> None:
        if isinstance(cfg, DictConfig):
            self._build_lazy(cfg)
            return
        if not cfg.MODEL.WEIGHTS:
            raise WeightsError("the demo needs trained weights: add `--opts MODEL.WEIGHTS path/to/model_final.pth`")
        if cfg.INPUT.FORMAT not in ("BGR", "RGB"):
            raise ConfigError(f"INPUT.FORMAT={cfg.INPUT.FORMAT!r}: the demo's predictor takes 'BGR' or 'RGB' models")
        unloaded = cfg.clone()
        unloaded.defrost()
        unloaded.MODEL.WEIGHTS = ""
        with _quiet("fvcore.common.checkpoint", "detectron2.checkpoint.detection_checkpoint"), explained_build_errors(cfg):
            self.predictor = DefaultPredictor(unloaded)
        # the whole model must come from the file: a partial load would draw a half-random model's guesses
        Checkpointer(self.predictor.model, strict=True, cfg=cfg).load(cfg.MODEL.WEIGHTS)
        self.metadata, label_note = class_names(cfg)
        self.notes = [label_note] if label_note else []
        self.threshold = cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST
        self.resizes = [(self.predictor.aug, "INPUT.MIN_SIZE_TEST={short}, MAX_SIZE_TEST={longest}")]

    def _build_lazy(self, cfg: DictConfig) -> None:
        """The model of cfg.model on train.device, with the weights of train.init_checkpoint; images as
        evaluation reads them: dataloader.test's mapper's image format and augmentations."""
        weights = OmegaConf.select(cfg, LAZY_KEYS.weights, default=None)
        if not weights:
            raise WeightsError(f"the demo needs trained weights: add `--opts {LAZY_KEYS.weights}=path/to/model_final.pth`")
        weights = normalized(weights)  # "~/x" in a config or quoted on the command line: no shell expands it
        problems = ConfigProblems(cfg)
        device = OmegaConf.select(cfg, "train.device", default="cpu")
        if OmegaConf.select(cfg, "train.device", default=None) is not None:
            problems.device("train.device")
        format_key = (f"{TEST_MAPPER}.image_format" if OmegaConf.select(cfg, f"{TEST_MAPPER}.image_format", default=None)
                      else "model.input_format")
        if OmegaConf.select(cfg, format_key, default="BGR") not in ("BGR", "RGB"):
            problems.add(format_key, "the demo's predictor takes 'BGR' or 'RGB' models")
        augmentations = inference_augmentations(cfg)
        problems.lines += inference_resize_problems(cfg, augmentations)
        self.resizes = [(aug, f"{TEST_MAPPER}.augmentations.{i}: short_edge_length={{short}}, max_size={{longest}}")
                        for i, aug in enumerate(augmentations) if isinstance(aug, T.ResizeShortestEdge)]
        ConfigError.check(problems.lines)
        model = build_lazy_model(cfg).to(device)
        Checkpointer(model, strict=True, cfg=cfg).load(weights)
        self.predictor = LazyPredictor(model, augmentations, OmegaConf.select(cfg, format_key, default="BGR"))
        self.metadata, label_note = class_names(cfg)
        self.notes = [label_note] if label_note else []
        self.threshold = OmegaConf.select(cfg, score_threshold_keys(cfg)[0], default=0.0)  # its callable's default
        if not self.resizes:
            self.notes.append(f"{TEST_MAPPER}.augmentations has no test resize (ResizeShortestEdge): images go to the model "
                              "at their own size")

    def check_size(self, bgr: np.ndarray) -> None:
        """ValueError for an image the test-time resize would shrink to nothing (e.g. 2 x 3000 pixels)."""
        h, w = bgr.shape[:2]
        for resize, keys in self.resizes:
            short, longest = min(resize.short_edge_length), resize.max_size
            if not short:  # 0: no resize at test time (Detectron2's convention)
                continue
            h, w = T.ResizeShortestEdge.get_output_shape(h, w, short, longest)
            if min(h, w) < 1:
                raise ValueError(f"{bgr.shape[1]}x{bgr.shape[0]} pixels is too thin: the test-time resize "
                                 f"({keys.format(short=short, longest=longest)}) leaves {w}x{h}")

    def __call__(self, bgr: np.ndarray) -> Tuple[object, np.ndarray]:
        """(instances on the CPU, visualization as BGR uint8, enlarged when the image is small)."""
        instances = self.predictor(bgr)["instances"].to("cpu")
        visualizer = Visualizer(bgr[:, :, ::-1], self.metadata, instance_mode=ColorMode.IMAGE,
                                scale=drawing_scale(bgr.shape[:2]))
        drawn = visualizer.draw_instance_predictions(instances).get_image()[:, :, ::-1]
        return instances, np.ascontiguousarray(drawn)

    def describe(self, instances) -> str:
        if len(instances) == 0:
            return f"no detections above score {self.threshold:.2f}"
        classes = self.metadata.get("thing_classes", None)
        labels = [classes[c] if classes and c < len(classes) else str(c) for c in instances.pred_classes.tolist()]
        counts = {label: labels.count(label) for label in sorted(set(labels))}
        return f"{len(instances)} detections (" + ", ".join(f"{n} {label}" for label, n in counts.items()) + ")"


def plan_outputs(inputs: Inputs, out_dir: Path) -> List[Tuple[Path, Path]]:
    """(input, output file) for every input: <stem>.png per image, <stem>.mp4 per video.

    Inputs that share a stem are told apart by their extension, then by their folder, then by a
    number: the names depend on the inputs, not on their order.
    """
    items = [(p, ".png") for p in inputs.images] + [(p, ".mp4") for p in inputs.videos]

    def name(path: Path, suffix: str, level: int) -> str:
        parts = [path.stem]
        if level >= 1:
            parts.append(path.suffix.lstrip(".").lower())
        if level >= 2:
            parts.insert(0, path.resolve().parent.name)
        return "_".join(p for p in parts if p) + suffix

    names = {}
    for level in range(3):
        counts: Dict[str, int] = {}
        for path, suffix in items:
            key = names.get(path) or name(path, suffix, level)
            counts[key] = counts.get(key, 0) + 1
        for path, suffix in items:
            candidate = name(path, suffix, level)
            if path not in names and counts.get(candidate, 0) == 1:
                names[path] = candidate
        if len(names) == len(items):
            break
    used = set(names.values())
    plan = []
    for path, suffix in items:
        if path not in names:  # same folder name, stem and extension: number them
            base, i = name(path, suffix, 2)[: -len(suffix)], 1
            while f"{base}_{i}{suffix}" in used:
                i += 1
            names[path] = f"{base}_{i}{suffix}"
            used.add(names[path])
        plan.append((path, out_dir / names[path]))
    return plan


def check_outputs(inputs: Inputs, plan: List[Tuple[Path, Path]], out_dir: Path, overwrite: bool, flag: str = "--output",
                  replace_own: bool = False) -> None:
    """Refuse, before any work, an output folder that holds the user's inputs or pictures that would
    replace an input or (unless ``overwrite``) an existing file; ``replace_own``: the demo's own
    earlier pictures (its manifest) may be replaced, nothing else."""
    refuse_file(out_dir, flag)
    out_resolved = Path(out_dir).resolve()
    for directory in inputs.directories:
        if out_resolved == directory.resolve():
            raise OutputError(
                f"{flag} {out_dir} is the input folder {directory}: the pictures would mix with (and could replace) "
                f"your images, and a later run would take them for inputs. Choose another folder, e.g. {directory / 'detections'}"
            )
    for path, _ in plan:
        if path.resolve().parent == out_resolved:
            raise OutputError(
                f"{flag} {out_dir} holds the input {path}: the pictures would mix with your files there. "
                f"Choose another folder, e.g. {Path(out_dir) / 'detections'}"
            )
    for path, target in plan:
        if target.exists() and not target.is_file():  # no flag could let a picture replace a folder
            raise OutputError(f"{flag} {out_dir}: the picture of {path} would be written to {target}, which "
                              f"{not_a_file(target)}; nothing was written: move it away or choose "
                              "another folder")
        for other, _ in plan:
            if target.exists() and same_file(target, other):
                raise OutputError(f"{flag} {out_dir}: writing {target} would overwrite the input {other} (the same file)")
    own = demo_pictures(out_dir)
    theirs = [target for _, target in plan if target.exists() and target.resolve() not in own]
    if theirs and overwrite:
        raise OutputError(
            f"{flag} {out_dir}: {', '.join(map(str, theirs[:4]))} would be replaced, and the demo did not draw "
            f"{'it' if len(theirs) == 1 else 'them'} (--overwrite replaces only pictures listed in {MANIFEST}); "
            "nothing was written: move them away or choose another folder")
    if not overwrite:
        refuse_overwrite([t for _, t in plan if t.exists() and not (replace_own and t.resolve() in own)], flag,
                         "that already exist")


def run_demo(
    demo: Demo, inputs: Inputs, out_dir: Path, report: Callable[[str], None] = print, overwrite: bool = False,
    replace_own: bool = False,
) -> int:
    """Process every input, write pictures / videos under ``out_dir``; return how many were processed.

    Raises OutputError before any work when the output would lose data, and as soon as a write fails.
    """
    out_dir = Path(out_dir)
    plan = plan_outputs(inputs, out_dir)
    check_outputs(inputs, plan, out_dir, overwrite, replace_own=replace_own)
    for pattern in inputs.not_found:
        report(f"skipped {pattern}: no such file, directory or matching glob")
    for directory in inputs.empty_dirs:
        report(f"skipped {directory}: no images or videos in it; looked for {', '.join(sorted(IMAGE_EXTENSIONS | VIDEO_EXTENSIONS))}")
    for entry, reason in inputs.unreadable:
        report(f"skipped {entry}: {reason}")
    if not plan:
        return 0
    ensure_writable_dir(out_dir, "--output")
    written: List[Path] = []
    try:
        for index, (path, target) in enumerate(plan, start=1):
            progress = f"[{index}/{len(plan)}] " if len(plan) > 1 else ""
            if path.suffix.lower() in VIDEO_EXTENSIONS:
                if _run_video(demo, path, target, lambda line: report(progress + line)):
                    written.append(target)
                continue
            try:
                bgr, original = read_image_within(path, MAX_PIXELS)
                demo.check_size(bgr)
            except ValueError as exc:
                report(f"{progress}skipped {path}: {exc}")
                continue
            instances, drawn = demo(bgr)
            imwrite(target, drawn)
            written.append(target)
            scaled = "" if original == bgr.shape[1::-1] else (
                f" (drawn at {bgr.shape[1]}x{bgr.shape[0]}: {original[0]}x{original[1]} is over the demo's "
                f"{MAX_PIXELS / 1e6:.1f}-megapixel budget)")
            report(f"{progress}{path}: {demo.describe(instances)} -> {target}{scaled}")
    finally:
        if written:
            _record_pictures(out_dir, written)
    return len(written)


@contextlib.contextmanager
def _decoder_messages(lines: List[str]):
    """Collect what the video decoder (FFmpeg, inside OpenCV) writes straight to the process's
    stderr: a damaged file makes it print a line per broken packet."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines += sink.read().decode(errors="replace").splitlines()


def _run_video(demo: Demo, path: Path, target: Path, report: Callable[[str], None]) -> int:
    """Draw every frame of a video into ``target`` (mp4v); the number of frames written (0: skipped)."""
    noise: List[str] = []
    with _decoder_messages(noise):
        capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        report(f"skipped {path}: not a readable video")
        return 0
    fps = capture.get(cv2.CAP_PROP_FPS) or 10.0
    announced = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    partial = temporary_path(target)
    writer: Optional[cv2.VideoWriter] = None
    frames = detections = 0
    # a bar on a terminal, as Detectron2's demo shows one (tqdm stays silent when stderr is a file)
    bar = tqdm(total=announced if announced > 0 else None, unit="frame", desc=path.name, disable=None, leave=False)
    try:
        while True:
            with _decoder_messages(noise):
                ok, frame = capture.read()
            if not ok:
                break
            bar.update(1)
            instances, drawn = demo(to_bgr8(frame))
            if writer is None:
                writer = cv2.VideoWriter(str(partial), cv2.VideoWriter_fourcc(*"mp4v"), fps, (drawn.shape[1], drawn.shape[0]))
                if not writer.isOpened():
                    raise OutputError(f"could not write video {target}: OpenCV could not open it for writing (mp4v)")
            writer.write(drawn)
            frames += 1
            detections += len(instances)
        if writer is not None:
            writer.release()
        if frames == 0:
            partial.unlink(missing_ok=True)
            report(f"skipped {path}: no frames could be read" + _damage(announced, frames, noise))
            return 0
        # OpenCV's writer reports no failure (e.g. a full disk leaves a file without its index):
        # the video counts as written when it reads back with every frame
        check = cv2.VideoCapture(str(partial))
        readable = check.isOpened() and int(check.get(cv2.CAP_PROP_FRAME_COUNT)) == frames
        check.release()
        if not readable:
            raise OutputError(f"could not write video {target}: the file OpenCV wrote does not read back with its "
                              f"{frames} frames (disk full?)")
        os.replace(partial, target)
    except BaseException:
        if writer is not None:
            writer.release()
        partial.unlink(missing_ok=True)
        raise
    finally:
        bar.close()
        capture.release()
    report(f"{path}: {frames} frames, {detections} detections in all -> {target}" + _damage(announced, frames, noise))
    return frames


def _damage(announced: int, frames: int, noise: List[str]) -> str:
    """What a partly readable video lost, in words (the decoder's own messages go to the log)."""
    for line in noise:
        logger.debug("video decoder: %s", line)
    text = ""
    if announced > frames:
        text += f"; read {frames} of the {announced} frames its header announces (the file is damaged or cut off)"
    if noise:
        text += f"; the decoder reported {len(noise)} problem(s)"
    return text
