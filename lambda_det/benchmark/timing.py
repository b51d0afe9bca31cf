"""Shared measurement for the benchmarks: wall time of a step as medians with their spread over
repeats, with the methods compared interleaved in one run (each round runs every method, in an
order rotated from round to round, so a drift of the machine or a noisy neighbour hits all
alike); peak memory (CUDA's allocator, or the peak RSS of a fresh worker process on the CPU);
what machine it ran on; the files a run writes."""
from __future__ import annotations

import dataclasses
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch

from ..utils.file_safety import StagedFiles, write_text


@dataclasses.dataclass
class Timing:
    """Seconds of the repeated runs of one step."""

    times: List[float]

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    def to_dict(self) -> dict:
        return {"median_s": self.median, "min_s": min(self.times), "max_s": max(self.times), "runs": len(self.times)}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(
    steps: Dict[str, Callable[[], None]], repeats: int, device: torch.device, warmup: int = 1,
    slow_factor: Optional[float] = None, min_sample_s: float = 0.05, clock: Callable[[], float] = time.perf_counter,
) -> Dict[str, Timing]:
    """Run every step ``warmup`` times, then ``repeats`` rounds of every step, and return the time
    of one run of each step per round.

    Each round starts at the next step (rotated order), so that no step always follows the same
    one: a step that leaves the allocator or the caches in a bad state would otherwise always bill
    the same neighbour. A step faster than ``min_sample_s`` is run as often per round as it takes
    to fill that time (the count fixed from its warm-up), and the round's time is their mean:
    a timer sample of a few milliseconds is mostly noise on a busy machine.
    ``slow_factor``: a step whose warm-up took more than this times the fastest warm-up is timed
    once more instead of ``repeats`` times (it is out of the race; its time is still reported).
    ``clock``: seconds, as ``time.perf_counter`` (a fake one tests these rules without timing anything).
    """
    first: Dict[str, float] = {}
    for name, step in steps.items():
        for _ in range(warmup):
            first[name] = _seconds_per_call(step, 1, device, clock)
    fastest = min(first.values()) if first else 0.0
    calls = {name: max(1, math.ceil(min_sample_s / max(first.get(name, min_sample_s), 1e-6))) for name in steps}
    names = list(steps)
    timings = {name: Timing([]) for name in steps}
    for round_index in range(repeats):
        shift = round_index % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            if round_index > 0 and slow_factor is not None and first[name] > slow_factor * fastest:
                continue
            timings[name].times.append(_seconds_per_call(steps[name], calls[name], device, clock))
    return timings


def _seconds_per_call(step: Callable[[], None], calls: int, device: torch.device, clock: Callable[[], float]) -> float:
    start = clock()
    for _ in range(calls):
        step()
    synchronize(device)
    return (clock() - start) / calls


INTERLEAVING = ("interleaved, the order rotated each round; a step under 50 ms is repeated to fill 50 ms "
                "and timed per call")


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def peak_memory_bytes(step: Callable[[], None], device: torch.device) -> int:
    """Memory added at the peak of one run of ``step`` (what exists before it excluded).

    CUDA: the allocator's peak. CPU: peak RSS, which Linux updates in batches of page faults: it
    resolves megabytes, not a few pages; run it in a worker (``run_worker``) whose allocator returns
    large blocks to the OS, so freed memory is neither counted twice nor hidden.
    """
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (peak RSS) to the current RSS
    base = _proc_status_kib("VmRSS")
    step()
    return (_proc_status_kib("VmHWM") - base) * 1024


def run_worker(job: str, cells: Sequence[dict], common: dict) -> List[dict]:
    """Run ``job`` of lambda_det.benchmark.worker on every cell in fresh worker processes (one after
    another); a cell that kills its worker (out of memory) is recorded as failed and the rest go on
    in a new worker. Each record is the cell plus what the job measured."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    todo = json.loads(json.dumps(list(cells)))  # as the worker will echo them back (tuples become lists)
    records: List[dict] = []
    while todo:
        payload = json.dumps({"job": job, "cells": todo, "common": common})
        cmd = [sys.executable, "-m", "lambda_det.benchmark.worker", payload]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        started = None
        for line in done.stdout.splitlines():
            if not line.startswith("{"):
                continue
            record = json.loads(line)
            if record.pop("started", False):
                started = record["cell"]
                continue
            records.append(record)
            todo.remove(record["cell"])
            started = None
        if done.returncode != 0:
            if started is None:
                raise RuntimeError(f"benchmark worker failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
            reason = "worker killed (out of memory?)" if done.returncode < 0 else f"error: {done.stderr.strip().splitlines()[-1:]}"
            records.append({"cell": started, "failed": reason})
            todo.remove(started)
    return records


def environment_summary(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["cpu"] = platform.processor() or platform.machine()
        info["cpu_count"] = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return info


def milliseconds(seconds: float) -> str:
    """'123', '4.2', '0.31': whole milliseconds where that keeps two digits (a GPU's sub-millisecond
    layers would otherwise all read 0)."""
    ms = seconds * 1000
    return f"{ms:.0f}" if ms >= 10 else f"{ms:.2g}"


def spread(timing: dict) -> str:
    """'123 ms (118-131)': the median and the range of the runs."""
    if "median_s" not in timing:
        return "-"
    text = f"{milliseconds(timing['median_s'])} ms"
    if timing.get("runs", 1) > 1:
        text += f" ({milliseconds(timing['min_s'])}-{milliseconds(timing['max_s'])})"
    return text


def result_paths(out_dir: Path, stem: str, plot: bool) -> Dict[str, Path]:
    """The files of one benchmark run: ``<stem>.json``, ``.md`` and, with a plot, ``.png``."""
    return {ext: Path(out_dir) / f"{stem}.{ext}" for ext in ("json", "md", "png") if plot or ext != "png"}


def write_results(paths: Dict[str, Path], result: dict, report: str, plot: Optional[Callable[[Path], None]] = None) -> None:
    """``result`` as JSON, ``report`` as markdown and, if given, ``plot``'s chart: all of them or none."""
    paths["json"].parent.mkdir(parents=True, exist_ok=True)
    with StagedFiles() as staged:
        write_text(staged.stage(paths["json"]), json.dumps(result, indent=2))
        write_text(staged.stage(paths["md"]), report)
        if plot is not None:
            plot(staged.stage(paths["png"]))


__all__ = [
    "INTERLEAVING",
    "Timing",
    "environment_summary",
    "interleaved",
    "milliseconds",
    "peak_memory_bytes",
    "result_paths",
    "run_worker",
    "spread",
    "synchronize",
    "write_results",
]
