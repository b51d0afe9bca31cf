"""What a registered COCO-format dataset holds: images, instances per class, and the share of
instances in COCO's small / medium / large area ranges (the ranges AP by object size uses)."""
from __future__ import annotations

from collections import Counter
from typing import Dict, List

from detectron2.data import MetadataCatalog

from ..errors import UserError
from ..utils.markdown import markdown_table
from .datasets import check_registered, prepare_dataset, read_coco_json

# COCOeval's area ranges (pixels of the instance's segmentation area)
SMALL_MAX_AREA = 32**2
LARGE_MIN_AREA = 96**2


def dataset_statistics(name: str) -> Dict:
    """Counts from the dataset's COCO json (generated first for the toy sets)."""
    check_registered(name, "the command line")
    prepare_dataset(name)
    json_file = MetadataCatalog.get(name).get("json_file", None)
    if not json_file:
        raise UserError(f"dataset {name!r} has no COCO json file in its metadata; statistics need one")
    coco = read_coco_json(str(json_file))
    # instances as COCO's evaluation counts them: crowd regions are not instances
    instances = [a for a in coco.get("annotations", []) if not a.get("iscrowd", 0)]
    no_area = [a for a in instances if isinstance(a.get("area"), bool) or not isinstance(a.get("area"), (int, float))]
    if no_area:
        raise UserError(f"{json_file} (dataset {name!r}): {len(no_area)} annotation(s) without a numeric 'area' (the "
                        f"object sizes are COCO's areas), e.g. id {no_area[0].get('id')!r}")
    areas = [a["area"] for a in instances]
    names = {c["id"]: c["name"] for c in coco.get("categories", [])}
    # categories that share a name stay apart (the model learns one class per id): told apart by id
    shared = {n for n, count in Counter(names.values()).items() if count > 1}
    names = {i: f"{n} (id {i})" if n in shared else n for i, n in names.items()}
    per_class: Dict[str, int] = {n: 0 for n in names.values()}
    for a in instances:
        label = names.get(a.get("category_id"), f"category_id {a.get('category_id')!r} (not among its categories)")
        per_class[label] = per_class.get(label, 0) + 1
    n = len(areas)
    small = sum(a < SMALL_MAX_AREA for a in areas)
    large = sum(a > LARGE_MIN_AREA for a in areas)
    share = (lambda k: round(100.0 * k / n, 1)) if n else (lambda k: None)
    return {
        "dataset": name,
        "json_file": str(json_file),
        "images": len(coco.get("images", [])),
        "instances": n,
        "per_class": per_class,
        "small_pct": share(small),
        "medium_pct": share(n - small - large),
        "large_pct": share(large),
    }


def statistics_table(stats: List[Dict]) -> str:
    head = ["dataset", "images", "instances", "small %", "medium %", "large %", "per class"]
    return markdown_table(head, [[s["dataset"], s["images"], s["instances"], *(_share(s[k]) for k in ("small_pct", "medium_pct", "large_pct")),
                                  ", ".join(f"{k} {v}" for k, v in s["per_class"].items())] for s in stats])


def _share(pct):
    return "-" if pct is None else pct  # a dataset without instances has no shares


__all__ = ["dataset_statistics", "statistics_table"]
