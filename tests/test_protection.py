"""Nothing a user owns is lost or silently wrong: inputs and earlier outputs are never written over,
failed writes are errors, weights must fit, and bad values are named where they enter.

Most tools run in this process (conftest.run_tool) to keep the suite fast; what they print is
what a user sees.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import REPO, TINY, TOY_CONFIG, run_tool, save_tiny_weights
from detectron2 import model_zoo as detectron2_model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from omegaconf import OmegaConf
from PIL import Image

from lambda_det import load_config
from lambda_det.checkpoint import Checkpointer, WeightsError, check_resume, config_differences, weights_problem
from lambda_det.config import add_lambda_config
from lambda_det.engine import parse_args_with_overrides, run_folder_lock, validate_config
from lambda_det.errors import ConfigError, DatasetError, OutputError, UserError
from lambda_det.modeling import build_lambda_resnet, lambda_resnet_config, lambda_resnet_config_problems
from lambda_det.utils.file_safety import StagedFiles, write_text


def _hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _photos(folder: Path) -> Path:
    """A folder of the user's images, one of them a PNG whose drawn picture would take its name."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(folder / "beach.png"), rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    cv2.imwrite(str(folder / "street.jpg"), rng.integers(0, 256, (70, 50, 3), dtype=np.uint8))
    (folder / "notes.txt").write_text("my notes")
    return folder


def _demo(weights, inputs, output, *extra):
    return run_tool("demo.py", "--config-file", TOY_CONFIG, "--input", *map(str, inputs), "--output", output,
                    "--confidence-threshold", "0.99", *extra, "--opts", "MODEL.WEIGHTS", weights, *TINY)


# ---------------------------------------------------------------------------------------------
# the demo never loses the user's files
# ---------------------------------------------------------------------------------------------
def test_demo_output_equal_to_or_inside_the_input_folder_twice_changes_nothing(tiny_weights, tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    before = _hashes(photos)

    for _ in range(2):  # the same folder: refused before any work, both times
        assert _demo(tiny_weights, [photos], photos) == 2
        assert "is the input folder" in capsys.readouterr().err
        assert _hashes(photos) == before

    inside = photos / "detections"
    assert _demo(tiny_weights, [photos], inside) == 0
    first = _hashes(photos)
    # the pictures, the list of what the demo wrote there (so that a later scan leaves them out), the
    # folder's lock (one demo at a time)
    assert {k for k in first if k.startswith("detections/")} == {
        "detections/beach.png", "detections/street.png", "detections/.lambda_det_demo.json", "detections/.lambda_det.lock"}
    assert {k: v for k, v in first.items() if not k.startswith("detections/")} == before
    capsys.readouterr()

    assert _demo(tiny_weights, [photos], inside) == 2  # the earlier pictures are not replaced unasked
    err = capsys.readouterr().err
    assert "would be overwritten" in err and "--overwrite" in err
    assert _hashes(photos) == first

    # asked to replace them: still only the two inputs are drawn, the earlier pictures are not inputs now
    assert _demo(tiny_weights, [photos], inside, "--overwrite") == 0
    assert "2 input(s) processed" in capsys.readouterr().out
    assert set(_hashes(photos)) == set(first)
    assert {k: v for k, v in _hashes(photos).items() if not k.startswith("detections/")} == before


def test_demo_refuses_an_output_folder_holding_its_inputs_or_a_link_to_one(tiny_weights, tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    video = tmp_path / "videos" / "clip.avi"
    video.parent.mkdir()
    video.write_bytes(b"a video of mine")
    (video.parent / "clip.mp4").write_bytes(b"another video of mine")
    before = {**_hashes(photos), **{f"v/{k}": v for k, v in _hashes(video.parent).items()}}
    # an input file named explicitly, with --output its own folder: beach.png would be drawn over beach.png,
    # and clip.avi's picture would replace the user's own clip.mp4 even with --overwrite
    for inputs, output in (([photos / "beach.png"], photos), ([video], video.parent)):
        assert _demo(tiny_weights, inputs, output, "--overwrite") == 2
        assert f"holds the input {inputs[0]}" in capsys.readouterr().err
    # a hard link in the output folder to an input: writing there would destroy the input
    out = tmp_path / "out"
    out.mkdir()
    os.link(photos / "beach.png", out / "street.png")
    assert _demo(tiny_weights, [photos], out, "--overwrite") == 2
    assert f"would overwrite the input {photos / 'beach.png'}" in capsys.readouterr().err
    assert {**_hashes(photos), **{f"v/{k}": v for k, v in _hashes(video.parent).items()}} == before


def test_demo_inputs_inside_the_output_folder_are_read(tiny_weights, tmp_path, capsys):
    """Only the files the demo writes (directly in --output) are left out of the scan."""
    photos = _photos(tmp_path / "work" / "photos")
    assert _demo(tiny_weights, [photos], tmp_path / "work") == 0
    assert "2 input(s) processed" in capsys.readouterr().out
    assert _demo(tiny_weights, [str(photos / "*.jpg")], tmp_path / "work2") == 0


def test_demo_names_same_stem_inputs_by_what_tells_them_apart(tmp_path):
    from lambda_det.demo import Inputs, plan_outputs

    a, b = tmp_path / "a", tmp_path / "b"
    images = [a / "photo.jpg", a / "photo.png", b / "photo.jpg", a / "cat.jpg"]
    for order in (images, images[::-1]):
        plan = dict(plan_outputs(Inputs(images=list(order)), tmp_path / "out"))
        assert {p: t.name for p, t in plan.items()} == {
            a / "photo.jpg": "a_photo_jpg.png", a / "photo.png": "photo_png.png", b / "photo.jpg": "b_photo_jpg.png",
            a / "cat.jpg": "cat.png",
        }


def test_demo_skips_images_it_cannot_take_and_goes_on(tiny_weights, tmp_path, capsys, monkeypatch):
    folder = tmp_path / "odd"
    folder.mkdir()
    cv2.imwrite(str(folder / "strip.png"), np.zeros((2, 3000, 3), np.uint8))
    cv2.imwrite(str(folder / "big.png"), np.zeros((300, 300, 3), np.uint8))
    cv2.imwrite(str(folder / "fine.png"), np.zeros((60, 60, 3), np.uint8))
    (folder / "linked").symlink_to(_photos(tmp_path / "elsewhere"))  # a symbolic link to a folder is followed
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 20_000)  # big.png (90k pixels) is a "decompression bomb" now
    assert _demo(tiny_weights, [folder], tmp_path / "out") == 0
    out = capsys.readouterr().out
    assert f"skipped {folder / 'strip.png'}: 3000x2 pixels is too thin" in out
    assert f"skipped {folder / 'big.png'}: too large to read safely" in out
    assert "3 input(s) processed" in out  # fine.png and the two photos behind the link


def test_a_video_that_does_not_read_back_is_an_error(tiny_weights, tmp_path, capsys, monkeypatch):
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (64, 48))
    for _ in range(3):
        writer.write(np.zeros((48, 64, 3), np.uint8))
    writer.release()
    # OpenCV's writer reports nothing when the disk fills: simulate frames that never reach the file
    real_writer = cv2.VideoWriter

    class LosingWriter:
        def __init__(self, *args):
            self.inner = real_writer(*args)

        def isOpened(self):
            return self.inner.isOpened()

        def write(self, frame):
            pass

        def release(self):
            self.inner.release()

    monkeypatch.setattr(cv2, "VideoWriter", LosingWriter)
    assert _demo(tiny_weights, [video], tmp_path / "out") == 2
    assert f"could not write video {tmp_path / 'out' / 'clip.mp4'}" in capsys.readouterr().err
    assert not (tmp_path / "out" / "clip.mp4").exists()


def test_demo_output_that_is_an_existing_file_is_refused(tiny_weights, tmp_path, capsys):
    photos = _photos(tmp_path / "photos")
    target = tmp_path / "results.png"
    target.write_bytes(b"the user's file")
    assert _demo(tiny_weights, [photos], target) == 2
    assert "is an existing file" in capsys.readouterr().err
    assert target.read_bytes() == b"the user's file"


def test_a_failed_write_is_an_error_naming_the_path(tiny_weights, tmp_path, capsys, monkeypatch):
    photos = _photos(tmp_path / "photos")
    out = tmp_path / "out"
    (out / "beach.png").mkdir(parents=True)  # a folder where the picture must go: named before any work
    for extra in ((), ("--overwrite",)):  # (it said "pass --overwrite", then that the folder would be replaced)
        assert _demo(tiny_weights, [photos], out, *extra) == 2
        captured = capsys.readouterr()
        assert f"would be written to {out / 'beach.png'}, which is a directory; nothing was written" in captured.err
        assert "processed" not in captured.out and (out / "beach.png").is_dir()

    # a full disk: the picture is encoded in memory and written by Python, so the reason is named
    import lambda_det.utils.file_safety

    def full_disk(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lambda_det.utils.file_safety.os, "fsync", full_disk)
    assert _demo(tiny_weights, [photos / "street.jpg"], tmp_path / "out2") == 2
    err = capsys.readouterr().err
    assert f"could not write image {tmp_path / 'out2' / 'street.png'}: no space left on the device" in err
    assert list((tmp_path / "out2").iterdir()) == [tmp_path / "out2" / ".lambda_det.lock"]  # no half-written picture


def test_demo_reads_images_as_detectron2_does_exif_orientation_included(tiny_weights, tmp_path, capsys):
    from detectron2.data.detection_utils import read_image

    from lambda_det.demo import read_image_bgr

    photo = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90 degrees: as phones save portrait photos
    pixels = np.zeros((40, 80, 3), dtype=np.uint8)
    pixels[:, :20] = 255  # a white band on the left of the stored image
    Image.fromarray(pixels).save(photo, exif=exif, quality=95)
    for path in (photo, _photos(tmp_path / "more") / "beach.png"):
        np.testing.assert_array_equal(read_image_bgr(path), read_image(str(path), format="BGR"))
    assert read_image_bgr(photo).shape == (80, 40, 3)
    assert _demo(tiny_weights, [photo], tmp_path / "out") == 0
    drawn = cv2.imread(str(tmp_path / "out" / "phone.png"))
    assert drawn.shape[:2] == (640, 320)  # upright, as the photo is shown (and enlarged: it is small)


def test_an_empty_input_folder_is_named(tiny_weights, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.md").write_text("no pictures")
    assert _demo(tiny_weights, [tmp_path / "empty"], tmp_path / "out") == 1
    assert f"skipped {tmp_path / 'empty'}: no images or videos in it" in capsys.readouterr().out


# ---------------------------------------------------------------------------------------------
# weights: readable, and fitting the model
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def broken_weights(tmp_path_factory, tiny_weights):
    folder = tmp_path_factory.mktemp("broken")
    data = Path(tiny_weights).read_bytes()
    files = {
        "missing": folder / "nothing_here.pth",
        "empty": folder / "empty.pth",
        "truncated": folder / "truncated.pth",
        "random": folder / "random.pth",
        "directory": folder / "a_folder.pth",
        "tensor": folder / "tensor.pth",
        "text": folder / "notes.pth",
        "jpeg": folder / "photo.pth",
    }
    files["text"].write_text("these are my notes, not weights\n")
    files["jpeg"].write_bytes(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(data[: len(data) // 2])
    files["random"].write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    files["directory"].mkdir()
    torch.save(torch.zeros(3), files["tensor"])
    return files


@pytest.mark.parametrize("kind,reason", [
    ("missing", "no such file"), ("empty", "is empty"), ("truncated", "truncated or corrupt"),
    ("random", "is not a checkpoint"), ("directory", "is a directory"), ("tensor", "not a checkpoint"),
    ("text", "is not a checkpoint: it is a text file"), ("jpeg", "is not a checkpoint: it is a JPEG image"),
])
def test_unreadable_weights_are_one_line_naming_the_file(broken_weights, kind, reason, tmp_path, capsys):
    path = broken_weights[kind]
    assert reason in weights_problem(str(path))
    cfg = load_config(str(TOY_CONFIG), [*TINY, "MODEL.WEIGHTS", str(path)])
    with pytest.raises(WeightsError, match=reason) as info:
        Checkpointer(build_model(cfg), strict=True).load(str(path))
    assert str(path) in str(info.value) and "weights_only" not in str(info.value)

    # through the tools: one `error:` line, exit status 2, no traceback, no unsafe advice
    (tmp_path / "photo.png").write_bytes(cv2.imencode(".png", np.zeros((20, 20, 3), np.uint8))[1].tobytes())
    assert _demo(path, [tmp_path / "photo.png"], tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(path) in err and reason in err
    assert "Traceback" not in err and "weights_only" not in err
    assert run_tool("train_net.py", "--config-file", TOY_CONFIG, "--eval-only", *TINY, "MODEL.WEIGHTS", path,
                    "OUTPUT_DIR", tmp_path / "eval") == 2
    err = capsys.readouterr().err
    assert f"MODEL.WEIGHTS {path} " in err and reason in err and "Traceback" not in err


@pytest.mark.parametrize("overrides,expected", [
    (["MODEL.LAMBDA_RESNET.LAYOUT", '["C","C","C","C"]'], "res4.0.conv2"),  # the conv baseline's weights
    (["MODEL.ROI_HEADS.NUM_CLASSES", "80"], "roi_heads.box_predictor.cls_score.weight (81, 64) in the file, (5, 64) in the model"),
    (["MODEL.LAMBDA_RESNET.WIDTH_PER_GROUP", "64"], "other shapes"),
])
def test_weights_of_another_architecture_are_refused_with_a_short_summary(tmp_path, capsys, overrides, expected):
    weights = save_tiny_weights(tmp_path / "other_run", *overrides)
    (tmp_path / "photo.png").write_bytes(cv2.imencode(".png", np.zeros((20, 20, 3), np.uint8))[1].tobytes())
    assert _demo(weights, [tmp_path / "photo.png"], tmp_path / "out") == 2
    err = capsys.readouterr().err
    assert f"weights {weights} do not fit" in err and expected in err
    assert len(err.splitlines()) <= 8  # a summary, not a line per tensor
    if overrides[0] == "MODEL.ROI_HEADS.NUM_CLASSES":  # tensors of other shapes are not "missing" as well
        assert "in the model but not in the file" not in err
    # the run's config.yaml beside the checkpoint says which keys differ
    assert f"{overrides[0]} = " in err
    assert not (tmp_path / "out").exists()  # refused before anything was drawn

    assert run_tool("train_net.py", "--config-file", TOY_CONFIG, "--eval-only", *TINY, "MODEL.WEIGHTS", weights,
                    "OUTPUT_DIR", tmp_path / "eval") == 2
    err = capsys.readouterr().err
    assert f"weights {weights} do not fit" in err and expected in err


def test_fine_tuning_from_other_weights_keeps_detectron2s_warnings(tmp_path):
    """Training from a checkpoint with other heads is fine-tuning: loaded where it fits, no error."""
    from lambda_det.engine import Trainer

    weights = save_tiny_weights(tmp_path / "pretrained", "MODEL.ROI_HEADS.NUM_CLASSES", "80")
    cfg = load_config(str(TOY_CONFIG), [*TINY, "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(tmp_path / "ft"),
                                        "DATASETS.TEST", "()"])
    trainer = Trainer(cfg)
    trainer.resume_or_load(resume=False)
    saved = torch.load(weights, weights_only=True)["model"]
    model = trainer.model
    key = "backbone.bottom_up.res4.0.conv2.qkv.weight"
    torch.testing.assert_close(model.state_dict()[key], saved[key])  # the backbone was loaded
    assert model.state_dict()["roi_heads.box_predictor.cls_score.weight"].shape[0] == 5  # new heads kept


def test_resume_from_a_damaged_last_checkpoint_names_the_intact_one(tmp_path, tiny_weights, capsys):
    run = tmp_path / "run"
    run.mkdir()
    good = Path(tiny_weights).read_bytes()
    (run / "model_0000004.pth").write_bytes(good)
    (run / "model_0000009.pth").write_bytes(good)
    (run / "model_0000014.pth").write_bytes(good[:1000])  # cut off: the disk filled up during the save
    (run / "last_checkpoint").write_text("model_0000014.pth")
    (run / "metrics.json").write_text("{}\n")
    before = _hashes(run)
    with pytest.raises(WeightsError) as info:
        check_resume(str(run))
    message = str(info.value)
    assert f"{run / 'model_0000014.pth'}" in message and "truncated" in message
    assert f"newest intact checkpoint is {run / 'model_0000009.pth'} (iteration 9)" in message
    assert f"echo model_0000009.pth > {run / 'last_checkpoint'}" in message
    assert run_tool("train_net.py", "--config-file", TOY_CONFIG, "--resume", *TINY, "OUTPUT_DIR", run) == 2
    assert "newest intact checkpoint" in capsys.readouterr().err
    assert _hashes(run) == before


def test_resume_without_last_checkpoint_or_with_an_empty_one_changes_nothing(tmp_path, tiny_weights, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model_0000009.pth").write_bytes(Path(tiny_weights).read_bytes())
    (run / "model_final.pth").write_bytes(Path(tiny_weights).read_bytes())
    before = _hashes(run)
    # Detectron2 would start from scratch and write a new model_final.pth over the old one
    assert run_tool("train_net.py", "--config-file", TOY_CONFIG, "--resume", *TINY, "OUTPUT_DIR", run) == 2
    err = capsys.readouterr().err
    assert "holds checkpoints but no last_checkpoint" in err and f"echo model_final.pth > {run / 'last_checkpoint'}" in err
    (run / "last_checkpoint").write_text("")
    before["last_checkpoint"] = hashlib.sha256(b"").hexdigest()
    assert run_tool("train_net.py", "--config-file", TOY_CONFIG, "--resume", *TINY, "OUTPUT_DIR", run) == 2
    assert f"{run / 'last_checkpoint'} is empty" in capsys.readouterr().err
    assert _hashes(run) == before


def test_refused_runs_leave_the_runs_config_yaml_alone(tmp_path, tiny_weights, capsys):
    """Weights are checked against the config before Detectron2's setup would rewrite config.yaml."""
    run = save_tiny_weights(tmp_path / "run", iteration=9).parent
    (run / "last_checkpoint").write_text("model_final.pth")
    before = _hashes(run)
    other = ["MODEL.LAMBDA_RESNET.LAYOUT", '["C","C","C","C"]']
    assert run_tool("train_net.py", "--config-file", TOY_CONFIG, "--resume", *TINY, *other, "OUTPUT_DIR", run) == 2
    err = capsys.readouterr().err
    assert "do not fit" in err and "MODEL.LAMBDA_RESNET.LAYOUT = " in err  # the run's config.yaml, still its own
    assert run_tool("train_net.py", "--config-file", TOY_CONFIG, "--eval-only", *TINY, *other,
                    "MODEL.WEIGHTS", run / "model_final.pth", "OUTPUT_DIR", run) == 2
    assert _hashes(run) == before


def test_evaluation_into_a_run_writes_its_config_beside_its_results(tmp_path, tiny_weights, small_val):
    run = save_tiny_weights(tmp_path / "run").parent
    config_before = (run / "config.yaml").read_text()
    args = ["--config-file", TOY_CONFIG, "--eval-only", *TINY, "INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96",
            "DATASETS.TEST", f"('{small_val}',)", "MODEL.WEIGHTS", run / "model_final.pth", "OUTPUT_DIR", run]
    assert run_tool("train_net.py", *args) == 0
    assert (run / "config.yaml").read_text() == config_before
    assert "MIN_SIZE_TEST: 96" in (run / "inference" / small_val / "config.yaml").read_text()


# ---------------------------------------------------------------------------------------------
# training and evaluation outputs
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("what", ["an evaluation", "a config.yaml of the user's"])
def test_training_into_a_folder_with_results_or_a_config_is_refused(tmp_path, capsys, what):
    folder = tmp_path / "folder"
    if what == "an evaluation":
        (folder / "inference" / "toy_shapes_val").mkdir(parents=True)
        (folder / "inference" / "toy_shapes_val" / "ap_by_size.json").write_text('{"bbox": {"AP": 50.0}}')
    else:
        folder.mkdir()
        (folder / "config.yaml").write_text("MODEL:\n  DEVICE: cpu\n")
    before = _hashes(folder)
    assert run_tool("train_net.py", "--config-file", TOY_CONFIG, *TINY, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()",
                    "OUTPUT_DIR", folder) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert _hashes(folder) == before


@pytest.mark.parametrize("kind", ["dangling link", "not writable"])
def test_output_dir_that_cannot_be_written_is_named_before_anything_starts(tmp_path, capsys, kind):
    if kind == "dangling link":
        output = tmp_path / "link"
        output.symlink_to(tmp_path / "gone")
        expected = "which does not exist"
    else:
        output = Path("/proc/lambda_det_test/run")  # /proc takes no new folders, even from root
        expected = "cannot write there"
    assert run_tool("train_net.py", "--config-file", TOY_CONFIG, *TINY, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()",
                    "OUTPUT_DIR", output) == 2
    err = capsys.readouterr().err
    assert f"OUTPUT_DIR {output}" in err and expected in err and "Traceback" not in err
    assert "GiB free" not in err  # /proc reports no free space: the folder's error comes alone


def test_training_into_an_earlier_run_is_refused_without_resume(tmp_path, tiny_weights, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model_final.pth").write_bytes(Path(tiny_weights).read_bytes())
    (run / "last_checkpoint").write_text("model_final.pth")
    (run / "metrics.json").write_text('{"iteration": 19}\n')
    before = _hashes(run)
    code = run_tool("train_net.py", "--config-file", TOY_CONFIG, *TINY, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()",
                    "OUTPUT_DIR", run)
    assert code == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err
    assert _hashes(run) == before


@pytest.mark.parametrize("name,exists", [("notes.txt", True), ("run.log", False), ("notes.txt/sub", True)])
def test_output_dir_that_is_a_file_or_a_log_file_name_is_refused(tmp_path, capsys, name, exists):
    notes = tmp_path / "notes.txt"
    if exists:
        notes.write_text("my notes\n")
    output = tmp_path / name
    code = run_tool("train_net.py", "--config-file", TOY_CONFIG, *TINY, "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()",
                    "OUTPUT_DIR", output)
    assert code == 2
    err = capsys.readouterr().err
    assert "OUTPUT_DIR" in err and str(output.name.split("/")[0]) in err
    if exists:
        assert notes.read_text() == "my notes\n"  # Detectron2's logger would have appended its log here
    else:
        assert not output.exists()


def test_quickstart_never_retrains_over_a_run(tmp_path, capsys, tiny_weights):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model_final.pth").write_bytes(Path(tiny_weights).read_bytes())
    (run / "last_checkpoint").write_text("model_final.pth")
    before = _hashes(run)
    assert run_tool("quickstart.py", "--output", run, "--no-resume", "--max-iter", "2") == 2
    assert "already holds a run" in capsys.readouterr().err
    assert _hashes(run) == before


def test_evaluation_records_what_produced_it_and_is_not_replaced_unasked(tmp_path, tiny_weights, small_val, capsys):
    out = tmp_path / "eval"
    args = ["--config-file", TOY_CONFIG, "--eval-only", *TINY, "MODEL.WEIGHTS", tiny_weights,
            "DATASETS.TEST", f"('{small_val}',)", "OUTPUT_DIR", out]
    assert run_tool("train_net.py", *args) == 0
    report = out / "inference" / small_val / "ap_by_size.json"
    record = json.loads(report.read_text())["provenance"]
    assert record["weights"] == str(Path(tiny_weights).resolve())
    assert record["weights_sha256"] == hashlib.sha256(Path(tiny_weights).read_bytes()).hexdigest()[:16]
    assert record["config_file"] == str(TOY_CONFIG.resolve())
    assert record["dataset"] == small_val and record["images"] == 6
    assert record["iterations_trained"] is None  # saved outside training: the file does not say
    assert record["input_size_test"] == {"min": 128, "max": 128}
    assert "LambdaResNet blocks [1, 1, 1, 1], custom C-C-L-L" in record["model"]
    assert str(Path(tiny_weights).resolve()) in (report.parent / "ap_by_size.md").read_text()

    before = _hashes(out / "inference")
    assert run_tool("train_net.py", *args) == 2  # a second evaluation into the same place
    assert "--overwrite" in capsys.readouterr().err
    assert _hashes(out / "inference") == before
    assert run_tool("train_net.py", "--overwrite", *args) == 0

    # compare_runs shows it, and does not replace its own earlier comparison unasked
    assert run_tool("compare_runs.py", out, "--output", tmp_path / "cmp") == 0
    table = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "What produced each run" in table and str(Path(tiny_weights).resolve()) in table
    assert run_tool("compare_runs.py", out, "--output", tmp_path / "cmp") == 2
    assert "would be overwritten" in capsys.readouterr().err


def test_compare_runs_says_which_input_is_wrong_and_why(tmp_path, capsys):
    bad_json = tmp_path / "bad" / "ap_by_size.json"
    bad_json.parent.mkdir()
    bad_json.write_text("{ not json")
    no_results = tmp_path / "other.json"
    no_results.write_text('{"run": "x"}')
    two = tmp_path / "two"
    for ds in ("a", "b"):
        (two / "inference" / ds).mkdir(parents=True)
        (two / "inference" / ds / "ap_by_size.json").write_text('{"bbox": {"AP": 1.0}}')
    for path, reason in [(bad_json, "invalid JSON"), (no_results, "no 'bbox' or 'segm' results"),
                         (two, "holds 2 evaluations"), (tmp_path / "nope", "no such file or directory")]:
        assert run_tool("compare_runs.py", path, "--output", tmp_path / "cmp") == 2
        err = capsys.readouterr().err
        assert str(path) in err and reason in err, err
    assert not (tmp_path / "cmp").exists()


def test_compare_runs_keeps_runs_of_the_same_name_apart(tmp_path, capsys):
    from lambda_det.evaluation import write_ap_by_size

    for folder, ap, weights in (("x/eval", 10.0, "/w/a.pth"), ("y/eval", 20.0, "/w/b.pth")):
        write_ap_by_size({"bbox": {"AP": ap}}, tmp_path / folder / "inference" / "ds", "eval",
                         provenance={"weights": weights, "dataset": "ds"})
    assert run_tool("compare_runs.py", tmp_path / "x/eval", tmp_path / "y/eval", "--output", tmp_path / "cmp") == 0
    records = json.loads((tmp_path / "cmp" / "comparison.json").read_text())
    assert [(r["bbox"]["AP"], r["provenance"]["weights"]) for r in records] == [(10.0, "/w/a.pth"), (20.0, "/w/b.pth")]
    assert len({r["run"] for r in records}) == 2
    assert run_tool("compare_runs.py", tmp_path / "x/eval", tmp_path / "y/eval", "--names", "a", "a",
                    "--output", tmp_path / "cmp2") == 2
    assert "row names must differ" in capsys.readouterr().err
    assert run_tool("compare_runs.py", tmp_path / "x/eval", tmp_path / "x/eval", "--output", tmp_path / "cmp3") == 2
    err = capsys.readouterr().err  # (it blamed --names, which was not given)
    assert f"the same evaluation is given twice: ['{tmp_path / 'x/eval'}']" in err and "--names" not in err


@pytest.mark.parametrize("content,reason", [
    ("[" * 100000 + "]" * 100000, "nested too deeply to read"),
    ('{"bbox": {"AP": 50}, "provenance": "oops"}', "'provenance' is a str"),
    ('{"bbox": {"AP": true}}', "AP=True is not an AP"),
    ('{"bbox": {"AP": NaN}}', "AP=nan is not an AP"),
    ('{"bbox": {"AP": 50}, "segm": {}}', "segm has none of"),
])
def test_compare_runs_refuses_malformed_results(tmp_path, capsys, content, reason):
    bad = tmp_path / "ap_by_size.json"
    bad.write_text(content)
    assert run_tool("compare_runs.py", bad, "--output", tmp_path / "cmp") == 2
    err = capsys.readouterr().err
    assert str(bad) in err and reason in err
    assert not (tmp_path / "cmp").exists()


def test_a_report_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    """A chart that cannot be written takes the table and JSON with it: a retry is not refused."""
    import lambda_det.evaluation.ap_by_size as ap_by_size
    from lambda_det.evaluation import write_ap_by_size

    def failing_chart(rows, path, title):
        raise OSError(28, "No space left on device", str(path))

    monkeypatch.setattr(ap_by_size, "bar_chart", failing_chart)
    with pytest.raises(OutputError, match="no space left on the device"):
        write_ap_by_size({"bbox": {"AP": 50.0}}, tmp_path / "r", "r")
    assert list((tmp_path / "r").iterdir()) == []


def test_missing_dataset_files_stop_before_anything_is_written(tmp_path, capsys):
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.data.datasets import register_coco_instances

    name = "lambda_det_test_missing_files"
    register_coco_instances(name, {}, str(tmp_path / "ann.json"), str(tmp_path / "images"))
    MetadataCatalog.get(name).thing_classes = ["circle", "square", "triangle", "star"]
    try:
        assert run_tool("train_net.py", "--config-file", TOY_CONFIG, *TINY, "DATASETS.TRAIN", f"('{name}',)",
                        "DATASETS.TEST", "()", "OUTPUT_DIR", tmp_path / "run") == 2
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert f"dataset '{name}' is missing files: {tmp_path / 'ann.json'}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content,reason", [("", "is empty"), ("- a\n- list\n", "is a list"), ("42\n", "is a int")])
def test_config_files_that_are_not_mappings_are_named(tmp_path, capsys, content, reason):
    config = tmp_path / "bad.yaml"
    config.write_text(content)
    assert run_tool("train_net.py", "--config-file", config) == 2
    assert f"config file {config} {reason}, not a mapping" in capsys.readouterr().err


def test_a_name_too_long_for_the_file_system_is_one_error_line(tmp_path, capsys):
    long = tmp_path / ("x" * 300)
    assert run_tool("train_net.py", "--config-file", TOY_CONFIG, *TINY, "OUTPUT_DIR", long) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {long}") and "a file or folder name in it is longer than the file system allows" in err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


def test_a_base_chain_that_loops_is_named(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text("_BASE_: b.yaml\nSOLVER:\n  MAX_ITER: 5\n")
    (tmp_path / "b.yaml").write_text("_BASE_: a.yaml\n")
    assert run_tool("train_net.py", "--config-file", tmp_path / "a.yaml") == 2
    err = capsys.readouterr().err
    assert f"config file {tmp_path / 'a.yaml'}: its _BASE_ chain comes back" in err and "Traceback" not in err


def test_benchmark_checks_its_output_before_timing(tmp_path, capsys):
    target = tmp_path / "results.png"
    target.write_bytes(b"mine")
    assert run_tool("benchmark_lambda.py", "--sides", "8", "--memory-sides", "8", "--repeats", "1",
                    "--methods", "lambda/conv2d", "--output", target) == 2
    assert "is an existing file" in capsys.readouterr().err
    assert target.read_bytes() == b"mine"


# ---------------------------------------------------------------------------------------------
# values checked where they enter
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tool,argv,expected", [
    ("demo.py", ["--config-file", TOY_CONFIG, "--input", "x.png", "--output", "o", "--confidence-threshold", "1.5"],
     "argument --confidence-threshold: '1.5' is not allowed: give a value in [0, 1]"),
    ("quickstart.py", ["--max-iter", "0"], "argument --max-iter: '0' is not allowed: give an integer >= 1"),
    ("quickstart.py", ["--demo-images", "-1"], "argument --demo-images: '-1' is not allowed"),
    ("train_net.py", ["--config-file", TOY_CONFIG, "--num-gpus", "0"], "--num-gpus 0: give 1 or more"),
    ("train_net.py", ["--config-file", TOY_CONFIG, "--num-machines", "2", "--machine-rank", "2"], "--machine-rank 2: must lie in [0, "),
    ("train_net.py", ["--config-file", TOY_CONFIG, "--num-gpus", "2", "--dist-url", "tcp://127.0.0.1:99999"],
     "--dist-url tcp://127.0.0.1:99999: give tcp://HOST:PORT with a port in 1-65535"),
    ("train_net.py", ["--config-file", TOY_CONFIG, "--num-gpus", "2", "--dist-url", "127.0.0.1:5000"],
     "--dist-url 127.0.0.1:5000: give 'auto' (one machine) or tcp://HOST:PORT"),
    ("train_net.py", ["--config-file", "configs/nope.yaml"], "config file configs/nope.yaml does not exist"),
    ("train_net.py", ["--config-file", TOY_CONFIG, "SOLVER.MAX_ITR", "5"], "SOLVER.MAX_ITR is not a config key; did you mean SOLVER.MAX_ITER?"),
    ("train_net.py", ["--config-file", TOY_CONFIG, "SOLVER.MAX_ITER"], "'SOLVER.MAX_ITER' has no value"),
    ("demo.py", ["--config-file", TOY_CONFIG, "--input", "x.png", "--output", ""], "argument --output: an empty path is not allowed"),
    ("demo.py", ["--config-file", TOY_CONFIG, "--input", "", "--output", "o"], "argument --input: an empty path is not allowed"),
    ("benchmark_lambda.py", ["--repeats", "0"], "argument --repeats: '0' is not allowed"),
    ("benchmark_lambda.py", ["--sides", "0"], "argument --sides: '0' is not allowed"),
    # a flag another benchmark reads was ignored without a word
    ("benchmark_lambda.py", ["--vs-conv", "--sizes", "100"], "--sizes does nothing for --vs-conv, which takes --batches"),
    ("benchmark_lambda.py", ["--kernels", "--batch", "4"], "--batch does nothing for --kernels, which takes none of"),
    ("benchmark_lambda.py", ["--scopes", "3"], "--scopes does nothing for the layer benchmark, which takes --sides"),
    ("benchmark_detector.py", ["--quick", "--sizes", "1024"], "--sizes does nothing with --quick, which runs its toy models at 128"),
    ("benchmark_detector.py", ["--quick", "--repeats", "3"], "--repeats does nothing with --quick"),
    ("analyze_model.py", ["--foo", "1", "--config-file", "x.yaml", "--tasks", "flop"], "unrecognized arguments: --foo"),
    ("train_net.py", ["--num", "2", "--config-file", "x.yaml"], "ambiguous option: --num could match --num-gpus, --num-machines"),
    ("export_model.py", ["--frmat", "onnx", "--config-file", "x.yaml"], "unrecognized arguments: --frmat; did you mean --format?"),
])
def test_command_line_values_are_named_with_what_is_allowed(tool, argv, expected, capsys):
    assert run_tool(tool, *argv) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert "Traceback" not in err


@pytest.mark.parametrize("overrides,expected", [
    (["SOLVER.CHECKPOINT_PERIOD", "0"], "SOLVER.CHECKPOINT_PERIOD=0: must be an integer >= 1"),
    (["SOLVER.BASE_LR", "-0.1"], "SOLVER.BASE_LR=-0.1: must be a number in (0.0, inf]"),
    (["SOLVER.STEPS", "(500, 300)"], "SOLVER.STEPS=[500, 300]: must be increasing"),
    (["SOLVER.MAX_ITER", "868"], "SOLVER.STEPS=[771, 868]: must be < SOLVER.MAX_ITER=868"),
    (["MODEL.ROI_HEADS.SCORE_THRESH_TEST", "1.5"], "MODEL.ROI_HEADS.SCORE_THRESH_TEST=1.5: must be a number in [0.0, 1.0]"),
    (["MODEL.PIXEL_MEAN", "[100.0, 110.0]"], "MODEL.PIXEL_MEAN=[100.0, 110.0]: needs 3 value(s)"),
    (["MODEL.DEVICE", "gpu"], "MODEL.DEVICE='gpu': must be 'cpu', 'cuda' or 'cuda:N'"),
    (["MODEL.ANCHOR_GENERATOR.SIZES", "[[16], [32]]"], "needs 1 entry or one per MODEL.RPN.IN_FEATURES level (5)"),
    (["MODEL.LAMBDA_RESNET.HEADS", "3"], "MODEL.LAMBDA_RESNET.HEADS=3: must divide the bottleneck width"),
    (["MODEL.LAMBDA_RESNET.SCOPE", "0", "MODEL.LAMBDA_RESNET.GLOBAL_MAX_SIZE", "4"],
     "GLOBAL_MAX_SIZE=4: INPUT.MAX_SIZE_TRAIN=128 gives lambda-layer maps of up to 16x16 (stride 8)"),
    (["MODEL.LAMBDA_RESNET.SCOPE", "0", "INPUT.MIN_SIZE_TEST", "0"],
     "INPUT.MIN_SIZE_TEST=0 (test images are not resized: set INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST) cannot be bounded for a "
     "global-scope lambda layer (MODEL.LAMBDA_RESNET.SCOPE=0)"),
    (["MODEL.FPN.OUT_CHANNELS", "48"], "MODEL.FPN.OUT_CHANNELS=48: must be a multiple of 32"),
    (["MODEL.ROI_HEADS.NUM_CLASSES", "3"], "MODEL.ROI_HEADS.NUM_CLASSES=3, but dataset 'toy_shapes_train'"),
    (["DATASETS.TRAIN", "('toy_shapes_trian',)"], "did you mean ['toy_shapes_train'"),
    (["SOLVER.AMP.ENABLED", "True"], "SOLVER.AMP.ENABLED=True: needs a CUDA device"),
    (["OUTPUT_DIR", "output/run.log"], "OUTPUT_DIR='output/run.log': ends like a file name"),
    (["MODEL.ROI_HEADS.NAME", "FooHeads"], "MODEL.ROI_HEADS.NAME='FooHeads': is not registered in Detectron2's ROI_HEADS"),
    (["MODEL.META_ARCHITECTURE", "GeneralizedRCN"], "did you mean 'GeneralizedRCNN'?"),
    (["MODEL.RPN.HEAD_NAME", "Nope"], "MODEL.RPN.HEAD_NAME='Nope': is not registered"),
    (["MODEL.ROI_HEADS.IN_FEATURES", "['p9']"], "asks for ['p9']; the FPN makes ['p2', 'p3', 'p4', 'p5', 'p6']"),
    (["MODEL.DEVICE", "mps"], "MODEL.DEVICE='mps': must be 'cpu', 'cuda' or 'cuda:N'"),
    (["INPUT.MIN_SIZE_TRAIN_SAMPLING", "range", "INPUT.MIN_SIZE_TRAIN", "(200, 100)"], "needs 2 values low < high"),
    # Detectron2's ResizeShortestEdge / RandomCrop decide: a style it asserts against failed in the data loader
    (["INPUT.MIN_SIZE_TRAIN_SAMPLING", "range_by_clip"],
     "INPUT.MIN_SIZE_TRAIN_SAMPLING='range_by_clip': is no sample_style of Detectron2's ResizeShortestEdge"),
    (["INPUT.CROP.ENABLED", "True", "INPUT.CROP.TYPE", "absolut"], "INPUT.CROP.TYPE='absolut': is no crop_type of Detectron2's RandomCrop"),
    # a RetinaNet reads its own features, anchors and class count
    (["MODEL.META_ARCHITECTURE", "RetinaNet", "MODEL.RETINANET.IN_FEATURES", "['p3','p7']"],
     "MODEL.RETINANET.IN_FEATURES=['p3', 'p7']: asks for ['p7']; the FPN makes ['p2', 'p3', 'p4', 'p5', 'p6']"),
    (["MODEL.META_ARCHITECTURE", "RetinaNet", "MODEL.RETINANET.IN_FEATURES", "['p3','p4']"],
     "needs 1 entry or one per MODEL.RETINANET.IN_FEATURES level (2)"),
    (["MODEL.META_ARCHITECTURE", "RetinaNet", "MODEL.RETINANET.IN_FEATURES", "['p2','p3','p4','p5','p6']",
      "SOLVER.MAX_ITER", "2", "DATASETS.TEST", "()"],  # short, were it not refused
     "MODEL.RETINANET.NUM_CLASSES=80, but dataset 'toy_shapes_train'"),
    (["MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION", "-1"], "MODEL.ROI_MASK_HEAD.POOLER_RESOLUTION=-1: must be an integer >= 1"),
    (["MODEL.FPN.IN_FEATURES", "['res2', 'res9']"], "MODEL.FPN.IN_FEATURES=['res2', 'res9']: must name ResNet stages"),
])
def test_config_values_that_cannot_work_stop_before_training(overrides, expected, capsys, tmp_path):
    argv = ["--config-file", TOY_CONFIG, *TINY, "OUTPUT_DIR", tmp_path / "run", *overrides]
    assert run_tool("train_net.py", *argv) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert not (tmp_path / "run").exists()  # stopped before Detectron2 made OUTPUT_DIR


@pytest.mark.parametrize("options,expected", [
    # GroupNorm over the stem's convolutions: 16 or 24 channels of 32 groups failed inside the build
    ({"norm": "GN", "stem_width": 32}, "STEM_WIDTH=32: with NORM='GN' (32 groups) each of the deep stem's convolutions needs "
                                       "a multiple of 32 channels; they would have [16, 16, 32]"),
    ({"norm": "GN", "stem": "tiered"}, "the tiered stem's convolutions needs a multiple of 32 channels; they would have [24, 32, 64]"),
    ({"stem_width": 1}, "STEM_WIDTH=1: the deep stem's convolutions would have [0, 0, 1] channels; it must be at least 2"),
    # a squeeze-excite of 0 channels built, then failed in the first forward
    ({"variant": "conv", "se_stages": ["res2"], "se_ratio": 0.001},
     "SE_RATIO=0.001: squeeze-excite in res2 would have round(256 x 0.001) = 0 channels"),
])
def test_widths_that_cannot_be_built_are_named_before_the_build(options, expected):
    cfg = lambda_resnet_config(depth=50, **options)
    cfg.MODEL.BACKBONE.NAME = "build_lambda_resnet_fpn_backbone"
    problems = lambda_resnet_config_problems(cfg)
    assert any(expected in line for line in problems), problems
    with pytest.raises(ConfigError, match=re.escape(expected)):
        build_lambda_resnet(depth=50, **options)


def test_a_stem_too_narrow_is_named_with_the_other_width_problems():
    cfg = lambda_resnet_config(depth=50, stem_width=1, heads=3)
    cfg.MODEL.BACKBONE.NAME = "build_lambda_resnet_fpn_backbone"
    problems = "\n".join(lambda_resnet_config_problems(cfg))
    assert "STEM_WIDTH=1: the deep stem's convolutions would have [0, 0, 1] channels" in problems, problems
    assert "MODEL.LAMBDA_RESNET.HEADS=3: must divide the bottleneck width" in problems, problems


@pytest.mark.parametrize("config", [
    "COCO-Detection/retinanet_R_50_FPN_1x.yaml", "COCO-Detection/rpn_R_50_FPN_1x.yaml", "COCO-Detection/fast_rcnn_R_50_FPN_1x.yaml",
    "COCO-PanopticSegmentation/panoptic_fpn_R_50_3x.yaml", "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml",
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x.yaml",
])
def test_detectron2s_own_configs_of_every_meta_architecture_pass_the_config_checks(config):
    """The checks ask what each meta-architecture's heads read: a RetinaNet's RPN keys (res4 by default)
    and its FPN's p7 were refused."""
    cfg = add_lambda_config(get_cfg())
    cfg.merge_from_file(detectron2_model_zoo.get_config_file(config))
    cfg.MODEL.DEVICE = "cpu"
    validate_config(cfg, training=True)


def test_images_per_batch_must_split_over_the_processes():
    cfg = load_config(str(TOY_CONFIG), [*TINY, "SOLVER.IMS_PER_BATCH", "3"])
    with pytest.raises(ConfigError, match=r"SOLVER.IMS_PER_BATCH=3: must be divisible by the number of processes \(2\)"):
        validate_config(cfg, training=True, world_size=2)


def test_annotations_the_config_cannot_read_fail_before_the_first_iteration(tmp_path):
    """The toy masks are RLE: a polygon mask format would fail inside the data loader's first batch."""
    from lambda_det.engine import Trainer

    cfg = load_config(str(TOY_CONFIG), [*TINY, "INPUT.MASK_FORMAT", "polygon", "OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(ConfigError, match="INPUT.MASK_FORMAT='polygon', but .*toy_shapes_train.* has RLE masks"):
        Trainer.build_train_loader(cfg)


def _coco_like(folder: Path) -> dict:
    """Two images, polygon masks, and a crowd region stored as RLE, as COCO stores its crowds."""
    from pycocotools import mask as mask_util

    (folder / "images" / "sub").mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i, name in enumerate(["a.jpg", "sub/b.png"], 1):
        picture = np.full((96, 128, 3), 40, np.uint8)
        picture[20:50, 10:40] = (30, 60, 220)
        cv2.imwrite(str(folder / "images" / name), picture)
        images.append({"id": i, "file_name": name, "height": 96, "width": 128})
        for k, x in enumerate((10, 60)):
            annotations.append({"id": len(annotations) + 1, "image_id": i, "category_id": k + 1, "bbox": [x, 20, 30, 30],
                                "area": 900, "iscrowd": 0, "segmentation": [[x, 20, x + 30, 20, x + 30, 50, x, 50]]})
    crowd = np.zeros((96, 128), np.uint8, order="F")
    crowd[60:80, 10:50] = 1
    rle = mask_util.encode(np.asfortranarray(crowd))
    annotations.append({"id": 99, "image_id": 1, "category_id": 1, "bbox": [10, 60, 40, 20], "area": 800, "iscrowd": 1,
                        "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    return {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "red"}, {"id": 2, "name": "blue"}]}


def _register(name: str, folder: Path, data: dict) -> None:
    from lambda_det.data import register_coco_dataset

    (folder / f"{name}.json").write_text(json.dumps(data))
    register_coco_dataset(name, str(folder / f"{name}.json"), str(folder / "images"))


@pytest.fixture
def coco_like(tmp_path):
    """Register datasets of _coco_like's files (changed by the test) and remove them afterwards."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    names = []

    def register(name, change=lambda data: None):
        data = _coco_like(tmp_path)
        change(data)
        names.append(f"lambda_det_test_{name}")
        _register(names[-1], tmp_path, data)
        return names[-1]

    yield register
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_coco_polygons_with_rle_crowds_train_with_the_polygon_format_and_lsj(coco_like, tmp_path):
    """COCO's crowd regions are RLE; Detectron2's mapper drops crowds, so the polygon format (every COCO
    config's) reads the rest: it was refused at start. LSJ's crop clips polygons with shapely, which was
    not installed: the first batches failed with ModuleNotFoundError."""
    from detectron2.data import DatasetCatalog
    from detectron2.structures import PolygonMasks

    from lambda_det.data import build_train_mapper, check_dataset_dicts

    name = coco_like("polygons")
    cfg = load_config(str(TOY_CONFIG), [*TINY, "INPUT.MASK_FORMAT", "polygon", "MODEL.ROI_HEADS.NUM_CLASSES", "2",
                                        "INPUT.LSJ.ENABLED", "True", "INPUT.LSJ.IMAGE_SIZE", "64"])
    dicts = DatasetCatalog.get(name)
    check_dataset_dicts(cfg, dicts, [name])
    mapper = build_train_mapper(cfg)
    np.random.seed(0)
    for _ in range(4):  # LSJ's crop clips every polygon with shapely, cut or not
        instances = mapper(dict(dicts[0]))["instances"]
        assert isinstance(instances.gt_masks, PolygonMasks) and len(instances) <= 2  # the crowd region dropped
    # an RLE mask of an object that is not a crowd still needs the bitmask format
    dicts[0]["annotations"][0]["segmentation"] = dicts[0]["annotations"][-1]["segmentation"]
    with pytest.raises(ConfigError, match="has RLE masks .*set INPUT.MASK_FORMAT bitmask"):
        check_dataset_dicts(cfg, dicts, [name])


def _drop_segmentation(data):
    del data["annotations"][1]["segmentation"]


def _drop_height(data):
    del data["images"][0]["height"]


@pytest.mark.parametrize("change,training,expected", [
    (_drop_segmentation, False, r"1 annotation\(s\) without a 'segmentation', which the mask head needs .*ids \[2\]"),
    (_drop_height, False, r"1 of the 2 images that .* lists lack a 'height' and 'width' of positive integers .*: a.jpg"),
    (lambda data: data["images"][1].pop("file_name"), False, r"1 of the 2 images that .* lists have no 'file_name' .*ids \[2\]"),
    (lambda data: data.pop("annotations"), True, "no annotations \\(crowd regions aside\\), nothing to train on"),
])
def test_annotations_detectron2_would_fail_on_mid_run_are_named_before_the_run_folder(
        coco_like, tmp_path, capsys, change, training, expected):
    name = coco_like("broken", change)
    sets = ["DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()"] if training else \
        ["DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", f"('{name}',)"]
    assert run_tool("train_net.py", "--config-file", TOY_CONFIG, *TINY, *sets, "MODEL.ROI_HEADS.NUM_CLASSES", "2",
                    "OUTPUT_DIR", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert re.search(expected, err), err
    assert not (tmp_path / "run").exists()  # a retry is not refused as "a run already there"


def test_a_box_only_model_trains_on_annotations_without_masks(coco_like):
    from lambda_det.data import check_coco_files, check_trainable

    name = coco_like("boxes", _drop_segmentation)
    check_trainable([name], masks=False)
    with pytest.raises(DatasetError, match="without a 'segmentation'"):
        check_coco_files(name, masks=True)
    # a set of negatives (images, no annotations) beside one with annotations: Detectron2 joins them
    negatives = coco_like("negatives", lambda data: data.update(annotations=[]))
    check_trainable([name, negatives], masks=False)
    with pytest.raises(DatasetError, match="'lambda_det_test_negatives': no annotations"):
        check_trainable([negatives], masks=False)


def test_an_image_whose_size_differs_from_its_json_entry_is_one_line(coco_like, tmp_path, capsys):
    """Detectron2's loader finds it mid-run (in a data-loader worker, wrapped in that worker's traceback)
    and its training loop logs the traceback to the terminal: now one line, the traceback in log.txt."""
    from detectron2.data.detection_utils import SizeMismatchError

    from lambda_det.engine import run_main

    def taller(data):
        for image in data["images"]:
            image["height"] = 100  # the files are 96 high
    name = coco_like("taller", taller)
    assert run_tool("train_net.py", "--config-file", TOY_CONFIG, *TINY, "DATASETS.TRAIN", f"('{name}',)", "DATASETS.TEST", "()",
                    "MODEL.ROI_HEADS.NUM_CLASSES", "2", "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", tmp_path / "run") == 2
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err, out[-3000:]
    assert err.strip().splitlines()[-1].startswith("error: Mismatched image shape for image ")
    assert "Traceback" in (tmp_path / "run" / "log.txt").read_text()

    def from_a_worker():
        raise SizeMismatchError("Caught SizeMismatchError in DataLoader worker process 0.\nOriginal Traceback ...\n"
                                "detectron2.data.detection_utils.SizeMismatchError: Mismatched image shape for image "
                                "/data/a.jpg, got (128, 96), expect (128, 100). Please check the width/height in your annotation.")

    assert run_main(from_a_worker) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: Mismatched image shape for image /data/a.jpg, got (128, 96)")
    assert "EXIF orientation" in lines[0]


def test_demo_labels_come_from_the_models_dataset_or_are_class_numbers(tiny_weights, coco_like, tmp_path, capsys):
    """A model trained on one's own data, drawn with the toy config, was labelled with the toy classes'
    names (its DATASETS.TEST[0]); now with its own dataset's names (--dataset), or numbers and a note."""
    from lambda_det.demo import class_names

    image = tmp_path / "images" / "a.jpg"
    renamed = coco_like("four_classes", lambda data: data.update(categories=[
        {"id": i, "name": name} for i, name in enumerate(["ant", "bee", "cat", "dog"], 1)]))
    assert class_names(load_config(str(TOY_CONFIG), TINY))[1] is None  # the toy model on the toy data: its names
    cfg = load_config(str(TOY_CONFIG), [*TINY, "MODEL.ROI_HEADS.NUM_CLASSES", "2"])
    metadata, note = class_names(cfg)
    assert metadata.get("thing_classes", None) is None
    assert "'toy_shapes_val' has 4 classes, the model 2: detections are labelled by class number" in note
    metadata, note = class_names(load_config(str(TOY_CONFIG), [*TINY, "DATASETS.TEST", "('lambda_det_test_unknown',)"]))
    assert metadata.get("thing_classes", None) is None and "'lambda_det_test_unknown' is not registered here" in note

    from detectron2.data import DatasetCatalog, MetadataCatalog

    try:  # the demo's --dataset registers it, as train_net's does
        assert run_tool("demo.py", "--config-file", TOY_CONFIG, "--input", image, "--output", tmp_path / "drawn",
                        "--confidence-threshold", "0", "--dataset", "lambda_det_test_flag", tmp_path / f"{renamed}.json",
                        tmp_path / "images", "--opts", *TINY, "MODEL.WEIGHTS", tiny_weights,
                        "DATASETS.TEST", "('lambda_det_test_flag',)") == 0
    finally:
        DatasetCatalog.remove("lambda_det_test_flag")
        MetadataCatalog.remove("lambda_det_test_flag")
    out, err = capsys.readouterr()
    assert "note:" not in err and re.search(r"detections \((\d+ (ant|bee|cat|dog)(, )?)+\)", out), out
    assert run_tool("demo.py", "--config-file", TOY_CONFIG, "--input", image, "--output", tmp_path / "numbers",
                    "--confidence-threshold", "0", "--opts", *TINY, "MODEL.WEIGHTS", tiny_weights,
                    "DATASETS.TEST", "('lambda_det_test_unknown',)") == 0
    out, err = capsys.readouterr()
    assert "note: the config's dataset 'lambda_det_test_unknown' is not registered" in err
    assert re.search(r"detections \((\d+ \d(, )?)+\)", out), out


def test_messages_that_suggested_what_was_given_or_could_not_be_followed(tmp_path, tiny_weights, capsys):
    """A json without categories was "0 classes (): set NUM_CLASSES 0", which is refused in turn;
    --eval-only --resume without a checkpoint suggested --resume; an export of one's own model did
    not say that --sample-image avoids the dataset; the LazyConfig trainer's --dataset named yacs keys."""
    from lambda_det.data import register_coco_dataset

    (tmp_path / "images").mkdir()
    (tmp_path / "none.json").write_text(json.dumps({"images": [], "annotations": [], "categories": []}))
    with pytest.raises(DatasetError, match="lists no categories, so there is nothing to detect"):
        register_coco_dataset("lambda_det_test_no_categories", str(tmp_path / "none.json"), str(tmp_path / "images"))

    assert run_tool("train_net.py", "--config-file", TOY_CONFIG, "--eval-only", "--resume", *TINY,
                    "OUTPUT_DIR", tmp_path / "empty") == 2
    err = capsys.readouterr().err
    assert "--eval-only needs weights" in err and "holds no checkpoint for --resume" in err and "or --resume to evaluate" not in err

    assert run_tool("export_model.py", "--config-file", TOY_CONFIG, "--format", "torchscript", "--export-method", "tracing",
                    "--output", tmp_path / "export", *TINY, "MODEL.WEIGHTS", tiny_weights,
                    "DATASETS.TEST", "('lambda_det_test_unknown',)") == 2
    assert "give one with --sample-image instead" in capsys.readouterr().err

    assert run_tool("lazyconfig_train_net.py", "--help") == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "dataloader.train.dataset.names" in out and "model.roi_heads.num_classes must be" in out and "DATASETS.TRAIN" not in out


def test_user_errors_are_value_errors_for_library_callers():
    assert issubclass(ConfigError, UserError) and issubclass(UserError, ValueError)
    assert issubclass(WeightsError, UserError) and issubclass(OutputError, UserError)


# ---------------------------------------------------------------------------------------------
# The docs say what the project's commands produce (the toy table lives in docs/toy_dataset.md)
# ---------------------------------------------------------------------------------------------
def test_readme_toy_dataset_numbers_are_what_the_stats_command_prints():
    from lambda_det.data.stats import dataset_statistics
    from lambda_det.data.toy import TOY_VERSION

    readme = (REPO / "docs" / "toy_dataset.md").read_text()
    assert f"~/.cache/lambda_det/{TOY_VERSION}" in readme
    for name in ("toy_shapes_train", "toy_shapes_val"):
        s = dataset_statistics(name)
        row = f"| {name} | {s['images']} | {s['instances']} | {s['small_pct']} | {s['medium_pct']} | {s['large_pct']} |"
        assert row in readme, row


def test_a_quoted_tilde_is_the_home_folder_not_a_folder_named_tilde(tmp_path, monkeypatch):
    """No shell expands "~" inside quotes or in a config file; the tools do, instead of creating ./~."""
    from lambda_det.utils.file_safety import path_argument

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert path_argument("~/runs/x") == tmp_path / "home" / "runs" / "x"
    assert load_config(TOY_CONFIG, ["OUTPUT_DIR", "~/runs/toy"]).OUTPUT_DIR == str(tmp_path / "home" / "runs" / "toy")
    assert load_config(TOY_CONFIG, ["MODEL.WEIGHTS", "~/w/model.pth"]).MODEL.WEIGHTS == str(tmp_path / "home" / "w" / "model.pth")
    assert load_config(TOY_CONFIG, ["MODEL.WEIGHTS", "detectron2://ImageNetPretrained/MSRA/R-50.pkl"]).MODEL.WEIGHTS == \
        "detectron2://ImageNetPretrained/MSRA/R-50.pkl"  # URLs stay as they are
    (tmp_path / "home").mkdir()
    config = (tmp_path / "home" / "toy.yaml")
    config.write_text(f"_BASE_: {Path(TOY_CONFIG).resolve()}\n")
    assert load_config("~/toy.yaml").MODEL.LAMBDA_RESNET.DEPTH == load_config(TOY_CONFIG).MODEL.LAMBDA_RESNET.DEPTH


def test_a_pipe_given_as_a_config_file_is_named_as_such(tmp_path):
    """A named pipe is no config file, and reading it would wait for a writer: say what it is."""
    from lambda_det.errors import ConfigError
    from lambda_det.lazy_config import load_lazy_config

    pipe = tmp_path / "config.yaml"
    os.mkfifo(pipe)
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_config(str(pipe))
    with pytest.raises(ConfigError, match="is not a regular file"):
        load_lazy_config(str(pipe))
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "missing.yaml"))


def test_only_a_regular_file_is_ever_replaced_by_a_write(tmp_path, tiny_weights, capsys):
    """--json X --overwrite replaced a pipe, a device or a link to one with a regular file (as root, /dev/null
    itself); nor may the weights the analysis loads be written over, nor a new folder be taken for a file
    name when a trailing '/' names it."""
    pipe, folder, link = tmp_path / "pipe", tmp_path / "folder", tmp_path / "stdout"
    os.mkfifo(pipe)
    folder.mkdir()
    link.symlink_to(pipe)
    for target in (pipe, folder, link):  # not /dev/null: a broken check would replace it, as root
        with pytest.raises(OutputError, match=f"could not write {re.escape(str(target))}: it is (a directory|not a regular file)"):
            write_text(target, "{}")
        with pytest.raises(OutputError, match="is (a directory|not a regular file)"):  # a set of files (reports, exports)
            with StagedFiles() as staged:
                write_text(staged.stage(tmp_path / "report.md"), "#")
                write_text(staged.stage(target), "{}")
    assert not (tmp_path / "report.md").exists()
    assert pipe.is_fifo() and link.is_symlink() and not list(folder.iterdir())
    analyze = ["analyze_model.py", "--config-file", TOY_CONFIG, "--tasks", "parameter", "--overwrite", "--json"]
    assert run_tool(*analyze, link, *TINY) == 2
    assert "is not a regular file (a pipe, socket or device); name a file" in capsys.readouterr().err
    before = tiny_weights.read_bytes()
    assert run_tool(*analyze, tiny_weights, *TINY, "MODEL.WEIGHTS", tiny_weights) == 2
    assert f"--json {tiny_weights} is the weights file; name a new file" in capsys.readouterr().err
    assert tiny_weights.read_bytes() == before
    assert run_tool(*analyze, f"{tmp_path}/new/", *TINY) == 2
    assert "ends in '/', which names a folder: name a file" in capsys.readouterr().err
    assert not (tmp_path / "new").exists()


def test_no_tool_writes_through_a_link_or_over_an_input_it_names(tmp_path, tiny_weights, capsys):
    """A user's trial: the lock file's pid replaced the file a .lambda_det.lock link pointed to (every tool,
    no --overwrite needed); --eval-only appended its log to the config a log.txt link pointed to; a folder
    with only a test-time-augmentation evaluation was trained into; analyze_model --json --overwrite replaced
    a _BASE_ config or annotations, compare_runs --overwrite one of the runs it compared."""
    picture = tmp_path / "picture.png"
    picture.write_bytes(b"\x89PNG not really")
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / ".lambda_det.lock").symlink_to(picture)
    with pytest.raises(OutputError, match="is a symbolic link .*where the run's lock file goes"):
        with run_folder_lock(str(locked)):
            pass
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(OutputError, match="cannot write there"):
        with run_folder_lock(str(tmp_path / "a_file" / "run")):
            pass
    config = tmp_path / "toy.yaml"
    config.write_text(f"_BASE_: {Path(TOY_CONFIG).resolve()}\n")
    logged = tmp_path / "logged"
    logged.mkdir()
    (logged / "log.txt").symlink_to(config)
    assert run_tool("train_net.py", "--config-file", config, "--eval-only", *TINY, "MODEL.WEIGHTS", tiny_weights,
                    "OUTPUT_DIR", logged) == 2
    assert "log.txt is a symbolic link, where the run's log goes" in capsys.readouterr().err
    tta = tmp_path / "tta" / "inference_TTA" / "toy_shapes_val"
    tta.mkdir(parents=True)
    (tta / "ap_by_size.json").write_text('{"bbox": {"AP": 50.0}}')
    assert run_tool("train_net.py", "--config-file", TOY_CONFIG, *TINY, "OUTPUT_DIR", tmp_path / "tta") == 2
    assert "inference_TTA" in capsys.readouterr().err
    before = {p: p.read_bytes() for p in (picture, config, tta / "ap_by_size.json")}
    assert run_tool("analyze_model.py", "--config-file", config, "--tasks", "parameter", "--json", config.with_name("base.json"),
                    *TINY) == 0
    assert run_tool("analyze_model.py", "--config-file", config, "--tasks", "parameter", "--overwrite", "--json",
                    tta / "ap_by_size.json", *TINY) == 2
    assert "is no analysis this tool wrote, which is all --overwrite replaces" in capsys.readouterr().err
    assert run_tool("analyze_model.py", "--config-file", config, "--tasks", "parameter", "--overwrite", "--json",
                    config.with_name("base.json"), *TINY) == 0  # its own earlier record is replaced
    shutil.copy(tta / "ap_by_size.json", tmp_path / "comparison.json")
    assert run_tool("compare_runs.py", tmp_path / "comparison.json", tta / "ap_by_size.json", "--output", tmp_path,
                    "--overwrite") == 2
    assert "comparison.json is the input" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before


def test_an_annotation_file_that_is_a_pipe_or_a_folder_is_named_before_anything_reads_it(tmp_path):
    from lambda_det.data.datasets import register_coco_dataset
    from lambda_det.errors import DatasetError

    (tmp_path / "images").mkdir()
    os.mkfifo(tmp_path / "pipe.json")
    (tmp_path / "folder.json").mkdir()
    with pytest.raises(DatasetError, match=r"annotation file .*pipe.json is not a regular file"):
        register_coco_dataset("pipe_ds", tmp_path / "pipe.json", tmp_path / "images")
    with pytest.raises(DatasetError, match=r"annotation file .*folder.json is a directory"):
        register_coco_dataset("folder_ds", tmp_path / "folder.json", tmp_path / "images")


def test_weights_that_load_nothing_say_why_in_strict_and_fine_tuning_loads_alike(tmp_path):
    """Every tensor of the model left out: names that fit with other shapes get the shape report, a
    torchvision-like file gets no timm advice, a state dict with no tensors is named so."""
    cfg = load_config(str(TOY_CONFIG), list(TINY))
    model = build_model(cfg)
    resized = {k: torch.zeros(*(s + 1 for s in v.shape)) for k, v in model.state_dict().items() if v.dim() > 0}
    files = {"resized": {"model": resized}, "torchvision": {"layer1.0.conv1.weight": torch.zeros(64, 64, 3, 3)},
             "empty": {"model": {}}}
    expected = {"resized": "other shapes", "torchvision": "none of its 1 tensors fits", "empty": "hold no tensors"}
    for name, content in files.items():
        torch.save(content, tmp_path / f"{name}.pth")
        for strict in (True, False):
            with pytest.raises(WeightsError, match=expected[name]) as info:
                Checkpointer(build_model(cfg), strict=strict).load(str(tmp_path / f"{name}.pth"))
            assert "convert_timm_to_d2" not in str(info.value)


def test_a_pipe_among_the_demo_inputs_is_skipped_as_what_it_is(tmp_path):
    from lambda_det.demo import collect_inputs

    os.mkfifo(tmp_path / "stream.jpg")
    found = collect_inputs([str(tmp_path / "stream.jpg"), str(tmp_path / "missing.jpg")])
    assert found.not_found == [str(tmp_path / "missing.jpg")]
    assert [(Path(p).name, reason) for p, reason in found.unreadable] == [("stream.jpg", "is not a regular file (a pipe, socket or device)")]


def test_weights_with_detectrons_query_options_are_checked_as_the_file_they_name(tiny_weights):
    """Detectron2 reads options after '?' in MODEL.WEIGHTS (matching_heuristics); the file check must
    look at the file, not at the name with its query."""
    cfg = load_config(str(TOY_CONFIG), list(TINY))
    assert weights_problem(f"{tiny_weights}?matching_heuristics=True") is None
    Checkpointer(build_model(cfg), strict=True).load(f"{tiny_weights}?matching_heuristics=True")
    with pytest.raises(WeightsError, match="no such file"):
        Checkpointer(build_model(cfg)).load(f"{tiny_weights}.missing?matching_heuristics=True")


def test_an_output_folder_inside_the_package_is_refused(tmp_path, capsys):
    """OUTPUT_DIR beside a config of the package's model zoo would write results into the installed
    package, where a reinstall replaces them."""
    import lambda_det

    inside = Path(lambda_det.__file__).parent / "model_zoo" / "configs" / "Toy" / "my_run"
    assert run_tool("train_net.py", "--config-file", TOY_CONFIG, *TINY, "OUTPUT_DIR", inside) == 2
    assert "lies inside the lambda_det package" in capsys.readouterr().err
    assert not inside.exists()


def test_ctrl_c_in_a_tool_is_one_line_and_exit_status_130(capsys):
    """Ctrl-C in the export or a benchmark printed a KeyboardInterrupt traceback."""
    from lambda_det.engine import run_main

    def interrupted():
        raise KeyboardInterrupt

    assert run_main(interrupted) == 130
    assert capsys.readouterr().err == "interrupted (Ctrl-C)\n"


def test_file_names_that_look_like_config_keys_are_read_as_files():
    """IMG_0001.JPG, a camera's name for a picture, has the shape of a yacs key (KEY.KEY): as a flag's
    value it is a file, and the flags after it are flags; a flag after the real overrides is still named."""
    positional = argparse.ArgumentParser()  # export_model.py's kind: the overrides trail the flags
    positional.add_argument("--sample-image")
    positional.add_argument("--output", required=True)
    positional.add_argument("--input-size", nargs=2)
    positional.add_argument("opts", nargs=argparse.REMAINDER, default=[])
    args = parse_args_with_overrides(positional, ["--sample-image", "IMG_0001.JPG", "--input-size", "A.B", "C.D",
                                                  "--output", "out", "MODEL.DEVICE", "cpu"])
    assert (args.sample_image, args.output, args.opts) == ("IMG_0001.JPG", "out", ["MODEL.DEVICE", "cpu"])
    with pytest.raises(SystemExit):
        parse_args_with_overrides(positional, ["--sample-image", "IMG_0001.JPG", "MODEL.DEVICE", "cpu", "--output", "out"])

    flagged = argparse.ArgumentParser()  # demo.py's kind: the overrides follow --opts
    flagged.add_argument("--input", nargs="+")
    flagged.add_argument("--output", required=True)
    flagged.add_argument("--opts", nargs=argparse.REMAINDER, default=[])
    args = parse_args_with_overrides(flagged, ["--input", "DCIM/IMG_0001.JPG", "IMG_0002.JPG", "--output", "out",
                                               "--opts", "MODEL.DEVICE", "cpu"])
    assert args.input == ["DCIM/IMG_0001.JPG", "IMG_0002.JPG"] and args.opts == ["MODEL.DEVICE", "cpu"]
    with pytest.raises(SystemExit):
        parse_args_with_overrides(flagged, ["--input", "IMG_0001.JPG", "--opts", "MODEL.DEVICE", "cpu", "--output", "out"])


def test_lazy_style_overrides_on_a_yacs_config_are_named():
    with pytest.raises(ConfigError, match=r"KEY VALUE pairs \(MODEL.WEIGHTS path/to/model.pth\), not KEY=VALUE .*'MODEL.WEIGHTS=/x'"):
        load_config(str(TOY_CONFIG), ["MODEL.WEIGHTS=/x", "MODEL.DEVICE=cpu"])


def test_a_late_flag_is_named_as_late(capsys):
    assert run_tool("demo.py", "--config-file", TOY_CONFIG, "--input", "IMG_0001.JPG", "--opts", "MODEL.DEVICE", "cpu",
                    "--output", "out") == 2
    assert "--output comes after the config overrides (from MODEL.DEVICE on)" in capsys.readouterr().err


def test_weights_that_do_not_fit_name_the_config_values_their_run_used(tiny_weights):
    """The config.yaml beside the weights says which of the model's values differ (test-time ones,
    which shape no weight, left out)."""
    cfg = load_config(str(TOY_CONFIG), [*TINY, "MODEL.FPN.OUT_CHANNELS", "64", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.3"])
    with pytest.raises(WeightsError) as raised:
        Checkpointer(build_model(cfg), strict=True, cfg=cfg).load(str(tiny_weights))
    assert (f"the run that saved it used {tiny_weights.parent / 'config.yaml'}, which differs in: "
            "MODEL.FPN.OUT_CHANNELS = 32 there, 64 here\n") in str(raised.value)


def test_config_differences_of_a_lazyconfig_go_inside_lists_of_nodes(tmp_path):
    """A cascade's box predictors are a list of nodes: a test-time value in them is left out, a real
    difference named by its index; a key one side leaves out is at its callable's default."""
    def cascade(threshold, dims, **extra):
        return OmegaConf.create({"model": {"roi_heads": {"box_predictors": [
            {"test_score_thresh": threshold, "fc_dim": dims}, {"test_score_thresh": threshold, "fc_dim": 1024}], **extra}}})

    saved = tmp_path / "config.yaml"
    saved.write_text(OmegaConf.to_yaml(cascade(0.05, 1024)))
    assert config_differences(saved, cascade(0.5, 1024)) == []
    assert config_differences(saved, cascade(0.5, 512, num_classes=3)) == [
        "model.roi_heads.box_predictors.0.fc_dim = 1024 there, 512 here", "model.roi_heads.num_classes = its default there, 3 here"]
