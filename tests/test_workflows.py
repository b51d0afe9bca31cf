"""train_net (distributed on CPUs, resume after SIGKILL, eval-only) and the demo, end to end."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest
import torch

from conftest import REPO, TINY, TOY_CONFIG


def _env():
    return dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")


def test_two_cpu_processes_train_to_identical_weights_each_on_its_share_of_the_cores(tmp_path):
    cmd = [
        sys.executable, str(REPO / "tests" / "ddp_worker.py"), str(tmp_path), "--num-gpus", "2",
        "--config-file", str(TOY_CONFIG), *TINY, "SOLVER.MAX_ITER", "3", "SOLVER.BASE_LR", "0.02",
        "SOLVER.WARMUP_ITERS", "0", "DATASETS.TEST", "()", "OUTPUT_DIR", str(tmp_path / "out"),
    ]
    env = {k: v for k, v in _env().items() if k != "OMP_NUM_THREADS"}  # the processes must split the cores themselves
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    share = max(1, len(os.sched_getaffinity(0)) // 2)  # all cores each made every iteration ~10x slower
    assert [int((tmp_path / f"rank{r}_threads.txt").read_text()) for r in (0, 1)] == [share, share]
    rank0, rank1 = (torch.load(tmp_path / f"rank{r}.pth") for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for key in rank0:
        torch.testing.assert_close(rank0[key], rank1[key], rtol=0, atol=0, msg=key)
    # training moved them (identical because synchronized, not because untouched) ...
    init = torch.load(tmp_path / "rank0_init.pth")
    moved = [k for k in rank0 if rank0[k].is_floating_point() and not torch.equal(init[k], rank0[k])]
    assert len(moved) > len(rank0) // 2
    # ... and the checkpoint rank 0 wrote is what both ranks hold
    final = torch.load(tmp_path / "out" / "model_final.pth", weights_only=False)["model"]
    for key in rank0:
        torch.testing.assert_close(torch.as_tensor(final[key]), rank0[key], rtol=0, atol=0, msg=key)


def _train_cmd(out_dir, *extra):
    return [
        sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", str(TOY_CONFIG), *extra, *TINY,
        "SOLVER.MAX_ITER", "20", "SOLVER.CHECKPOINT_PERIOD", "2", "SOLVER.WARMUP_ITERS", "10",
        "SOLVER.STEPS", "(16,)", "DATASETS.TEST", "()", "OUTPUT_DIR", str(out_dir),
    ]


def test_resume_after_sigkill_restores_iteration_optimizer_and_scheduler(tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(_train_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env())
    deadline = time.time() + 400
    def last_saved():
        path = out / "last_checkpoint"  # Detectron2 writes it after the checkpoint file is complete
        return path.read_text().strip() if path.exists() else ""

    while last_saved() != "model_0000005.pth":  # iteration 6 done and saved
        assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
        assert time.time() < deadline, "training made no checkpoint in time"
        time.sleep(0.05)
    # at once: last_checkpoint names only fully written files, and 14 iterations are left to run
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model_final.pth").exists()
    last = (out / "last_checkpoint").read_text().strip()
    saved_iter = torch.load(out / last, weights_only=False)["iteration"]
    assert saved_iter >= 5

    # what --resume restores, inspected in-process: iteration, optimizer state, scheduler state
    from lambda_det.engine import Trainer, argument_parser, setup_cfg

    args = argument_parser().parse_args(_train_cmd(out, "--resume")[2:])
    trainer = Trainer(setup_cfg(args))
    trainer.resume_or_load(resume=True)
    saved = torch.load(out / last, weights_only=False)
    assert trainer.start_iter == saved_iter + 1
    saved_scheduler = saved["trainer"]["hooks"]["LRScheduler"]
    assert trainer.scheduler.state_dict()["last_epoch"] == saved_scheduler["last_epoch"] == saved_iter + 1
    saved_optimizer = saved["trainer"]["_trainer"]["optimizer"]["state"]
    momentum = trainer.optimizer.state_dict()["state"]
    assert momentum and momentum.keys() == saved_optimizer.keys()
    for key, state in momentum.items():
        torch.testing.assert_close(state["momentum_buffer"], saved_optimizer[key]["momentum_buffer"])
        assert state["momentum_buffer"].abs().sum() > 0
    del trainer

    done = subprocess.run(_train_cmd(out, "--resume"), capture_output=True, text=True, env=_env(), timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    log = (out / "log.txt").read_text()
    assert f"Starting training from iteration {saved_iter + 1}" in log
    final = torch.load(out / "model_final.pth", weights_only=False)
    assert final["iteration"] == 19
    # the scheduler continued: lr at the last iteration is the schedule's value at iteration 19
    records = [json.loads(line) for line in (out / "metrics.json").read_text().splitlines()]
    last_record = [r for r in records if "lr" in r][-1]
    assert last_record["iteration"] == 19
    from detectron2.solver import build_lr_scheduler

    from lambda_det import load_config

    cfg = load_config(str(TOY_CONFIG), ["SOLVER.MAX_ITER", "20", "SOLVER.WARMUP_ITERS", "10", "SOLVER.STEPS", "(16,)"])
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=cfg.SOLVER.BASE_LR)
    sched = build_lr_scheduler(cfg, opt)
    for _ in range(19):
        opt.step()
        sched.step()
    assert last_record["lr"] == pytest.approx(opt.param_groups[0]["lr"], rel=1e-6)


def test_eval_only_without_weights_is_refused(tmp_path):
    cmd = [sys.executable, str(REPO / "tools" / "train_net.py"), "--config-file", str(TOY_CONFIG), "--eval-only",
           "OUTPUT_DIR", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert done.returncode != 0
    assert "--eval-only needs weights" in done.stderr


def _demo(tiny_weights, out_dir, *inputs, threshold="0.99"):
    cmd = [sys.executable, str(REPO / "tools" / "demo.py"), "--config-file", str(TOY_CONFIG), "--input", *map(str, inputs),
           "--output", str(out_dir), "--confidence-threshold", threshold, "--opts", "MODEL.WEIGHTS", str(tiny_weights), *TINY]
    return subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)


def test_demo_converts_odd_images_skips_unreadable_ones_and_handles_video(tiny_weights, tmp_path):
    src = tmp_path / "in"
    (src / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    cv2.imwrite(str(src / "gray.png"), rng.integers(0, 256, (90, 120), dtype=np.uint8))
    cv2.imwrite(str(src / "rgba.png"), rng.integers(0, 256, (80, 100, 4), dtype=np.uint8))
    cv2.imwrite(str(src / "nested" / "deep16.png"), rng.integers(0, 65536, (70, 110, 3), dtype=np.uint16))
    (src / "broken.jpg").write_bytes(b"this is not a jpeg")
    video = tmp_path / "clip.mp4"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"mp4v"), 5, (96, 64))
    for _ in range(3):
        writer.write(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8))
    writer.release()
    out = tmp_path / "out"
    done = _demo(tiny_weights, out, src, video, tmp_path / "missing.png")
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("gray.png", "rgba.png", "deep16.png"):
        drawn = cv2.imread(str(out / name), cv2.IMREAD_UNCHANGED)
        assert drawn is not None and drawn.ndim == 3 and drawn.shape[2] == 3 and drawn.dtype == np.uint8, name
    # small pictures are drawn larger (their labels would cover each other), with their aspect ratio
    assert cv2.imread(str(out / "gray.png")).shape[:2] == (480, 640)
    assert "no detections above score 0.99" in done.stdout  # an image without detections still gets a picture
    assert "skipped" in done.stdout and "broken.jpg: not a readable image" in done.stdout
    assert "missing.png: no such file" in done.stdout
    assert "clip.mp4: 3 frames" in done.stdout
    capture = cv2.VideoCapture(str(out / "clip.mp4"))
    assert capture.isOpened() and int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 3
    # a glob input, processed alone
    done = _demo(tiny_weights, tmp_path / "out_glob", str(src / "*.png"))
    assert done.returncode == 0 and sorted(p.name for p in (tmp_path / "out_glob").iterdir()) == [".lambda_det.lock", ".lambda_det_demo.json", "gray.png", "rgba.png"]


def test_demo_exits_non_zero_when_nothing_could_be_processed(tiny_weights, tmp_path):
    (tmp_path / "junk.png").write_bytes(b"\x89PNG broken")
    done = _demo(tiny_weights, tmp_path / "out", tmp_path / "junk.png", tmp_path / "nothing_here*.jpg")
    assert done.returncode == 1
    assert "junk.png: not a readable image" in done.stdout and "nothing could be processed" in done.stderr
