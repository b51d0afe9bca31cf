"""Dataset registration: the embedded toy dataset, and checks for COCO-format files on disk."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json

from ..checks import UserError, check_registered
from .toy import TOY_CLASSES, TOY_COLORS, TOY_SPLITS, default_toy_root, generate_toy_dataset

TOY_DATASETS = {f"toy_shapes_{split}": split for split in TOY_SPLITS}


class DatasetError(UserError):
    """A registered dataset whose files are not where its registration says."""


def register_toy_datasets(root: Optional[Path] = None) -> None:
    """Register toy_shapes_train / toy_shapes_val; the files are generated when first loaded."""
    root = Path(root) if root is not None else default_toy_root()
    for name, split in TOY_DATASETS.items():
        if name in DatasetCatalog.list():
            continue
        json_file = root / "annotations" / f"instances_{split}.json"
        image_root = root / split

        def load(json_file=json_file, image_root=image_root, name=name):
            generate_toy_dataset(root)
            return load_coco_json(str(json_file), str(image_root), name)

        DatasetCatalog.register(name, load)
        MetadataCatalog.get(name).set(
            json_file=str(json_file),
            image_root=str(image_root),
            evaluator_type="coco",
            thing_classes=list(TOY_CLASSES),
            thing_colors=[tuple(c) for c in TOY_COLORS],
            toy_root=str(root),
        )


def prepare_dataset(name: str) -> None:
    """Make sure a registered dataset's files exist: generate the toy data, or explain what is missing.

    Raises DatasetError naming the expected paths (and, for COCO, how to obtain them).
    """
    check_registered(name, "the config")
    meta = MetadataCatalog.get(name)
    if name in TOY_DATASETS:
        generate_toy_dataset(Path(meta.toy_root))
        return
    expected = [p for p in (meta.get("json_file"), meta.get("image_root")) if p]
    missing = [p for p in expected if not os.path.exists(p)]
    if missing:
        hint = ""
        if name.startswith("coco_"):
            hint = (
                " Download COCO 2017 (train2017/val2017 images and annotations_trainval2017) from "
                "cocodataset.org and lay it out as $DETECTRON2_DATASETS/coco/{annotations,train2017,val2017}; "
                f"DETECTRON2_DATASETS is now {os.environ.get('DETECTRON2_DATASETS', 'unset (so ./datasets)')}."
            )
        raise DatasetError(f"dataset {name!r} is missing files: {', '.join(missing)}.{hint}")
