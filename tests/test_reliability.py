"""The last ways a run's results or a user's file could be replaced, and the tracebacks a user could
still see: each test here failed before the fix it names, and compares the sha256 of every file
involved before and after where files are involved."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import matplotlib.figure
import numpy as np
import pytest
import torch
from conftest import REPO, TINY, TOY_CONFIG, run_tool
from detectron2.engine import HookBase, TrainerBase
from detectron2.evaluation import coco_evaluation
from PIL import Image

from lambda_det.checkpoint import Checkpointer
from lambda_det.config import load_config
from lambda_det.data import prepare_dataset
from lambda_det.engine import evaluation_files, interrupted, run_folder_lock
from lambda_det.engine.launching import unfinished_evaluation_configs
from lambda_det.engine.trainer import CompletedRunEvalHook
from lambda_det.errors import OutputError
from lambda_det.evaluation import build_coco_evaluator, write_ap_by_size


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


def test_written_files_get_the_mode_of_the_umask_as_open_would_give_them(tmp_path):
    """Results are written through a temporary file that mkstemp creates private (0600); after the
    rename they carry the mode a plain open() would have given them (0644 under umask 022)."""
    from lambda_det.utils.file_safety import StagedFiles, write_text

    old = os.umask(0o022)
    try:
        write_text(tmp_path / "metrics.json", "{}")
        with StagedFiles() as staged:
            write_text(staged.stage(tmp_path / "report.md"), "# report")
        os.umask(0o077)
        write_text(tmp_path / "private.json", "{}")
    finally:
        os.umask(old)
    assert (tmp_path / "metrics.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "private.json").stat().st_mode & 0o777 == 0o600


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


@pytest.mark.parametrize("hard_links", [True, False])
def test_a_write_not_asked_to_replace_leaves_a_file_that_appeared_meanwhile(tmp_path, monkeypatch, hard_links):
    """A tool checks for earlier results at start; a file another run wrote since then stays. Before,
    the final rename replaced it. Without hard links (some network file systems) the check is redone
    just before the rename."""
    import errno

    from lambda_det.errors import OutputError
    from lambda_det.utils.file_safety import StagedFiles, write_text

    if not hard_links:
        def no_links(src, dst, **kwargs):
            raise OSError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr(os, "link", no_links)
    theirs = tmp_path / "analysis.json"
    theirs.write_text("another run's")
    with pytest.raises(OutputError, match=f"{theirs} appeared while this ran.*--overwrite"):
        write_text(theirs, "mine", replace=False)
    assert theirs.read_text() == "another run's"
    write_text(tmp_path / "new.json", "mine", replace=False)
    assert (tmp_path / "new.json").read_text() == "mine"

    # a set appears whole or not at all: the files it placed before the one that appeared go too
    names = ("comparison.json", "comparison.md", "comparison.png")
    (tmp_path / "set").mkdir()
    (tmp_path / "set" / names[1]).write_text("another run's")
    with pytest.raises(OutputError, match="comparison.md appeared while this ran"):
        with StagedFiles(replace=False) as staged:
            for name in names:
                write_text(staged.stage(tmp_path / "set" / name), "mine")
    assert sorted(p.name for p in (tmp_path / "set").iterdir()) == ["comparison.md"]
    assert (tmp_path / "set" / "comparison.md").read_text() == "another run's"
    # a file of the set that another run (with --overwrite) replaced since it was placed is that run's: kept
    import lambda_det.utils.file_safety as file_safety

    put = file_safety._put

    def theirs_replaces_the_first(tmp, path, replace):
        put(tmp, path, replace)
        if path.name == names[0]:
            (tmp_path / "theirs.tmp").write_text("their json")
            os.replace(tmp_path / "theirs.tmp", path)

    monkeypatch.setattr(file_safety, "_put", theirs_replaces_the_first)
    with pytest.raises(OutputError, match="comparison.md appeared while this ran"):
        with StagedFiles(replace=False) as staged:
            for name in names:
                write_text(staged.stage(tmp_path / "set" / name), "mine")
    assert (tmp_path / "set" / names[0]).read_text() == "their json"
    (tmp_path / "set" / names[0]).unlink()
    monkeypatch.setattr(file_safety, "_put", put)
    with StagedFiles() as staged:  # the default (asked to replace) replaces
        write_text(staged.stage(tmp_path / "set" / names[1]), "mine")
    assert (tmp_path / "set" / names[1]).read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["analysis.json", "new.json", "set"]  # no temporary left


def test_compare_runs_leaves_a_comparison_written_while_it_ran(tmp_path, monkeypatch, capsys):
    import lambda_det.evaluation.ap_by_size as ap_by_size
    from lambda_det.evaluation import write_ap_by_size

    run = tmp_path / "run"
    write_ap_by_size({"bbox": {"AP": 50.0, "APs": 40.0, "APm": 50.0, "APl": 60.0}}, run, "run")
    out = tmp_path / "cmp"
    chart = ap_by_size.bar_chart

    def another_run_finishes_first(rows, path, title):
        chart(rows, path, title)
        (out / "comparison.md").write_text("another run's comparison")

    monkeypatch.setattr(ap_by_size, "bar_chart", another_run_finishes_first)
    assert run_tool("compare_runs.py", run, "--output", out) == 2
    assert "appeared while this ran" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["comparison.md"]
    assert (out / "comparison.md").read_text() == "another run's comparison"
    assert run_tool("compare_runs.py", run, "--output", out, "--overwrite") == 0  # asked: replaced
    assert "another run's" not in (out / "comparison.md").read_text()


def test_analyze_model_leaves_an_analysis_written_while_it_ran(tmp_path, monkeypatch, capsys):
    import lambda_det.analysis

    out = tmp_path / "analysis.json"
    analyze = lambda_det.analysis.analyze

    def another_run_finishes_first(*args, **kwargs):
        summary = analyze(*args, **kwargs)
        out.write_text("another run's analysis")
        return summary

    monkeypatch.setattr(lambda_det.analysis, "analyze", another_run_finishes_first)
    assert run_tool("analyze_model.py", "--config-file", TOY_CONFIG, "--tasks", "parameter", "--json", out, *TINY) == 2
    assert "appeared while this ran" in capsys.readouterr().err
    assert out.read_text() == "another run's analysis" and [p.name for p in tmp_path.iterdir()] == ["analysis.json"]


def test_a_dangling_link_at_an_output_name_is_refused_at_start(tmp_path, capsys):
    """It passed the check at start (Path.exists follows links) and was then reported as a file that
    appeared while the tool ran."""
    out = tmp_path / "analysis.json"
    out.symlink_to(tmp_path / "elsewhere" / "analysis.json")
    assert run_tool("analyze_model.py", "--config-file", TOY_CONFIG, "--tasks", "parameter", "--json", out, *TINY) == 2
    err = capsys.readouterr().err
    assert "would be overwritten" in err and "appeared while this ran" not in err
    assert out.is_symlink() and not (tmp_path / "elsewhere").exists()


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


# ---------------------------------------------------------------------------------------------
# training, resuming, evaluating
# ---------------------------------------------------------------------------------------------
def train(out: Path, small_val: str, *extra: str) -> int:
    """A 4-iteration run of the tiny model (checkpoints at iterations 1 and 3, then model_final);
    ``extra``: flags, then config overrides."""
    flags = [e for e in extra if e.startswith("--")]
    overrides = [e for e in extra if not e.startswith("--")]
    return run_tool("train_net.py", "--config-file", TOY_CONFIG, *flags, *TINY, "SOLVER.MAX_ITER", "4",
                    "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
                    "DATASETS.TEST", f"('{small_val}',)", *overrides, "OUTPUT_DIR", out)


@pytest.fixture(scope="module")
def finished(tmp_path_factory, small_val):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert train(out, small_val) == 0
    return out


def copy_of(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / run.name))


def test_resuming_a_finished_run_changes_nothing_and_says_so(finished, small_val, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    before = hashes(run)
    # the same settings, or other test settings (which used to replace its AP at 128 px by AP at 96 px)
    for extra in ((), ("INPUT.MIN_SIZE_TEST", "96", "INPUT.MAX_SIZE_TEST", "96")):
        assert train(run, small_val, "--resume", *extra) == 0
        out = capsys.readouterr().out
        assert "holds a finished run (model_final.pth: 4 of SOLVER.MAX_ITER=4 iterations)" in out and "--overwrite" in out
        assert hashes(run) == before
    # asked: it evaluates again
    assert train(run, small_val, "--resume", "--overwrite") == 0
    assert hashes(run)["model_final.pth"] == before["model_final.pth"]


def test_resuming_a_run_stopped_during_its_final_evaluation_writes_that_evaluation(finished, small_val, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    evaluation = run / "inference" / small_val
    final_predictions = (evaluation / "coco_instances_results.json").read_bytes()
    weights = {k: v for k, v in hashes(run).items() if k.startswith("model_")}
    shutil.rmtree(run / "inference")  # killed after model_final.pth, before its evaluation wrote anything
    assert train(run, small_val, "--resume") == 0
    assert "whose final evaluation was never finished (the run stopped before it ended): evaluating it now" in (
        capsys.readouterr().out)
    assert json.loads((evaluation / "ap_by_size.json").read_text())["iterations_trained"] == 4
    assert (evaluation / "coco_instances_results.json").read_bytes() == final_predictions
    assert {k: v for k, v in hashes(run).items() if k.startswith("model_")} == weights

    # killed half-way through it (predictions written, no ap_by_size.json): written again, whole
    (evaluation / "ap_by_size.json").unlink()
    assert train(run, small_val, "--resume") == 0
    assert "evaluating it now" in capsys.readouterr().out and (evaluation / "ap_by_size.json").is_file()

    # what it holds is the run's evaluation during training (TEST.EVAL_PERIOD) at 2 iterations: replaced
    report = json.loads((evaluation / "ap_by_size.json").read_text())
    report["provenance"].update(weights=f"training state of {run.resolve()}", iterations_trained=2)
    (evaluation / "ap_by_size.json").write_text(json.dumps(report))
    assert train(run, small_val, "--resume") == 0
    assert "replacing its evaluation at fewer iterations" in capsys.readouterr().out
    assert json.loads((evaluation / "ap_by_size.json").read_text())["provenance"]["iterations_trained"] == 4

    # an evaluation of other weights there (--eval-only --overwrite) is the user's: kept
    report["provenance"].update(weights=str(tmp_path / "elsewhere" / "model.pth"), iterations_trained=2)
    (evaluation / "ap_by_size.json").write_text(json.dumps(report))
    before = hashes(run)
    assert train(run, small_val, "--resume") == 0
    assert "nothing to train, and nothing was changed" in capsys.readouterr().out
    # (log.txt: the resumes' log handlers, still open in this process, record the checks' lines)
    assert {k: v for k, v in hashes(run).items() if k != "log.txt"} == {k: v for k, v in before.items() if k != "log.txt"}


def test_resume_evaluates_a_finished_run_only_over_its_own_outdated_evaluations(tmp_path, capsys):
    """What --resume of a finished run may replace unasked: only evaluations its training wrote at fewer
    iterations, and only when none of its datasets has a current one."""
    from lambda_det.engine import YACS_KEYS, should_resume_finished_run

    run = tmp_path / "run"
    final = run / "model_final.pth"
    reports = [run / "inference" / name / "ap_by_size.json" for name in ("a", "b")]
    reports[0].parent.mkdir(parents=True)

    def report(**provenance):
        reports[0].write_text(json.dumps({"provenance": provenance}))
        return [reports[0]]

    def resumes(iterations, max_iter, earlier, checkpoint=final):
        return should_resume_finished_run(YACS_KEYS, str(run), (checkpoint, iterations), max_iter, earlier, reports)

    # the final evaluation of dataset a is there, b's is missing: evaluating again would replace a's too
    trained_4 = report(weights=str(final.resolve()), initialized_from="scratch", iterations_trained=4)
    assert not resumes(4, 4, trained_4)
    out = capsys.readouterr().out
    assert f"Its final evaluation is incomplete (no final {reports[1]})" in out and "--overwrite" in out
    assert resumes(6, 6, trained_4)  # trained on to 6 and stopped in its final evaluation: a's is outdated
    # an --eval-only evaluation of one of its checkpoints is the user's: kept
    assert not resumes(6, 6, report(weights=str(run / "model_0000001.pth"), weights_sha256="0" * 16, iterations_trained=2))
    # a shorter SOLVER.MAX_ITER than the run trained, or a last checkpoint other than model_final.pth:
    # a resumed evaluation would describe another model than the run's
    reports[0].unlink()
    assert not resumes(4, 2, []) and not resumes(6, 6, [], checkpoint=run / "model_0000005.pth")
    assert resumes(4, 4, [])


def test_resume_refuses_a_truncated_final_checkpoint_and_changes_nothing(finished, small_val, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    final = run / "model_final.pth"
    final.write_bytes(final.read_bytes()[: final.stat().st_size // 2])  # killed while writing it
    (run / "last_checkpoint").write_text("model_0000003.pth")
    before = hashes(run)
    assert train(run, small_val, "--resume") == 2
    err = capsys.readouterr().err
    assert f"--resume: {final} is truncated" in err and "mv " in err
    assert hashes(run) == before


def test_evaluation_refuses_to_replace_any_file_an_evaluation_writes(tiny_weights, small_val, tmp_path, capsys):
    folder = tmp_path / "eval" / "inference" / small_val
    for name in ("coco_instances_results.json", "instances_predictions.pth", "config.yaml"):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(f"an earlier evaluation's {name}")
        before = hashes(tmp_path / "eval")
        assert run_tool("train_net.py", "--config-file", TOY_CONFIG, "--eval-only", *TINY, "MODEL.WEIGHTS", tiny_weights,
                        "DATASETS.TEST", f"('{small_val}',)", "OUTPUT_DIR", tmp_path / "eval") == 2
        err = capsys.readouterr().err
        assert name in err and "--overwrite" in err
        assert hashes(tmp_path / "eval") == before
        (folder / name).unlink()


def test_the_main_job_continues_only_its_own_runs(finished, tmp_path, capsys):
    run = copy_of(finished, tmp_path)
    image(run / "demo" / "000001.png")  # the user's own picture, where the main job draws its first
    before = hashes(run)
    assert run_tool("quickstart.py", "--output", run, "--max-iter", "4") == 2
    assert "holds a run the main job did not make" in capsys.readouterr().err
    assert hashes(run) == before


def test_a_second_run_into_a_folder_in_use_is_refused_with_the_holders_pid(tmp_path, small_val, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom lambda_det.engine import run_folder_lock\n"
                               "with run_folder_lock(sys.argv[1]):\n    print('held', flush=True)\n    time.sleep(120)",
                               str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = hashes(out)
        assert train(out, small_val, "--resume") == 2
        assert f"is in use by another run (pid {holder.pid})" in capsys.readouterr().err
        # named by the key of the tool's own config
        lazy = REPO / "configs" / "Toy" / "mask_rcnn_LambdaR_26_FPN_toy_LSJ.py"
        assert run_tool("lazyconfig_train_net.py", "--config-file", lazy, f"train.output_dir={out}") == 2
        assert f"train.output_dir {out} is in use by another run (pid {holder.pid})" in capsys.readouterr().err
        assert hashes(out) == before
    finally:
        holder.kill()
        holder.wait()
    assert train(out, small_val, "--resume") == 0  # the lock ends with its process


def _train_in_subprocess(out: Path, *extra: str, max_iter: int = 200):
    from conftest import REPO

    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", str(TOY_CONFIG), *TINY,
           "SOLVER.MAX_ITER", str(max_iter), "SOLVER.CHECKPOINT_PERIOD", "2", "DATASETS.TEST", "()", *extra,
           "OUTPUT_DIR", str(out)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    # a suite started in the background (`make test &`) inherits an ignored SIGINT, and Python then
    # installs no KeyboardInterrupt handler: the child gets Ctrl-C's default, as a terminal gives it
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def test_ctrl_c_during_a_checkpoint_save_stays_an_interrupt_and_leaves_no_partial_file(tmp_path, monkeypatch):
    """torch's zip writer fails in its cleanup when Ctrl-C stops a save; that RuntimeError used to hide
    the interrupt (exit 1 and a traceback instead of the resume advice) and leave the .partial file."""
    from detectron2.modeling import build_model

    from lambda_det import load_config

    checkpointer = Checkpointer(build_model(load_config(TOY_CONFIG, list(TINY))), save_dir=str(tmp_path))
    checkpointer.save("model_0000009")

    def interrupted_save(data, f):
        try:
            f.write(b"half a checkpoint")
            raise KeyboardInterrupt
        finally:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")

    monkeypatch.setattr(torch, "save", interrupted_save)
    with pytest.raises(KeyboardInterrupt):
        checkpointer.save("model_0000019")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000009.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000009.pth"


def test_the_next_run_removes_the_unfinished_checkpoint_a_killed_run_left(tmp_path, capsys):
    """A kill -9 during a save left its hidden temporary file (gigabytes for a real model) for good."""
    from lambda_det.engine import run_folder_lock
    from lambda_det.utils.file_safety import temporary_path

    run = tmp_path / "run"
    (run / "inference" / "val").mkdir(parents=True)
    (run / "inference" / "val" / "deeper").mkdir()
    leave = ("import os, sys; from lambda_det.utils.file_safety import temporary_path as t; "
             "[print(t(p)) for p in sys.argv[1:]]; os._exit(9)")  # dies as a kill -9 would: nothing cleaned up
    killed = subprocess.run([sys.executable, "-c", leave, run / "model_0000009.pth", run / "inference" / "val" / "x.json",
                             run / "inference" / "val" / "deeper" / "too_deep.json"], capture_output=True, text=True)
    assert killed.returncode == 9, killed.stderr
    dead = [Path(line) for line in killed.stdout.split()]
    assert all(p.is_file() for p in dead)
    live = temporary_path(run / "model_0000019.pth")  # a writer that still runs (this process)
    # another machine's, boot's or container's writer: its pid means nothing here
    foreign = run / dead[0].name.replace(dead[0].name.split(".")[-3][-12:], "abcdef123456")
    foreign.write_bytes(b"")
    users = run / ".model_0000009.partial.pth"  # a name it never makes
    users.write_bytes(b"mine")
    with run_folder_lock(str(run)):
        pass
    assert "removed 2 unfinished file(s) a killed process left in" in capsys.readouterr().err
    assert not dead[0].exists() and not dead[1].exists()
    assert dead[2].exists() and live.exists() and foreign.exists() and users.read_bytes() == b"mine"
    # a name at the file system's 255 bytes still gets a temporary one (its stem shortened)
    longest = temporary_path(run / ("\u4e2d" * 83 + ".jpg"))
    assert longest.suffix == ".jpg" and len(longest.name.encode()) <= 255


def test_a_demo_removes_the_unfinished_picture_a_killed_demo_left(tiny_weights, tmp_path, capsys):
    photo = tmp_path / "in" / "photo.png"
    photo.parent.mkdir()
    Image.new("RGB", (64, 48), (90, 120, 150)).save(photo)
    out = tmp_path / "out"
    out.mkdir()
    leave = "import os, sys; from lambda_det.utils.file_safety import temporary_path as t; print(t(sys.argv[1])); os._exit(9)"
    killed = subprocess.run([sys.executable, "-c", leave, out / "photo.png"], capture_output=True, text=True)
    left = Path(killed.stdout.strip())
    assert left.is_file(), killed.stderr
    assert demo(tiny_weights, [photo], out) == 0  # (tools/demo.py locks its --output folder, as training does)
    assert "removed 1 unfinished file(s) a killed process left in" in capsys.readouterr().err
    assert not left.exists() and (out / "photo.png").is_file()


def test_ctrl_c_names_the_last_checkpoint_and_the_resume_command(tmp_path):
    out = tmp_path / "run"
    proc = _train_in_subprocess(out)
    deadline = time.time() + 300
    while not (out / "last_checkpoint").exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr and "Traceback" not in stdout, stderr[-3000:]
    last = (out / "last_checkpoint").read_text().strip()
    assert f"error: interrupted; the last checkpoint is {out / last}" in stderr
    assert "train_net.py --resume" in stderr


@pytest.mark.parametrize("clipping", ["True", "False"])
def test_a_diverging_run_stops_with_one_line_and_keeps_its_checkpoints(tmp_path, clipping):
    out = tmp_path / "run"
    proc = _train_in_subprocess(out, "SOLVER.BASE_LR", "100.0", "SOLVER.WARMUP_ITERS", "0",
                                "SOLVER.CLIP_GRADIENTS.ENABLED", clipping, max_iter=60)
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 2, stderr[-3000:]
    assert "Traceback" not in stderr and "Traceback" not in stdout, (stdout + stderr)[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "training diverged at iteration" in lines[0] and "SOLVER.BASE_LR=100.0" in lines[0], stderr[-2000:]
    assert not (out / "model_final.pth").exists()
    for path in out.glob("model_*.pth"):  # what was written before the divergence still loads
        from lambda_det.checkpoint import weights_problem

        assert weights_problem(str(path)) is None


# ---------------------------------------------------------------------------------------------
# a user's own COCO-format dataset, from the command line
# ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def own_dataset(tmp_path_factory):
    from lambda_det.data import generate_toy_dataset

    return generate_toy_dataset(tmp_path_factory.mktemp("mine"), splits={"train": 4, "val": 3}, seed=7)


def own(root: Path, *extra: str, flags=(), name="mine"):
    train_json, val_json = root / "annotations/instances_train.json", root / "annotations/instances_val.json"
    return ("--dataset", f"{name}_train", train_json, root / "train", "--dataset", f"{name}_val", val_json, root / "val",
            *flags, "--config-file", TOY_CONFIG, *TINY, "DATASETS.TRAIN", f"('{name}_train',)",
            "DATASETS.TEST", f"('{name}_val',)", "SOLVER.MAX_ITER", "2", "SOLVER.WARMUP_ITERS", "1", "SOLVER.STEPS", "()",
            *extra)


def test_training_and_evaluating_a_users_coco_dataset_from_the_command_line(own_dataset, tmp_path, capsys):
    assert run_tool("train_net.py", *own(own_dataset, "OUTPUT_DIR", tmp_path / "run")) == 0
    assert (tmp_path / "run" / "inference" / "mine_val" / "ap_by_size.json").is_file()
    assert run_tool("dataset_stats.py", "mine_val", "--dataset", "mine_val", own_dataset / "annotations/instances_val.json",
                    own_dataset / "val") == 0
    assert "| mine_val | 3 |" in capsys.readouterr().out
    # the class count is checked against the dataset's categories
    assert run_tool("train_net.py", *own(own_dataset, "MODEL.ROI_HEADS.NUM_CLASSES", "3", "OUTPUT_DIR", tmp_path / "x")) == 2
    assert "has 4 classes" in capsys.readouterr().err


def test_a_coco_json_with_stray_categories_or_missing_images_is_named_before_anything_starts(own_dataset, tiny_weights,
                                                                                            tmp_path, capsys):

    for damage, expected in (("category", "whose category_id is not among its categories"),
                             ("image", "are not in")):
        root = Path(shutil.copytree(own_dataset, tmp_path / damage))
        val = root / "annotations/instances_val.json"
        data = json.loads(val.read_text())
        if damage == "category":
            data["annotations"][1]["category_id"] = 9
        else:
            (root / "val" / data["images"][0]["file_name"]).unlink()
        val.write_text(json.dumps(data))
        for flags in ((), ("--eval-only",)):
            out = tmp_path / f"run_{damage}_{len(flags)}"
            extra = ("MODEL.WEIGHTS", tiny_weights) if flags else ()
            assert run_tool("train_net.py", *own(root, *extra, "OUTPUT_DIR", out, flags=flags, name=damage)) == 2
            err = capsys.readouterr().err
            assert f"dataset '{damage}_val': " in err and expected in err and str(val) in err, err
            assert "Traceback" not in err
            assert not out.exists()  # no inference/<name>/config.yaml left behind


def test_dataset_stats_names_what_is_wrong_in_a_coco_json_and_counts_no_crowd_region_as_an_instance(own_dataset, tmp_path,
                                                                                                    capsys):
    """Common defects of a hand-made COCO json were tracebacks (KeyError, TypeError); a crowd region was
    counted in its class but not in the instances."""
    def stats(name, change):
        root = Path(shutil.copytree(own_dataset, tmp_path / name))
        val = root / "annotations/instances_val.json"
        data = json.loads(val.read_text())
        change(data)
        val.write_text(json.dumps(data))
        status = run_tool("dataset_stats.py", name, "--dataset", name, val, root / "val")
        return status, capsys.readouterr()

    for name, change, expected in (
            ("no_area", lambda d: d["annotations"][0].pop("area"), "1 annotation(s) without a numeric 'area'"),
            ("not_a_list", lambda d: d.update(annotations=5), "'annotations' must be a list of objects"),
            ("unnamed", lambda d: d["categories"][0].pop("name"), "of its categories lack an 'id' or a 'name'"),
            ("mixed_ids", lambda d: d["categories"][0].update(id="a"), "its category ids do not sort")):
        status, captured = stats(name, change)
        assert status == 2 and expected in captured.err and "Traceback" not in captured.err, (name, captured.err)

    def stray_and_crowd(data):
        data["annotations"][0]["category_id"] = 7
        data["annotations"][1]["iscrowd"] = 1
    status, captured = stats("stray", stray_and_crowd)
    assert status == 0, captured.err
    row = next(line for line in captured.out.splitlines() if line.startswith("| stray |"))
    counts = [int(part.rsplit(" ", 1)[1]) for part in row.split("|")[-2].strip().split(", ")]
    total = len(json.loads((own_dataset / "annotations/instances_val.json").read_text())["annotations"])
    assert int(row.split("|")[3]) == sum(counts) == total - 1  # the crowd region in neither
    assert "category_id 7 (not among its categories) 1" in row

    def string_ids(data):  # Detectron2 sorts and maps category ids of any one kind: so do we
        for c in data["categories"]:
            c["id"] = str(c["id"])
        for a in data["annotations"]:
            a["category_id"] = str(a["category_id"])
    status, captured = stats("string_ids", string_ids)
    assert status == 0 and "circle" in captured.out, captured.err
    status, captured = stats("empty", lambda d: d.update(annotations=[]))  # no instances: no shares (was Python's None)
    assert status == 0 and re.search(r"\| empty \| \d+ \| 0 \| - \| - \| - \|", captured.out), captured.out

    def same_names(data):  # two categories of one name are two classes to the model: counted apart
        for c in data["categories"][:2]:
            c["name"] = "thing"
    status, captured = stats("same_names", same_names)
    ids = [c["id"] for c in json.loads((own_dataset / "annotations/instances_val.json").read_text())["categories"][:2]]
    assert status == 0 and all(f"thing (id {i}) " in captured.out for i in ids), captured.out


def test_a_cache_variable_naming_a_file_is_one_line(tmp_path):
    from conftest import REPO

    cache = tmp_path / "not_a_folder"
    cache.write_text("mine")
    env = dict(os.environ, LAMBDA_DET_CACHE=str(cache), PYTHONPATH=str(REPO), LAMBDA_DET_FUSED="0")
    for argv in (["dataset_stats.py", "toy_shapes_val"],
                 ["train_net.py", "--config-file", str(TOY_CONFIG), *TINY, "OUTPUT_DIR", str(tmp_path / "run")]):
        done = subprocess.run([sys.executable, str(REPO / "tools" / argv[0]), *argv[1:]], capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 2, done.stderr[-2000:]
        assert "Traceback" not in done.stderr and "LAMBDA_DET_CACHE=" in done.stderr, done.stderr[-2000:]
    assert cache.read_text() == "mine"


def test_a_full_disk_while_saving_a_checkpoint_is_one_line_naming_it_and_leaves_no_partial_file(tmp_path):
    from conftest import REPO

    out = tmp_path / "run"
    argv = [str(REPO / "tools" / "train_net.py"), "--config-file", str(TOY_CONFIG), *TINY, "SOLVER.MAX_ITER", "6",
            "SOLVER.CHECKPOINT_PERIOD", "2", "DATASETS.TEST", "()", "OUTPUT_DIR", str(out)]
    code = (
        "import errno, runpy, sys, torch\n"
        "real = torch.save\n"
        "def full(obj, f, *a, **k):\n"
        "    if 'model_0000003' in str(getattr(f, 'name', f)):\n"
        "        f.write(b'x' * 100000)\n"
        "        raise OSError(errno.ENOSPC, 'No space left on device')\n"
        "    return real(obj, f, *a, **k)\n"
        "torch.save = full\n"
        f"sys.argv = {argv!r}\n"
        "runpy.run_path(sys.argv[0], run_name='__main__')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))
    assert done.returncode == 1, done.stderr[-3000:]
    assert "Traceback" not in done.stderr and "Traceback" not in done.stdout, (done.stdout + done.stderr)[-3000:]
    assert f"error: the run stopped on {out / 'model_0000003.pth'}: No space left on device" in done.stderr
    assert f"newest: {out / 'model_0000001.pth'}" in done.stderr
    assert sorted(p.name for p in out.iterdir() if "model_" in p.name) == ["model_0000001.pth"]  # no partial file
    assert (out / "last_checkpoint").read_text() == "model_0000001.pth"


def test_a_full_disk_inside_torchs_zip_writer_is_named_by_its_oserror(tmp_path, monkeypatch):
    """On a real full disk torch's zip writer fails again in its cleanup: a RuntimeError ("unexpected pos")
    raised while handling the OSError, which was a 45-line traceback instead of the one line above."""
    def full(obj, f, *args, **kwargs):
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as info:
        Checkpointer(torch.nn.Linear(2, 2), save_dir=str(tmp_path)).save("model_0000001")
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(tmp_path / "model_0000001.pth"))
    assert list(tmp_path.iterdir()) == []  # no partial file


def _zip_writer_on_a_full_disk(obj, f, *args, **kwargs):
    """torch.save as it fails on a full disk: part of the file written, then its cleanup's RuntimeError."""
    f.write(b"PK\x03\x04 part of a zip")
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError:
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0")


def test_a_full_disk_in_the_evaluators_files_leaves_no_half_file_and_names_it(tmp_path, monkeypatch):
    """Detectron2's COCOEvaluator writes instances_predictions.pth under its own name: a full disk left a
    damaged file there (which the next evaluation had to be told to replace) and a traceback."""
    prepare_dataset("toy_shapes_val")
    cfg = load_config(str(TOY_CONFIG), ["MODEL.DEVICE", "cpu"])
    evaluator = build_coco_evaluator(cfg, "toy_shapes_val", str(tmp_path))
    evaluator.reset()
    evaluator._predictions = [{"image_id": 1, "instances": []}]
    monkeypatch.setattr(torch, "save", _zip_writer_on_a_full_disk)
    with pytest.raises(OSError) as info:
        evaluator.evaluate()
    assert (info.value.errno, info.value.filename) == (errno.ENOSPC, str(tmp_path / "instances_predictions.pth"))
    assert list(tmp_path.iterdir()) == []
    # the results after the predictions: only the half results go, the whole predictions stay
    monkeypatch.undo()
    real_open = coco_evaluation.PathManager.open

    def full_for_json(path, mode="r", **kwargs):
        f = real_open(path, mode, **kwargs)
        if str(path).endswith(".json") and "w" in mode:
            def write(text):
                real_write(text[:10])
                raise OSError(errno.ENOSPC, "No space left on device")
            real_write, f.write = f.write, write
        return f

    monkeypatch.setattr(coco_evaluation.PathManager, "open", full_for_json)
    evaluator.reset()
    evaluator._predictions = [{"image_id": 1, "instances": []}]
    with pytest.raises(OSError) as info:
        evaluator.evaluate()
    assert info.value.filename == str(tmp_path / "coco_instances_results.json")
    assert [p.name for p in tmp_path.iterdir()] == ["instances_predictions.pth"]
    assert torch.load(tmp_path / "instances_predictions.pth") == [{"image_id": 1, "instances": []}]


def test_a_full_disk_while_a_report_is_written_names_the_report_not_its_temporary_file(tmp_path, monkeypatch):
    """The plot's writer named the file it was handed, the set's temporary name (.ap_by_size.<...>.partial.png)."""
    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", full)
    results = {task: {m: 50.0 for m in ("AP", "AP50", "AP75", "APs", "APm", "APl")} for task in ("bbox", "segm")}
    with pytest.raises(OutputError) as info:
        write_ap_by_size(results, tmp_path, "run")
    assert str(info.value).startswith(f"could not write {tmp_path / 'ap_by_size.png'}: "), info.value
    assert list(tmp_path.iterdir()) == []


def test_a_run_whose_last_step_failed_is_not_evaluated(tmp_path):
    """Detectron2 runs after_train in a finally: its EvalHook evaluated the weights a failed final
    checkpoint never saved, and that evaluation's own error (the same full disk) hid the first."""
    class FullDiskAtTheEnd(HookBase):
        def after_step(self):
            if self.trainer.iter + 1 == self.trainer.max_iter:
                raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "model_final.pth"))

    class Steps(TrainerBase):
        def run_step(self):
            pass

    # (a run that fails in its last step; one that ends; a finished run resumed, whose loop does not run)
    for fails, start, expected in ((True, 0, []), (False, 0, ["evaluated"]), (False, 3, ["evaluated"])):
        evaluated, trainer = [], Steps()
        trainer.register_hooks([FullDiskAtTheEnd() if fails else None, CompletedRunEvalHook(0, lambda: evaluated.append("evaluated"))])
        if fails:
            with pytest.raises(OSError, match="No space left on device"):
                trainer.train(start, 3)
        else:
            trainer.train(start, 3)
        assert evaluated == expected


def test_a_full_disk_when_the_lock_is_taken_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    write = os.write

    def full(fd, data):
        if data == str(os.getpid()).encode():  # the lock's pid; not pytest's own writes
            raise OSError(errno.ENOSPC, "No space left on device")
        return write(fd, data)

    monkeypatch.setattr(os, "write", full)
    with pytest.raises(OutputError, match=r"--output .*out: cannot write there \(No space left on device\)"):
        with run_folder_lock(str(tmp_path / "out"), "--output"):
            pass
    monkeypatch.undo()
    assert list((tmp_path / "out").iterdir()) == []


def test_an_evaluation_interrupted_before_its_results_is_said_so_and_does_not_block_the_next(tmp_path):
    """--eval-only writes its config.yaml first; after a Ctrl-C it alone was left, and the next evaluation
    was refused for it. Only a lone config.yaml written since the run began is removed."""
    earlier = tmp_path / "inference" / "other" / "config.yaml"  # another evaluation's, interrupted before this run
    earlier.parent.mkdir(parents=True)
    earlier.write_text("model: {}\n")
    os.utime(earlier, ns=(0, 0))
    since = 1  # the run began after that one, before the files below (no clock of the file system's is compared)
    ours, finished = tmp_path / "inference" / "val" / "config.yaml", tmp_path / "inference_TTA" / "val" / "config.yaml"
    for config in (ours, finished):
        config.parent.mkdir(parents=True)
        config.write_text("model: {}\n")
    (finished.parent / "instances_predictions.pth").write_bytes(b"results")
    assert evaluation_files(str(tmp_path), ["val"]) == [ours]  # protected, as every file an evaluation writes
    assert unfinished_evaluation_configs(str(tmp_path), since, remove=True) == [ours]
    assert not ours.exists() and finished.exists() and earlier.exists()
    message = interrupted(str(tmp_path), ["python", "tools/lazyconfig_train_net.py", "--eval-only"], "train.output_dir", eval_only=True)
    assert message.startswith(f"interrupted before the evaluation finished (train.output_dir {tmp_path})")
    assert "checkpoint" not in message
    fresh = interrupted(str(tmp_path / "new"), ["python", "tools/train_net.py", "--resume"])
    assert fresh.startswith(f"interrupted before the first checkpoint was written (OUTPUT_DIR {tmp_path / 'new'}); start again "
                            "with:\n  python tools/train_net.py --resume")


def test_an_integer_for_a_float_key_says_how_to_write_it(tmp_path, capsys):
    assert run_tool("train_net.py", "--config-file", TOY_CONFIG, "SOLVER.BASE_LR", "100", "OUTPUT_DIR", tmp_path) == 2
    err = capsys.readouterr().err
    assert "SOLVER.BASE_LR 100: SOLVER.BASE_LR takes a number with a decimal point, e.g. 100.0" in err
    assert "Type mismatch" not in err


def test_the_timm_converter_refuses_a_pkl_output_and_creates_no_folder_for_a_bad_input(tmp_path, capsys):
    bad = tmp_path / "not_weights.pth"
    bad.write_text("no checkpoint")
    assert run_tool("convert_timm_to_d2.py", bad, "--output", tmp_path / "new" / "deeper" / "out.pth") == 2
    assert "not_weights.pth is not a checkpoint" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_weights.pth"]  # no empty folders left behind
    assert run_tool("convert_timm_to_d2.py", bad, "--output", tmp_path / "weights.pkl") == 2
    assert "name the file .pth" in capsys.readouterr().err


def test_weights_of_which_nothing_fits_are_refused_and_a_timm_file_is_sent_to_the_converter(tmp_path, capsys):
    """A raw timm state dict as MODEL.WEIGHTS used to load nothing, warn per tensor and train from
    random weights; any file none of whose tensors fits the model is refused before training."""
    timm_like = tmp_path / "lambda_resnet26t_timm.pth"
    torch.save({"stem.conv1.conv.weight": torch.zeros(24, 3, 3, 3), "stages.0.0.conv1_1x1.conv.weight": torch.zeros(64, 24, 1, 1),
                "head.fc.weight": torch.zeros(1000, 2048)}, timm_like)
    out = tmp_path / "run"
    assert run_tool("train_net.py", "--config-file", TOY_CONFIG, *TINY, "MODEL.WEIGHTS", timm_like, "SOLVER.MAX_ITER", "1",
                    "OUTPUT_DIR", out) == 2
    err = capsys.readouterr().err
    assert "none of its 3 tensors fits the model" in err and "convert_timm_to_d2.py" in err
    assert not list(out.glob("model_*.pth"))
    other = tmp_path / "other_model.pth"
    torch.save({"model": {"encoder.layer.0.weight": torch.zeros(4, 4)}}, other)
    assert run_tool("train_net.py", "--config-file", TOY_CONFIG, *TINY, "MODEL.WEIGHTS", other, "SOLVER.MAX_ITER", "1",
                    "OUTPUT_DIR", tmp_path / "run2") == 2
    err = capsys.readouterr().err
    assert "none of its 1 tensors fits the model" in err and "convert_timm_to_d2" not in err


def test_the_config_hash_is_the_files_own_in_every_run(tiny_weights, small_val, tmp_path):
    from lambda_det.utils.file_safety import file_sha256

    records = []
    for name in ("a", "b"):
        assert run_tool("train_net.py", "--config-file", TOY_CONFIG, "--eval-only", *TINY, "MODEL.WEIGHTS", tiny_weights,
                        "DATASETS.TEST", f"('{small_val}',)", "OUTPUT_DIR", tmp_path / name) == 0
        records.append(json.loads((tmp_path / name / "inference" / small_val / "ap_by_size.json").read_text())["provenance"])
    assert records[0]["config_sha256"] == records[1]["config_sha256"] == file_sha256(TOY_CONFIG)
    # the whole config differs (OUTPUT_DIR), and is labelled as such
    assert records[0]["merged_config_sha256"] != records[1]["merged_config_sha256"]


# ---------------------------------------------------------------------------------------------
# found by trying the tools as a new user would (see the closing note's table)
# ---------------------------------------------------------------------------------------------
def test_a_path_through_a_missing_folder_and_dotdot_is_the_folder_it_names(finished, small_val, tiny_weights, tmp_path,
                                                                          capsys, monkeypatch):
    run = copy_of(finished, tmp_path)
    monkeypatch.chdir(tmp_path)
    before = hashes(run)
    assert train(Path("nosuch/../run"), small_val) == 2  # "run" itself is refused: so is nosuch/../run
    assert "already holds a run" in capsys.readouterr().err
    assert run_tool("train_net.py", "--config-file", TOY_CONFIG, "--eval-only", *TINY, "MODEL.WEIGHTS", tiny_weights,
                    "DATASETS.TEST", f"('{small_val}',)", "OUTPUT_DIR", "nosuch/../run") == 2
    assert "--overwrite" in capsys.readouterr().err
    image(tmp_path / "in" / "a.png")
    assert demo(tiny_weights, [tmp_path / "in"], "pics") == 0
    pictures = hashes(tmp_path / "pics")
    assert demo(tiny_weights, [tmp_path / "in"], "nosuch/../pics") == 2
    assert "would be overwritten" in capsys.readouterr().err
    assert hashes(run) == before and hashes(tmp_path / "pics") == pictures and not (tmp_path / "nosuch").exists()


def test_a_dataset_name_cannot_lead_outside_the_output_folder(tmp_path, capsys):
    from lambda_det.data import generate_toy_dataset

    root = generate_toy_dataset(tmp_path / "toy", splits={"val": 2}, seed=3)
    assert run_tool("dataset_stats.py", "../../victim", "--dataset", "../../victim", root / "annotations/instances_val.json",
                    root / "val") == 2
    assert "dataset name '../../victim': use letters" in capsys.readouterr().err


def test_resume_never_trains_over_weights_that_record_no_iteration(tmp_path, tiny_weights, small_val, capsys):
    out = tmp_path / "run"
    out.mkdir()
    weights = torch.load(tiny_weights, weights_only=True)
    torch.save({"model": weights["model"]}, out / "model_final.pth")  # a weights-only file of the user's
    before = hashes(out)
    assert train(out, small_val, "--resume") == 2
    assert "holds checkpoints but no last_checkpoint" in capsys.readouterr().err
    (out / "last_checkpoint").write_text("model_final.pth")  # what that message suggests
    assert train(out, small_val, "--resume") == 2
    assert "records no training iteration" in capsys.readouterr().err
    assert hashes(out) == {**before, "last_checkpoint": hashlib.sha256(b"model_final.pth").hexdigest()}
    shutil.rmtree(out)


def test_continuing_a_finished_run_to_more_iterations_keeps_its_evaluation_unless_asked(finished, small_val, tmp_path,
                                                                                      capsys):
    run = copy_of(finished, tmp_path)
    before = hashes(run)
    assert train(run, small_val, "--resume", "SOLVER.MAX_ITER", "6") == 2
    err = capsys.readouterr().err
    assert "of the finished run's evaluation would be overwritten" in err and "--overwrite" in err
    assert hashes(run) == before


def test_a_finished_run_trained_longer_keeps_its_final_weights(small_val, tmp_path, capsys):
    """The way on that the tools name (raise SOLVER.MAX_ITER, --overwrite for the evaluation) replaced
    model_final.pth, which no message named; it now stays under its iteration's checkpoint name."""
    run = tmp_path / "run"
    assert train(run, small_val, "SOLVER.MAX_ITER", "2", "SOLVER.CHECKPOINT_PERIOD", "100") == 0
    final = hashes(run)["model_final.pth"]
    assert train(run, small_val, "--resume", "SOLVER.MAX_ITER", "2") == 0
    out = capsys.readouterr().out
    assert ("to train longer, raise SOLVER.MAX_ITER and add --overwrite (the longer run's final evaluation replaces this "
            "one); its model_final.pth stays as model_0000001.pth") in out
    assert train(run, small_val, "--resume", "SOLVER.MAX_ITER", "3") == 2
    assert "its model_final.pth would stay as model_0000001.pth" in capsys.readouterr().err
    assert train(run, small_val, "--resume", "--overwrite", "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "100") == 0
    after = hashes(run)
    assert after["model_0000001.pth"] == final != after["model_final.pth"]
    assert torch.load(run / "model_final.pth", weights_only=False)["iteration"] == 2

    # a file of other content under that name (the user's, an earlier try's) is not taken for it
    from lambda_det.checkpoint import keep_final_weights, kept_final_name

    (run / "model_0000002.pth").write_bytes(b"not these weights")
    assert kept_final_name(run / "model_final.pth", 2).name == "model_0000002.1.pth"
    assert keep_final_weights(str(run), 4) == run / "model_0000002.1.pth"
    assert hashes(run)["model_0000002.1.pth"] == after["model_final.pth"]
    assert (run / "model_0000002.pth").read_bytes() == b"not these weights"
    assert keep_final_weights(str(run), 4) is None  # kept already


def test_demo_overwrite_replaces_only_its_own_pictures(tiny_weights, tmp_path, capsys):
    photo = image(tmp_path / "in" / "000001.png")
    mine = image(tmp_path / "results" / "000001.png", seed=9)  # the user's own picture of that name
    before = hashes(tmp_path / "results")
    assert demo(tiny_weights, [photo], tmp_path / "results", "--overwrite") == 2
    assert "the demo did not draw it" in capsys.readouterr().err
    assert hashes(tmp_path / "results") == before and mine.exists()


def test_analyze_never_writes_its_json_over_the_config(tmp_path, capsys):
    config = tmp_path / "mine.yaml"
    config.write_text(f'_BASE_: "{TOY_CONFIG}"\n')
    before = config.read_bytes()
    assert run_tool("analyze_model.py", "--config-file", config, "--tasks", "parameter", "--input-size", "64", "64",
                    "--json", config, "--overwrite", *TINY) == 2
    assert "is the config file" in capsys.readouterr().err
    assert config.read_bytes() == before
