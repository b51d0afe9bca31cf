"""Dataset registration (the embedded toy dataset) and the checks of registered datasets: names,
classes, files on disk, and what their annotations need from the config."""
from __future__ import annotations

import difflib
import functools
import json
import os
import re
import reprlib
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances

from ..errors import ConfigError, DatasetError
from ..utils.file_safety import normalized, not_a_file
from .toy import TOY_CLASSES, TOY_COLORS, TOY_SPLITS, default_toy_root, generate_toy_dataset

TOY_DATASETS = {f"toy_shapes_{split}": split for split in TOY_SPLITS}


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
        try:
            generate_toy_dataset(Path(meta.toy_root))
        except OSError as exc:
            raise DatasetError(
                f"the toy dataset cannot be written to {meta.toy_root}: {exc.strerror or exc} ({exc.filename}); "
                f"LAMBDA_DET_CACHE={os.environ.get('LAMBDA_DET_CACHE', '(unset: ~/.cache/lambda_det)')} must name a "
                "folder you can write to") from None
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


def register_coco_dataset(name: str, json_file: str, image_root: str) -> None:
    """A user's COCO-format dataset under ``name`` (Detectron2's ``register_coco_instances``), with
    its class names read from the json so that the config's class count can be checked before a run.
    Registering the same name with the same files again is a no-op."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]*", name) or ".." in name:
        # evaluations are written to OUTPUT_DIR/inference/<name>/: a path in the name would leave it
        raise DatasetError(f"dataset name {name!r}: use letters, digits, '_', '-' and '.' (it names a folder of results)")
    json_file, image_root = normalized(json_file), normalized(image_root)
    for path, what in ((json_file, "annotation file"), (image_root, "image folder")):
        if not os.path.exists(path):
            raise DatasetError(f"dataset {name!r}: its {what} {path} does not exist")
    if not os.path.isfile(json_file):  # a folder, or a pipe whose reading would wait for a writer
        raise DatasetError(f"dataset {name!r}: its annotation file {json_file} {not_a_file(Path(json_file))}")
    if not os.path.isdir(image_root):
        raise DatasetError(f"dataset {name!r}: its image folder {image_root} is a file, not a folder")
    meta = MetadataCatalog.get(name)
    if name in DatasetCatalog.list():
        if (meta.get("json_file"), meta.get("image_root")) == (str(json_file), str(image_root)):
            return
        raise DatasetError(f"dataset {name!r} is already registered (with {meta.get('json_file')}); choose another name")
    data = read_coco_json(str(json_file))
    if not data.get("categories"):
        raise DatasetError(f"dataset {name!r}: {json_file} lists no categories, so there is nothing to detect")
    register_coco_instances(name, {}, str(json_file), str(image_root))
    meta.thing_classes = [c["name"] for c in sorted(data.get("categories", []), key=lambda c: c["id"])]


def check_coco_files(name: str, *, masks: bool = False) -> Optional[bool]:
    """A registered COCO-format dataset whose json lists what is on disk and what Detectron2 reads:
    every image with its file present and its height and width, every annotation's category among its
    categories; with ``masks`` (a mask head) a segmentation on every annotation that is not a crowd.
    DatasetError names the file and the first offending entries (Detectron2 would fail on them in the
    middle of a run, or not at all). Returns whether it has an annotation that is not a crowd (None:
    not a json dataset), for ``check_trainable``."""
    meta = MetadataCatalog.get(name)
    json_file, image_root = meta.get("json_file", None), meta.get("image_root", None)
    if not json_file or not image_root:
        return None
    prepare_dataset(name)
    path = Path(json_file)
    problem, unsegmented, trainable = _coco_problem(str(path), str(image_root), path.stat().st_mtime_ns, path.stat().st_size)
    if not problem and masks and unsegmented:
        problem = (f"{json_file} has {len(unsegmented)} annotation(s) without a 'segmentation', which the mask head "
                   f"needs (crowd regions aside): ids {unsegmented[:3]}{' ...' if len(unsegmented) > 3 else ''}")
    if problem:
        raise DatasetError(f"dataset {name!r}: {problem}")
    return trainable


def check_trainable(names: Sequence[str], masks: bool) -> None:
    """``check_coco_files`` of the training datasets, and something to train on among them together
    (Detectron2 joins them, then drops the images without annotations)."""
    found = [check_coco_files(name, masks=masks) for name in names]
    if found and all(f is False for f in found):
        raise DatasetError(f"{'dataset' if len(names) == 1 else 'datasets'} {', '.join(map(repr, names))}: no annotations "
                           "(crowd regions aside), nothing to train on")


def _sized(image: dict) -> bool:
    return all(isinstance(image.get(key), int) and not isinstance(image.get(key), bool) and image[key] > 0
               for key in ("height", "width"))


@functools.lru_cache(maxsize=None)
def _coco_problem(json_file: str, image_root: str, mtime_ns: int, size: int) -> Tuple[Optional[str], List, bool]:
    """(what is wrong whatever the config, the ids of the annotations without a segmentation that are
    not crowds, whether any annotation is not a crowd), cached by the file's time and size: COCO's
    train json takes seconds to read."""
    data = read_coco_json(json_file)
    annotations = data.get("annotations", [])
    objects = [a for a in annotations if not a.get("iscrowd", 0)]
    unsegmented = [a.get("id") for a in objects if not a.get("segmentation")]
    categories = {c.get("id") for c in data.get("categories", [])}
    strays = [a for a in annotations if a.get("category_id") not in categories]
    if strays:
        shown = ", ".join(f"id {a.get('id')} (category_id {a.get('category_id')!r})" for a in strays[:3])
        return (f"{json_file} has {len(strays)} annotation(s) whose category_id is not among its categories "
                f"{sorted(categories)[:12]}: {shown}"), unsegmented, bool(objects)
    images = data.get("images", [])
    unnamed = [i.get("id") for i in images if not isinstance(i.get("file_name"), str) or not i["file_name"]]
    if unnamed:  # (LVIS's jsons name images by coco_url: Detectron2's LVIS loader reads those, its COCO loader not)
        return (f"{len(unnamed)} of the {len(images)} images that {json_file} lists have no 'file_name' (Detectron2's "
                f"COCO loader reads it): ids {unnamed[:3]}{' ...' if len(unnamed) > 3 else ''}"), unsegmented, bool(objects)
    unsized = [i.get("file_name", i.get("id")) for i in images if not _sized(i)]
    if unsized:
        return (f"{len(unsized)} of the {len(images)} images that {json_file} lists lack a 'height' and 'width' of "
                "positive integers (Detectron2's loader reads them): " + ", ".join(map(str, unsized[:3]))
                + (" ..." if len(unsized) > 3 else "")), unsegmented, bool(objects)
    missing = [i.get("file_name") for i in images if not os.path.isfile(os.path.join(image_root, str(i.get("file_name"))))]
    if missing:
        return (f"{len(missing)} of the {len(images)} images that {json_file} lists are not in {image_root}: "
                + ", ".join(map(str, missing[:3])) + (" ..." if len(missing) > 3 else "")), unsegmented, bool(objects)
    return None, unsegmented, bool(objects)


def read_coco_json(json_file: str) -> dict:
    """A COCO annotation file's contents, with the structure every reader here relies on: lists of
    objects for images, annotations and categories, every category with an id (ids that sort: numbers
    or strings, as Detectron2 sorts them) and a name. DatasetError names the file and what is wrong."""
    try:
        with open(json_file) as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"{json_file} cannot be read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{json_file} is not valid JSON ({exc.msg} at line {exc.lineno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DatasetError(f"{json_file} is not a COCO annotation file (no 'images' list)")
    for key in ("images", "annotations", "categories"):
        entries = data.get(key, [])
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise DatasetError(f"{json_file}: {key!r} must be a list of objects, got {type(entries).__name__} "
                               f"{reprlib.repr(entries)}")
    categories = data.get("categories", [])
    unnamed = [c for c in categories if c.get("id") is None or isinstance(c.get("id"), bool) or not isinstance(c.get("name"), str)]
    if unnamed:
        raise DatasetError(f"{json_file}: {len(unnamed)} of its categories lack an 'id' or a 'name', e.g. "
                           f"{reprlib.repr(unnamed[0])}")
    try:
        sorted(c["id"] for c in categories)
    except TypeError:
        raise DatasetError(f"{json_file}: its category ids do not sort (ids of mixed kinds: "
                           f"{sorted({type(c['id']).__name__ for c in categories})})") from None
    return data


def check_registered(name: str, what: str) -> None:
    """A dataset name that Detectron2 knows, or an error with the closest registered names."""
    registered = DatasetCatalog.list()
    if name not in registered:
        close = difflib.get_close_matches(name, registered, n=3)
        hint = f"; did you mean {close}?" if close else f"; registered: {sorted(registered)[:12]} ..."
        raise ConfigError(f"{what} names {name!r}, which is not a registered dataset{hint}")


def check_datasets(names: Iterable[str], key: str, num_classes: Optional[int], num_classes_key: str,
                   separator: str = " ") -> None:
    """Registered, and with as many classes as the model predicts (when the metadata says and the
    config sets ``num_classes``); ``num_classes_key`` and ``separator`` name the setting in the
    config's own syntax (``MODEL.ROI_HEADS.NUM_CLASSES 3``, ``model.roi_heads.num_classes=3``)."""
    for name in names:
        check_registered(name, key)
        classes = MetadataCatalog.get(name).get("thing_classes", None)
        if num_classes is not None and classes is not None and len(classes) != num_classes:
            raise ConfigError(
                f"{num_classes_key}={num_classes}, but dataset {name!r} ({key}) has {len(classes)} classes "
                f"({', '.join(classes[:6])}{' ...' if len(classes) > 6 else ''}): set "
                f"{num_classes_key}{separator}{len(classes)}"
            )


def model_num_classes(cfg) -> Tuple[Optional[int], str]:
    """The number of classes a yacs config's model predicts, and its key: RetinaNet keeps its own; a
    ProposalNetwork (proposals only) predicts none (None), whatever its unread key holds."""
    if cfg.MODEL.META_ARCHITECTURE == "RetinaNet":
        return cfg.MODEL.RETINANET.NUM_CLASSES, "MODEL.RETINANET.NUM_CLASSES"
    if cfg.MODEL.META_ARCHITECTURE == "ProposalNetwork":
        return None, "MODEL.ROI_HEADS.NUM_CLASSES"
    return cfg.MODEL.ROI_HEADS.NUM_CLASSES, "MODEL.ROI_HEADS.NUM_CLASSES"


def check_dataset_dicts(cfg, dataset_dicts: Sequence[dict], names: Sequence[str]) -> None:
    """What the loaded annotations need from the config: class ids in range, a usable mask format."""
    num_classes, key = model_num_classes(cfg)
    kinds = set()
    for record in dataset_dicts:
        for ann in record.get("annotations", ()):
            if num_classes is not None and not 0 <= ann["category_id"] < num_classes:
                raise ConfigError(
                    f"{record.get('file_name', 'an image')} of {list(names)} has an annotation of class "
                    f"{ann['category_id']}, outside {key}={num_classes}"
                )
            # crowd regions (COCO stores them as RLE) never reach the model: Detectron2's mapper drops them
            if cfg.MODEL.MASK_ON and "segmentation" in ann and not ann.get("iscrowd", 0):
                kinds.add("RLE" if isinstance(ann["segmentation"], dict) else "polygon")
    if cfg.MODEL.MASK_ON and cfg.INPUT.MASK_FORMAT == "polygon" and "RLE" in kinds:
        raise ConfigError(
            f"INPUT.MASK_FORMAT='polygon', but {list(names)} has RLE masks (of regions that are not crowds), which only "
            "'bitmask' can read: set INPUT.MASK_FORMAT bitmask"
        )
