"""The main job, shortened: it must learn (an AP floor an untrained or broken model cannot reach)
and leave the table, chart, checkpoints and demo pictures where it says. Slow: minutes on 2 cores."""
import hashlib
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import cv2
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# An untrained Mask R-CNN scores ~0 AP on the toy val. 200 iterations of the shipped recipe reached
# box 21.6 / mask 28.8 (single-scale test) and 24.5 / 31.8 (its test-time augmentation) here; the
# floors leave room for run-to-run variation and sit far above what an untrained or broken model reaches.
BOX_AP_FLOOR = 17.0
MASK_AP_FLOOR = 23.0
TTA_BOX_AP_FLOOR = 19.0
TTA_MASK_AP_FLOOR = 25.0


@pytest.mark.slow
def test_short_main_job_learns_and_reports(tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "tools/quickstart.py", "--output", str(out), "--max-iter", "200", "--demo-images", "3"]
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=1800)
    assert done.returncode == 0, done.stderr[-3000:]
    report = out / "inference" / "toy_shapes_val"
    ap = json.loads((report / "ap_by_size.json").read_text())
    assert ap["bbox"]["AP"] >= BOX_AP_FLOOR, ap["bbox"]
    assert ap["segm"]["AP"] >= MASK_AP_FLOOR, ap["segm"]
    augmented = json.loads((out / "inference_TTA" / "toy_shapes_val" / "ap_by_size.json").read_text())
    assert augmented["bbox"]["AP"] >= TTA_BOX_AP_FLOOR and augmented["segm"]["AP"] >= TTA_MASK_AP_FLOOR, augmented
    assert augmented["provenance"]["input_size_test"]["min"] == [256, 288, 320]
    assert "single-scale test" in done.stdout and "multi-scale test (TEST.AUG)" in done.stdout
    assert all(ap[t][m] is not None for t in ("bbox", "segm") for m in ("APs", "APm", "APl"))
    assert ap["provenance"]["iterations_trained"] == 200
    assert ap["provenance"]["weights"] == str((out / "model_final.pth").resolve())
    assert ap["provenance"]["weights_sha256"] == hashlib.sha256((out / "model_final.pth").read_bytes()).hexdigest()[:16]
    assert (report / "ap_by_size.md").read_text().startswith("# AP by object size")
    assert cv2.imread(str(report / "ap_by_size.png")) is not None
    assert (out / "model_final.pth").exists() and (out / "metrics.json").exists()
    assert any(p.name.startswith("events.out.tfevents") for p in out.iterdir())
    pictures = sorted((out / "demo").glob("*.png"))
    assert len(pictures) == 3 and all(cv2.imread(str(p)) is not None for p in pictures)
    assert str(report) in done.stdout and str(out / "demo") in done.stdout
    # the terminal shows progress, not the environment report, the config or the model (log.txt has them)
    assert "Environment info" not in done.stdout and "Model:" not in done.stdout and "iter: 199" in done.stdout
    assert "training on the CPU" in done.stdout and "Trained and evaluated on the CPU" in done.stdout
    assert "Environment info" in (out / "log.txt").read_text()
    assert "No CUDA runtime" not in done.stderr and "not writable" not in done.stderr

    # a second run of the finished main job trains nothing and changes nothing
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "finished run (200 iterations): nothing was trained or changed" in again.stdout
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def _quickstart_module():
    spec = importlib.util.spec_from_file_location("quickstart_tool", REPO / "tools" / "quickstart.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_main_job_trains_on_the_gpu_where_there_is_one(monkeypatch):
    quickstart = _quickstart_module()
    parse = lambda *argv: quickstart.parse_args_with_overrides(quickstart.argument_parser(), list(argv))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert quickstart.setup_cfg(parse()).MODEL.DEVICE == "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert quickstart.setup_cfg(parse()).MODEL.DEVICE == "cuda"
    # the user's own choice stands
    assert quickstart.setup_cfg(parse("MODEL.DEVICE", "cpu")).MODEL.DEVICE == "cpu"
