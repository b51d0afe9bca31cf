"""The lambda layer against its alternatives, the forms of its position term against each other,
and the layer / block against the 3x3 convolution it replaces, at the Table 6 models' shapes.
Used by ``tools/benchmark_lambda.py``; every comparison runs its methods interleaved in one run.

Methods of the layer benchmark (each maps (batch, d, S, S) to (batch, d, S, S)):

* ``lambda/<impl>``  this package's LambdaLayer computing its position term by each form, and "auto";
* ``conv3x3``        the 3x3 convolution a lambda layer replaces in a bottleneck;
* ``attention``      global multi-head self-attention (1x1 qkv projection, h heads, torch's SDPA);
* ``timm``, ``lambda-networks``  the public ports' layers with r = 23, when installed (``pip install -e .[bench]``).
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import UserError
from ..layers import LambdaLayer
from ..layers import fused as fused_operator
from ..layers import triton_lambda as triton_operator
from ..layers.position_lambdas import TERM_IMPLS
from ..modeling import LambdaBottleneck
from ..utils.markdown import markdown_table
from .numerics import PRECISION_TEXT, precision_context, precisions_for, switches_under
from .plotting import line_plot, ratio_bars
from .timing import (
    INTERLEAVING, environment_summary, interleaved, milliseconds, peak_memory_bytes, result_paths, run_worker, spread, write_results,
)

MODES = ("forward", "forward+backward")


@dataclasses.dataclass
class LayerSpec:
    """The layer being compared: the paper's defaults at a ResNet c4-like width."""

    channels: int = 256
    dim_k: int = 16
    heads: int = 4
    dim_u: int = 1
    scope: int = 23
    batch: int = 2
    stride: int = 1


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


def lambda_forms(device_type: str = "cpu") -> List[str]:
    """The forms of the position term that can run here (the fused operator: CPU, built; the Triton
    operator: CUDA with Triton's NVIDIA backend)."""
    fused_ok, triton_ok = operators_ok(device_type)
    return [impl for impl in TERM_IMPLS if impl not in ("fused", "triton")] + ["fused"] * fused_ok + ["triton"] * triton_ok


def operators_ok(device_type: str) -> Tuple[bool, bool]:
    """Whether the fused CPU operator and the Triton operator can run on this device type (what
    impl="auto" is told)."""
    return device_type == "cpu" and fused_operator.available(), triton_operator.choose_triton(device_type)


def _lambda(spec: LayerSpec, impl: str) -> LambdaLayer:
    return LambdaLayer(spec.channels, spec.channels, dim_k=spec.dim_k, heads=spec.heads, dim_u=spec.dim_u,
                       scope=spec.scope, stride=spec.stride, impl=impl)


def available_methods(include_competitors: bool = True, device_type: str = "cpu") -> List[Method]:
    methods = [
        Method(f"lambda/{impl}", lambda s, impl=impl: _lambda(s, impl),
               max_side_time=32 if impl == "einsum" else 128, max_side_memory=32 if impl == "einsum" else 256)
        for impl in ["auto", *lambda_forms(device_type)]
    ]
    methods.append(Method("conv3x3", lambda s: nn.Conv2d(s.channels, s.channels, 3, stride=s.stride, padding=1, bias=False), 128, 256))
    methods.append(Method("attention", lambda s: GlobalSelfAttention(s.channels, s.heads), 64, 64))
    if include_competitors:  # optional (the "bench" extra): imported only where they are compared
        try:
            from timm.layers.lambda_layer import LambdaLayer as TimmLambdaLayer

            methods.append(Method(
                "timm", lambda s: TimmLambdaLayer(s.channels, s.channels, num_heads=s.heads, dim_head=s.dim_k, r=s.scope),
                128, 128))
        except ImportError:
            pass
        try:
            from lambda_networks import LambdaLayer as LucidLambdaLayer

            methods.append(Method(
                "lambda-networks",
                lambda s: LucidLambdaLayer(dim=s.channels, dim_out=s.channels, r=s.scope, dim_k=s.dim_k, heads=s.heads,
                                           dim_u=s.dim_u),
                128, 128))
        except ImportError:
            pass
    return methods


def step_function(module: nn.Module, x: torch.Tensor, mode: str) -> Callable[[], None]:
    """One forward (no gradients: evaluation) or one forward+backward (training) of a module that
    returns a tensor, or a list or dict of them (a backbone's features)."""
    if mode == "forward":
        def forward() -> None:
            with torch.no_grad():
                module(x)
        return forward

    def forward_backward() -> None:
        outputs = module(x)
        if isinstance(outputs, torch.Tensor):
            outputs = [outputs]
        losses = [o.float().square().mean() for o in (outputs.values() if isinstance(outputs, dict) else outputs)]
        sum(losses[1:], losses[0]).backward()  # from the first loss, not from 0: one output, one backward, no sum
        module.zero_grad(set_to_none=True)
        x.grad = None
    return forward_backward


def max_abs_difference_to_conv2d(spec: LayerSpec, side: int, device: torch.device) -> Dict[str, float]:
    """Largest |output difference| of every form against conv2d, same parameters, float32."""
    torch.manual_seed(0)
    layer = _lambda(spec, "conv2d").to(device).eval()
    x = torch.randn(spec.batch, spec.channels, side, side, device=device)
    diffs = {}
    with torch.no_grad():
        expected = layer(x)
        for impl in ["auto", *lambda_forms(device.type)]:
            if impl == "einsum" and side > 32:
                continue
            layer.impl = impl
            diffs[f"lambda/{impl}"] = (layer(x) - expected).abs().max().item()
    diffs["scale"] = expected.abs().max().item()
    return diffs


# ---------------------------------------------------------------------------------------------
# the layer benchmark: every method, forward and forward+backward, peak memory, exactness
# ---------------------------------------------------------------------------------------------
def layer_benchmark_paths(out_dir: Path, device: str) -> Dict[str, Path]:
    return result_paths(out_dir, f"lambda_layer_{torch.device(device).type}", plot=True)


def chosen_methods(methods: Optional[Sequence[str]], device_type: str) -> List[Method]:
    """The methods named (all available ones when None), or a UserError naming those unknown here."""
    available = available_methods(device_type=device_type)
    if not methods:
        return available
    unknown = set(methods) - {m.name for m in available}
    if unknown:
        raise UserError(f"unknown or unavailable methods {sorted(unknown)}; have {[m.name for m in available]}")
    return [m for m in available if m.name in methods]


def run_layer_benchmark(
    out_dir: Path, sides: Sequence[int], memory_sides: Sequence[int], device: str = "cpu", repeats: int = 3,
    methods: Optional[Sequence[str]] = None, spec: Optional[LayerSpec] = None, log: Callable[[str], None] = print,
) -> dict:
    spec = spec or LayerSpec()
    dev = torch.device(device)
    chosen = chosen_methods(methods, dev.type)
    log(f"timing on {dev} ({environment_summary(dev)}), {spec}")
    records = []
    for side in sides:
        runnable = [m for m in chosen if side <= m.max_side_time]
        torch.manual_seed(0)
        modules = {m.name: m.build(spec).to(dev) for m in runnable}
        lambda_layers = [mod for mod in modules.values() if isinstance(mod, LambdaLayer)]
        for layer in lambda_layers[1:]:  # every form with the same weights: the same function
            layer.load_state_dict(lambda_layers[0].state_dict())
        x = torch.randn(spec.batch, spec.channels, side, side, device=dev, requires_grad=True)
        by_mode = {mode: interleaved({n: step_function(mod, x, mode) for n, mod in modules.items()}, repeats, dev)
                   for mode in MODES}
        for m in chosen:
            record = {"method": m.name, "side": side}
            if m.name in modules:
                for mode in MODES:
                    record[mode] = by_mode[mode][m.name].to_dict()
                if isinstance(modules[m.name], LambdaLayer) and modules[m.name].impl == "auto":
                    record["picks"] = {mode: modules[m.name].resolve_impl(side, side, mode != "forward", *operators_ok(dev.type))
                                       for mode in MODES}
                log(f"{m.name:>18} {side:>4}^2  forward {spread(record['forward'])}  forward+backward {spread(record['forward+backward'])}")
            else:
                record["skipped"] = f"side > {m.max_side_time}"
            records.append(record)
        del modules, x
    log("peak memory ...")
    cells = [{"method": m.name, "side": side} for side in memory_sides for m in chosen if side <= m.max_side_memory]
    memory = run_worker("layer_memory", cells, {"spec": dataclasses.asdict(spec)}) if dev.type == "cpu" else [
        dict(cell=c, **layer_memory(c, spec, dev)) for c in cells]
    for record in memory:
        entry = next((r for r in records if r["method"] == record["cell"]["method"] and r["side"] == record["cell"]["side"]), None)
        if entry is None:
            entry = {"method": record["cell"]["method"], "side": record["cell"]["side"]}
            records.append(entry)
        if "peak_bytes" in record:
            entry["peak_bytes"] = record["peak_bytes"]
        else:
            entry["memory_failed"] = record["failed"]
    exactness = max_abs_difference_to_conv2d(spec, side=min(64, max(sides)), device=dev)
    result = {"environment": environment_summary(dev), "spec": dataclasses.asdict(spec), "repeats": repeats,
              "records": records, "max_abs_difference_to_conv2d": exactness, "auto_check": auto_check(records)}
    paths = layer_benchmark_paths(out_dir, device)
    write_results(paths, result, layer_report(result), lambda png: line_plot(
        records, png, f"lambda layer vs alternatives ({dev.type}, batch {spec.batch}, d={spec.channels}, r={spec.scope})"))
    log(layer_table(records))
    log(f"wrote {paths['json']}, .md, .png")
    return result


def layer_memory(cell: dict, spec: LayerSpec, device: torch.device) -> dict:
    """Peak memory of one forward+backward of a method at a side (run in a worker on the CPU)."""
    method = {m.name: m for m in available_methods(device_type=device.type)}[cell["method"]]
    torch.manual_seed(0)
    module = method.build(spec).to(device)
    return _training_peak_bytes(module, spec.batch, spec.channels, cell["side"], device)


def _training_peak_bytes(module: nn.Module, batch: int, channels: int, side: int, device: torch.device) -> dict:
    x = torch.randn(batch, channels, side, side, device=device, requires_grad=True)
    step = step_function(module, x, "forward+backward")
    step()  # warm-up: one-time buffers are not the layer's working memory
    return {"peak_bytes": peak_memory_bytes(step, device)}


def auto_check(records: List[dict]) -> List[dict]:
    """Per map side and mode: the form auto picks against the fastest form, both as timed in their
    own rows; and the lambda/auto row against the row of its pick (the same computation timed
    twice: the run's noise)."""
    checks = []
    for side in sorted({r["side"] for r in records}):
        rows = {r["method"]: r for r in records if r["side"] == side and r["method"].startswith("lambda/")}
        auto = rows.pop("lambda/auto", None)
        if auto is None or "picks" not in auto or not rows:
            continue
        for mode in MODES:
            forms = {name: r[mode]["median_s"] for name, r in rows.items() if mode in r}
            pick = f"lambda/{auto['picks'][mode]}"
            if pick not in forms:
                continue
            fastest = min(forms, key=forms.get)
            checks.append({"side": side, "mode": mode, "picks": pick, "picks_s": forms[pick], "fastest": fastest,
                           "fastest_s": forms[fastest], "ratio": forms[pick] / forms[fastest],
                           "auto_s": auto[mode]["median_s"], "auto_vs_pick": auto[mode]["median_s"] / forms[pick]})
    return checks


def layer_table(records: List[dict], reference: str = "timm") -> str:
    """One row per method: forward and forward+backward per side (speed-up over ``reference``), peak memory."""
    sides = sorted({r["side"] for r in records if MODES[0] in r})
    memory_sides = sorted({r["side"] for r in records if "peak_bytes" in r or "memory_failed" in r})
    methods = list(dict.fromkeys(r["method"] for r in records))
    cell = {(r["method"], r["side"]): r for r in records}
    head = ["method"] + [f"{s}x{s} {m}" for s in sides for m in ("fwd", "fwd+bwd")] + [f"{s}x{s} peak mem" for s in memory_sides]
    rows, ratios = [], False
    for m in methods:
        row = [m]
        for s in sides:
            for mode in MODES:
                r, ref = cell.get((m, s), {}), cell.get((reference, s), {})
                text = f"{milliseconds(r[mode]['median_s'])} ms" if mode in r else "-"
                if mode in r and mode in ref and m != reference:
                    text += f" ({ref[mode]['median_s'] / r[mode]['median_s']:.1f}x)"
                    ratios = True
                row.append(text)
        for s in memory_sides:
            r = cell.get((m, s), {})
            row.append(f"{r['peak_bytes'] / 2**20:.0f} MiB" if "peak_bytes" in r else ("failed" if "memory_failed" in r else "-"))
        rows.append(row)
    legend = f"\n(Nx) = speed-up over `{reference}` at the same size and mode, same run.\n" if ratios else "\n"
    return markdown_table(head, rows) + legend


def layer_report(result: dict) -> str:
    spec, records = result["spec"], result["records"]
    text = (f"# Lambda layer benchmark ({result['environment']['device']})\n\n`{json.dumps(result['environment'])}`; "
            f"batch {spec['batch']}, d = {spec['channels']}, k = {spec['dim_k']}, h = {spec['heads']}, u = {spec['dim_u']}, "
            f"r = {spec['scope']}; median of {result['repeats']} rounds, methods {INTERLEAVING}. fwd = forward without "
            "gradients (evaluation), fwd+bwd = forward and backward (training).\n\n" + layer_table(records))
    checks = result["auto_check"]
    if checks:
        worst = max(checks, key=lambda c: c["ratio"])
        text += ("\n`impl=\"auto\"`: the form it picks against the fastest form in each cell: "
                 + ", ".join(f"{c['side']}x{c['side']} {c['mode']} {c['picks'].split('/')[1]} {c['ratio']:.2f}" for c in checks)
                 + f" (worst {worst['ratio']:.2f}). The `lambda/auto` row runs the same computation as its pick, "
                 "timed separately; their ratio is this run's noise: "
                 + ", ".join(f"{c['auto_vs_pick']:.2f}" for c in checks) + ".\n")
    scale = result["max_abs_difference_to_conv2d"]["scale"]
    text += f"\nExactness (float32, outputs of scale {scale:.2f}, against conv2d):\n" + "\n".join(
        f"- `{k}`: max |output - conv2d output| = {v:.2e}" for k, v in result["max_abs_difference_to_conv2d"].items() if k != "scale") + "\n"
    return text


# ---------------------------------------------------------------------------------------------
# the forms of the position term against each other: the data behind impl="auto"
# ---------------------------------------------------------------------------------------------
def form_sweep(cells: Sequence[dict], device: str = "cpu", repeats: int = 3, log: Callable[[str], None] = print) -> List[dict]:
    """Every form of the position term, forward and forward+backward, per cell
    {channels, side, stride, batch, scope}; with what auto picks and which form was fastest."""
    dev = torch.device(device)
    forms = lambda_forms(dev.type)
    records = []
    for cell in cells:
        spec = LayerSpec(channels=cell["channels"], batch=cell["batch"], scope=cell["scope"], stride=cell.get("stride", 1))
        side = cell["side"]
        torch.manual_seed(0)
        layer = _lambda(spec, "auto").to(dev)
        x = torch.randn(spec.batch, spec.channels, side, side, device=dev, requires_grad=True)
        record = dict(cell)
        for mode in MODES:
            impls = [f for f in forms if not (f == "einsum" and side > 32)]
            steps = {}
            for impl in impls:
                def step(impl=impl, target=layer, inner=step_function(layer, x, mode)) -> None:
                    target.impl = impl
                    inner()
                steps[impl] = step
            timings = interleaved(steps, repeats, dev, slow_factor=5.0)
            layer.impl = "auto"
            picks = layer.resolve_impl(side, side, mode != "forward", *operators_ok(dev.type))
            fastest = min(timings, key=lambda f: timings[f].median)
            record[mode] = {"times": {f: t.to_dict() for f, t in timings.items()}, "auto_picks": picks,
                            "fastest": fastest, "auto_vs_fastest": timings[picks].median / timings[fastest].median}
        log(json.dumps({k: record[k] for k in cell} | {m: (record[m]["auto_picks"], record[m]["fastest"],
                                                         round(record[m]["auto_vs_fastest"], 2)) for m in MODES}))
        records.append(record)
        del layer, x
    return records


def sweep_report(records: List[dict], title: str, environment: dict, repeats: int) -> str:
    forms = list(dict.fromkeys(f for r in records for m in MODES for f in r[m]["times"]))
    head = ["d", "map", "stride", "batch", "r", "mode", *forms, "auto picks", "fastest", "auto / fastest"]
    rows = []
    for r in records:
        for mode in MODES:
            m = r[mode]
            rows.append([r["channels"], f"{r['side']}x{r['side']}", r.get("stride", 1), r["batch"], r["scope"], mode,
                         *[f"{milliseconds(m['times'][f]['median_s'])} ms" + ("" if m["times"][f]["runs"] > 1 else "*")
                           if f in m["times"] else "-" for f in forms],
                         m["auto_picks"], m["fastest"], f"{m['auto_vs_fastest']:.2f}"])
    worst_value, worst_mode, worst_record = max(((r[mode]["auto_vs_fastest"], mode, r) for r in records for mode in MODES),
                                                key=lambda item: item[0])
    return (f"# {title}\n\n`{json.dumps(environment)}`; median of {repeats} rounds, forms {INTERLEAVING}; "
            "* = timed once (its first run took over 5x the fastest form's). Forward = no gradients (evaluation); "
            "forward+backward = training.\n\n" + markdown_table(head, rows)
            + f"\nWorst auto / fastest: {worst_value:.2f} ({worst_mode}, d = {worst_record['channels']}, "
            f"{worst_record['side']}x{worst_record['side']}, stride {worst_record.get('stride', 1)}, batch {worst_record['batch']}).\n")


def sweep_paths(out_dir: Path, name: str, device: str) -> Dict[str, Path]:
    return result_paths(out_dir, f"{name}_{torch.device(device).type}", plot=False)


def write_sweep(out_dir: Path, name: str, title: str, records: List[dict], device: str, repeats: int) -> Dict[str, Path]:
    env = environment_summary(torch.device(device))
    paths = sweep_paths(out_dir, name, device)
    write_results(paths, {"environment": env, "repeats": repeats, "records": records}, sweep_report(records, title, env, repeats))
    return paths


def scope_sweep_cells(sides: Sequence[int], scopes: Sequence[int], spec: LayerSpec) -> List[dict]:
    return [{"channels": spec.channels, "side": side, "stride": 1, "batch": spec.batch, "scope": scope}
            for side in sides for scope in scopes]


def table6_cells(batches: Sequence[int] = (1, 2, 4, 8), sides: Sequence[int] = (16, 32, 64, 128)) -> List[dict]:
    """The lambda layers of the Table 6 LambdaResNets: bottleneck widths 256 (c4) and 512 (c5), the
    maps a 512..2048 input gives them, and the stride-2 first block of c5 (at c4's resolution)."""
    cells = [{"channels": d, "side": side, "stride": 1, "batch": b, "scope": 23}
             for d in (256, 512) for side in sides for b in batches]
    cells += [{"channels": 512, "side": side, "stride": 2, "batch": b, "scope": 23} for side in sides if side >= 32 for b in batches]
    return cells


# ---------------------------------------------------------------------------------------------
# the layer and its bottleneck block against the 3x3 convolution they replace
# ---------------------------------------------------------------------------------------------
# (name, bottleneck width d, map side the layer runs at, stride): LambdaResNet-101 at 1024x1024
TABLE6_SHAPES = (("res4 lambda block", 256, 64, 1), ("first res5 block, stride 2", 512, 64, 2), ("res5 lambda block", 512, 32, 1))


def vs_conv(out_dir: Path, batches: Sequence[int] = (1, 2, 4, 8), device: str = "cpu", repeats: int = 5,
            log: Callable[[str], None] = print, shapes: Sequence[tuple] = TABLE6_SHAPES,
            precisions: Optional[Sequence[str]] = None, forms: Optional[Sequence[str]] = None) -> dict:
    """impl="auto" against a 3x3 conv of the same width and stride (layer), and a lambda bottleneck
    against the same block with the 3x3 conv (block), forward and forward+backward; peak memory.

    ``precisions``: the arithmetic of each comparison (lambda_det.benchmark.numerics; default: float32
    on the CPU; float32 at PyTorch's defaults, IEEE float32 and AMP on CUDA). ``forms``: forms of the
    position term timed beside auto at the layer level (default: every form that runs on CUDA; none on
    the CPU, where docs/benchmarks/auto_rule_cpu.md compares them)."""
    dev = torch.device(device)
    precisions = tuple(precisions or precisions_for(dev.type))
    forms = list(lambda_forms(dev.type) if forms is None and dev.type == "cuda" else forms or [])
    records = []
    for precision in precisions:
        switches = {"switches": switches_under(precision, dev)} if dev.type == "cuda" else {}  # TF32 is CUDA's
        for batch in batches:
            for name, d, side, stride in shapes:
                torch.manual_seed(0)
                spec = LayerSpec(channels=d, stride=stride)
                layers = {"lambda": _lambda(spec, "auto").to(dev),
                          "conv3x3": nn.Conv2d(d, d, 3, stride=stride, padding=1, bias=False).to(dev)}
                for form in forms:
                    if not (form == "einsum" and side > 32):
                        layers[f"lambda/{form}"] = _lambda(spec, form).to(dev)
                        layers[f"lambda/{form}"].load_state_dict(layers["lambda"].state_dict())
                blocks = {kind: LambdaBottleneck(4 * d // (2 if stride == 2 else 1), 4 * d, bottleneck_channels=d, stride=stride,
                                                 use_lambda=kind == "lambda").to(dev) for kind in ("lambda", "conv3x3")}
                x = torch.randn(batch, d, side, side, device=dev, requires_grad=True)
                xb = torch.randn(batch, 4 * d // (2 if stride == 2 else 1), side, side, device=dev, requires_grad=True)
                for level, modules, inp in (("layer", layers, x), ("block", blocks, xb)):
                    record = {"shape": name, "channels": d, "side": side, "stride": stride, "batch": batch, "level": level,
                              "precision": precision, **switches}
                    if level == "layer":
                        record["picks"] = {mode: layers["lambda"].resolve_impl(side, side, mode != "forward", *operators_ok(dev.type))
                                           for mode in MODES}
                    for mode in MODES:
                        steps = {k: _under(precision, dev, step_function(m, inp, mode)) for k, m in modules.items()}
                        timings = interleaved(steps, repeats, dev, warmup=2)  # the first call compiles Triton kernels
                        record[mode] = {k: t.to_dict() for k, t in timings.items()}
                        record[mode]["ratio"] = timings["lambda"].median / timings["conv3x3"].median
                    records.append(record)
                    log(f"{precision} batch {batch} {name} ({level}): forward {record['forward']['ratio']:.2f}x, "
                        f"forward+backward {record['forward+backward']['ratio']:.2f}x of the 3x3 conv")
                del layers, blocks, x, xb
    log("peak memory ...")
    cells = [{"shape": name, "channels": d, "side": side, "stride": stride, "batch": b, "kind": kind, "precision": precision}
             for precision in precisions for b in batches for name, d, side, stride in shapes for kind in ("lambda", "conv3x3")]
    memory = run_worker("vs_conv_memory", cells, {}) if dev.type == "cpu" else [
        dict(cell=c, **vs_conv_memory(c, dev)) for c in cells]
    for m in memory:
        c = m["cell"]
        r = next(r for r in records if r["level"] == "layer" and r["shape"] == c["shape"] and r["batch"] == c["batch"]
                 and r["precision"] == c.get("precision", "float32"))
        r.setdefault("peak_bytes", {})[c["kind"]] = m.get("peak_bytes")
    result = {"environment": environment_summary(dev), "repeats": repeats, "records": records}
    write_results(vs_conv_paths(out_dir, device), result, vs_conv_report(result),
                  lambda png: ratio_bars(records, png, f"lambda / 3x3 conv time ({dev.type})"))
    log(vs_conv_report(result))
    return result


def _under(precision: str, device: torch.device, step: Callable[[], None]) -> Callable[[], None]:
    """``step`` run in the arithmetic of ``precision`` (numerics.precision_context)."""
    def run() -> None:
        with precision_context(precision, device):
            step()
    return run


def vs_conv_paths(out_dir: Path, device: str) -> Dict[str, Path]:
    return result_paths(out_dir, f"lambda_vs_conv_{torch.device(device).type}", plot=True)


def vs_conv_memory(cell: dict, device: torch.device) -> dict:
    torch.manual_seed(0)
    d, stride = cell["channels"], cell["stride"]
    module = (_lambda(LayerSpec(channels=d, stride=stride), "auto") if cell["kind"] == "lambda"
              else nn.Conv2d(d, d, 3, stride=stride, padding=1, bias=False)).to(device)
    with precision_context(cell.get("precision", "float32"), device):
        return _training_peak_bytes(module, cell["batch"], d, cell["side"], device)


def _switch_text(switches: dict) -> str:
    return ", ".join(f"{what} {'TF32' if switches.get(key) else 'IEEE'}" for what, key in (
        ("conv", "conv_tf32"), ("matmul", "matmul_tf32"), ("lambda operator", "lambda_operator_tf32")) if key in switches)


def vs_conv_report(result: dict) -> str:
    records = result["records"]
    precisions = list(dict.fromkeys(r.get("precision", "float32") for r in records))
    head = ["where (LambdaResNet-101, 1024x1024)", "arithmetic", "level", "batch", "auto runs", "fwd lambda / conv", "ratio",
            "fwd+bwd lambda / conv", "ratio", "peak memory (fwd+bwd) lambda / conv"]
    rows = []
    for r in records:
        mem = r.get("peak_bytes") or {}
        mem_text = (f"{mem['lambda'] / 2**20:.0f} / {mem['conv3x3'] / 2**20:.0f} MiB"
                    if mem.get("lambda") is not None and mem.get("conv3x3") is not None else "-")
        picks = r.get("picks")
        rows.append([f"{r['shape']}: d = {r['channels']}, {r['side']}x{r['side']}", r.get("precision", "float32"), r["level"],
                     r["batch"], " / ".join(dict.fromkeys(picks.values())) if picks else "-",
                     f"{spread(r['forward']['lambda'])} / {spread(r['forward']['conv3x3'])}", f"{r['forward']['ratio']:.2f}x",
                     f"{spread(r['forward+backward']['lambda'])} / {spread(r['forward+backward']['conv3x3'])}",
                     f"{r['forward+backward']['ratio']:.2f}x", mem_text])
    summary = []
    for precision in precisions:
        for level in ("layer", "block"):
            for stride in (1, 2):
                for mode in MODES:
                    ratios = [r[mode]["ratio"] for r in records if r["level"] == level and r["stride"] == stride
                              and r.get("precision", "float32") == precision]
                    if ratios:
                        summary.append(f"{precision}, {level}, stride {stride}, {mode}: at most {max(ratios):.2f}x")
    arithmetic = "; ".join(f"{p} = {PRECISION_TEXT.get(p, p)}: {_switch_text(next(r['switches'] for r in records if r.get('precision') == p))}"
                           for p in precisions if any("switches" in r for r in records if r.get("precision") == p))
    text = (f"# The lambda layer against the 3x3 convolution it replaces ({result['environment']['device']})\n\n"
            f"`{json.dumps(result['environment'])}`; impl=\"auto\" (the form it ran: \"auto runs\", forward / "
            f"forward+backward), k = 16, h = 4, r = 23; median (range) of {result['repeats']} rounds, the methods "
            f"{INTERLEAVING}. layer = the layer alone; block = the whole bottleneck (1x1, lambda layer or 3x3 conv, "
            "1x1, norms, shortcut).\n\n" + (f"Arithmetic: {arithmetic}.\n\n" if arithmetic else "")
            + markdown_table(head, rows) + "\nWorst ratios over the batches: " + "; ".join(summary) + ".\n")
    forms = [k for k in dict.fromkeys(k for r in records if r["level"] == "layer" for k in r["forward"])
             if k.startswith("lambda/")]
    if forms:
        head = ["where", "arithmetic", "batch", "mode", "conv3x3", "lambda (auto)", *forms]
        rows = []
        for r in records:
            if r["level"] != "layer":
                continue
            for mode in MODES:
                conv = r[mode]["conv3x3"]["median_s"]
                cells = [f"{spread(r[mode][k])} ({r[mode][k]['median_s'] / conv:.1f}x)" if k in r[mode] else "-"
                         for k in ("lambda", *forms)]
                rows.append([r["shape"], r.get("precision", "float32"), r["batch"], mode, spread(r[mode]["conv3x3"]), *cells])
        text += ("\n## Every form of the position term (the layer; time and, in brackets, its ratio to the 3x3 conv)\n\n"
                 + markdown_table(head, rows))
    return text


__all__ = [
    "LayerSpec",
    "MODES",
    "Method",
    "TABLE6_SHAPES",
    "available_methods",
    "chosen_methods",
    "form_sweep",
    "lambda_forms",
    "layer_benchmark_paths",
    "layer_memory",
    "layer_table",
    "run_layer_benchmark",
    "scope_sweep_cells",
    "sweep_paths",
    "table6_cells",
    "vs_conv",
    "vs_conv_memory",
    "vs_conv_paths",
    "write_sweep",
]
