"""Forward+backward time and peak memory of the lambda layer against its alternatives, in one run.

Used by ``tools/benchmark_lambda.py``. Every method maps (batch, d, S, S) -> (batch, d, S, S):

* ``lambda/<impl>``  this package's LambdaLayer with each position-lambda form, and "auto";
* ``conv3x3``        the 3x3 convolution a lambda layer replaces in a bottleneck;
* ``attention``      global multi-head self-attention (1x1 qkv projection, h heads,
                     torch's scaled_dot_product_attention);
* ``timm``, ``lambda-networks``  the public ports' layers with r = 23, when installed
                     (``pip install -e .[bench]``).

Time is the median of ``repeats`` runs after a warm-up. CPU peak memory is the rise of the
process's peak RSS during one forward+backward, measured in a worker process whose glibc returns
large blocks to the OS (``MALLOC_MMAP_THRESHOLD_``), so freed memory is not counted twice or hidden;
CUDA peak memory is ``torch.cuda.max_memory_allocated``.
"""
from __future__ import annotations

import dataclasses
import gc
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
from torch import nn

from .checks import UserError
from .layers import LambdaLayer
from .layers.position_lambdas import POSITION_LAMBDA_IMPLS


@dataclasses.dataclass
class LayerSpec:
    """The layer being compared: the paper's defaults at a ResNet c4-like width."""

    channels: int = 256
    dim_k: int = 16
    heads: int = 4
    dim_u: int = 1
    scope: int = 23
    batch: int = 2


@dataclasses.dataclass
class Method:
    name: str
    build: Callable[[LayerSpec], nn.Module]
    max_side_time: int  # larger maps are skipped: too slow or too large to be worth waiting for
    max_side_memory: int


class GlobalSelfAttention(nn.Module):
    """Multi-head self-attention over all positions (no position encoding), via SDPA."""

    def __init__(self, channels: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Conv2d(channels, 3 * channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        q, k, v = self.qkv(x).reshape(b, 3, self.heads, c // self.heads, height * width).transpose(-1, -2).unbind(1)
        out = torch.nn.functional.scaled_dot_product_attention(q, k, v)  # (b, heads, n, c/heads)
        return out.transpose(-1, -2).reshape(b, c, height, width)


def available_methods(include_competitors: bool = True) -> List[Method]:
    methods = [
        Method(
            f"lambda/{impl}",
            lambda s, impl=impl: LambdaLayer(
                s.channels, s.channels, dim_k=s.dim_k, heads=s.heads, dim_u=s.dim_u, scope=s.scope, impl=impl
            ),
            max_side_time=32 if impl == "einsum" else 128,
            max_side_memory=32 if impl == "einsum" else 256,  # einsum's E is n x m x k
        )
        for impl in ["auto", *sorted(POSITION_LAMBDA_IMPLS)]
    ]
    methods.append(
        Method("conv3x3", lambda s: nn.Conv2d(s.channels, s.channels, 3, padding=1, bias=False), 128, 256)
    )
    methods.append(
        Method("attention", lambda s: GlobalSelfAttention(s.channels, s.heads), 64, 64)
    )
    if include_competitors:
        try:
            from timm.layers.lambda_layer import LambdaLayer as TimmLambdaLayer

            methods.append(
                Method(
                    "timm",
                    lambda s: TimmLambdaLayer(s.channels, s.channels, num_heads=s.heads, dim_head=s.dim_k, r=s.scope),
                    128,
                    128,
                )
            )
        except ImportError:
            pass
        try:
            from lambda_networks import LambdaLayer as LucidLambdaLayer

            methods.append(
                Method(
                    "lambda-networks",
                    lambda s: LucidLambdaLayer(
                        dim=s.channels, dim_out=s.channels, r=s.scope, dim_k=s.dim_k, heads=s.heads, dim_u=s.dim_u
                    ),
                    128,
                    128,
                )
            )
        except ImportError:
            pass
    return methods


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _step(module: nn.Module, x: torch.Tensor) -> None:
    module(x).float().square().mean().backward()
    module.zero_grad(set_to_none=True)
    x.grad = None


def time_forward_backward(module: nn.Module, x: torch.Tensor, repeats: int, warmup: int = 1) -> Dict[str, float]:
    """Median and min seconds of one forward+backward."""
    for _ in range(warmup):
        _step(module, x)
    _sync(x.device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _step(module, x)
        _sync(x.device)
        times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "min_s": min(times)}


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def peak_memory_bytes(module: nn.Module, x: torch.Tensor) -> int:
    """Peak memory added by one forward+backward (inputs and parameters excluded).

    On the CPU this is peak RSS, which Linux updates in batches of page faults: it resolves
    megabytes, not a few pages, so measure layers at sizes whose tensors are at least ~1 MiB.
    """
    gc.collect()
    if x.device.type == "cuda":
        torch.cuda.synchronize(x.device)
        torch.cuda.reset_peak_memory_stats(x.device)
        base = torch.cuda.memory_allocated(x.device)
        _step(module, x)
        torch.cuda.synchronize(x.device)
        return torch.cuda.max_memory_allocated(x.device) - base
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (peak RSS) to the current RSS
    base = _proc_status_kib("VmRSS")
    _step(module, x)
    return (_proc_status_kib("VmHWM") - base) * 1024


def max_abs_difference_to_conv2d(spec: LayerSpec, side: int, device: torch.device) -> Dict[str, float]:
    """Largest |output difference| of every lambda form against conv2d, same parameters, float32."""
    torch.manual_seed(0)
    layer = LambdaLayer(spec.channels, spec.channels, dim_k=spec.dim_k, heads=spec.heads, scope=spec.scope).to(device)
    x = torch.randn(spec.batch, spec.channels, side, side, device=device)
    diffs = {}
    with torch.no_grad():
        layer.impl = "conv2d"
        expected = layer(x)
        for impl in ["auto", *sorted(POSITION_LAMBDA_IMPLS)]:
            if impl == "einsum" and side > 32:
                continue
            layer.impl = impl
            diffs[f"lambda/{impl}"] = (layer(x) - expected).abs().max().item()
    diffs["scale"] = expected.abs().max().item()
    return diffs


def run_timing(
    methods: Sequence[Method], sides: Sequence[int], spec: LayerSpec, device: torch.device, repeats: int,
    log: Callable[[str], None] = print,
) -> List[dict]:
    records = []
    for side in sides:
        for method in methods:
            record = {"method": method.name, "side": side, "positions": side * side}
            if side > method.max_side_time:
                record["skipped"] = f"side > {method.max_side_time}"
            else:
                torch.manual_seed(0)
                module = method.build(spec).to(device)
                x = torch.randn(spec.batch, spec.channels, side, side, device=device, requires_grad=True)
                record.update(time_forward_backward(module, x, repeats))
                del module, x
            records.append(record)
            log(_describe(record))
    return records


def run_memory(
    methods: Sequence[Method], sides: Sequence[int], spec: LayerSpec, device: torch.device,
    emit: Callable[[dict], None] = lambda record: None,
) -> List[dict]:
    """Peak memory for every (method, side); on the CPU call this in a fresh worker (see module doc)."""
    records = []
    for side in sides:
        for method in methods:
            record = {"method": method.name, "side": side}
            if side > method.max_side_memory:
                record["skipped"] = f"side > {method.max_side_memory}"
            else:
                emit({"method": method.name, "side": side, "started": True})
                torch.manual_seed(0)
                module = method.build(spec).to(device)
                x = torch.randn(spec.batch, spec.channels, side, side, device=device, requires_grad=True)
                _step(module, x)  # warm-up: one-time buffers are not the layer's working memory
                record["peak_bytes"] = peak_memory_bytes(module, x)
                del module, x
            records.append(record)
            emit(record)
    return records


def run_memory_in_worker(method_names: Sequence[str], sides: Sequence[int], spec: LayerSpec) -> List[dict]:
    """Run run_memory in worker processes; a cell that kills its worker (out of memory) is recorded
    as failed and the remaining cells go on in a new worker."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    todo = [(side, name) for side in sides for name in method_names]
    records: List[dict] = []
    while todo:
        payload = {"cells": todo, "spec": dataclasses.asdict(spec)}
        cmd = [sys.executable, "-m", "lambda_det.benchmark", "--memory-worker", json.dumps(payload)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        started = None
        for line in done.stdout.splitlines():
            record = json.loads(line)
            if record.pop("started", False):
                started = (record["side"], record["method"])
                continue
            records.append(record)
            todo.remove((record["side"], record["method"]))
            started = None
        if done.returncode != 0:
            if started is None:
                raise RuntimeError(f"memory worker failed (exit {done.returncode}):\n{done.stderr[-4000:]}")
            side, name = started
            reason = "worker killed (out of memory?)" if done.returncode < 0 else f"error: {done.stderr.strip().splitlines()[-1:]}"
            records.append({"method": name, "side": side, "failed": reason})
            todo.remove(started)
    return records


def _describe(record: dict) -> str:
    if "skipped" in record:
        return f"{record['method']:>18} {record['side']:>4}^2  skipped ({record['skipped']})"
    return f"{record['method']:>18} {record['side']:>4}^2  {record['median_s'] * 1000:9.1f} ms"


def merge(timing: List[dict], memory: List[dict]) -> List[dict]:
    by_key = {(r["method"], r["side"]): dict(r) for r in timing}
    for r in memory:
        entry = by_key.setdefault((r["method"], r["side"]), {"method": r["method"], "side": r["side"]})
        if "peak_bytes" in r:
            entry["peak_bytes"] = r["peak_bytes"]
        elif "failed" in r:
            entry["memory_failed"] = r["failed"]
        elif "skipped" in r and "median_s" not in entry:
            entry["skipped"] = r["skipped"]
    return list(by_key.values())


def markdown_table(records: List[dict], reference: str = "timm") -> str:
    """One row per method, time and memory per side, speed relative to ``reference`` at each side."""
    sides = sorted({r["side"] for r in records})
    methods = list(dict.fromkeys(r["method"] for r in records))
    cell = {(r["method"], r["side"]): r for r in records}
    head = ["method"] + [f"{s}x{s} fwd+bwd" for s in sides] + [f"{s}x{s} peak mem" for s in sides]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for m in methods:
        row = [m]
        for s in sides:
            r = cell.get((m, s), {})
            ref = cell.get((reference, s), {})
            if "median_s" in r:
                text = f"{r['median_s'] * 1000:.0f} ms"
                if "median_s" in ref and m != reference:
                    text += f" ({ref['median_s'] / r['median_s']:.1f}x)"
                row.append(text)
            else:
                row.append("-")
        for s in sides:
            r = cell.get((m, s), {})
            row.append(f"{r['peak_bytes'] / 2**20:.0f} MiB" if "peak_bytes" in r else ("failed" if "memory_failed" in r else "-"))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + f"\n\n(Nx) = speed-up over `{reference}` at the same size, same run.\n"


def plot(records: List[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for method in dict.fromkeys(r["method"] for r in records):
        rows = [r for r in records if r["method"] == method]
        style = "-" if method.startswith("lambda/") else "--"
        for ax, key, scale in ((axes[0], "median_s", 1000.0), (axes[1], "peak_bytes", 2.0**-20)):
            pts = [(r["side"] ** 2, r[key] * scale) for r in rows if key in r]
            if pts:
                ax.plot(*zip(*pts), style, marker="o", label=method)
    for ax, label in ((axes[0], "forward+backward time (ms)"), (axes[1], "peak memory (MiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("positions n = side^2")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def environment_summary(device: torch.device) -> dict:
    info = {"torch": torch.__version__, "device": str(device), "threads": torch.get_num_threads()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    else:
        info["cpu_count"] = os.cpu_count()
    return info


def run(
    out_dir: Path, sides: Sequence[int], memory_sides: Sequence[int], device: str = "cpu", repeats: int = 3,
    methods: Optional[Sequence[str]] = None, spec: Optional[LayerSpec] = None, log: Callable[[str], None] = print,
) -> dict:
    spec = spec or LayerSpec()
    dev = torch.device(device)
    chosen = available_methods()
    if methods:
        unknown = set(methods) - {m.name for m in chosen}
        if unknown:
            raise UserError(f"unknown or unavailable methods {sorted(unknown)}; have {[m.name for m in chosen]}")
        chosen = [m for m in chosen if m.name in methods]
    log(f"timing on {dev} ({environment_summary(dev)}), {spec}")
    timing = run_timing(chosen, sides, spec, dev, repeats, log)
    out_dir.mkdir(parents=True, exist_ok=True)
    partial = out_dir / f"lambda_layer_{dev.type}.timing.json"
    partial.write_text(json.dumps(timing, indent=2))  # kept if the memory phase fails
    log("peak memory ...")
    if dev.type == "cpu":
        memory = run_memory_in_worker([m.name for m in chosen], memory_sides, spec)
    else:
        memory = run_memory(chosen, memory_sides, spec, dev)
    records = merge(timing, memory)
    exactness = max_abs_difference_to_conv2d(spec, side=min(64, max(sides)), device=dev)
    result = {"environment": environment_summary(dev), "spec": dataclasses.asdict(spec), "records": records,
              "max_abs_difference_to_conv2d": exactness}
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = dev.type
    (out_dir / f"lambda_layer_{tag}.json").write_text(json.dumps(result, indent=2))
    partial.unlink()
    table = markdown_table(records)
    exact_lines = "\n".join(
        f"- `{k}`: max |output - conv2d output| = {v:.2e}" for k, v in exactness.items() if k != "scale"
    )
    (out_dir / f"lambda_layer_{tag}.md").write_text(
        f"# Lambda layer benchmark ({tag})\n\n`{json.dumps(result['environment'])}`; batch {spec.batch}, "
        f"d = {spec.channels}, k = {spec.dim_k}, h = {spec.heads}, u = {spec.dim_u}, r = {spec.scope}; "
        f"median of {repeats} forward+backward runs.\n\n{table}\nExactness at "
        f"{min(64, max(sides))}x{min(64, max(sides))} (float32, outputs of scale {exactness['scale']:.2f}):\n"
        f"{exact_lines}\n"
    )
    plot(records, out_dir / f"lambda_layer_{tag}.png", f"lambda layer vs alternatives ({tag}, batch {spec.batch}, d={spec.channels}, r={spec.scope})")
    log(table)
    log(f"wrote {out_dir}/lambda_layer_{tag}.json, .md, .png")
    return result


def scope_sweep(
    out_dir: Path, sides: Sequence[int], scopes: Sequence[int], device: str = "cpu", repeats: int = 3,
    spec: Optional[LayerSpec] = None, log: Callable[[str], None] = print,
) -> List[dict]:
    """Forward+backward time of every position-lambda form per (map side, scope): the data behind
    ``choose_impl`` (impl="auto"). Writes scope_sweep_<device>.{json,md}."""
    spec = spec or LayerSpec()
    dev = torch.device(device)
    impls = sorted(POSITION_LAMBDA_IMPLS)
    records = []
    for side in sides:
        x = torch.randn(spec.batch, spec.channels, side, side, device=dev, requires_grad=True)
        for scope in scopes:
            row = {"side": side, "scope": scope}
            for impl in impls + ["auto"]:
                if impl == "einsum" and side > 32:
                    continue
                torch.manual_seed(0)
                layer = LambdaLayer(spec.channels, spec.channels, dim_k=spec.dim_k, heads=spec.heads, scope=scope, impl=impl).to(dev)
                row[impl] = time_forward_backward(layer, x, repeats)["median_s"]
            row["auto picks"] = LambdaLayer(spec.channels, spec.channels, scope=scope).resolve_impl(side, side, needs_grad=True)
            records.append(row)
            log(json.dumps(row))
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"scope_sweep_{dev.type}.json").write_text(json.dumps({"environment": environment_summary(dev), "records": records}, indent=2))
    head = ["side", "scope", *impls, "auto", "auto picks", "fastest"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        timed = {i: r[i] for i in impls if i in r}
        fastest = min(timed, key=timed.get)
        cells = [f"{r['side']}x{r['side']}", f"{r['scope']}x{r['scope']}"]
        cells += [f"{r[i] * 1000:.0f} ms" if i in r else "-" for i in impls + ["auto"]]
        cells += [r["auto picks"], fastest]
        lines.append("| " + " | ".join(cells) + " |")
    (out_dir / f"scope_sweep_{dev.type}.md").write_text(
        f"# Position-lambda forms by map size and scope ({dev.type})\n\n`{json.dumps(environment_summary(dev))}`; "
        f"batch {spec.batch}, d = {spec.channels}, k = {spec.dim_k}, h = {spec.heads}; median of {repeats} "
        "forward+backward runs.\n\n" + "\n".join(lines) + "\n"
    )
    return records


def _memory_worker(payload: str) -> None:
    args = json.loads(payload)
    spec = LayerSpec(**args["spec"])
    by_name = {m.name: m for m in available_methods()}

    def emit(record: dict) -> None:
        print(json.dumps(record), flush=True)

    for side, name in args["cells"]:
        run_memory([by_name[name]], [side], spec, torch.device("cpu"), emit)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-worker":
        _memory_worker(sys.argv[2])
    else:
        raise SystemExit("use tools/benchmark_lambda.py")
