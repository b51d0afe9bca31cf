"""AP by object size: our figures against pycocotools run directly on the same saved predictions."""
from __future__ import annotations

import copy
import json
import uuid

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import Boxes, Instances
from pycocotools import mask as mask_util
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import TINY, TOY_CONFIG, run_tool, save_tiny_weights, small_cfg
from lambda_det.errors import UserError
from lambda_det.data import TOY_CLASSES, generate_toy_dataset
from lambda_det.evaluation import PAPER_TABLE6, build_coco_evaluator, compare, load_ap_by_size, write_ap_by_size

METRIC_ORDER = ["AP", "AP50", "AP75", "APs", "APm", "APl"]  # COCOeval.stats[0:6]


@pytest.fixture(scope="module")
def toy_eval_dataset(tmp_path_factory):
    root = generate_toy_dataset(tmp_path_factory.mktemp("toy"), splits={"val": 24}, seed=3)
    name = f"toy_eval_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {"thing_classes": list(TOY_CLASSES)}, str(root / "annotations/instances_val.json"), str(root / "val"))
    yield name, root
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _noisy_predictions(dataset_dicts, rng, perfect=False):
    """Predictions derived from the ground truth: jittered, some missed, some wrong, some invented."""
    outputs = []
    for record in dataset_dicts:
        h, w = record["height"], record["width"]
        boxes, masks, classes, scores = [], [], [], []
        for ann in record["annotations"]:
            if not perfect and rng.random() < 0.15:
                continue  # missed
            x, y, bw, bh = ann["bbox"]  # detectron2 loads XYWH_ABS for COCO
            m = mask_util.decode(ann["segmentation"]).astype(bool)
            if not perfect:
                shift = rng.integers(-2, 3, size=2)
                m = np.roll(m, tuple(shift), axis=(0, 1))
                x, y = x + shift[1] + rng.normal(0, 1.5), y + shift[0] + rng.normal(0, 1.5)
                bw, bh = bw * rng.uniform(0.9, 1.1), bh * rng.uniform(0.9, 1.1)
            boxes.append([x, y, x + bw, y + bh])
            masks.append(m)
            wrong = not perfect and rng.random() < 0.1
            classes.append((ann["category_id"] + 1) % len(TOY_CLASSES) if wrong else ann["category_id"])
            scores.append(1.0 if perfect else rng.uniform(0.3, 1.0))
        if not perfect:
            for _ in range(rng.integers(0, 3)):  # false positives
                x0, y0 = rng.uniform(0, w - 40), rng.uniform(0, h - 40)
                s = rng.uniform(8, 40)
                m = np.zeros((h, w), dtype=bool)
                m[int(y0) : int(y0 + s), int(x0) : int(x0 + s)] = True
                boxes.append([x0, y0, x0 + s, y0 + s])
                masks.append(m)
                classes.append(int(rng.integers(len(TOY_CLASSES))))
                scores.append(rng.uniform(0.05, 0.6))
        inst = Instances((h, w))
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.pred_masks = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, h, w, dtype=torch.bool)
        inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
        inst.scores = torch.tensor(scores, dtype=torch.float32)
        outputs.append({"instances": inst})
    return outputs


def _evaluate(name, tmp_path, perfect=False):
    cfg = small_cfg()
    evaluator = build_coco_evaluator(cfg, name, str(tmp_path))
    evaluator.reset()
    dicts = DatasetCatalog.get(name)
    outputs = _noisy_predictions(dicts, np.random.default_rng(0), perfect=perfect)
    for record, output in zip(dicts, outputs):
        evaluator.process([{"image_id": record["image_id"], "height": record["height"], "width": record["width"]}], [output])
    return evaluator.evaluate()


def test_ap_by_size_equals_pycocotools_on_the_saved_predictions(toy_eval_dataset, tmp_path):
    name, root = toy_eval_dataset
    results = _evaluate(name, tmp_path)
    paths = write_ap_by_size(results, tmp_path, "noisy")
    ours = json.loads(paths["json"].read_text())
    gt = COCO(str(root / "annotations" / "instances_val.json"))
    saved = json.loads((tmp_path / "coco_instances_results.json").read_text())
    assert len(saved) > 50
    for iou_type in ("bbox", "segm"):
        dets = copy.deepcopy(saved)
        if iou_type == "segm":
            for d in dets:
                d.pop("bbox")  # mask AP classifies sizes by mask area, as COCO defines it
        ev = COCOeval(gt, gt.loadRes(dets), iou_type)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        for i, metric in enumerate(METRIC_ORDER):
            assert ours[iou_type][metric] == pytest.approx(100 * ev.stats[i], abs=1e-6), (iou_type, metric)
        assert 5 < ours[iou_type]["AP"] < 95  # noisy: neither zero nor perfect
        assert all(ours[iou_type][m] is not None for m in ("APs", "APm", "APl"))
    assert paths["md"].read_text().count("|") > 20 and paths["png"].stat().st_size > 10_000


def test_perfect_predictions_score_100(toy_eval_dataset, tmp_path):
    name, _ = toy_eval_dataset
    results = _evaluate(name, tmp_path, perfect=True)
    for task in ("bbox", "segm"):
        assert results[task]["AP"] == pytest.approx(100.0, abs=0.5)


def test_compare_runs_side_by_side_with_the_paper(tmp_path):
    a = {"bbox": {m: 10.0 + i for i, m in enumerate(METRIC_ORDER)}, "segm": {m: 20.0 for m in METRIC_ORDER}}
    b = {"bbox": {m: 30.0 for m in METRIC_ORDER}, "segm": {m: float("nan") for m in METRIC_ORDER}}
    write_ap_by_size(a, tmp_path / "run_a" / "inference" / "ds", "run_a")
    write_ap_by_size(b, tmp_path / "run_b" / "inference" / "ds", "run_b")
    assert load_ap_by_size(tmp_path / "run_b")[1]["segm"]["AP"] is None
    paths = compare([tmp_path / "run_a", tmp_path / "run_b"], tmp_path / "cmp", paper_rows=["LambdaResNet-101"])
    table = paths["md"].read_text()
    assert "| run_a | 10.0 | 11.0 | 12.0 | 13.0 | 14.0 | 15.0 | 20.0 |" in table
    assert "| paper: LambdaResNet-101 | 49.4 | - | - | 31.7 | 52.2 | 65.6 | 43.5 |" in table
    assert paths["png"].stat().st_size > 10_000
    with pytest.raises(ValueError, match="unknown paper rows"):
        compare([tmp_path / "run_a"], tmp_path / "cmp", paper_rows=["ResNet-9000"])
    (tmp_path / "not_evaluated").mkdir()
    with pytest.raises(UserError, match="not_evaluated: no ap_by_size.json"):
        compare([tmp_path / "not_evaluated"], tmp_path / "cmp")
    assert set(PAPER_TABLE6) >= {"ResNet-101", "LambdaResNet-152"}


def test_eval_only_with_test_time_augmentation_writes_both_reports_and_keeps_them(tmp_path, small_val, capsys):
    """TEST.AUG.ENABLED (Detectron2's test-time augmentation): train_net evaluates plainly into
    inference/ and augmented into inference_TTA/, says which sizes each used, and a second
    evaluation without --overwrite replaces neither."""
    weights = save_tiny_weights(tmp_path / "weights")
    out = tmp_path / "eval"
    argv = ["--config-file", TOY_CONFIG, "--eval-only", *TINY, "MODEL.WEIGHTS", weights, "DATASETS.TEST", f"('{small_val}',)",
            "TEST.AUG.ENABLED", "True", "TEST.AUG.MIN_SIZES", "(96, 128)", "TEST.AUG.MAX_SIZE", "160", "TEST.AUG.FLIP", "True",
            "OUTPUT_DIR", out]
    assert run_tool("train_net.py", *argv) == 0
    plain = json.loads((out / "inference" / small_val / "ap_by_size.json").read_text())
    augmented = json.loads((out / "inference_TTA" / small_val / "ap_by_size.json").read_text())
    assert plain["provenance"]["input_size_test"] == {"min": 128, "max": 128}
    assert augmented["provenance"]["input_size_test"] == {"min": [96, 128], "max": 160, "flip": True}
    assert "TTA 96,128/160 + flip" in (out / "inference_TTA" / small_val / "ap_by_size.md").read_text()
    assert (out / "inference_TTA" / small_val / "coco_instances_results.json").is_file()
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "log.txt"}
    capsys.readouterr()
    assert run_tool("train_net.py", *argv) == 2
    both = [p for p in before if p.parent.parent.name in ("inference", "inference_TTA")]
    assert any(p.parent.parent.name == "inference_TTA" for p in both)
    assert f"{len(both)} file(s) of an earlier evaluation would be overwritten" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "log.txt"} == before
