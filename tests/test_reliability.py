"""The last ways a run's results or a user's file could be replaced, and the tracebacks a user could
still see: each test here failed before the fix it names, and compares the sha256 of every file
involved before and after where files are involved."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import TINY, TOY_CONFIG, run_tool
from PIL import Image


def hashes(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


def demo(weights, inputs, output, *extra):
    return run_tool("demo.py", "--config-file", TOY_CONFIG, "--input", *map(str, inputs), "--output", output,
                    "--confidence-threshold", "0.99", *extra, "--opts", "MODEL.WEIGHTS", weights, *TINY)


def image(path: Path, height: int = 40, width: int = 60, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))
    return path


# ---------------------------------------------------------------------------------------------
# the demo
# ---------------------------------------------------------------------------------------------
def test_demo_glob_matches_inside_the_output_folder_are_inputs_and_never_replaced(tiny_weights, tmp_path, capsys):
    photos = tmp_path / "photos"
    image(photos / "x.png")
    image(photos / "y.jpg", seed=1)
    other = image(tmp_path / "elsewhere" / "x.jpg", seed=2)  # its picture would be photos/x.png
    before = hashes(tmp_path)
    for extra in ((), ("--overwrite",)):
        assert demo(tiny_weights, [str(photos / "*"), other], photos, *extra) == 2
        err = capsys.readouterr().err
        assert "holds the input" in err and "x.png" in err, err
        assert hashes(tmp_path) == before
    # a glob whose files are in the output folder finds them (it used to call them missing)
    assert demo(tiny_weights, [str(photos / "*.jpg")], photos) == 2
    err = capsys.readouterr().err
    assert "holds the input" in err and "no such file" not in err
    assert hashes(tmp_path) == before


def test_checked_writes_never_touch_a_file_named_like_their_temporary(tmp_path):
    from lambda_det.utils.file_safety import StagedFiles, write_text

    target = tmp_path / "report.json"
    mine = tmp_path / ".report.partial.json"  # the name the staged write used to take
    mine.write_text("the user's file")
    write_text(target, "{}")
    with StagedFiles() as staged:
        write_text(staged.stage(target), '{"a": 1}')
    assert mine.read_text() == "the user's file"
    assert target.read_text() == '{"a": 1}'
    assert sorted(p.name for p in tmp_path.iterdir()) == [".report.partial.json", "report.json"]  # no temporary left


def test_demo_folder_scan_skips_a_link_to_the_root_and_unreadable_entries_by_name(tiny_weights, tmp_path, capsys):
    photos = tmp_path / "photos"
    image(photos / "a.png")
    (photos / "everything").symlink_to("/")
    (photos / "loop").symlink_to(photos)
    locked = photos / "locked"
    image(locked / "b.png")
    os.chmod(locked, 0)
    try:
        assert demo(tiny_weights, [photos], tmp_path / "out") == 0
    finally:
        os.chmod(locked, 0o755)
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err
    assert f"skipped {photos / 'everything'}: a link to /, which holds the folder being scanned" in captured.out
    assert "1 input(s) processed" in captured.out or os.geteuid() == 0  # root reads the locked folder anyway


def test_demo_says_how_much_of_a_damaged_video_it_read_and_keeps_the_decoder_quiet(tiny_weights, tmp_path, capfd):
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 10, (64, 48))
    rng = np.random.default_rng(0)
    for _ in range(20):
        writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    writer.release()
    data = clip.read_bytes()
    clip.write_bytes(data[: len(data) // 2])  # cut off in the middle, the header still says 20 frames
    assert demo(tiny_weights, [clip], tmp_path / "out") == 0
    out, err = capfd.readouterr()
    assert "of the 20 frames its header announces" in out, out
    assert len(err.splitlines()) < 20, err[-2000:]  # no line per broken packet


def test_demo_draws_a_huge_image_within_its_pixel_budget(tiny_weights, tmp_path, capsys):
    from lambda_det.demo import MAX_PIXELS

    big = tmp_path / "big.png"
    Image.new("RGB", (6000, 4000), (90, 120, 150)).save(big)
    assert demo(tiny_weights, [big], tmp_path / "out") == 0
    out = capsys.readouterr().out
    drawn = cv2.imread(str(tmp_path / "out" / "big.png"))
    assert drawn.shape[0] * drawn.shape[1] <= MAX_PIXELS and abs(drawn.shape[1] / drawn.shape[0] - 1.5) < 0.01
    assert "6000x4000 is over the demo's" in out
