#!/usr/bin/env python3
"""Roofline estimates ON PAPER (nothing measured) for the lambda layer on the Triton kernels against the
3x3 convolution it replaces, at the Table 6 shapes of LambdaResNet-101 (1024 px, batch 8): the numbers
in docs/gpu.md. Counts follow the kernels' tiles (lambda_det/layers/triton_lambda.py): padded tile work
as executed, not just the useful multiply-adds.

    python scripts/gpu_roofline.py            # markdown tables
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lambda_det.benchmark.kernels import executed_flop, value_rows_reached  # noqa: E402
from lambda_det.layers.triton_lambda import FORWARD_TILES, QR_GRAD_TILES, V_GRAD_TILES, qr_rows_per_program  # noqa: E402

# H200 (Hopper, as H100 SXM for compute): dense tensor-core peaks and memory bandwidths. Assumptions.
PEAK = {"tf32": 495e12, "half": 989e12}
HBM = 4.3e12  # bytes/s, a device-to-device copy as measured on the lent H200 (the spec says 4.8)
L2 = 5.5e12  # bytes/s, public microbenchmarks of Hopper's L2: an assumption
# fraction of peak reached: cuDNN's implicit-GEMM 3x3 convolutions at these sizes, and these kernels
# (32 x 64 / 16 x 128 tiles, a register gather between two mma, 1-2 programs per SM): assumptions
CONV_EFFICIENCY = 0.7
KERNEL_EFFICIENCY = 0.3
ELEMENTWISE_EFFICIENCY = 0.7  # of HBM bandwidth, for the layer's batch norms, softmax, pool

SHAPES = (("res4 lambda block (d 256, 64x64)", 256, 64, 1), ("first res5 block, stride 2 (d 512, 64x64 -> 32x32)", 512, 64, 2),
          ("res5 lambda block (d 512, 32x32)", 512, 32, 1))
B, HEADS, K, U, R = 8, 4, 16, 1, 23


def rows_in_map(side: int, r: int) -> float:
    c = r // 2
    return sum(min(r, c - y + side) - max(0, c - y) for y in range(side)) / side


def chunks(side: int, r: int, bx: int, taps: int, forward: bool) -> float:
    c, total = r // 2, 0
    for x0 in range(0, side, bx):
        xe = min(x0 + bx, side)
        lo, hi = (max(c - xe + 1, 0), min(c - x0 + side, r)) if forward else (max(x0 + c - side + 1, 0), min(xe + c, r))
        total += math.ceil((hi - lo) / taps)
    return total / math.ceil(side / bx)


def kernel_macs(d: int, side: int, forward_tiles=FORWARD_TILES, v_tiles=V_GRAD_TILES):
    """(forward, dq/dR, dV) multiply-adds as the tiles execute them (the kernel benchmark's count), and
    the useful ones (fwd, bwd)."""
    v = d // HEADS
    n = side * side
    ry = rows_in_map(side, R)
    shape = dict(b=B, heads=HEADS, k=K, u=U, v=v, side=side, r=R)
    rows = qr_rows_per_program(B, HEADS, side, side)
    fwd, qr, dv = (executed_flop(kernel, shape, tiles, rows) / 2 for kernel, tiles in
                   (("forward", forward_tiles), ("dq/dR", QR_GRAD_TILES), ("dV", v_tiles)))
    taps = ry * sum(min(R, R // 2 - x + side) - max(0, R // 2 - x) for x in range(side)) / side
    useful_fwd = B * n * HEADS * (K + v) * taps * U
    # backward per tap and head: da (v), dq and dR (2 k), dV with its logits recomputed (k + v)
    useful_bwd = B * n * HEADS * (2 * v + 3 * K) * taps * U
    return fwd, qr, dv, useful_fwd, useful_bwd


def dv_l2_bytes(d: int, side: int, e: int, t) -> float:
    """The dV kernel's tile loads from L2 with tiles ``t``: per step, the haloed queries and output
    gradients of one query row (all heads) and the embeddings of the scope rows joining it to the
    program's t.vr value rows."""
    v, c = d // HEADS, R // 2
    query_rows = sum(min(y0 + t.vr + c, side) - max(y0 - (R - 1 - c), 0) for y0 in range(0, side, t.vr))
    return B * query_rows * math.ceil(side / t.bx) * math.ceil(v / t.bv) * chunks(side, R, t.bx, t.taps, False) * (
        t.hb * t.bxh * (t.bk + t.bv) + t.bk * t.vr * t.rt) * e


def forward_l2_bytes(d: int, side: int, e: int, t) -> float:
    """The forward kernel's tile loads from L2 with tiles ``t``: per step, one haloed value row and the
    embeddings of the scope rows joining it to the program's t.qrows query rows (whole tiles, masked
    columns included: an upper bound, as for the other kernels)."""
    v = d // HEADS
    return B * value_rows_reached(side, R, t.qrows) * math.ceil(side / t.bx) * math.ceil(v / t.bv) * (
        t.bxh * t.bv + t.bk * t.qrows * t.rt) * e


def l2_bytes(d: int, side: int, e: int, forward_tiles=FORWARD_TILES, v_tiles=V_GRAD_TILES):
    """Tile loads the kernels repeat from L2 (value rows, embeddings, queries, output gradients)."""
    v = d // HEADS
    ry = rows_in_map(side, R)
    fwd = forward_l2_bytes(d, side, e, forward_tiles)
    t = QR_GRAD_TILES
    # value rows and embeddings per step, the partial dR read and written (float32); G stays in registers
    qr = B * side * math.ceil(side / t.bx) * ry * chunks(side, R, t.bx, t.taps, True) * (
        (t.bxh * v + t.bk * t.rt) * e + 2 * t.bk * t.rt * 4)
    return fwd, qr, dv_l2_bytes(d, side, e, v_tiles)


def estimate(name: str, d: int, side: int, stride: int, amp: bool, forward_tiles=FORWARD_TILES, v_tiles=V_GRAD_TILES) -> dict:
    """The layer against its 3x3 conv with these tiles; ``ideal_fb``: its fwd+bwd if the kernels did
    only the useful multiply-adds, at the same efficiency, with no L2 bound (what tiling alone can reach)."""
    e = 2 if amp else 4  # bytes per element of activations
    peak = PEAK["half" if amp else "tf32"]
    n, so = side * side, side // stride
    v = d // HEADS
    # 3x3 convolution, d -> d, stride: forward, and forward + both gradients
    conv_flop = 2 * B * so * so * 9 * d * d
    conv_bytes_f = (B * d * n + B * d * so * so + 9 * d * d) * e
    conv_bytes_fb = conv_bytes_f + (2 * B * d * n + 2 * B * d * so * so + 18 * d * d) * e
    conv_f = max(conv_flop / (CONV_EFFICIENCY * peak), conv_bytes_f / HBM)
    conv_fb = max(3 * conv_flop / (CONV_EFFICIENCY * peak), conv_bytes_fb / HBM)
    # lambda layer: qkv projection (1x1 conv) on tensor cores, the operator's kernels, and the
    # elementwise traffic (batch norms of q and v, key softmax, content lambda, output, pool)
    cq = HEADS * K + K * U + v * U
    proj = 2 * B * n * d * cq
    fwd, qr, dv, useful_f, useful_b = kernel_macs(d, side, forward_tiles, v_tiles)
    l2_f, l2_qr, l2_dv = l2_bytes(d, side, e, forward_tiles, v_tiles)
    l2_b = l2_qr + l2_dv
    act = B * n * e
    elem_f = act * (d + cq + 2 * 2 * (HEADS * K + v * U) + 2 * K * U + d + (d + d // 4 if stride == 2 else 0))
    elem_b = 2 * elem_f + act * (d + cq)
    op_f = max(2 * fwd / (KERNEL_EFFICIENCY * peak), l2_f / L2)
    # the backward's two kernels run one after the other, each bound by its own compute or loads
    op_b = sum(max(2 * flop / (KERNEL_EFFICIENCY * peak), loads / L2) for flop, loads in ((qr, l2_qr), (dv, l2_dv)))
    lam_f = proj / (CONV_EFFICIENCY * peak) + op_f + elem_f / (ELEMENTWISE_EFFICIENCY * HBM)
    lam_fb = lam_f + 2 * proj / (CONV_EFFICIENCY * peak) + op_b + elem_b / (ELEMENTWISE_EFFICIENCY * HBM)
    ideal_fb = (3 * proj / CONV_EFFICIENCY + 2 * (useful_f + useful_b) / KERNEL_EFFICIENCY) / peak + (
        elem_f + elem_b) / (ELEMENTWISE_EFFICIENCY * HBM)
    return dict(name=name, amp=amp, conv_gflop=conv_flop / 1e9, conv_mb=conv_bytes_f / 1e6, conv_f=conv_f * 1e3, conv_fb=conv_fb * 1e3,
                kernel_gflop_f=2 * fwd / 1e9, kernel_gflop_b=2 * (qr + dv) / 1e9, useful_f=2 * useful_f / 1e9,
                useful_b=2 * useful_b / 1e9, proj_gflop=proj / 1e9, l2_mb=(l2_f + l2_b) / 1e6,
                dram_mb=(elem_f + elem_b) / 1e6, lam_f=lam_f * 1e3, lam_fb=lam_fb * 1e3, ideal_fb=ideal_fb * 1e3,
                bound_f="compute" if 2 * fwd / (KERNEL_EFFICIENCY * peak) >= l2_f / L2 else "L2",
                conv_bound="compute" if conv_flop / (CONV_EFFICIENCY * peak) >= conv_bytes_f / HBM else "memory")


def kernel_variants(kernel: str, loads, variants) -> None:
    """One kernel alone at res4 (TF32) with the kernel benchmark's tile variants that change its loads:
    ``loads(d, side, bytes per element, tiles)`` counts its L2 traffic."""
    print(f"\n| {kernel} tiles (res4, TF32) | GFLOP executed | L2 MB | ms at 30% of peak / at L2 bandwidth | bound |")
    print("|---|---|---|---|---|")
    shape = dict(b=B, heads=HEADS, k=K, u=U, v=256 // HEADS, side=64, r=R)
    for name, tiles in variants:
        flop = executed_flop(kernel, shape, tiles)
        l2 = loads(256, 64, 4, tiles)
        compute, traffic = flop / (KERNEL_EFFICIENCY * PEAK["tf32"]), l2 / L2
        print(f"| {name} | {flop / 1e9:.1f} | {l2 / 1e6:.0f} | {compute * 1e3:.3f} / {traffic * 1e3:.3f} | "
              f"{'compute' if compute >= traffic else 'L2'} |")


def with_variants() -> None:
    """The layer's fwd+bwd ratio with stacked rows (forward 2 query rows, dV 4 value rows of 8 columns) beside the
    defaults, and beside kernels that would do only the useful work at the same efficiency."""
    stacked = dict(forward_tiles=FORWARD_TILES._replace(qrows=2), v_tiles=V_GRAD_TILES._replace(vr=4, bx=8))
    print("\n| shape | precision | fwd+bwd ratio: default tiles | forward 2 query rows + dV 4 value rows of 8 columns | "
          "kernels doing only the useful work, no L2 bound |")
    print("|---|---|---|---|---|")
    for name, d, side, stride in SHAPES:
        for amp in (False, True):
            default, rows = estimate(name, d, side, stride, amp), estimate(name, d, side, stride, amp, **stacked)
            conv = default["conv_fb"]
            print(f"| {name} | {'AMP fp16' if amp else 'fp32 (TF32)'} | {default['lam_fb'] / conv:.2f}x | "
                  f"{rows['lam_fb'] / conv:.2f}x (fwd {rows['lam_f'] / rows['conv_f']:.2f}x) | {default['ideal_fb'] / conv:.2f}x |")


def main() -> None:
    print("| shape | precision | 3x3 conv GFLOP (fwd) / MB | conv bound | kernels GFLOP fwd / bwd (useful) | "
          "layer other: proj GFLOP, DRAM MB, L2 MB | kernels bound | conv ms fwd / fwd+bwd | layer ms fwd / fwd+bwd | "
          "ratio fwd / fwd+bwd |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name, d, side, stride in SHAPES:
        for amp in (False, True):
            r = estimate(name, d, side, stride, amp)
            print(f"| {name} | {'AMP fp16' if amp else 'fp32 (TF32)'} | {r['conv_gflop']:.1f} / {r['conv_mb']:.0f} | {r['conv_bound']} | "
                  f"{r['kernel_gflop_f']:.1f} / {r['kernel_gflop_b']:.1f} ({r['useful_f']:.1f} / {r['useful_b']:.1f}) | "
                  f"{r['proj_gflop']:.1f}, {r['dram_mb']:.0f}, {r['l2_mb']:.0f} | {r['bound_f']} | "
                  f"{r['conv_f']:.3f} / {r['conv_fb']:.3f} | {r['lam_f']:.3f} / {r['lam_fb']:.3f} | "
                  f"{r['lam_f'] / r['conv_f']:.2f}x / {r['lam_fb'] / r['conv_fb']:.2f}x |")
    kernel_variants("dV", dv_l2_bytes, (
        ("default (1 value row, 16 columns)", V_GRAD_TILES), ("2 value rows", V_GRAD_TILES._replace(vr=2)),
        ("4 value rows", V_GRAD_TILES._replace(vr=4)), ("4 value rows of 8 columns", V_GRAD_TILES._replace(vr=4, bx=8)),
        ("32 value columns", V_GRAD_TILES._replace(bx=32, bxh=64, rt=64))))
    kernel_variants("forward", forward_l2_bytes, (
        ("default (1 query row)", FORWARD_TILES), ("2 query rows", FORWARD_TILES._replace(qrows=2)),
        ("4 query rows", FORWARD_TILES._replace(qrows=4))))
    with_variants()


if __name__ == "__main__":
    main()
