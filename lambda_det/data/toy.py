"""The embedded default dataset: seeded synthetic shapes in real COCO format, generated on first use.

Four classes of distinct geometry (circle, square, triangle, star) in varied colors (each class
its own hue band, random saturation and value) and textures (solid, stripes, noise) on varied backgrounds (flat, gradient, stripes, blurred clutter), drawn in
sequence so that later shapes occlude earlier ones (at most 30% of a shape is hidden by any
one other); masks are the visible parts. Object sizes are
log-uniform, so the areas spread over COCO's small (< 32^2), medium and large (> 96^2) ranges.

Files (not committed; under LAMBDA_DET_CACHE, default ~/.cache/lambda_det):

    toy_shapes_v5/{train,val}/NNNNNN.png
    toy_shapes_v5/annotations/instances_{train,val}.json   (COCO, RLE segmentations)
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_util

TOY_CLASSES = ["circle", "square", "triangle", "star"]
TOY_HUES = [0, 90, 180, 270]  # each class's hue band centre (degrees); the bands do not overlap
TOY_COLORS = [(230, 57, 70), (69, 123, 157), (42, 157, 143), (233, 196, 106)]  # RGB, for the Visualizer
TOY_SPLITS = {"train": 500, "val": 100}
TOY_VERSION = "toy_shapes_v5"
TOY_IMAGE_SIZE = 256
# Object "size" (side of the bounding square) in pixels, drawn log-uniformly.
TOY_SIZE_RANGE = (20.0, 280.0)


def default_toy_root() -> Path:
    cache = os.environ.get("LAMBDA_DET_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "lambda_det"))
    return Path(cache) / TOY_VERSION


def shape_mask(kind: str, center: Tuple[float, float], size: float, angle: float, image_size: Tuple[int, int]) -> np.ndarray:
    """A filled shape of class ``kind`` as a uint8 0/1 mask."""
    h, w = image_size
    canvas = np.zeros((h, w), dtype=np.uint8)
    cx, cy = center
    if kind == "circle":
        cv2.circle(canvas, (int(round(cx)), int(round(cy))), max(2, int(round(size / 2))), 1, thickness=-1, lineType=cv2.LINE_8)
        return canvas
    if kind == "square":
        radii, corners = [size / math.sqrt(2)] * 4, 4
    elif kind == "triangle":
        radii, corners = [size / math.sqrt(3)] * 3, 3
    elif kind == "star":
        radii, corners = [size / 2, size / 5] * 5, 10
    else:
        raise ValueError(f"unknown toy shape {kind!r}; classes are {TOY_CLASSES}")
    angles = angle + np.arange(corners) * 2 * math.pi / corners
    points = np.stack([cx + np.array(radii) * np.cos(angles), cy + np.array(radii) * np.sin(angles)], axis=1)
    cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1, lineType=cv2.LINE_8)
    return canvas


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    kind = rng.integers(4)
    base = rng.integers(0, 256, size=3).astype(np.float32)
    if kind == 0:  # flat with noise
        img = np.broadcast_to(base, (h, w, 3)).copy()
    elif kind == 1:  # linear gradient between two colors
        other = rng.integers(0, 256, size=3).astype(np.float32)
        t = np.linspace(0, 1, w if rng.random() < 0.5 else h, dtype=np.float32)
        ramp = t[None, :, None] if t.shape[0] == w else t[:, None, None]
        img = np.broadcast_to(base * (1 - ramp) + other * ramp, (h, w, 3)).copy()
    elif kind == 2:  # stripes
        other = rng.integers(0, 256, size=3).astype(np.float32)
        period = rng.integers(6, 30)
        yy, xx = np.mgrid[0:h, 0:w]
        stripes = ((xx * math.cos(rng.random() * math.pi) + yy * math.sin(rng.random() * math.pi)) // period) % 2
        img = np.where(stripes[..., None] == 1, other, base).astype(np.float32)
    else:  # blurred clutter: ellipses and lines that are not objects
        img = np.broadcast_to(base, (h, w, 3)).copy()
        for _ in range(rng.integers(2, 6)):
            color = rng.integers(0, 256, size=3).tolist()
            if rng.random() < 0.5:
                axes = (int(rng.integers(5, 40)), int(rng.integers(2, 12)))
                cv2.ellipse(img, (int(rng.integers(w)), int(rng.integers(h))), axes, float(rng.integers(180)), 0, 360, color, -1)
            else:
                cv2.line(img, (int(rng.integers(w)), int(rng.integers(h))), (int(rng.integers(w)), int(rng.integers(h))), color, int(rng.integers(1, 4)))
        img = cv2.GaussianBlur(img, (0, 0), 4)
    img += rng.normal(0, rng.uniform(2, 6), size=img.shape).astype(np.float32)
    return img


def class_color(rng: np.random.Generator, kind: int) -> np.ndarray:
    """An RGB color from the class's hue band (+-20 degrees around its own hue) with random
    saturation and value: colors vary widely, and hint at the class without deciding it."""
    hue = (TOY_HUES[kind] + rng.uniform(-20, 20)) % 360
    hsv = np.uint8([[[hue / 2, rng.integers(120, 256), rng.integers(120, 256)]]])  # OpenCV: H in [0, 180)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _paint(rng: np.random.Generator, img: np.ndarray, mask: np.ndarray, kind: int) -> None:
    """Fill the mask with a color of the class's hue band and a random texture (in place)."""
    h, w = mask.shape
    color = class_color(rng, kind)
    texture = rng.integers(3)
    if texture == 0:
        fill = np.broadcast_to(color, (h, w, 3))
    elif texture == 1:
        other = np.clip(color + rng.normal(0, 60, size=3), 0, 255).astype(np.float32)
        period = rng.integers(3, 10)
        yy, xx = np.mgrid[0:h, 0:w]
        fill = np.where((((xx + yy) // period) % 2 == 1)[..., None], other, color)
    else:
        fill = color + rng.normal(0, 25, size=(h, w, 3)).astype(np.float32)
    sel = mask.astype(bool)
    img[sel] = fill[sel]


def render_toy_image(rng: np.random.Generator, image_size: int = TOY_IMAGE_SIZE) -> Tuple[np.ndarray, List[Dict]]:
    """One RGB uint8 image and its visible instances [{"category_id", "mask"}]."""
    h = w = image_size
    img = _background(rng, h, w)
    placed: List[Tuple[int, np.ndarray, int]] = []  # (class index, visible mask, full area)
    lo, hi = np.log(TOY_SIZE_RANGE[0]), np.log(TOY_SIZE_RANGE[1])
    for _ in range(rng.integers(2, 6)):
        kind = int(rng.integers(len(TOY_CLASSES)))
        for _attempt in range(10):
            size = float(np.exp(rng.uniform(lo, hi)))
            margin = size / 6  # shapes may leave the image a little
            center = (rng.uniform(-margin, w + margin - 1), rng.uniform(-margin, h + margin - 1))
            mask = shape_mask(TOY_CLASSES[kind], center, size, rng.uniform(0, 2 * math.pi), (h, w))
            area = int(mask.sum())
            # occlusion, but moderate: no placement that hides over 30% of a shape (or of itself)
            if area >= 20 and all(int((m & mask).sum()) <= 0.3 * min(a, area) for _, m, a in placed):
                break
        else:
            continue
        _paint(rng, img, mask, kind)
        placed = [(k, m & (1 - mask), a) for k, m, a in placed]  # the new shape occludes the earlier ones
        placed.append((kind, mask, area))
    # shapes occluded beyond recognition (less than a quarter visible) are not annotated
    instances = [
        {"category_id": kind + 1, "mask": mask}
        for kind, mask, full_area in placed
        if mask.sum() >= max(20, full_area // 4)
    ]
    return np.clip(img, 0, 255).astype(np.uint8), instances


def generate_toy_dataset(root: Optional[Path] = None, splits: Optional[Dict[str, int]] = None, seed: int = 0) -> Path:
    """Write the dataset under ``root`` unless it is already there (a stamp file records its recipe)."""
    root = Path(root) if root is not None else default_toy_root()
    splits = dict(splits or TOY_SPLITS)
    stamp = root / "complete.json"
    # everything the images depend on: a changed recipe regenerates instead of reusing stale files
    recipe = {"version": TOY_VERSION, "splits": splits, "seed": seed, "image_size": TOY_IMAGE_SIZE, "size_range": list(TOY_SIZE_RANGE)}
    if stamp.exists() and json.loads(stamp.read_text()) == recipe:
        return root
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    categories = [{"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(TOY_CLASSES)]
    for split_index, (split, count) in enumerate(sorted(splits.items())):
        rng = np.random.default_rng([seed, split_index])
        (root / split).mkdir(exist_ok=True)
        images, annotations = [], []
        for image_id in range(1, count + 1):
            img, instances = render_toy_image(rng)
            file_name = f"{image_id:06d}.png"
            cv2.imwrite(str(root / split / file_name), img[:, :, ::-1])
            images.append({"id": image_id, "file_name": file_name, "height": img.shape[0], "width": img.shape[1]})
            for inst in instances:
                rle = mask_util.encode(np.asfortranarray(inst["mask"]))
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": inst["category_id"],
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                        "area": float(mask_util.area(rle)),
                        "bbox": [float(v) for v in mask_util.toBbox(rle)],
                        "iscrowd": 0,
                    }
                )
        coco = {
            "info": {"description": f"lambda_det toy shapes ({TOY_VERSION}), split {split}, seed {seed}"},
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        tmp = root / "annotations" / f"instances_{split}.json.tmp"
        tmp.write_text(json.dumps(coco))
        tmp.replace(root / "annotations" / f"instances_{split}.json")
    stamp.write_text(json.dumps(recipe))
    return root
