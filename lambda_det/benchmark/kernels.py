"""Each kernel of the Triton lambda operator timed alone, with its tile variants side by side
(``tools/benchmark_lambda.py --kernels``): where the operator's time goes on a GPU, and which tiles
the dispatcher should launch.

For every Table 6 shape of LambdaResNet-101 at 1024 px (batch 8, h 4, k 16, u 1, r 23) and every
arithmetic (IEEE float32, TF32, float16), each kernel (forward, dq/dR, dV) and the backward's two
PyTorch steps (the dR partial sums added, the content lambda's gradient) are timed in one run, the
variants of a kernel interleaved. Before it is timed, every variant's result is compared with the
default tiles' result on the same inputs: a variant that computes something else is reported as
such and not timed. Triton's compiled kernel gives the registers, spills and shared memory.
Executed FLOPs count the tiles' work as launched (padding included), from the kernels' loop bounds.

On a CPU (Triton's interpreter, TRITON_INTERPRET=1) the same code runs at toy shapes: the dry run
of ``make gpu-check`` (slow, and its times mean nothing).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence

import torch

from ..errors import UserError
from ..layers import triton_lambda as T
from ..utils.markdown import markdown_table
from .numerics import operator_precision
from .timing import INTERLEAVING, environment_summary, interleaved, milliseconds, result_paths, spread, write_results

SCOPE = 23
# (name, operator shape): LambdaResNet-101 at 1024 px, batch 8; the stride-2 block runs the operator
# at c4's 64 x 64 and pools afterwards
KERNEL_SHAPES = (
    ("res4 lambda block", dict(b=8, heads=4, k=16, u=1, v=64, side=64, r=SCOPE)),
    ("first res5 block (stride 2, before its pool)", dict(b=8, heads=4, k=16, u=1, v=128, side=64, r=SCOPE)),
    ("res5 lambda block", dict(b=8, heads=4, k=16, u=1, v=128, side=32, r=SCOPE)),
)
# the interpreter's stand-ins: every loop of the kernels runs, at sizes it finishes in seconds
TOY_KERNEL_SHAPES = (("toy", dict(b=1, heads=4, k=16, u=1, v=16, side=6, r=5)),)


class Arithmetic(NamedTuple):
    name: str
    dtype: torch.dtype
    precision: str  # tl.dot's input precision


ARITHMETIC = (Arithmetic("float32 IEEE", torch.float32, "ieee"), Arithmetic("TF32", torch.float32, "tf32"),
              Arithmetic("float16", torch.float16, "ieee"))
# the tile variants run in the tensor-core arithmetic of training (TF32, AMP's float16), at res4 (the
# Table 6 shape with the most lambda layers; each variant costs a compile of a few seconds)
VARIANT_ARITHMETIC = ("TF32", "float16")
VARIANT_SHAPES = ("res4 lambda block", "toy")


class Variant(NamedTuple):
    kernel: str  # "forward", "dq/dR", "dV"
    name: str
    tiles: Optional[T.Tiles]  # None: the dispatcher's own
    programs: int = T.QR_TARGET_PROGRAMS  # dq/dR: the program count its rows per program aim at
    operator_layouts: bool = True  # the operands in the layouts lambda_output_triton launches with (operand_layouts)


def variants() -> List[Variant]:
    """The default tiles of each kernel and the alternatives worth timing against them (docs/gpu.md):
    the kernels as the first GPU run measured them (nested loops, fewer stages, positions innermost),
    and one change at a time."""
    f, q, v = T.FORWARD_TILES, T.QR_GRAD_TILES, T.V_GRAD_TILES
    return [
        Variant("forward", "default", None),
        Variant("forward", "as first measured", f._replace(flat=False, num_stages=2), operator_layouts=False),
        Variant("forward", "positions innermost", None, operator_layouts=False),
        Variant("forward", "2 stages", f._replace(num_stages=2)),
        Variant("forward", "4 warps", f._replace(num_warps=4)),
        # a value row loaded once for the 2 query rows whose scopes reach it (less of the L2 traffic
        # the estimate says bounds the forward), their logits in one product twice as wide (4 rows
        # add more padded multiply-adds than they save traffic, on paper: not timed)
        Variant("forward", "2 query rows", f._replace(qrows=2)),
        Variant("dq/dR", "default", None),
        Variant("dq/dR", "as first measured", q._replace(flat=False, num_stages=2), operator_layouts=False),
        Variant("dq/dR", "positions innermost", None, operator_layouts=False),
        Variant("dq/dR", "2 stages", q._replace(num_stages=2)),
        Variant("dq/dR", "2048 programs", None, programs=2048),
        Variant("dq/dR", "one row per program", None, programs=2**40),  # no partial dR carried from row to row
        Variant("dV", "default", None),
        Variant("dV", "as first measured", v._replace(flat=False, num_stages=1, vr=1), operator_layouts=False),
        Variant("dV", "positions innermost", None, operator_layouts=False),
        Variant("dV", "3 stages", v._replace(num_stages=3)),
        Variant("dV", "4 warps", v._replace(num_warps=4)),
        # the same work in half the programs: one 33-tap chunk per scope row instead of two of 17
        Variant("dV", "32 value columns", v._replace(bx=32, bxh=64, rt=64)),
        # a query row's haloed queries and output gradients loaded once for 2 or 4 value rows (the L2
        # traffic the estimate says bounds dV falls about as much), in one program per SM instead of two
        Variant("dV", "2 value rows", v._replace(vr=2)),
        Variant("dV", "4 value rows", v._replace(vr=4)),
        # 8 columns of 4 value rows: M 32 as above, but one chunk of 25 taps covers r = 23 (two of 17
        # did), so a third fewer multiply-adds for the same loads
        Variant("dV", "4 value rows of 8 columns", v._replace(vr=4, bx=8)),
    ]


# ------------------------------------------------------------------------------------------------
# executed work, from the kernels' loop bounds
# ------------------------------------------------------------------------------------------------
def _row_span(y: int, side: int, r: int) -> int:
    """Scope rows of query row y that reach inside the map (dy_hi - dy_lo of the kernels)."""
    c = r // 2
    return min(c - y + side, r) - max(c - y, 0)


def _chunks(x0: int, bx: int, side: int, r: int, taps: int, inverse: bool) -> int:
    """Tap chunks of a segment of bx columns starting at x0 (the kernels' t_lo..t_hi in steps of taps)."""
    c, x_end = r // 2, min(x0 + bx, side)
    lo, hi = (max(x0 + c - side + 1, 0), min(x_end + c, r)) if inverse else (max(c - x_end + 1, 0), min(c - x0 + side, r))
    return max(0, math.ceil((hi - lo) / taps))


def value_rows_reached(side: int, r: int, qrows: int) -> int:
    """Value rows the forward's programs of ``qrows`` query rows step over, summed over the programs:
    those inside the map that the scope of one of the program's query rows reaches."""
    c = r // 2
    return sum(min(y0 + qrows + r - 1 - c, side) - max(y0 - c, 0) for y0 in range(0, side, qrows))


def executed_flop(kernel: str, shape: dict, tiles: T.Tiles) -> float:
    """Multiply-adds x 2 of one launch of ``kernel`` as its tiles execute them (padding included)."""
    b, heads, k, u, v, side, r = (shape[n] for n in ("b", "heads", "k", "u", "v", "side", "r"))
    t = tiles
    kb, hg = math.ceil(k / t.bk), math.ceil(heads / t.hb)
    segments = range(0, side, t.bx)
    if kernel == "forward":
        m = t.qrows * t.hb * t.bx
        steps = value_rows_reached(side, r, t.qrows) * sum(_chunks(x0, t.bx, side, r, t.taps, False) for x0 in segments)
        per_program = kb * m * t.bk * t.bv  # the content term, once per program
        macs = b * hg * math.ceil(v / t.bv) * (u * steps * (kb * m * t.bk * t.qrows * t.rt + m * t.bxh * t.bv)
                                                + math.ceil(side / t.qrows) * len(segments) * per_program)
    elif kernel == "dq/dR":
        m, vb = t.hb * t.bx, math.ceil(v / t.bv)
        steps = sum(_row_span(y, side, r) for y in range(side)) * sum(_chunks(x0, t.bx, side, r, t.taps, False) for x0 in segments)
        macs = b * hg * kb * (u * steps * (vb * m * t.bv * t.bxh + 2 * m * t.rt * t.bk) + side * len(segments) * vb * m * t.bv * t.bk)
    elif kernel == "dV":
        s, c = t.hb * t.bxh, r // 2
        # a program of vr value rows from y0 steps over the query rows whose scope reaches one of them
        query_rows = sum(min(y0 + t.vr + c, side) - max(y0 - (r - 1 - c), 0) for y0 in range(0, side, t.vr))
        steps = query_rows * sum(_chunks(x0, t.bx, side, r, t.taps, True) for x0 in segments)
        macs = b * u * math.ceil(v / t.bv) * steps * hg * (kb * s * t.bk * t.vr * t.rt + t.vr * t.bx * s * t.bv)
    else:
        raise ValueError(f"unknown kernel {kernel!r}")
    return 2.0 * macs


# ------------------------------------------------------------------------------------------------
# the benchmark
# ------------------------------------------------------------------------------------------------
def kernel_benchmark_paths(out_dir: Path, device: str) -> Dict[str, Path]:
    return result_paths(out_dir, f"lambda_kernels_{torch.device(device).type}", plot=False)


def _inputs(shape: dict, dtype: torch.dtype, device: torch.device, seed: int = 0):
    b, heads, k, u, v, side, r = (shape[n] for n in ("b", "heads", "k", "u", "v", "side", "r"))
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*size, scale=1.0):
        return (torch.randn(*size, generator=g) * scale).to(device=device, dtype=dtype)

    q, values = rand(b, heads, k, side, side), rand(b, u, v, side, side)
    kernel, content = rand(k, u, r, r, scale=0.1), rand(b, k, v, scale=0.1)
    grad = rand(b, heads * v, side, side)
    return q, values, kernel, content, grad


class _Case:
    """One variant's launch on given inputs, the tensors it writes, and how to read its result."""

    def __init__(self, variant: Variant, arithmetic: Arithmetic, inputs, shape: dict) -> None:
        q, values, kernel, content, grad = inputs
        if variant.operator_layouts:  # as lambda_output_triton launches the kernels
            (q, values, kernel), grad = T.operand_layouts(q, values, kernel), T.gradient_layout(grad)
        self.variant = variant
        tiles = variant.tiles
        if variant.kernel == "forward":
            self.out = torch.empty(grad.shape, dtype=q.dtype, device=q.device)  # new, as the operator's
            self.launch = T.forward_launch(q, values, kernel, content, self.out, arithmetic.precision, tiles=tiles)
            self.tiles = tiles or T.FORWARD_TILES
            self.rows = 1
        elif variant.kernel == "dq/dR":
            b, heads, _, side, _ = q.shape
            self.rows = T.qr_rows_per_program(b, heads, side, side, target=variant.programs, tiles=tiles)
            self.dq = torch.empty_like(q)
            self.partial = torch.zeros(T.qr_partial_shape(q, values, kernel, self.rows, tiles=tiles),
                                       dtype=torch.float32, device=q.device)
            self.launch = T.qr_grad_launch(grad, q, values, kernel, content, self.dq, self.partial, self.rows,
                                           arithmetic.precision, tiles=tiles)
            self.tiles = tiles or T.QR_GRAD_TILES
        else:
            self.dv = torch.empty_like(values)
            self.launch = T.v_grad_launch(grad, q, kernel, self.dv, arithmetic.precision, tiles=tiles)
            self.tiles = tiles or T.v_grad_tiles(q.dtype, arithmetic.precision)
            self.rows = 1
        self.flop = executed_flop(variant.kernel, shape, self.tiles)  # the same whichever rows a program takes

    def result(self) -> List[torch.Tensor]:
        """Run once from a clean state and return what the kernel computed (float32)."""
        if self.variant.kernel == "dq/dR":
            self.partial.zero_()
        compiled = self.launch.run()
        self.compiled = compiled
        if self.variant.kernel == "forward":
            return [self.out.float()]
        if self.variant.kernel == "dq/dR":
            return [self.dq.float(), self.partial.sum(0)]
        return [self.dv.float()]

    def compiled_facts(self) -> dict:
        c = getattr(self, "compiled", None)
        if c is None or not hasattr(c, "n_regs"):  # the interpreter compiles nothing
            return {}
        return {"registers": c.n_regs, "spills": c.n_spills, "shared_bytes": getattr(c.metadata, "shared", None)}


def _max_relative_difference(got: Sequence[torch.Tensor], expected: Sequence[torch.Tensor]) -> float:
    return max(((a - e).abs().max() / e.abs().max().clamp_min(1e-30)).item() for a, e in zip(got, expected))


# a variant agrees with the default tiles within this (the sums' order differs; products are the same)
AGREEMENT = {"float32 IEEE": 1e-5, "TF32": 1e-3, "float16": 1e-2}


def kernel_benchmark(out_dir: Path, device: str = "cuda", repeats: int = 3, shapes: Optional[Sequence[tuple]] = None,
                     arithmetic: Sequence[Arithmetic] = ARITHMETIC, log: Callable[[str], None] = print) -> dict:
    dev = torch.device(device)
    reason = T.unavailable_reason(dev)
    if reason is not None:
        raise UserError(f"--kernels: the Triton operator cannot run on {dev.type}: {reason}")
    shapes = shapes or (KERNEL_SHAPES if dev.type == "cuda" else TOY_KERNEL_SHAPES)
    paths = kernel_benchmark_paths(out_dir, device)
    records, result = [], {}
    for shape_name, shape in shapes:
        for arith in arithmetic:
            inputs = _inputs(shape, arith.dtype, dev)
            chosen = [v for v in variants() if v.name == "default" or (arith.name in VARIANT_ARITHMETIC and shape_name in VARIANT_SHAPES)]
            for kernel in ("forward", "dq/dR", "dV"):
                records.extend(_time_variants(kernel, [v for v in chosen if v.kernel == kernel], shape_name, shape, arith,
                                              inputs, repeats, dev, log))
            records.extend(_operator_steps(shape_name, arith, inputs, repeats, dev))
            del inputs
        # written after every shape: a run stopped by its time limit keeps what it measured
        result = {"environment": environment_summary(dev), "repeats": repeats, "records": records,
                  "shapes": {name: shape for name, shape in shapes}, "complete": shape_name == shapes[-1][0]}
        write_results(paths, result, kernel_report(result))
    log(f"wrote {paths['json']}, .md")
    return result


def _time_variants(kernel: str, chosen: List[Variant], shape_name: str, shape: dict, arith: Arithmetic, inputs,
                   repeats: int, dev: torch.device, log: Callable[[str], None]) -> List[dict]:
    """The variants of one kernel: each run once and compared with the default tiles' result, then the
    agreeing ones timed, interleaved. A variant that does not compile or launch here (shared memory,
    registers) is recorded with its error; the default must run."""
    cases, failed = {}, {}
    for variant in chosen:
        try:
            case = _Case(variant, arith, inputs, shape)
            case.output = [t.clone() for t in case.result()]
            cases[variant.name] = case
        except Exception as exc:  # a variant the GPU cannot run is a result, not the end of the run
            if variant.name == "default":
                raise
            failed[variant.name] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
    expected = cases["default"].output
    agreement = {name: _max_relative_difference(case.output, expected) for name, case in cases.items()}
    steps = {name: case.launch.run for name, case in cases.items() if agreement[name] <= AGREEMENT[arith.name]}
    timings = interleaved(steps, repeats, dev, min_sample_s=0.02)
    records = []
    for variant in chosen:
        name = variant.name
        record = {"shape": shape_name, "arithmetic": arith.name, "kernel": kernel, "variant": name}
        if name in failed:
            record["failed"] = failed[name]
            log(f"{shape_name} {arith.name} {kernel} {name}: FAILED {failed[name]}")
            records.append(record)
            continue
        case = cases[name]
        record.update({"tiles": case.tiles._asdict(), "rows": case.rows, "operator_layouts": variant.operator_layouts,
                       "gflop": case.flop / 1e9,
                       "max_rel_difference_to_default": agreement[name], "agrees": agreement[name] <= AGREEMENT[arith.name],
                       **case.compiled_facts()})
        if name in timings:
            record["time"] = timings[name].to_dict()
            record["tflops"] = case.flop / timings[name].median / 1e12
        records.append(record)
        log(f"{shape_name} {arith.name} {kernel} {name}: "
            + (f"{spread(record['time'])}, {record['tflops']:.1f} TFLOP/s" if "time" in record
               else f"DISAGREES with the default tiles by {agreement[name]:.2g}"))
    return records


def _operator_steps(shape_name: str, arith: Arithmetic, inputs, repeats: int, dev: torch.device) -> List[dict]:
    """The backward's two PyTorch steps (as backward_into runs them), and the whole operator, forward
    and forward+backward, as the layer calls it (its layout copies, buffers and launch overheads
    included): the kernels' rows do not add up to it."""
    q, values, kernel, content, grad = inputs
    ql, vl, rl = T.operand_layouts(q, values, kernel)
    gl = T.gradient_layout(grad)
    b, heads, _, side, _ = q.shape
    partial = torch.zeros(T.qr_partial_shape(ql, vl, rl, T.qr_rows_per_program(b, heads, side, side)),
                          dtype=torch.float32, device=dev)
    dr, dc = torch.empty_like(rl), torch.empty_like(content)
    leaves = [t.detach().requires_grad_() for t in (q, values, kernel, content)]

    def forward() -> None:
        with torch.no_grad():
            T.lambda_output_triton(*leaves)

    def forward_backward() -> None:
        T.lambda_output_triton(*leaves).backward(grad)
        for leaf in leaves:
            leaf.grad = None

    steps = {"dR partial sums added": lambda: T.add_partial_sums(partial, dr),
             "dlambda^c (batched matmul)": lambda: T.content_lambda_gradient(ql, gl, dc),
             "operator forward": forward, "operator forward+backward": forward_backward}
    with operator_precision(arith.precision == "tf32"):  # the switches the operator reads for float32
        timings = interleaved(steps, repeats, dev, warmup=2, min_sample_s=0.02)
    return [{"shape": shape_name, "arithmetic": arith.name, "kernel": "torch" if "operator" not in name else "operator",
             "variant": name, "time": t.to_dict()} for name, t in timings.items()]


def fastest_variants(records: Sequence[dict]) -> List[str]:
    """Per shape, arithmetic and kernel with variants timed: the fastest that agrees with the default
    tiles, its time over the default's, whether that is beyond the rounds' spread (its slowest round
    faster than the default's fastest), and what it changes (the Tiles fields, the rows per program, the
    operands' layouts):
    what to set in FORWARD_TILES / QR_GRAD_TILES / V_GRAD_TILES (or QR_TARGET_PROGRAMS)."""
    lines = []
    groups: Dict[tuple, List[dict]] = {}
    for r in records:
        if r["kernel"] in ("forward", "dq/dR", "dV") and "time" in r and r.get("agrees", True):
            groups.setdefault((r["shape"], r["arithmetic"], r["kernel"]), []).append(r)
    for (shape, arith, kernel), timed in groups.items():
        default = next((r for r in timed if r["variant"] == "default"), None)
        if default is None or len(timed) < 2:
            continue
        best = min(timed, key=lambda r: r["time"]["median_s"])
        where = f"{shape}, {arith}, {kernel}"
        if best is default:
            lines.append(f"{where}: the default tiles")
            continue
        changes = [f"{name}={value}" for name, value in best["tiles"].items() if default["tiles"].get(name) != value]
        if best.get("rows") != default.get("rows"):
            changes.append(f"{best['rows']} query rows per program (default {default['rows']})")
        if not best.get("operator_layouts", True):
            changes.append("operands in other layouts than the operator launches with")
        if min(best["time"].get("runs", 1), default["time"].get("runs", 1)) < 2:
            spread_note = "one round: no spread"
        elif best["time"]["max_s"] < default["time"]["min_s"]:
            spread_note = "beyond the rounds' spread"
        else:
            spread_note = "within the rounds' spread"
        lines.append(f"{where}: \"{best['variant']}\", {best['time']['median_s'] / default['time']['median_s']:.2f}x the "
                     f"default's time ({spread_note}): {', '.join(changes)}")
    return lines


def kernel_report(result: dict) -> str:
    records = result["records"]
    head = ["shape", "arithmetic", "kernel", "variant", "time", "vs default", "GFLOP executed", "TFLOP/s",
            "registers / spills / shared KB", "agrees with default"]
    rows = []
    default = {(r["shape"], r["arithmetic"], r["kernel"]): r for r in records if r["variant"] == "default" and "time" in r}
    for r in records:
        base = default.get((r["shape"], r["arithmetic"], r["kernel"]))
        ratio = f"{r['time']['median_s'] / base['time']['median_s']:.2f}x" if base and "time" in r and r is not base else "-"
        facts = (f"{r['registers']} / {r['spills']} / {(r['shared_bytes'] or 0) / 1024:.0f}" if "registers" in r else "-")
        rows.append([r["shape"], r["arithmetic"], r["kernel"], r["variant"],
                     spread(r["time"]) if "time" in r else ("FAILED: " + r["failed"] if "failed" in r else "not timed"),
                     ratio, f"{r['gflop']:.3g}" if "gflop" in r else "-", f"{r['tflops']:.3g}" if "tflops" in r else "-", facts,
                     "-" if "agrees" not in r else ("yes" if r["agrees"] else f"NO ({r['max_rel_difference_to_default']:.2g})")])
    totals = []
    for (shape, arith, kern), fwd in default.items():
        if kern == "forward":
            backward = [default[(shape, arith, k)]["time"]["median_s"] for k in ("dq/dR", "dV") if (shape, arith, k) in default]
            backward += [r["time"]["median_s"] for r in records if r["kernel"] == "torch" and (r["shape"], r["arithmetic"]) == (shape, arith)]
            operator = {r["variant"]: r["time"]["median_s"] for r in records
                        if r["kernel"] == "operator" and (r["shape"], r["arithmetic"]) == (shape, arith)}
            line = (f"{shape}, {arith}: kernels forward {milliseconds(fwd['time']['median_s'])} ms, backward "
                    f"{milliseconds(sum(backward))} ms")
            if len(operator) == 2:
                line += (f"; the operator as the layer calls it: forward {milliseconds(operator['operator forward'])} ms, "
                         f"forward+backward {milliseconds(operator['operator forward+backward'])} ms")
            totals.append(line)
    text = (f"# The Triton lambda operator, kernel by kernel ({result['environment']['device']})\n\n"
            + ("" if result.get("complete", True) else "**Incomplete: the run stopped before its last shape.**\n\n")
            + f"`{json.dumps(result['environment'])}`; shapes (b, heads, k, u, v, map side, scope r): `{json.dumps(result['shapes'])}`; "
            f"median (range) of {result['repeats']} rounds, the variants of a kernel {INTERLEAVING.replace('50 ms', '20 ms')}. "
            "\"vs default\": the variant's time over the default tiles'. Executed FLOPs count the tiles as launched "
            "(padding included). A variant that does not agree with the default tiles' result is not timed.\n\n"
            + markdown_table(head, rows))
    if totals:
        text += "\nDefault tiles, added up (the backward: dq/dR, dV and the two PyTorch steps): " + "; ".join(totals) + ".\n"
    fastest = fastest_variants(records)
    if fastest:
        text += "\n**Fastest tiles per kernel** (the variants that agree with the default):\n\n" + "".join(
            f"- {line}\n" for line in fastest)
    disagree = [r for r in records if r.get("agrees") is False]
    if disagree:
        text += "\n**Variants that compute something else than the default tiles:** " + ", ".join(
            f"{r['shape']} {r['arithmetic']} {r['kernel']} {r['variant']}" for r in disagree) + ".\n"
    return text


__all__ = ["ARITHMETIC", "KERNEL_SHAPES", "TOY_KERNEL_SHAPES", "Variant", "executed_flop", "fastest_variants", "kernel_benchmark",
           "kernel_benchmark_paths", "kernel_report", "variants"]
