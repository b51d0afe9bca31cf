"""The lambda layer's output as Triton kernels for CUDA: the same function as ``lambda_output_fused``
(y_n = (lambda^c + lambda^p_n)^T q_n for every query position n, LambdaNetworks Sec. 3), forward and
backward, on tensor cores, without materializing the per-position lambdas.

Contract (identical to ``lambda_det.layers.fused.lambda_output_fused``)::

    lambda_output_triton(q, values, kernel, content_lambda) -> out
    q (b, h, k, H, W), values (b, u, v, H, W), kernel (k, u, rh, rw) with odd rh, rw,
    content_lambda (b, k, v)  ->  out (b, h v, H, W)
    out[b, h v + j, y, x] = sum_k q[b, h, k, y, x] (content_lambda[b, k, j]
                            + sum_{u, dy, dx} kernel[k, u, cy + dy, cx + dx] values[b, u, j, y + dy, x + dx])

with zero padding outside the map and (cy, cx) = (rh // 2, rw // 2). Local scopes (Sec. 3.2, the
"lambda convolution") and global scopes (rh = 2H - 1, rw = 2W - 1) are the same computation.

Order of the sums (the relative-logits order, as the CPU operator): for one image, one row y of
query positions and one scope row dy,

    a[(h, i), t] = sum_k q[h, k, y, x0 + i] R[k, u, dy, t0 + t]          logits: (M x k) @ (k x T)
    B[(h, i), j] = a[(h, i), j - i]   for 0 <= j - i < T, else 0         band (a register gather)
    y[(h, i), :] += B @ V[u, :, y + dy - cy, x0 + t0 - cx + j]            apply: (M x J) @ (J x v)

i.e. two matmuls per (u, dy, tap chunk) on tensor cores (``tl.dot``), the band being the shift that
turns "tap t of position i" into "column i + t of the haloed value row". Heads share the values
(Sec. 3: one lambda for all heads), so the h heads and BX positions of a program stack into the
M = HB * BX rows of one matmul; the content term ``q^T lambda^c`` starts the same accumulator.

Backward (recomputing the logits instead of storing them, as the CPU operator does):

    dB = G @ V_row^T,  da[(h,i), t] = dB[(h,i), i + t]      (the band read back; G = dy/dout)
    dq += da @ R^T + G @ (lambda^c)^T
    dR += q^T @ da          per-program partial sums, added in a fixed order afterwards (no atomics)
    dV[u, :, y', x0 + i] = sum_{h, dy, t} a[(h, j), t] g[h, :, y, x_j]  gathered over the inverse
                           neighbourhood (the queries whose scope holds column x0 + i): no atomics
    dlambda^c = sum_n q_n g_n^T      one batched matmul (torch), deterministic

Precision: float32 inputs use TF32 tensor cores when PyTorch's switch for convolutions allows it
(``torch.backends.cudnn.conv.fp32_precision`` / ``allow_tf32``, on by default: this is the lambda
convolution that replaces a 3x3 convolution, and gets its arithmetic) and exact matmuls were not
asked for (``float32_on_tf32``), IEEE float32 otherwise; float16 / bfloat16 inputs multiply in that
type and accumulate in float32 (AMP: under autocast the wrapper casts float32 inputs to autocast's
type); float64 accumulates in float64 (tests). docs/gpu.md has the tiles, the compile table and the
estimated roofline.

Availability: CUDA with Triton's NVIDIA backend; or any device when ``TRITON_INTERPRET=1`` was set
before this module was imported (Triton's CPU interpreter: slow, for tests). ``LAMBDA_DET_TRITON=0``
turns the operator off.
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Dict, List, NamedTuple, Optional, Tuple

import torch

from .position_lambdas import gradients_with_graph

Tensor = torch.Tensor

try:
    import triton
    import triton.language as tl

    _IMPORT_ERROR: Optional[str] = None
except Exception as exc:  # no triton (a CPU-only or minimal install): the layer's other forms still work
    triton = None
    tl = None
    _IMPORT_ERROR = f"{type(exc).__name__}: {exc}"


class Tiles(NamedTuple):
    """Compile-time tiles of one kernel: sizes (each a power of two, as Triton's blocks must be), warps,
    pipeline stages and the loop structure.

    hb heads x bx positions form the M rows of the matmuls; bxh is the haloed width of a value row
    (the band's columns), so one chunk covers bxh - bx + 1 taps of a scope row; rt >= that many
    logit columns; bk, bv: blocks of k and v (looped over / gridded beyond that); every tl.dot
    dimension is >= 16, which NVIDIA's tensor-core lowering needs (small k, v, heads are padded
    with masked zeros here instead). vr (dV only): value rows per program, stacked into the M rows
    of its products, so that one load of a query row's haloed queries and output gradients serves
    all the value rows its scope reaches. qrows (forward only): query rows per program, stacked into
    M likewise, so that one load of a value row serves all the query rows whose scope reaches it.
    """

    hb: int
    bx: int
    bxh: int
    rt: int
    bk: int
    bv: int
    num_warps: int
    num_stages: int
    flat: bool = True  # the steps over (u, scope or value row, tap chunk) as one loop, which Triton pipelines
    vr: int = 1
    qrows: int = 1

    @property
    def taps(self) -> int:  # scope columns one band covers
        return self.bxh - self.bx + 1

    def checked(self, kernel: str) -> "Tiles":
        """These tiles, if ``kernel`` ("forward", "dq/dR", "dV") can run them; else a ValueError naming the field."""
        for name, value in self._asdict().items():
            if name not in ("flat", "num_stages") and (value < 1 or value & (value - 1)):
                raise ValueError(f"{kernel} tiles: {name}={value} must be a power of two")
        if self.num_stages < 1:
            raise ValueError(f"{kernel} tiles: num_stages={self.num_stages} must be at least 1")
        if self.vr != 1 and (kernel != "dV" or not self.flat):
            raise ValueError(f"{kernel} tiles: vr={self.vr}: only the dV kernel's flat loop stacks value rows")
        if self.qrows != 1 and (kernel != "forward" or not self.flat):
            raise ValueError(f"{kernel} tiles: qrows={self.qrows}: only the forward kernel's flat loop stacks query rows")
        # M of the kernel's products
        rows = self.vr * self.bx if kernel == "dV" else self.qrows * self.hb * self.bx
        for name, value in (("bk", self.bk), ("bv", self.bv), ("bxh", self.bxh), ("rt", self.rt), ("M", rows)):
            if value < 16:
                raise ValueError(f"{kernel} tiles: {name}={value} < 16, the smallest tl.dot dimension on tensor cores")
        if self.bxh <= self.bx or self.rt < self.taps:
            raise ValueError(f"{kernel} tiles: bxh={self.bxh} must exceed bx={self.bx}, and rt={self.rt} cover its "
                             f"{self.taps} taps")
        return self


# One tile family per kernel (docs/gpu.md, "Tiles"): the dispatcher varies only the data type and the
# float32 precision, so every configuration it can launch is compiled ahead of time by the tests.
# Forward and dq/dR: 4 heads x 8 positions = 32 rows; the value row haloed to 32 columns leaves 25
# taps per chunk: r = 23 (the paper's scope) is one chunk, 23 of 32 band columns useful.
# Three stages: two buffers, so the loads of step i + 1 are in flight while step i multiplies (with
# two, Triton's single buffer is refilled only after the step's products).
FORWARD_TILES = Tiles(hb=4, bx=8, bxh=32, rt=32, bk=16, bv=64, num_warps=8, num_stages=3)
QR_GRAD_TILES = Tiles(hb=4, bx=8, bxh=32, rt=32, bk=16, bv=64, num_warps=8, num_stages=3)
# dV: 16 value columns (its matmul's M), the 32 haloed query columns of 4 heads stacked into the
# reduction (128), 17 taps per chunk, v = 64 in one block (so the logits are recomputed once per
# chunk, not once per value block). IEEE float32 multiplies with FMAs, whose operands take more
# registers: half the value block there (the first version spilled at 64 on sm_80).
# Two stages here: its tiles are larger (three took 110 KB of shared memory on sm_90 in TF32).
V_GRAD_TILES = Tiles(hb=4, bx=16, bxh=32, rt=32, bk=16, bv=64, num_warps=8, num_stages=2)
V_GRAD_TILES_FMA = V_GRAD_TILES._replace(bv=32)

# blocks of k or v a step unrolls (so that its loop of steps stays the innermost one, which Triton
# pipelines); beyond that many, a loop: every unrolled block gets its own pipeline buffers in shared
# memory (v = 512 in 8 blocks took 276 KB in dq/dR, over every GPU's limit)
MAX_UNROLLED_BLOCKS = 2

# (dtype, tl.dot input precision) the dispatcher can pick
PRECISIONS = (
    (torch.float32, "tf32"),
    (torch.float32, "ieee"),
    (torch.float16, "ieee"),
    (torch.bfloat16, "ieee"),
    (torch.float64, "ieee"),
)
# programs of the dq/dR kernel aimed for: enough to fill a GPU several times over, few enough that
# their partial dR sums (U * rh * rw * k floats each) stay small (34 KB each at r 23, k 16)
QR_TARGET_PROGRAMS = 512

if triton is not None:
    UNROLLED_BLOCKS = tl.constexpr(MAX_UNROLLED_BLOCKS)  # what a kernel may read of a global

    @triton.jit
    def _mm(a, b, acc, PRECISION: tl.constexpr, DOT_F32: tl.constexpr):
        """acc + a @ b. DOT_F32: multiply in float32 (Triton's interpreter gets bfloat16 dots wrong)."""
        if DOT_F32:
            return tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee", out_dtype=acc.dtype)
        return tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=acc.dtype)

    @triton.jit
    def _row_program(H, W, NV, BX: tl.constexpr, BV: tl.constexpr):
        """(image, row, first column, outer index, value block) of a program of a row-wise grid:
        axis 0 runs over (image, row, BX-column segment), axis 1 over (outer index, BV value block).
        A kernel whose programs own several map rows passes their groups' count as H: row is the group."""
        n_x = tl.cdiv(W, BX)
        pid = tl.program_id(0)
        row = pid // n_x
        n_vb = tl.cdiv(NV, BV)
        return (row // H).to(tl.int64), row % H, (pid % n_x) * BX, tl.program_id(1) // n_vb, tl.program_id(1) % n_vb

    @triton.jit
    def _stacked_rows(hg, x0, HEADS, W, HB: tl.constexpr, BX: tl.constexpr, NR: tl.constexpr):
        """The M = NR x HB x BX rows of a program's products: (head, position offset, column, map row
        offset, in range), NR map rows outermost."""
        rows = tl.arange(0, NR * HB * BX)
        head = hg * HB + (rows // BX) % HB
        ii = rows % BX
        xq = x0 + ii
        return head, ii, xq, rows // (HB * BX), (head < HEADS) & (xq < W)

    @triton.jit
    def _query_block(q_row, k0, kk, K, sqk, ok):
        """q[rows, k0 + kk]: a (rows x k block) tile from the rows' base pointers, zero outside k and ok."""
        return tl.load(q_row + (k0 + kk)[None, :] * sqk, mask=ok[:, None] & ((k0 + kk) < K)[None, :], other=0.0)

    @triton.jit
    def _embedding_block(r_ptr, k0, kk, K, u, dy, tap, tap_ok, srk, sru, sry, srx):
        """R[k0 + kk, u, dy, tap]: a (k block x tap chunk) tile, zero outside k and the chunk's valid taps."""
        return tl.load(r_ptr + (k0 + kk)[:, None] * srk + u * sru + dy * sry + tap[None, :] * srx,
                       mask=((k0 + kk) < K)[:, None] & tap_ok[None, :], other=0.0)

    @triton.jit
    def _flat_step(it, dy_lo, n_dy, t_lo, n_t, TS: tl.constexpr):
        """(u, dy, t0) of step ``it`` of the (u, row, tap chunk) iterations run as one loop (the row a
        scope row, or in the forward the value row): Triton pipelines only innermost loops, so one flat
        loop lets the next step's loads overlap this step's products (nested, every scope row waited for
        its own loads)."""
        per_u = n_dy * n_t
        u = it // per_u
        rest = it - u * per_u
        dy = dy_lo + rest // n_t
        return u, dy, t_lo + (rest - (rest // n_t) * n_t) * TS

    @triton.jit
    def _query_taps(x0, W, RW, BX: tl.constexpr):
        """Scope columns [t_lo, t_hi) that reach inside the map for some query column in [x0, x0 + BX)."""
        cx = RW // 2
        x_end = tl.minimum(x0 + BX, W)
        return tl.maximum(cx - x_end + 1, 0), tl.minimum(cx - x0 + W, RW)

    @triton.jit
    def _logits(a, q_row, ok, r_ptr, u, dy, tap, tap_ok, K, kk, sqk, srk, sru, sry, srx,
                BK: tl.constexpr, NKB: tl.constexpr, PRECISION: tl.constexpr, DOT_F32: tl.constexpr):
        """a + q R[u, dy, tap chunk] summed over the NKB blocks of k: unrolled up to UNROLLED_BLOCKS (a
        loop here would be the one Triton pipelines), beyond that a loop (every unrolled block takes its
        own pipeline buffers, and shared memory runs out)."""
        if NKB <= UNROLLED_BLOCKS:
            for kb in tl.static_range(NKB):
                qk = _query_block(q_row, kb * BK, kk, K, sqk, ok)
                rk = _embedding_block(r_ptr, kb * BK, kk, K, u, dy, tap, tap_ok, srk, sru, sry, srx)
                a = _mm(qk, rk, a, PRECISION, DOT_F32)
        else:
            for k0 in range(0, K, BK):
                qk = _query_block(q_row, k0, kk, K, sqk, ok)
                rk = _embedding_block(r_ptr, k0, kk, K, u, dy, tap, tap_ok, srk, sru, sry, srx)
                a = _mm(qk, rk, a, PRECISION, DOT_F32)
        return a

    @triton.jit
    def _fwd_step(acc, q0, q_row, v_base, r_ptr, u, yv, t0, y0, x0, K, W, RH, RW, sqk, svu, svy, svx,
                  srk, sru, sry, srx, v_ok, in_band, band_idx, kk, cc, jj,
                  BK: tl.constexpr, TS: tl.constexpr, RT: tl.constexpr, PRECISION: tl.constexpr, DOT_F32: tl.constexpr,
                  ACC: tl.constexpr, ONE_K: tl.constexpr, NKB: tl.constexpr, QROWS: tl.constexpr, row_ok):
        """One (u, value row yv, tap chunk t0) step of the forward for the program's query rows y0, y0 + 1,
        ...: logits (one product: query row r takes logit columns r RT .. r RT + RT - 1, through the
        scope row that joins it to yv), band, apply to the value row (loaded once for all of them)."""
        if QROWS == 1:  # one scope row for the step (the loop bounds keep it inside the scope)
            dy = yv - y0 + RH // 2
            tap = t0 + cc
            tap_ok = (cc < TS) & (tap < RW)
        else:
            dy = yv - y0 - cc // RT + RH // 2
            tap = t0 + cc % RT
            tap_ok = (cc % RT < TS) & (tap < RW) & (dy >= 0) & (dy < RH)
        a = tl.zeros((q0.shape[0], cc.shape[0]), dtype=ACC)
        if ONE_K:  # the queries are the same every step: kept in registers
            rk = _embedding_block(r_ptr, 0, kk, K, u, dy, tap, tap_ok, srk, sru, sry, srx)
            a = _mm(q0, rk, a, PRECISION, DOT_F32)
        else:
            a = _logits(a, q_row, row_ok, r_ptr, u, dy, tap, tap_ok, K, kk, sqk, srk, sru, sry, srx,
                        BK, NKB, PRECISION, DOT_F32)
        band = tl.where(in_band, tl.gather(a, band_idx, 1), 0.0)
        xv = x0 + t0 - RW // 2 + jj
        vrow = tl.load(v_base + u * svu + yv * svy + xv[:, None] * svx,
                       mask=((xv >= 0) & (xv < W))[:, None] & v_ok[None, :], other=0.0)
        return _mm(band.to(v_base.dtype.element_ty), vrow, acc, PRECISION, DOT_F32)

    @triton.jit
    def _lambda_fwd_kernel(
        q_ptr, v_ptr, r_ptr, c_ptr, o_ptr,
        sqb, sqh, sqk, sqy, sqx,
        svb, svu, svv, svy, svx,
        srk, sru, sry, srx,
        scb, sck, scv,
        sob, soc, soy, sox,
        HEADS, K, U, NV, H, W, RH, RW,
        HB: tl.constexpr, BX: tl.constexpr, BXH: tl.constexpr, RT: tl.constexpr,
        BK: tl.constexpr, BV: tl.constexpr,
        PRECISION: tl.constexpr, DOT_F32: tl.constexpr, ACC: tl.constexpr, ONE_K: tl.constexpr,
        FLAT: tl.constexpr, NKB: tl.constexpr, QROWS: tl.constexpr,
    ):
        # program: one image, QROWS query rows y0.. (stacked into M, Tiles.qrows), BX positions of
        # them, HB heads, BV value channels.
        # ONE_K (k <= BK, the paper's k = 16): the queries stay in registers for every tap chunk;
        # FLAT: the (u, value row, tap chunk) steps as one loop (_flat_step)
        M: tl.constexpr = QROWS * HB * BX
        TS: tl.constexpr = BXH - BX + 1
        b, yrow, x0, hg, vb = _row_program(tl.cdiv(H, QROWS), W, NV, BX, BV)
        y0 = yrow * QROWS
        head, ii, xq, rr, in_map = _stacked_rows(hg, x0, HEADS, W, HB, BX, QROWS)
        if QROWS == 1:  # one query row: its offsets stay scalars (the default compiles as before)
            row_ok = in_map
            q_y = y0 * sqy
            o_y = y0 * soy
            band_col = 0
        else:
            yq = y0 + rr
            row_ok = in_map & (yq < H)
            q_y = yq[:, None] * sqy
            o_y = yq[:, None] * soy
            band_col = rr[:, None] * RT  # a row's logits: the columns of its query row
        kk = tl.arange(0, BK)
        vv = vb * BV + tl.arange(0, BV)
        v_ok = vv < NV
        cc = tl.arange(0, QROWS * RT)
        jj = tl.arange(0, BXH)

        q_row = q_ptr + b * sqb + q_y + head[:, None] * sqh + xq[:, None] * sqx
        # the content term starts the sum: q (M x k) @ lambda^c (k x v)
        acc = tl.zeros((M, BV), dtype=ACC)
        for k0 in range(0, K, BK):
            k_ok = (k0 + kk) < K
            qk = _query_block(q_row, k0, kk, K, sqk, row_ok)
            ck = tl.load(c_ptr + b * scb + (k0 + kk)[:, None] * sck + vv[None, :] * scv,
                         mask=k_ok[:, None] & v_ok[None, :], other=0.0)
            acc = _mm(qk, ck, acc, PRECISION, DOT_F32)
        q0 = _query_block(q_row, 0, kk, K, sqk, row_ok)  # the queries of every step when ONE_K

        # band geometry: column j of the haloed value row holds tap j - i of position i, in the logit
        # columns of the position's query row
        band_d = jj[None, :] - ii[:, None]
        in_band = (band_d >= 0) & (band_d < TS)
        band_idx = tl.where(in_band, band_d, 0) + band_col

        cy = RH // 2
        # tap columns that reach inside the map for some position of this program
        t_lo, t_hi = _query_taps(x0, W, RW, BX)
        v_base = v_ptr + b * svb + vv[None, :] * svv
        if FLAT:
            # value rows inside the map that the scope of one of the query rows reaches
            yv_lo = tl.maximum(y0 - cy, 0)
            yv_hi = tl.minimum(y0 + QROWS + RH - 1 - cy, H)
            n_yv = yv_hi - yv_lo
            n_t = tl.cdiv(t_hi - t_lo, TS)
            for it in range(0, U * n_yv * n_t):
                u, yv, t0 = _flat_step(it, yv_lo, n_yv, t_lo, n_t, TS)
                acc = _fwd_step(acc, q0, q_row, v_base, r_ptr, u, yv, t0, y0, x0, K, W, RH, RW, sqk, svu, svy, svx,
                                srk, sru, sry, srx, v_ok, in_band, band_idx, kk, cc, jj,
                                BK, TS, RT, PRECISION, DOT_F32, ACC, ONE_K, NKB, QROWS, row_ok)
        else:  # the first version's loop nest (one query row), as the first GPU run measured it
            for u in range(0, U):
                for dy in range(tl.maximum(cy - y0, 0), tl.minimum(cy - y0 + H, RH)):
                    for t0 in range(t_lo, t_hi, TS):
                        acc = _fwd_step(acc, q0, q_row, v_base, r_ptr, u, y0 + dy - cy, t0, y0, x0, K, W, RH, RW, sqk,
                                        svu, svy, svx, srk, sru, sry, srx, v_ok, in_band, band_idx, kk, cc, jj,
                                        BK, TS, RT, PRECISION, DOT_F32, ACC, ONE_K, NKB, QROWS, row_ok)

        o_ptrs = o_ptr + b * sob + o_y + (head[:, None] * NV + vv[None, :]) * soc + xq[:, None] * sox
        tl.store(o_ptrs, acc.to(o_ptr.dtype.element_ty), mask=row_ok[:, None] & v_ok[None, :])

    @triton.jit
    def _qr_step(dq, g0, g_row, qk, v_ptr, r_ptr, p_base, b, u, dy, t0, y, x0, k0, K, NV, W, RH, RW,
                 svb, svu, svv, svy, svx, srk, sru, sry, srx, spu, spy, spt, sgc,
                 row_ok, k_ok, kk, tt, jj, vl, tap_sel,
                 BV: tl.constexpr, TS: tl.constexpr, PRECISION: tl.constexpr, DOT_F32: tl.constexpr,
                 ACC: tl.constexpr, ONE_V: tl.constexpr, NVB: tl.constexpr):
        """One (u, scope row dy, tap chunk t0) step of dq / dR: dB = G V_row^T, the band read back (da),
        dq += da R^T, and this program's partial dR += q^T da (read, add, write its own slot)."""
        yv = y + dy - RH // 2
        xv = x0 + t0 - RW // 2 + jj
        x_ok = (xv >= 0) & (xv < W)
        db = tl.zeros((g0.shape[0], jj.shape[0]), dtype=ACC)
        if ONE_V:
            vt = tl.load(v_ptr + b * svb + u * svu + yv * svy + vl[:, None] * svv + xv[None, :] * svx,
                         mask=(vl < NV)[:, None] & x_ok[None, :], other=0.0)
            db = _mm(g0, vt, db, PRECISION, DOT_F32)
        elif NVB <= UNROLLED_BLOCKS:  # unrolled: a loop here would be the one Triton pipelines
            for vb in tl.static_range(NVB):
                v0 = vb * BV
                v_ok = (v0 + vl) < NV
                gv = tl.load(g_row + (v0 + vl)[None, :] * sgc, mask=row_ok[:, None] & v_ok[None, :], other=0.0)
                vt = tl.load(v_ptr + b * svb + u * svu + yv * svy + (v0 + vl)[:, None] * svv + xv[None, :] * svx,
                             mask=v_ok[:, None] & x_ok[None, :], other=0.0)
                db = _mm(gv, vt, db, PRECISION, DOT_F32)
        else:  # (each unrolled block takes its own pipeline buffers: beyond a few, shared memory runs out)
            for v0 in range(0, NV, BV):
                v_ok = (v0 + vl) < NV
                gv = tl.load(g_row + (v0 + vl)[None, :] * sgc, mask=row_ok[:, None] & v_ok[None, :], other=0.0)
                vt = tl.load(v_ptr + b * svb + u * svu + yv * svy + (v0 + vl)[:, None] * svv + xv[None, :] * svx,
                             mask=v_ok[:, None] & x_ok[None, :], other=0.0)
                db = _mm(gv, vt, db, PRECISION, DOT_F32)
        tap = t0 + tt
        tap_ok = (tt < TS) & (tap < RW)
        da = tl.where(tap_ok[None, :], tl.gather(db, tap_sel, 1), 0.0).to(v_ptr.dtype.element_ty)
        # R^T as a (tap chunk x k block) tile, loaded so (not transposed in registers: Triton copies a
        # 16-bit tile asynchronously only as it is loaded)
        rt = tl.load(r_ptr + (k0 + kk)[None, :] * srk + u * sru + dy * sry + tap[:, None] * srx,
                     mask=((k0 + kk) < K)[None, :] & tap_ok[:, None], other=0.0)
        dq = _mm(da, rt, dq, PRECISION, DOT_F32)
        p_ptrs = p_base + u * spu + dy * spy + tap[None, :] * spt
        p_mask = k_ok[:, None] & tap_ok[None, :]
        part = tl.load(p_ptrs, mask=p_mask, other=0.0)
        tl.store(p_ptrs, _mm(tl.trans(qk), da, part, PRECISION, DOT_F32), mask=p_mask)
        return dq

    @triton.jit
    def _lambda_bwd_qr_kernel(
        q_ptr, v_ptr, r_ptr, c_ptr, g_ptr, dq_ptr, p_ptr,
        sqb, sqh, sqk, sqy, sqx,
        svb, svu, svv, svy, svx,
        srk, sru, sry, srx,
        scb, sck, scv,
        sgb, sgc, sgy, sgx,
        sdb, sdh, sdk, sdy, sdx,
        spp, spu, spy, spt,
        HEADS, K, U, NV, H, W, RH, RW, ROWS,
        HB: tl.constexpr, BX: tl.constexpr, BXH: tl.constexpr, RT: tl.constexpr,
        BK: tl.constexpr, BV: tl.constexpr,
        PRECISION: tl.constexpr, DOT_F32: tl.constexpr, ACC: tl.constexpr, ONE_V: tl.constexpr,
        FLAT: tl.constexpr, NVB: tl.constexpr,
    ):
        # program: one image, ROWS query rows, BX positions, HB heads; writes dq of those and its
        # own slot of partial dR sums (p[slot, u, dy, t, k]); nothing another program writes.
        # ONE_V (v <= BV): the output gradient of a row stays in registers for every tap chunk;
        # FLAT: the (u, scope row, tap chunk) steps as one loop (_flat_step)
        M: tl.constexpr = HB * BX
        TS: tl.constexpr = BXH - BX + 1
        n_x = tl.cdiv(W, BX)
        n_rg = tl.cdiv(H, ROWS)
        pid = tl.program_id(0)
        pid_x = pid % n_x
        pid_r = pid // n_x
        b = (pid_r // n_rg).to(tl.int64)
        rg = pid_r % n_rg
        hg = tl.program_id(1)
        slot = (pid + hg * tl.num_programs(0)).to(tl.int64)
        x0 = pid_x * BX

        head, ii, xq, _, row_ok = _stacked_rows(hg, x0, HEADS, W, HB, BX, 1)
        kk = tl.arange(0, BK)
        tt = tl.arange(0, RT)
        jj = tl.arange(0, BXH)
        vl = tl.arange(0, BV)
        # da[(h, i), t] = dB[(h, i), i + t]: the band read back
        tap_sel = tl.where(tt[None, :] < TS, ii[:, None] + tt[None, :], 0)
        tap_sel = tl.minimum(tap_sel, BXH - 1)

        cy = RH // 2
        t_lo, t_hi = _query_taps(x0, W, RW, BX)
        y_end = tl.minimum(rg * ROWS + ROWS, H)
        for y in range(rg * ROWS, y_end):
            dy_lo = tl.maximum(cy - y, 0)
            dy_hi = tl.minimum(cy - y + H, RH)
            q_row = q_ptr + b * sqb + y * sqy + head[:, None] * sqh + xq[:, None] * sqx
            g_row = g_ptr + b * sgb + y * sgy + xq[:, None] * sgx + head[:, None] * NV * sgc
            g0 = tl.load(g_row + vl[None, :] * sgc, mask=row_ok[:, None] & (vl < NV)[None, :], other=0.0)  # ONE_V
            for k0 in range(0, K, BK):
                k_ok = (k0 + kk) < K
                qk = _query_block(q_row, k0, kk, K, sqk, row_ok)
                # content term's dq: G (M x v) @ lambda^c^T (v x k)
                dq = tl.zeros((M, BK), dtype=ACC)
                if ONE_V:
                    ct = tl.load(c_ptr + b * scb + (k0 + kk)[None, :] * sck + vl[:, None] * scv,
                                 mask=(vl < NV)[:, None] & k_ok[None, :], other=0.0)
                    dq = _mm(g0, ct, dq, PRECISION, DOT_F32)
                else:
                    for v0 in range(0, NV, BV):
                        v_ok = (v0 + vl) < NV
                        gv = tl.load(g_row + (v0 + vl)[None, :] * sgc, mask=row_ok[:, None] & v_ok[None, :],
                                     other=0.0)
                        ct = tl.load(c_ptr + b * scb + (k0 + kk)[None, :] * sck + (v0 + vl)[:, None] * scv,
                                     mask=v_ok[:, None] & k_ok[None, :], other=0.0)
                        dq = _mm(gv, ct, dq, PRECISION, DOT_F32)
                p_base = p_ptr + slot * spp + (k0 + kk)[:, None]
                if FLAT:
                    n_dy = dy_hi - dy_lo
                    n_t = tl.cdiv(t_hi - t_lo, TS)
                    for it in range(0, U * n_dy * n_t):
                        u, dy, t0 = _flat_step(it, dy_lo, n_dy, t_lo, n_t, TS)
                        dq = _qr_step(dq, g0, g_row, qk, v_ptr, r_ptr, p_base, b, u, dy, t0, y, x0, k0, K, NV, W, RH, RW,
                                      svb, svu, svv, svy, svx, srk, sru, sry, srx, spu, spy, spt, sgc,
                                      row_ok, k_ok, kk, tt, jj, vl, tap_sel,
                                      BV, TS, PRECISION, DOT_F32, ACC, ONE_V, NVB)
                    # the steps of one row write apart; the next row reads this slot back, maybe in other threads
                    tl.debug_barrier()
                else:
                    for u in range(0, U):
                        for dy in range(dy_lo, dy_hi):
                            for t0 in range(t_lo, t_hi, TS):
                                dq = _qr_step(dq, g0, g_row, qk, v_ptr, r_ptr, p_base, b, u, dy, t0, y, x0, k0, K, NV, W,
                                              RH, RW, svb, svu, svv, svy, svx, srk, sru, sry, srx, spu, spy, spt, sgc,
                                              row_ok, k_ok, kk, tt, jj, vl, tap_sel,
                                              BV, TS, PRECISION, DOT_F32, ACC, ONE_V, NVB)
                                tl.debug_barrier()
                d_ptrs = dq_ptr + b * sdb + y * sdy + head[:, None] * sdh + (k0 + kk)[None, :] * sdk + xq[:, None] * sdx
                tl.store(d_ptrs, dq.to(dq_ptr.dtype.element_ty), mask=row_ok[:, None] & k_ok[None, :])

    @triton.jit
    def _v_step(acc, q_ptr, r_ptr, g_base, b, u, y, t0, h0, yv0, x0, HEADS, K, NV, W, RH, RW,
                sqb, sqh, sqk, sqy, sqx, srk, sru, sry, srx, sgy, sgx, sgc,
                hoff, jj, kk, cc, v_ok, in_band, band_idx,
                BK: tl.constexpr, TS: tl.constexpr, RT: tl.constexpr, PRECISION: tl.constexpr,
                DOT_F32: tl.constexpr, ACC: tl.constexpr, NKB: tl.constexpr):
        """One (query row y, tap chunk t0, head group h0) step of dV for the value rows yv0, yv0 + 1, ...
        of the program: the logits of the haloed query segment against the scope rows that join y to
        each of them (one product: value row r takes logit columns r RT .. r RT + RT - 1), the bands
        transposed side by side, applied to the segment's output gradients (one product)."""
        # logit column c: value row yv0 + c // RT, reached through scope row dy and tap t0 + c % RT
        row = cc // RT
        dy = yv0 + row - y + RH // 2
        tap = t0 + cc % RT
        tap_ok = (cc % RT < TS) & (tap < RW) & (dy >= 0) & (dy < RH)  # (rows past the map: not stored)
        xq = x0 + RW // 2 - t0 - (TS - 1) + jj
        head = h0 + hoff
        ok = (xq >= 0) & (xq < W) & (head < HEADS)
        q_row = q_ptr + b * sqb + y * sqy + head[:, None] * sqh + xq[:, None] * sqx
        a = _logits(tl.zeros((jj.shape[0], cc.shape[0]), dtype=ACC), q_row, ok, r_ptr, u, dy, tap, tap_ok, K, kk,
                    sqk, srk, sru, sry, srx, BK, NKB, PRECISION, DOT_F32)
        bt = tl.where(in_band, tl.gather(a, band_idx, 1), 0.0).to(g_base.dtype.element_ty)  # (S x VR BX)
        gs = tl.load(g_base + y * sgy + xq[:, None] * sgx + head[:, None] * NV * sgc,
                     mask=ok[:, None] & v_ok[None, :], other=0.0)
        return _mm(tl.trans(bt), gs, acc, PRECISION, DOT_F32)

    @triton.jit
    def _lambda_bwd_v_kernel(
        q_ptr, r_ptr, g_ptr, dv_ptr,
        sqb, sqh, sqk, sqy, sqx,
        srk, sru, sry, srx,
        sgb, sgc, sgy, sgx,
        sdb, sdu, sdv, sdy, sdx,
        HEADS, K, U, NV, H, W, RH, RW,
        HB: tl.constexpr, BX: tl.constexpr, BXH: tl.constexpr, RT: tl.constexpr,
        BK: tl.constexpr, BV: tl.constexpr,
        PRECISION: tl.constexpr, DOT_F32: tl.constexpr, ACC: tl.constexpr,
        FLAT: tl.constexpr, NKB: tl.constexpr, VR: tl.constexpr,
    ):
        # program: one image, VR value rows y'.., BX value columns x0.., one u, BV value channels.
        # dV[x'] gathers a[(h, x), t] g[h, x] over the queries x = x' - t + cx whose scope holds x'
        # (the inverse neighbourhood), so every dV element is written by exactly one program.
        # NKB: the blocks of k per step (the logits are recomputed, so no k block is kept across
        # steps); FLAT: the (query row, tap chunk, head group) steps as one loop (_flat_step's
        # reason); VR: value rows stacked into M (Tiles.vr)
        S: tl.constexpr = HB * BXH
        TS: tl.constexpr = BXH - BX + 1
        b, vrow, x0, u, vb = _row_program(tl.cdiv(H, VR), W, NV, BX, BV)
        yv = vrow * VR  # the first value row

        srows = tl.arange(0, S)
        hoff = srows // BXH
        jj = srows % BXH
        kk = tl.arange(0, BK)
        vv = vb * BV + tl.arange(0, BV)
        v_ok = vv < NV
        cy = RH // 2
        cx = RW // 2
        x_end = tl.minimum(x0 + BX, W)
        t_lo = tl.maximum(x0 + cx - W + 1, 0)
        t_hi = tl.minimum(x_end + cx, RW)
        g_base = g_ptr + b * sgb + vv[None, :] * sgc
        # row m of the products: value row yv + m // BX, column x0 + m % BX
        mm = tl.arange(0, VR * BX)
        ii = mm % BX
        # query j of the haloed segment meets value column i through tap i - j + TS - 1 of the chunk,
        # in the logit columns of the row's scope row
        band_d = ii[None, :] - jj[:, None] + (TS - 1)
        in_band = (band_d >= 0) & (band_d < TS)
        band_idx = tl.where(in_band, band_d, 0) + (mm // BX)[None, :] * RT
        acc = tl.zeros((VR * BX, BV), dtype=ACC)
        if FLAT:
            cc = tl.arange(0, VR * RT)
            # query rows whose scope reaches one of the value rows
            y_lo = tl.maximum(yv - (RH - 1 - cy), 0)
            y_hi = tl.minimum(yv + VR + cy, H)
            n_t = tl.cdiv(t_hi - t_lo, TS)
            n_h = tl.cdiv(HEADS, HB)
            for it in range(0, (y_hi - y_lo) * n_t * n_h):
                y = y_lo + it // (n_t * n_h)
                rest = it % (n_t * n_h)
                acc = _v_step(acc, q_ptr, r_ptr, g_base, b, u, y, t_lo + (rest // n_h) * TS, (rest % n_h) * HB, yv, x0,
                              HEADS, K, NV, W, RH, RW, sqb, sqh, sqk, sqy, sqx, srk, sru, sry, srx, sgy, sgx, sgc,
                              hoff, jj, kk, cc, v_ok, in_band, band_idx, BK, TS, RT, PRECISION, DOT_F32, ACC, NKB)
        else:  # the first version's loop nest (one value row), as the first GPU run measured it (the baseline)
            tt = tl.arange(0, RT)
            # scope rows and taps through which some query of the map reaches these value columns
            dy_lo = tl.maximum(yv + cy - H + 1, 0)
            dy_hi = tl.minimum(yv + cy + 1, RH)
            for dy in range(dy_lo, dy_hi):
                y = yv - dy + cy
                for t0 in range(t_lo, t_hi, TS):
                    tap = t0 + tt
                    tap_ok = (tt < TS) & (tap < RW)
                    xq = x0 + cx - t0 - (TS - 1) + jj
                    xq_ok = (xq >= 0) & (xq < W)
                    for h0 in range(0, HEADS, HB):
                        head = h0 + hoff
                        ok = xq_ok & (head < HEADS)
                        q_row = q_ptr + b * sqb + y * sqy + head[:, None] * sqh + xq[:, None] * sqx
                        a = tl.zeros((S, RT), dtype=ACC)
                        for k0 in range(0, K, BK):
                            qk = _query_block(q_row, k0, kk, K, sqk, ok)
                            rk = _embedding_block(r_ptr, k0, kk, K, u, dy, tap, tap_ok, srk, sru, sry, srx)
                            a = _mm(qk, rk, a, PRECISION, DOT_F32)
                        bt = tl.where(in_band, tl.gather(a, band_idx, 1), 0.0).to(g_ptr.dtype.element_ty)  # (S x BX)
                        gs = tl.load(g_ptr + b * sgb + y * sgy + xq[:, None] * sgx + (head[:, None] * NV + vv[None, :]) * sgc,
                                     mask=ok[:, None] & v_ok[None, :], other=0.0)
                        acc = _mm(tl.trans(bt), gs, acc, PRECISION, DOT_F32)
        yd = yv + mm // BX
        xd = x0 + ii
        d_ptrs = dv_ptr + b * sdb + u * sdu + yd[:, None] * sdy + vv[None, :] * sdv + xd[:, None] * sdx
        tl.store(d_ptrs, acc.to(dv_ptr.dtype.element_ty), mask=((yd < H) & (xd < W))[:, None] & v_ok[None, :])

    INTERPRETED = type(_lambda_fwd_kernel).__name__ == "InterpretedFunction"
else:
    INTERPRETED = False


# ------------------------------------------------------------------------------------------------
# availability and the choice for impl="auto"
# ------------------------------------------------------------------------------------------------
def unavailable_reason(device=None) -> Optional[str]:
    """Why the kernels cannot run on ``device`` (a torch.device, "cuda", "cpu", ...), None if they can."""
    if triton is None:
        return f"triton is not installed or does not import ({_IMPORT_ERROR})"
    if os.environ.get("LAMBDA_DET_TRITON", "1") == "0":
        return "turned off by LAMBDA_DET_TRITON=0"
    device_type = torch.device(device).type if device is not None else "cuda"
    if INTERPRETED:
        return None  # Triton's interpreter runs them on any device's tensors (copied through the host)
    if device_type != "cuda":
        return (f"the Triton kernels run on CUDA devices, not {device_type!r}; set TRITON_INTERPRET=1 before "
                "importing lambda_det to run them in Triton's CPU interpreter (slow: for tests)")
    if getattr(torch.version, "hip", None):
        return "this torch is a ROCm build; the kernels are written and checked for NVIDIA GPUs only"
    if torch.version.cuda is None:
        return "this torch is built without CUDA"
    if "nvidia" not in getattr(getattr(triton, "backends", None), "backends", {}):
        return "this Triton has no NVIDIA backend"
    return None


def available(device=None) -> bool:
    """Whether ``lambda_output_triton`` can run on ``device`` (default: CUDA)."""
    return unavailable_reason(device) is None


def choose_triton(device_type: str) -> bool:
    """For impl="auto": use the Triton operator on this device type? Yes on CUDA wherever Triton's
    NVIDIA backend works. No on CPUs even under the interpreter: the fused CPU operator
    (lambda_det.layers.fused) is the fast form there; the interpreter is a test tool."""
    return device_type == "cuda" and available("cuda")


# ------------------------------------------------------------------------------------------------
# dispatch
# ------------------------------------------------------------------------------------------------
def conv_tf32_enabled() -> bool:
    """PyTorch's switch for float32 convolutions on TF32 tensor cores (on by default).

    torch >= 2.9 has ``fp32_precision`` ("tf32" / "ieee" / "none" = ask the next one up: cuDNN's, then
    the global one, then the legacy flag); reading the legacy ``allow_tf32`` raises once a program
    mixed both APIs.
    """
    cudnn = torch.backends.cudnn
    for setting in (getattr(getattr(cudnn, "conv", None), "fp32_precision", None), getattr(cudnn, "fp32_precision", None),
                    getattr(torch.backends, "fp32_precision", None)):
        if setting in ("tf32", "ieee"):
            return setting == "tf32"
    try:
        return bool(cudnn.allow_tf32)
    except RuntimeError:
        return False


def float32_on_tf32() -> bool:
    """Whether float32 inputs multiply on TF32 tensor cores: when PyTorch's switch for convolutions
    allows it (on by default) and exact float32 matmuls were not asked for.

    The operator computes the "lambda convolution" (Sec. 3.2) in a 3x3 convolution's place, so it takes
    that convolution's arithmetic: following the matmul switch alone (off by default) left the layer in
    IEEE float32 on FMA units beside a conv on TF32. An explicit request for exact matmuls is
    honoured too: on torch >= 2.9 ``torch.set_float32_matmul_precision("highest")``,
    ``matmul.allow_tf32 = False`` and ``matmul.fp32_precision = "ieee"`` all read "ieee", where the
    default reads "none"; older torch cannot tell its legacy flag's default from a request, so there
    only the convolution switch counts.
    """
    if getattr(torch.backends.cuda.matmul, "fp32_precision", None) == "ieee":
        return False
    return conv_tf32_enabled()


def dot_precision(dtype: torch.dtype) -> str:
    return "tf32" if dtype == torch.float32 and float32_on_tf32() else "ieee"


_TL_ACC = {torch.float64: "float64"}


def _constexprs(tiles: Tiles, dtype: torch.dtype, precision: str) -> Dict[str, object]:
    acc = getattr(tl, _TL_ACC.get(dtype, "float32"))
    return {
        "HB": tiles.hb, "BX": tiles.bx, "BXH": tiles.bxh, "RT": tiles.rt, "BK": tiles.bk, "BV": tiles.bv,
        "PRECISION": precision, "DOT_F32": bool(INTERPRETED and dtype == torch.bfloat16), "ACC": acc,
        "FLAT": bool(tiles.flat),
    }


def _accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _check(q: Tensor, values: Tensor, kernel: Tensor, content: Tensor) -> None:
    if q.dim() != 5 or values.dim() != 5 or kernel.dim() != 4 or content.dim() != 3:
        raise ValueError(
            "lambda_output_triton expects q (b, h, k, H, W), values (b, u, v, H, W), kernel (k, u, rh, rw), "
            f"content_lambda (b, k, v); got {tuple(q.shape)}, {tuple(values.shape)}, {tuple(kernel.shape)}, "
            f"{tuple(content.shape)}")
    b, heads, k, height, width = q.shape
    u, v = values.shape[1], values.shape[2]
    if tuple(values.shape) != (b, u, v, height, width) or tuple(kernel.shape[:2]) != (k, u) \
            or tuple(content.shape) != (b, k, v):
        raise ValueError(
            f"inconsistent shapes: q {tuple(q.shape)}, values {tuple(values.shape)}, kernel {tuple(kernel.shape)}, "
            f"content_lambda {tuple(content.shape)}")
    if kernel.shape[2] % 2 == 0 or kernel.shape[3] % 2 == 0:
        raise ValueError(f"the kernel's scope must be odd (centred), got {tuple(kernel.shape[2:])}")
    dtypes = {q.dtype, values.dtype, kernel.dtype, content.dtype}
    if len(dtypes) != 1 or q.dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        raise ValueError(f"q, values, kernel, content_lambda must share one floating dtype (float16, bfloat16, "
                         f"float32, float64); got {[str(t.dtype) for t in (q, values, kernel, content)]}")
    devices = {q.device, values.device, kernel.device, content.device}
    if len(devices) != 1:
        raise ValueError(f"all inputs must be on one device, got {sorted(map(str, devices))}")
    reason = unavailable_reason(q.device)
    if reason is not None:
        raise RuntimeError(f"the Triton lambda operator cannot run here: {reason}")


def _device_context(t: Tensor):
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    return contextlib.nullcontext()


class Launch(NamedTuple):
    """One kernel launch as the dispatcher plans it (also what the ahead-of-time compile test compiles)."""

    fn: object
    grid: Tuple[int, ...]
    args: tuple
    constexprs: Dict[str, object]
    num_warps: int
    num_stages: int

    def run(self):
        """Launch; returns Triton's compiled kernel (its ``n_regs``, ``n_spills``, ``metadata.shared``)."""
        return self.fn[self.grid](*self.args, num_warps=self.num_warps, num_stages=self.num_stages, **self.constexprs)


def forward_launch(q: Tensor, values: Tensor, kernel: Tensor, content: Tensor, out: Tensor,
                   precision: Optional[str] = None, tiles: Optional[Tiles] = None) -> Launch:
    b, heads, k, height, width = q.shape
    u, v = values.shape[1], values.shape[2]
    t = (tiles or FORWARD_TILES).checked("forward")
    grid = (b * triton.cdiv(height, t.qrows) * triton.cdiv(width, t.bx), triton.cdiv(heads, t.hb) * triton.cdiv(v, t.bv))
    args = (q, values, kernel, content, out, *q.stride(), *values.stride(), *kernel.stride(), *content.stride(),
            *out.stride(), heads, k, u, v, height, width, kernel.shape[2], kernel.shape[3])
    constexprs = dict(_constexprs(t, q.dtype, precision or dot_precision(q.dtype)), ONE_K=k <= t.bk, NKB=triton.cdiv(k, t.bk),
                      QROWS=t.qrows)
    return Launch(_lambda_fwd_kernel, grid, args, constexprs, t.num_warps, t.num_stages)


def qr_grad_launch(grad: Tensor, q: Tensor, values: Tensor, kernel: Tensor, content: Tensor, dq: Tensor,
                   partial: Tensor, rows: int, precision: Optional[str] = None, tiles: Optional[Tiles] = None) -> Launch:
    b, heads, k, height, width = q.shape
    u, v = values.shape[1], values.shape[2]
    t = (tiles or QR_GRAD_TILES).checked("dq/dR")
    grid = (b * triton.cdiv(height, rows) * triton.cdiv(width, t.bx), triton.cdiv(heads, t.hb))
    args = (q, values, kernel, content, grad, dq, partial, *q.stride(), *values.stride(), *kernel.stride(),
            *content.stride(), *grad.stride(), *dq.stride(), *partial.stride()[:4],
            heads, k, u, v, height, width, kernel.shape[2], kernel.shape[3], rows)
    constexprs = dict(_constexprs(t, q.dtype, precision or dot_precision(q.dtype)), ONE_V=v <= t.bv, NVB=triton.cdiv(v, t.bv))
    return Launch(_lambda_bwd_qr_kernel, grid, args, constexprs, t.num_warps, t.num_stages)


def v_grad_tiles(dtype: torch.dtype, precision: str) -> Tiles:
    """The dV kernel's tiles for this arithmetic (IEEE float32 multiplies on FMAs: a smaller value block)."""
    return V_GRAD_TILES_FMA if (dtype == torch.float32 and precision == "ieee") else V_GRAD_TILES


def v_grad_launch(grad: Tensor, q: Tensor, kernel: Tensor, dv: Tensor, precision: Optional[str] = None,
                  tiles: Optional[Tiles] = None) -> Launch:
    b, heads, k, height, width = q.shape
    u, v = dv.shape[1], dv.shape[2]
    precision = precision or dot_precision(q.dtype)
    t = (tiles or v_grad_tiles(q.dtype, precision)).checked("dV")
    grid = (b * triton.cdiv(height, t.vr) * triton.cdiv(width, t.bx), u * triton.cdiv(v, t.bv))
    args = (q, kernel, grad, dv, *q.stride(), *kernel.stride(), *grad.stride(), *dv.stride(),
            heads, k, u, v, height, width, kernel.shape[2], kernel.shape[3])
    constexprs = dict(_constexprs(t, q.dtype, precision), NKB=triton.cdiv(k, t.bk), VR=t.vr)
    return Launch(_lambda_bwd_v_kernel, grid, args, constexprs, t.num_warps, t.num_stages)


def forward_into(q: Tensor, values: Tensor, kernel: Tensor, content: Tensor, out: Tensor,
                 tiles: Optional[Tiles] = None) -> Tensor:
    """Write the lambda output into ``out`` (b, h v, H, W), any strides; inputs are read through their
    strides (no copies), so views into larger buffers work (the tests surround them with NaNs).
    ``tiles``: other tiles than FORWARD_TILES (the kernel benchmark's variants)."""
    if out.numel() == 0:
        return out
    with _device_context(q):
        forward_launch(q, values, kernel, content, out, tiles=tiles).run()
    return out


def qr_rows_per_program(b: int, heads: int, height: int, width: int, target: int = QR_TARGET_PROGRAMS,
                        tiles: Optional[Tiles] = None) -> int:
    """Query rows per program of the dq/dR kernel: as few as keep the program count near ``target``."""
    t = tiles or QR_GRAD_TILES
    per_row = b * triton.cdiv(width, t.bx) * triton.cdiv(heads, t.hb)
    return max(1, min(height, math.ceil(per_row * height / target)))


def qr_partial_shape(q: Tensor, values: Tensor, kernel: Tensor, rows: int, tiles: Optional[Tiles] = None) -> Tuple[int, ...]:
    b, heads, k, height, width = q.shape
    t = tiles or QR_GRAD_TILES
    programs = b * triton.cdiv(height, rows) * triton.cdiv(width, t.bx) * triton.cdiv(heads, t.hb)
    return (programs, values.shape[1], kernel.shape[2], kernel.shape[3], k)


def backward_into(grad: Tensor, q: Tensor, values: Tensor, kernel: Tensor, content: Tensor,
                  dq: Tensor, dv: Tensor, dr: Tensor, dc: Tensor,
                  rows: Optional[int] = None, partial: Optional[Tensor] = None,
                  qr_tiles: Optional[Tiles] = None, v_tiles: Optional[Tiles] = None) -> None:
    """Gradients of the lambda output into dq, dv, dr (the kernel's shape), dc (content_lambda's).

    ``rows``: query rows per dq/dR program (default: ``qr_rows_per_program``); ``partial``: a zeroed
    buffer of ``qr_partial_shape`` for the per-program dR sums, contiguous (default: allocated here).
    ``qr_tiles``, ``v_tiles``: other tiles than the defaults (the kernel benchmark's variants).
    """
    b, heads, k, height, width = q.shape
    if q.numel() == 0 or values.numel() == 0:
        for t_ in (dq, dv, dr, dc):
            t_.zero_()
        return
    rows = rows or qr_rows_per_program(b, heads, height, width, tiles=qr_tiles)
    shape = qr_partial_shape(q, values, kernel, rows, tiles=qr_tiles)
    if partial is None:
        partial = torch.zeros(shape, dtype=_accumulator_dtype(q.dtype), device=q.device)
    elif tuple(partial.shape) != shape or not partial.is_contiguous():
        raise ValueError(f"partial must be a contiguous {shape} buffer, got {tuple(partial.shape)}")
    with _device_context(q):
        qr_grad_launch(grad, q, values, kernel, content, dq, partial, rows, tiles=qr_tiles).run()
        v_grad_launch(grad, q, kernel, dv, tiles=v_tiles).run()
    add_partial_sums(partial, dr)
    content_lambda_gradient(q, grad, dc)


def add_partial_sums(partial: Tensor, dr: Tensor) -> Tensor:
    """dR from the dq/dR programs' partial sums (programs, u, rh, rw, k), added in one fixed order (the
    same bits on every run), into ``dr`` (k, u, rh, rw)."""
    return dr.copy_(partial.sum(0).permute(3, 0, 1, 2))


def content_lambda_gradient(q: Tensor, grad: Tensor, dc: Tensor) -> Tensor:
    """dlambda^c[b, k, v] = sum_{h, n} q[b, h, k, n] g[b, h v, n] into ``dc``: one batched matmul."""
    b, heads, k, height, width = q.shape
    v, n = grad.shape[1] // heads, height * width
    qf = q.reshape(b, heads, k, n).transpose(1, 2).reshape(b, k, heads * n)
    gf = grad.reshape(b, heads, v, n).transpose(1, 2).reshape(b, v, heads * n)
    with torch.autocast(device_type=q.device.type, enabled=False):
        return dc.copy_(torch.matmul(qf, gf.transpose(1, 2)))


# ------------------------------------------------------------------------------------------------
# one operator to PyTorch (autograd and torch.compile see lambda_det::lambda_output_triton)
# ------------------------------------------------------------------------------------------------
@torch.library.custom_op("lambda_det::lambda_output_triton", mutates_args=())
def _lambda_output_op(q: Tensor, values: Tensor, kernel: Tensor, content_lambda: Tensor) -> Tensor:
    b, heads, _, height, width = q.shape
    out = q.new_empty((b, heads * values.shape[2], height, width))
    return forward_into(q, values, kernel, content_lambda, out)


@_lambda_output_op.register_fake
def _lambda_output_fake(q, values, kernel, content_lambda):
    b, heads, _, height, width = q.shape
    return q.new_empty((b, heads * values.shape[2], height, width))


@torch.library.custom_op("lambda_det::lambda_output_triton_backward", mutates_args=())
def _lambda_output_backward_op(grad: Tensor, q: Tensor, values: Tensor, kernel: Tensor,
                               content_lambda: Tensor) -> List[Tensor]:
    dq, dv = torch.empty_like(q), torch.empty_like(values)  # the inputs' strides (channels innermost)
    dr, dc = torch.empty_like(kernel), torch.empty_like(content_lambda)
    backward_into(gradient_layout(grad), q, values, kernel, content_lambda, dq, dv, dr, dc)
    return [dq, dv, dr, dc]


@_lambda_output_backward_op.register_fake
def _lambda_output_backward_fake(grad, q, values, kernel, content_lambda):
    return [torch.empty_like(q), torch.empty_like(values), torch.empty_like(kernel), torch.empty_like(content_lambda)]


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    q, values, kernel, content = ctx.saved_tensors
    if torch.is_grad_enabled():  # create_graph: the backward kernels have no derivative of their own
        return gradients_with_graph(grad, (q, values, kernel, content))
    dq, dv, dr, dc = _lambda_output_backward_op(grad, q, values, kernel, content)
    return dq, dv, dr, dc


torch.library.register_autograd("lambda_det::lambda_output_triton", _backward, setup_context=_setup_context)


def innermost(t: Tensor, dim: int) -> Tensor:
    """``t`` with index ``dim`` moving fastest in memory (a copy unless it already does)."""
    if t.stride(dim) == 1 or t.shape[dim] == 1:
        return t
    return t.movedim(dim, -1).contiguous().movedim(-1, dim)


def operand_layouts(q: Tensor, values: Tensor, kernel: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """The layouts the operator launches the kernels with: the channels of q (b, h, k, H, W) and of
    values (b, u, v, H, W) innermost, and k of the embeddings (k, u, rh, rw). The kernels load tiles of
    (positions or taps x channels); with the channels contiguous every row of a tile is one vector
    whose start stays aligned at any position or tap offset, which is what lets Triton copy 16-bit
    tiles to shared memory asynchronously (pipelined) at all. One copy each, small beside the scope
    rows that read them."""
    return innermost(q, 2), innermost(values, 2), innermost(kernel, 0)


def gradient_layout(grad: Tensor) -> Tensor:
    """The output gradient (b, h v, H, W) channels-last, for operand_layouts' reason."""
    return innermost(grad, 1)


def lambda_output_triton(q: Tensor, values: Tensor, kernel: Tensor, content_lambda: Tensor) -> Tensor:
    """y_n = (lambda^c + lambda^p_n)^T q_n for every position: q (b, h, k, H, W), values (b, u, v, H, W),
    kernel (k, u, rh, rw) with odd rh, rw, content_lambda (b, k, v) -> (b, h v, H, W).

    CUDA (or any device under TRITON_INTERPRET=1); float16, bfloat16, float32, float64. Under autocast
    the four inputs are cast to autocast's type (products in that type, sums in float32).
    """
    device_type = q.device.type
    if torch.is_autocast_enabled(device_type):
        low = torch.get_autocast_dtype(device_type)
        q, values, kernel, content_lambda = (
            t.to(low) if t.dtype == torch.float32 else t for t in (q, values, kernel, content_lambda))
    _check(q, values, kernel, content_lambda)
    return _lambda_output_op(*operand_layouts(q, values, kernel), content_lambda)


__all__ = [
    "FORWARD_TILES", "PRECISIONS", "QR_GRAD_TILES", "Tiles", "V_GRAD_TILES", "available", "backward_into",
    "choose_triton", "conv_tf32_enabled", "dot_precision", "float32_on_tf32", "forward_into", "gradient_layout",
    "innermost", "lambda_output_triton", "operand_layouts", "qr_partial_shape", "qr_rows_per_program",
    "unavailable_reason",
]


# ------------------------------------------------------------------------------------------------
# every configuration the dispatcher can launch, for ahead-of-time compilation (tests, docs/gpu.md)
# ------------------------------------------------------------------------------------------------
_TL_NAMES = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32", torch.float64: "fp64"}


class KernelConfiguration(NamedTuple):
    name: str  # e.g. "forward fp32/tf32"
    fn: object  # the @triton.jit kernel
    signature: Dict[str, str]
    constexprs: Dict[str, object]
    attrs: Dict[Tuple[int, ...], list]
    num_warps: int
    num_stages: int


# Launches the compile test specializes for (contiguous tensors, batch 8): res4 of LambdaResNet-101
# at 1024 px (d 256 -> h 4, k 16, v 64, u 1, 64 x 64, r 23); res5 (d 512 -> v 128, 32 x 32; the
# stride-2 block at 64 x 64 specializes the same way); k 32, the queries in two blocks (unrolled);
# v 512 and k 64, more blocks than MAX_UNROLLED_BLOCKS (looped). Between them they reach every tile
# choice of the dispatcher (ONE_K, ONE_V, unrolled or looped blocks).
REFERENCE_LAUNCHES = (
    ("res4", dict(b=8, heads=4, k=16, u=1, v=64, height=64, width=64, rh=23, rw=23)),
    ("res5", dict(b=8, heads=4, k=16, u=1, v=128, height=32, width=32, rh=23, rw=23)),
    ("k32", dict(b=8, heads=4, k=32, u=1, v=64, height=64, width=64, rh=23, rw=23)),
    # one head at res5 (v 512: dq/dR loops over its v blocks) and k 64 (the k-block loops)
    ("v512", dict(b=8, heads=1, k=16, u=1, v=512, height=32, width=32, rh=23, rw=23)),
    ("k64", dict(b=8, heads=4, k=64, u=1, v=64, height=64, width=64, rh=23, rw=23)),
)


def _specialize(launch: Launch, name: str) -> KernelConfiguration:
    """The signature Triton's JIT gives these arguments: tensors as typed pointers (16-byte aligned),
    integers equal to 1 as constants, integers divisible by 16 marked so (what lets it vectorize)."""
    signature, constexprs, attrs = {}, dict(launch.constexprs), {}
    names = launch.fn.arg_names
    for i, (arg_name, value) in enumerate(zip(names, launch.args)):
        if isinstance(value, torch.Tensor):
            signature[arg_name] = "*" + _TL_NAMES[value.dtype]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif value == 1:
            signature[arg_name] = "constexpr"
            constexprs[arg_name] = 1
        else:
            signature[arg_name] = "i32" if -2**31 <= value < 2**31 else "i64"
            if value % 16 == 0:
                attrs[(i,)] = [["tt.divisibility", 16]]
    for arg_name in names[len(launch.args):]:
        signature[arg_name] = "constexpr"
    return KernelConfiguration(name, launch.fn, signature, constexprs, attrs, launch.num_warps, launch.num_stages)


def kernel_configurations() -> List[KernelConfiguration]:
    """Every (kernel, tiles, dtype, precision, ONE_K / ONE_V) ``forward_into`` / ``backward_into`` can
    launch on a GPU, each specialized as Triton's JIT would for the first of REFERENCE_LAUNCHES that
    makes the choice, ready for ``triton.compile(ASTSource(fn, signature, constexprs, attrs), ...)``."""
    if triton is None:
        return []
    configurations, seen = [], set()
    for (dtype, precision), (where, s) in ((p, r) for p in PRECISIONS for r in REFERENCE_LAUNCHES):
        def meta(*size, dt=dtype):
            return torch.empty(size, dtype=dt, device="meta")

        # the layouts the operator launches with (operand_layouts; the output new, its gradient
        # channels-last)
        q, values, kernel = operand_layouts(meta(s["b"], s["heads"], s["k"], s["height"], s["width"]),
                                            meta(s["b"], s["u"], s["v"], s["height"], s["width"]),
                                            meta(s["k"], s["u"], s["rh"], s["rw"]))
        content = meta(s["b"], s["k"], s["v"])
        out = meta(s["b"], s["heads"] * s["v"], s["height"], s["width"])
        grad = gradient_layout(out)
        rows = qr_rows_per_program(s["b"], s["heads"], s["height"], s["width"])
        partial = meta(*qr_partial_shape(q, values, kernel, rows), dt=_accumulator_dtype(dtype))
        label = _TL_NAMES[dtype] + ("/tf32" if precision == "tf32" else "")
        launches = (("forward", forward_launch(q, values, kernel, content, out, precision)),
                    ("dq/dR", qr_grad_launch(grad, q, values, kernel, content, torch.empty_like(q), partial, rows, precision)),
                    ("dV", v_grad_launch(grad, q, kernel, torch.empty_like(values), precision)))
        for name, launch in launches:
            launch = launch._replace(constexprs=dict(launch.constexprs, DOT_F32=False))  # a GPU multiplies bf16 itself
            choice = (name, label, tuple(sorted((k_, str(v_)) for k_, v_ in launch.constexprs.items())))
            if choice not in seen:
                seen.add(choice)
                configurations.append(_specialize(launch, f"{name} {label} ({where})"))
    return configurations
