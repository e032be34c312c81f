"""The CUDA kernels: a compile-once executor of the Plan's step program (the same op table and value
arena as the cpu backend's, ``backends/tables.py``), a tiled GEMM for the input projection and the
deferred weight gradients, and two small helpers. Built once per dtype by ``kernels(dtype)``.

**The time loop** runs inside one launch, forward and backward: rows of an RNN never interact, so a
block owns R batch rows for the whole sequence and its threads split the H units (thread ``tid``
owns units ``tid, tid + nthreads, ...`` of every row it holds, in every slot). Elementwise ops then
touch only the thread's own elements, and the recurrent GEMM of a stage is computed inside the
block: each thread packs its own elements of the stage's sources into ``K`` (kept for the deferred
weight gradients), the block synchronises, each thread computes whole output columns of the stage
(the 4H columns of an LSTM are spread over up to 4H threads, all R rows at once, so each weight read
serves R rows) straight into their slots, and the block synchronises again. So a step is two
``syncthreads`` per GEMM stage and no launch; every other read is of the thread's own elements. The
backward runs the program in reverse the same way.

Biases and peepholes get their gradients per element (``[B, n*H]``, no atomics: results are the same
on every run) and are summed over the batch after the loop, like the input projection's bias.

**GEMMs** outside the loop (``[T*B, I] @ W_x``, ``X^T @ dP``, ``K^T @ DZ``, ``dP @ W_x^T``) go
through one register-tiled shared-memory kernel: a block computes a BM x BN tile of C, each thread
an RM x RN sub-tile from BK-deep slices of A and B staged in shared memory; either operand may be
read transposed.

No fastmath (NaN and Inf must survive, so that divergence is detected); tanh and exp are libdevice's
for the dtype; every constant is typed to the dtype, so float32 kernels never compute in float64.
"""

from __future__ import annotations

import math
from functools import lru_cache
from types import SimpleNamespace

import numpy as np
from numba import config as numba_config
from numba import cuda
from numba.np.numpy_support import from_dtype

from ..tables import (
    C_AC,
    C_AG,
    C_AM,
    C_AUX,
    C_BC,
    C_BG,
    C_BM,
    C_CC,
    C_CG,
    C_CM,
    C_CODE,
    C_DC,
    C_DG,
    C_DM,
    I_K,
    I_NK,
    I_NS,
    I_W,
    I_Z,
    S_C,
    S_G,
    S_M,
)
from .fused import Program, segment_functions

# opcodes: keep in step with cellsearch.lowering.plan.Code (tests/test_tables.py checks)
OP_STATE, OP_X, OP_CONST, OP_LOADP, OP_BIAS, OP_GEMM, OP_ADD, OP_SUB, OP_MUL, OP_BLEND, OP_SIGMOID, OP_TANH, OP_RELU, OP_PEEP = (
    range(14)
)

#: batch rows one block of the time-loop kernels may hold (its GEMM accumulators are per row)
ROWS = (1, 2, 4, 8)


@lru_cache(maxsize=8)
def gemm_kernel(dtype: np.dtype, TX: int = 16, TY: int = 16, RM: int = 4, RN: int = 4, BK: int = 16):  # type: ignore[no-untyped-def]
    """``C[z] = op(A)[:, kz] @ op(B)[kz, :] (+ bias) (+ C[z])`` for the z-th slice ``kz`` of the inner
    dimension, ``kchunk`` long (split-K: a long inner dimension over several blocks; ``C`` is [S, M,
    N], and ``sum_parts`` adds the S partial products in order), a (BM = TY*RM) x (BN = TX*RN) tile
    of C per block of TX x TY threads; launch with ``grid=(ceil(N/BN), ceil(M/BM), S), block=(TX,
    TY)``."""
    dt = from_dtype(np.dtype(dtype))
    zero = np.dtype(dtype).type(0)
    BM = TY * RM
    BN = TX * RN
    NT = TX * TY

    @cuda.jit(cache=True)
    def gemm(A, B, C, bias, ta, tb, has_bias, accumulate, kchunk):
        sA = cuda.shared.array((BK, BM), dt)  # sA[k, m] = op(A)[m0 + m, k0 + k]
        sB = cuda.shared.array((BK, BN), dt)  # sB[k, n] = op(B)[k0 + k, n0 + n]
        acc = cuda.local.array((RM, RN), dt)
        ra = cuda.local.array(RM, dt)
        rb = cuda.local.array(RN, dt)
        tx = cuda.threadIdx.x
        ty = cuda.threadIdx.y
        tid = ty * TX + tx
        M = C.shape[1]
        N = C.shape[2]
        z = cuda.blockIdx.z
        Kd = min(A.shape[0] if ta else A.shape[1], (z + 1) * kchunk)
        m0 = cuda.blockIdx.y * BM
        n0 = cuda.blockIdx.x * BN
        for i in range(RM):
            for j in range(RN):
                acc[i, j] = zero
        for k0 in range(z * kchunk, Kd, BK):
            for idx in range(tid, BK * BM, NT):
                # consecutive threads read consecutive addresses of A, whichever way it is stored
                if ta:
                    kk = idx // BM
                    mm = idx - kk * BM
                else:
                    mm = idx // BK
                    kk = idx - mm * BK
                gm = m0 + mm
                gk = k0 + kk
                v = zero
                if gm < M and gk < Kd:
                    v = A[gk, gm] if ta else A[gm, gk]
                sA[kk, mm] = v
            for idx in range(tid, BK * BN, NT):
                if tb:
                    nn = idx // BK
                    kk = idx - nn * BK
                else:
                    kk = idx // BN
                    nn = idx - kk * BN
                gn = n0 + nn
                gk = k0 + kk
                v = zero
                if gn < N and gk < Kd:
                    v = B[gn, gk] if tb else B[gk, gn]
                sB[kk, nn] = v
            cuda.syncthreads()
            for kk in range(BK):
                for i in range(RM):
                    ra[i] = sA[kk, ty + i * TY]
                for j in range(RN):
                    rb[j] = sB[kk, tx + j * TX]
                for i in range(RM):
                    for j in range(RN):
                        acc[i, j] += ra[i] * rb[j]
            cuda.syncthreads()
        for i in range(RM):
            m = m0 + ty + i * TY
            if m < M:
                for j in range(RN):
                    n = n0 + tx + j * TX
                    if n < N:
                        v = acc[i, j]
                        if has_bias:
                            v += bias[n]
                        if accumulate:
                            v += C[z, m, n]
                        C[z, m, n] = v

    @cuda.jit(cache=True)
    def sum_parts(parts, C, bias, has_bias, accumulate):
        """C = parts[0] + parts[1] + ... (in that order: the same sums on every run) (+ bias) (+ C)."""
        n, m = cuda.grid(2)  # consecutive threads, consecutive columns
        if m < C.shape[0] and n < C.shape[1]:
            v = parts[0, m, n]
            for z in range(1, parts.shape[0]):
                v += parts[z, m, n]
            if has_bias:
                v += bias[n]
            if accumulate:
                v += C[m, n]
            C[m, n] = v

    gemm.sum_parts = sum_parts  # type: ignore[attr-defined]
    gemm.tile = (BM, BN)  # type: ignore[attr-defined]
    gemm.threads = (TX, TY)  # type: ignore[attr-defined]
    return gemm


@lru_cache(maxsize=4)
def element_ops(dtype: np.dtype) -> SimpleNamespace:
    """One element of one op of the step program, forward and backward, as inlined device functions
    that both schedules' time loops call: element ``e = bb * H + j`` (batch row ``bb``, unit ``j``) of
    the slots at arena offsets d (result), a, b, c (operands); in the backward G holds a slot per
    node of the step's gradients (gd, ga, gb, gc)."""
    typ = np.dtype(dtype).type
    zero = typ(0)
    half = typ(0.5)
    one = typ(1)

    @cuda.jit(device=True, inline="always")
    def forward_op(code, aux, flag, t, A, d, a, b, c, e, bb, j, B, H, X, P, S0, consts, biases, peeps):
        if code == OP_STATE:
            if flag == 1:  # a copied state; the others are read in place
                A[d + e] = S0[aux, bb * H + j] if t == 0 else A[a + e]
        elif code == OP_X:
            A[d + e] = X[t, bb, j]
        elif code == OP_CONST:
            A[d + e] = consts[aux]
        elif code == OP_LOADP:
            A[d + e] = P[t * B + bb, aux * H + j]
        elif code == OP_BIAS:
            A[d + e] = biases[aux, j]
        elif code == OP_ADD:
            A[d + e] = A[a + e] + A[b + e]
        elif code == OP_SUB:
            A[d + e] = A[a + e] - A[b + e]
        elif code == OP_MUL:
            A[d + e] = A[a + e] * A[b + e]
        elif code == OP_BLEND:
            g = A[c + e]
            A[d + e] = g * A[a + e] + (one - g) * A[b + e]
        elif code == OP_SIGMOID:
            A[d + e] = half * math.tanh(half * A[a + e]) + half
        elif code == OP_TANH:
            A[d + e] = math.tanh(A[a + e])
        elif code == OP_RELU:
            v = A[a + e]
            A[d + e] = zero if v <= zero else v  # NaN passes
        elif code == OP_PEEP:
            A[d + e] = peeps[aux, j] * A[a + e]

    @cuda.jit(device=True, inline="always")
    def backward_op(code, aux, t, A, G, gd, ga, gb, gc, d, a, b, c, e, bb, j, B, H, dS, dX, dP, dBr, dPeepr, peeps):
        g = G[gd + e]
        if code == OP_STATE:
            dS[aux, bb * H + j] = g
        elif code == OP_X:
            dX[t, bb, j] += g
        elif code == OP_LOADP:
            dP[t * B + bb, aux * H + j] = g
        elif code == OP_BIAS:
            dBr[bb, aux * H + j] += g
        elif code == OP_ADD:
            G[ga + e] += g
            G[gb + e] += g
        elif code == OP_SUB:
            G[ga + e] += g
            G[gb + e] -= g
        elif code == OP_MUL:
            G[ga + e] += g * A[b + e]
            G[gb + e] += g * A[a + e]
        elif code == OP_BLEND:
            w = A[c + e]
            G[ga + e] += g * w
            G[gb + e] += g * (one - w)
            G[gc + e] += g * (A[a + e] - A[b + e])
        elif code == OP_SIGMOID:
            y = A[d + e]
            G[ga + e] += g * y * (one - y)
        elif code == OP_TANH:
            y = A[d + e]
            G[ga + e] += g * (one - y * y)
        elif code == OP_RELU:
            if A[a + e] > zero:
                G[ga + e] += g
        elif code == OP_PEEP:
            G[ga + e] += g * peeps[aux, j]
            dPeepr[bb, aux * H + j] += g * A[a + e]

    @cuda.jit(device=True, inline="always")
    def op_at(ops, r, t):
        """Op r's arena offsets at step t: result d and operands a, b, c (const + t * tmul)."""
        return (ops[r, C_DC] + t * ops[r, C_DM], ops[r, C_AC] + t * ops[r, C_AM], ops[r, C_BC] + t * ops[r, C_BM],
                ops[r, C_CC] + t * ops[r, C_CM])  # fmt: skip

    @cuda.jit(device=True, inline="always")
    def op_grads(ops, r):
        """Op r's gradient slots in G: result gd and operands ga, gb, gc."""
        return ops[r, C_DG], ops[r, C_AG], ops[r, C_BG], ops[r, C_CG]

    return SimpleNamespace(forward_op=forward_op, backward_op=backward_op, op_at=op_at, op_grads=op_grads)


#: bytes of static shared memory a units-schedule block uses (a block may have 48 KiB): its
#: elements' values of the step, and its weight columns
SHARED_BYTES = 48 * 1024 - 512 - 2048  # (less the split dot products' reduction buffer)
#: threads one output of a GEMM stage may be split over (``split``), and the reduction buffer's size
MAX_SPLIT = 32
MAX_RED = 256  # = kernel.MAX_THREADS
#: the layout of the units schedule's misc mirror table (``kernel.mirror_tables``: offsets in the
#: mirror): the output's at an even and at an odd step, its gradient's, the number of input
#: projection blocks, then per state (its update's at an even and at an odd step, its initial
#: value's, its leaf's gradient's, its update's gradient's)
M_OUT, M_OUTG, M_NX, M_STATE, M_STRIDE = 0, 2, 3, 4, 5


def shared_elements(dtype: np.dtype) -> int:
    return SHARED_BYTES // np.dtype(dtype).itemsize


#: warp dot products (``unit_kernels(warp=True)``): output columns a warp's pass computes at once
#: (accumulators per row in registers), the rows of a pass, and loads in flight per row per lane
WARP_COLS = 8
WARP_ROWS = (1, 2, 4)
WARP_LOADS = (4, 8, 16)
WARP_INFLIGHT = 16  # rows x loads: more, and NVVM leaves the loaded elements in local memory


@lru_cache(maxsize=32)
def unit_kernels(
    dtype: np.dtype,
    cooperative: bool,
    unroll: int = 4,
    warp: bool = False,
    wrows: int = 2,
    wloads: int = 8,
    fused: tuple[Program, bool] | None = None,
) -> SimpleNamespace:
    """The time loop in the **units schedule**: block ``g`` owns hidden units ``[g*U, g*U + U)`` of
    every batch row (a block may own several such groups, ``gridDim.x * U`` apart: the simulator runs
    one block), for the whole sequence. Elementwise ops touch only the block's units; a GEMM stage
    needs every unit of its sources, so the blocks write their units of the sources into ``K``, wait
    at a grid-wide barrier, and each computes its own units' output columns for all B rows. So a
    step is one grid barrier per GEMM stage, and a small batch is spread over every multiprocessor,
    where the rows schedule gives each batch row one block.

    A block with one group keeps two things in shared memory (``SH``; the host lays it out and says
    which fit): its weight columns of every stage for the whole sequence (``cached``: ``w_n``
    elements at 0), and after them the **mirror** (``vcache``): its elements of every value of the
    step (the taped values of tape steps t and t+1 by parity, then the scratch values), ``E = B*U``
    elements apart — ops read and write it instead of the arena in global memory, and write the
    tape (and at the last step the scratch values) for the backward; the backward mirrors the two
    tape steps it reads and the scratch values (those it reads are the same at every step:
    constants, biases) and keeps the step's gradients there. ``mops``/``msrc``/``mdst``/``mmisc``
    give every operand's place in the mirror at even and odd steps (``kernel.mirror_tables``). What
    does not fit goes through global memory.

    **The loop is bound by its instruction count** (Nsight Compute, gpu/README.md: ~90 % integer
    and control instructions), so the mirror's paths keep it low: their indices are unsigned
    (``u``: Numba then emits no negative-index test per access), a thread's elements are stepped
    through from the (row, unit) of its first, found once per launch (no division per element and
    op), and the mirror tables hold finished offsets (no slot arithmetic per op).

    A GEMM stage's outputs: with ``warp``, **warp dot products** — a warp takes ``wrows`` batch rows
    at a time and its 32 lanes split the inner dimension (consecutive lanes, consecutive elements of
    a source row: coalesced loads, ``wloads`` of them in flight per row and lane), each lane keeping
    partial sums for ``WARP_COLS`` of the block's output columns, so every element loaded serves all
    of them; the ``wrows * WARP_COLS`` partial sums are then added across the lanes by a transposed
    xor butterfly (each level a lane keeps half its sums and receives its partner's halves of the
    other: 31 shuffles for 32 sums), in the same order on every run, leaving output ``x`` in lane
    ``x << shift`` (``warp_sums``). The weights cached in shared memory are then stored a column
    after another (lanes read consecutive words: no bank conflicts). The block needs 32 threads a
    warp (the host launches a multiple of 32). Without ``warp``, a thread per output (or ``split``
    threads, see ``split_of``) with ``unroll`` terms in flight.

    The barrier: ``cooperative`` uses cooperative groups' grid sync (a cooperative launch, linking
    libcudadevrt); otherwise a counter in global memory (``bar``, zeroed before the launch) that
    every block increments and thread 0 of each spins on. Either needs every block resident at
    once: the host launches at most one block per multiprocessor.

    ``fused`` (a cell's ``fused.program`` and whether the forward mirrors the input projection): the
    mirror paths' elementwise ops run as the cell's generated straight-line segments
    (``fused.segment_functions``) instead of through the interpreter: kernels for that cell only,
    compiled without Numba's on-disk cache."""
    dt = from_dtype(np.dtype(dtype))
    typ = np.dtype(dtype).type
    zero = typ(0)
    SHN = shared_elements(np.dtype(dtype))
    UN = unroll
    WARP = warp
    CM = WARP_COLS
    RP = wrows
    WL = wloads
    NACC = RP * CM  # 8, 16 or 32 partial sums a lane; local arrays' sizes must be single constants
    NKV = RP * WL
    # the transposed butterfly: halves kept at the levels 16, 8, 4, 2, 1 (0: a plain xor sum), and
    # where output x ends: lane x << SHIFT (the lanes in between hold copies)
    H16, H8, H4, H2, H1 = NACC >> 1, NACC >> 2, NACC >> 3, NACC >> 4, NACC >> 5
    SHIFT = {8: 2, 16: 1, 32: 0}[NACC]
    LOW = (1 << SHIFT) - 1
    elem = element_ops(np.dtype(dtype))
    forward_op = elem.forward_op
    backward_op = elem.backward_op
    op_at = elem.op_at
    op_grads = elem.op_grads

    SIM = bool(getattr(numba_config, "ENABLE_CUDASIM", 0))
    NRED = MAX_RED * RP * CM if SIM and WARP else MAX_RED
    # unsigned indices on the GPU; the simulator's Python ints need no such care (and stay fast)
    u = int if SIM else np.uint64
    FUSED = fused is not None
    # a cell's own kernels close over its generated code: Numba's on-disk cache is for the shared ones
    kernel_jit = cuda.jit(cache=not FUSED)

    if SIM:  # no warp shuffles in the simulator: the same sums, in the same order, through shared memory

        @cuda.jit(device=True, inline="always")
        def warp_sums(acc, RED, tid, lane):
            """As the GPU's ``warp_sums`` below computes it, every lane of the warp played out from
            their partial sums (stored in RED); every thread of the block calls it."""
            nth = cuda.blockDim.x
            for x in range(NACC):
                RED[x * nth + tid] = acc[x]
            cuda.syncthreads()
            base = tid - lane
            vals = [[RED[x * nth + base + L] for x in range(NACC)] for L in range(32)]
            for off, h in ((16, H16), (8, H8), (4, H4), (2, H2), (1, H1)):
                new = []
                for L in range(32):
                    v, w = vals[L], vals[L ^ off]
                    if h == 0:
                        new.append([v[0] + w[0]])
                    elif L & off:  # keeps its upper half, gets the partner's upper half
                        new.append([v[x + h] + w[x + h] for x in range(h)])
                    else:
                        new.append([v[x] + w[x] for x in range(h)])
                vals = new
            cuda.syncthreads()
            return vals[lane][0]

    else:

        @cuda.jit(device=True, inline="always")
        def halve(acc, lane, off, h):
            """One level of the transposed butterfly: the lane keeps acc[x + h] (its bit ``off`` set)
            or acc[x], and adds the partner's (lane ^ off) same half, which the partner sends."""
            up = (lane & off) != 0
            for x in range(h):
                lo = acc[x]
                hi = acc[x + h]
                acc[x] = (hi if up else lo) + cuda.shfl_xor_sync(0xFFFFFFFF, lo if up else hi, off)

        @cuda.jit(device=True, inline="always")
        def whole(acc, off):
            v = acc[0]
            acc[0] = v + cuda.shfl_xor_sync(0xFFFFFFFF, v, off)

        @cuda.jit(device=True, inline="always")
        def warp_sums(acc, RED, tid, lane):
            """acc[x] summed over the warp for every x < NACC; lane ``x << SHIFT`` returns sum x
            (and the lanes up to the next such one the same sum). The order of the additions is
            fixed by the lane numbers: the same bits on every run."""
            halve(acc, lane, 16, H16)
            halve(acc, lane, 8, H8)
            halve(acc, lane, 4, H4)
            if H2 > 0:
                halve(acc, lane, 2, H2)
            else:
                whole(acc, 2)
            if H1 > 0:
                halve(acc, lane, 1, H1)
            else:
                whole(acc, 1)
            return acc[0]

    @cuda.jit(device=True, inline="always")
    def warp_dot(acc, kv, cbs, M, moff, width, rb, last, Wv, istride, ncols, lane):
        """acc[q * CM + c] = this lane's part of sum over i < width of M[moff + row_q * width + i] *
        Wv[cbs[c] + i * istride] for rows row_q = min(rb + q, last), q < RP, and columns c < ncols
        (the others stay 0): the lane's terms are i = lane (mod 32), WL of them loaded at once per
        row (constant trip counts: acc, kv and cbs stay in registers). Indices unsigned. Each
        partial sum gets its terms in the order of i whether its tile is whole or the last, partial
        one, so the sums are the same bits either way."""
        for x in range(NACC):
            acc[x] = zero
        for i0 in range(u(0), width, u(32 * WL)):
            if i0 + u(32 * WL) <= width:  # a whole tile (all of it, at a width a multiple of 32 * WL): no bounds tests
                for q in range(RP):
                    mr = moff + min(rb + u(q), last) * width + i0 + lane
                    for w in range(WL):
                        kv[q * WL + w] = M[mr + u(w * 32)]
                for c in range(CM):  # a column's test once a tile, not once a load (the backward uses few columns)
                    if u(c) < ncols:
                        wb = cbs[c] + (i0 + lane) * istride
                        for w in range(WL):
                            wt = Wv[wb + u(w * 32) * istride]
                            for q in range(RP):
                                acc[q * CM + c] += kv[q * WL + w] * wt
                continue
            for q in range(RP):
                mr = moff + min(rb + u(q), last) * width
                for w in range(WL):
                    i = i0 + u(w * 32) + lane
                    kv[q * WL + w] = M[mr + i] if i < width else zero
            for w in range(WL):
                i = i0 + u(w * 32) + lane
                if i < width:
                    for c in range(CM):
                        if u(c) < ncols:
                            wt = Wv[cbs[c] + i * istride]
                            for q in range(RP):
                                acc[q * CM + c] += kv[q * WL + w] * wt

    @cuda.jit(device=True, inline="always")
    def warp_outputs(acc, kv, cbs, M, moff, width, rb, last, cached, SH, Wg, wstride, ncols, RED, tid, lane):
        """One warp pass of a GEMM stage: rows rb.. of M times the columns in cbs (the block's
        cached weights, or the global matrix Wg whose rows are ``wstride`` apart), summed across
        the warp; returns the sum this lane stores (``warp_sums``). Every thread calls it."""
        if cached:
            warp_dot(acc, kv, cbs, M, moff, width, rb, last, SH, u(1), ncols, u(lane))
        else:
            warp_dot(acc, kv, cbs, M, moff, width, rb, last, Wg, wstride, ncols, u(lane))
        return warp_sums(acc, RED, tid, lane)

    @cuda.jit(device=True, inline="always")
    def split_column(k, ju, Ug):
        """(output, unit index) of the column ``ju`` columns after output k's first: ju reduced below
        Ug by subtraction — a stage's columns are few (``ju`` < Ug + CM here), and a 64-bit division
        is a long instruction sequence on a GPU (no integer divider), executed per pass."""
        while ju >= Ug:
            ju -= Ug
            k += u(1)
        return k, ju

    @cuda.jit(device=True, inline="always")
    def warp_columns(cbs, c0, kc, jc, Ug, u0, H, cached, cb, width, woff):
        """cbs[c]: where column cc = c0 + c (output k = cc // Ug, unit u0 + cc % Ug; column c0 is
        output kc's unit jc) of a stage's weights starts — in the block's cache (a column after
        another, ``width`` long) or in the global matrix (from its row 0). Unsigned, no division."""
        k, ju = kc, jc
        for c in range(CM):
            cc = c0 + u(c)
            cbs[c] = cb + cc * width if cached else woff + k * H + u0 + ju
            ju += u(1)
            if ju >= Ug:
                ju = u(0)
                k += u(1)

    if cooperative:

        @cuda.jit(device=True, inline="always")
        def barrier(bar, target):
            cuda.cg.this_grid().sync()

    else:

        @cuda.jit(device=True, inline="always")
        def barrier(bar, target):
            """Every block of the grid has arrived (the counter reached ``target``) and its writes
            before it are visible."""
            cuda.syncthreads()
            if cuda.threadIdx.x == 0:
                cuda.threadfence()
                cuda.atomic.add(bar, 0, 1)
                while cuda.atomic.add(bar, 0, 0) < target:
                    pass
                cuda.threadfence()
            cuda.syncthreads()

    @cuda.jit(device=True, inline="always")
    def dot(M, moff, mstep, Wv, woff, wstride, width):
        """sum over i < width of M[moff + i * mstep] * Wv[woff + i * wstride], in ``unroll`` partial
        sums (that many terms in flight; constant trip counts, so they stay in registers) added
        pairwise in a fixed order: the same result on every run."""
        s = cuda.local.array(UN, dt)
        for q in range(UN):
            s[q] = zero
        n = width - width % UN
        for i in range(0, n, UN):
            w = woff + i * wstride
            m = moff + i * mstep
            for q in range(UN):
                s[q] += M[m + q * mstep] * Wv[w + q * wstride]
        for i in range(n, width):
            s[0] += M[moff + i * mstep] * Wv[woff + i * wstride]
        h = 1
        while h < UN:  # ((s0 + s1) + (s2 + s3)) + ...
            for q in range(0, UN, 2 * h):
                s[q] += s[q + h]
            h *= 2
        return s[0]

    @cuda.jit(device=True, inline="always")
    def load_cache(Wc, W, info, H, u0, Ug, forward, tid, nth):
        """The block's columns of every stage's weights into Wc: a stage's matrix is [n_in, n_out*H]
        (forward: ns*H x nk*H, backward: nk*H x ns*H); its cached part is [n_in, n_out*Ug], column
        k*Ug + ju holding unit u0 + ju of output k (stored transposed, [n_out*Ug, n_in], for warp
        dot products); stages one after another."""
        base = 0
        for g in range(info.shape[0]):
            ns = info[g, I_NS]
            nk = info[g, I_NK]
            n_in = ns * H if forward else nk * H
            n_out = nk if forward else ns
            NC = n_out * Ug
            ncol = n_out * H
            woff = info[g, I_W]
            for idx in range(tid, n_in * NC, nth):
                i = idx // NC
                cc = idx - i * NC
                k = cc // Ug
                Wc[base + (cc * n_in + i if WARP else idx)] = W[woff + i * ncol + k * H + u0 + cc - k * Ug]
            base += n_in * NC

    @cuda.jit(device=True, inline="always")
    def cache_base(info, aux, H, Ug):
        base = 0
        for g in range(aux):
            base += info[g, I_NS] * info[g, I_NK] * H * Ug
        return base

    @cuda.jit(device=True, inline="always")
    def element(idx, Ug, u0):
        """(batch row, unit) of element idx of a group of Ug units from u0 (row-major: the mirror's
        order); the global memory paths' (a division per element)."""
        bb = idx // Ug
        return bb, u0 + idx - bb * Ug

    @cuda.jit(device=True, inline="always")
    def advance(bb, ju, dbb, dju, Ug):
        """The (row, unit index) of the element ``nth`` after (bb, ju), where nth = dbb * Ug + dju
        and ju, dju < Ug: the mirror paths step through a thread's elements without dividing."""
        ju += dju
        bb += dbb
        if ju >= Ug:
            ju -= Ug
            bb += u(1)
        return bb, ju

    if fused is not None:
        fwd_segment, bwd_segment = segment_functions(fused[0], fused[1], np.dtype(dtype), u, advance)
    else:  # (never called: the kernels' calls sit under a constant False)

        @cuda.jit(device=True, inline="always")
        def fwd_segment(r, tu, par, last, SH, A, ops, v_at, Eu, g0u, tidu, bb0, ju0, Eb, nthu, dbb, dju, Ug1, Bu, Hu, X, P, S0,
                        consts, biases, peeps):  # fmt: skip
            return r + 1

        @cuda.jit(device=True, inline="always")
        def bwd_segment(r, tu, par, SH, v_at, g_at, Eu, g0u, tidu, bb0, ju0, Eb, nthu, dbb, dju, Ug1, Bu, Hu, dS, dX, dP, dBr,
                        dPeepr, peeps):  # fmt: skip
            return r

    @cuda.jit(device=True, inline="always")
    def geometry(B, H, U, g0, tid, nth):
        """The mirror paths' quantities, unsigned (vcache: the block has one group, units g0 ..
        g0 + Ug): B, H, g0, Ug, the block's elements B * Ug, the mirror's stride between values
        E = B * U, the thread and the block's threads, the thread's first element (row bb0, unit
        index ju0) and the step to its next, nth elements on (dbb rows and dju units: ``advance``)."""
        Bu = u(B)
        Ug = u(min(U, H - g0))
        tidu = u(tid)
        nthu = u(nth)
        bb0 = tidu // Ug
        dbb = nthu // Ug
        return Bu, u(H), u(g0), Ug, Bu * Ug, Bu * u(U), tidu, nthu, bb0, tidu - bb0 * Ug, dbb, nthu - dbb * Ug

    @cuda.jit(device=True, inline="always")
    def pack(M, base, width, SH, src, idx, bb, ju, Eb, nth, dbb, dju, Ug):
        """M[base + bb * width + ju] = the mirror's element (bb, ju) of the value at src, for the
        thread's elements from (idx, bb, ju) on, nth apart (``advance``): a GEMM stage's sources
        (K) or output gradients (DZ), the block's units of them, for the other blocks to read."""
        while idx < Eb:
            M[base + bb * width + ju] = SH[src + idx]
            idx += nth
            bb, ju = advance(bb, ju, dbb, dju, Ug)

    @cuda.jit(device=True, inline="always")
    def unmirror(Out, i, SH, src, g0, idx, bb, ju, Eb, nth, dbb, dju, Ug):
        """Out[i, bb, g0 + ju] = the mirror's element (bb, ju) of the value at src, for the thread's
        elements from (idx, bb, ju) on (unsigned, ``advance``): the forward's outputs and final states."""
        while idx < Eb:
            Out[i, bb, g0 + ju] = SH[src + idx]
            idx += nth
            bb, ju = advance(bb, ju, dbb, dju, Ug)

    @cuda.jit(device=True, inline="always")
    def from_arena(Out, i, A, src, g0, gstep, U, B, H, tid, nth):
        """Out[i, bb, j] = A[src + bb * H + j] for the block's units j of every row bb: ``unmirror``
        for the global memory paths."""
        for u0 in range(g0, H, gstep):
            Ug = min(U, H - u0)
            for idx in range(tid, B * Ug, nth):
                bb, j = element(idx, Ug, u0)
                Out[i, bb, j] = A[src + bb * H + j]

    def gatherer(load):  # type: ignore[no-untyped-def]
        """``gather(SH, dst, dstride, M, at, sstride, n, buf)``: SH[dst + s * dstride] = load(M, at,
        s * sstride) for s < n (unsigned), four loads in flight (buf: at least four registers): a
        loop of loads each waited for before the next would pay the latency of global memory n
        times. ``load`` reads a flat array at ``at + off``, or a 2-D one's row ``at[0]`` at ``at[1] + off``."""

        @cuda.jit(device=True, inline="always")
        def gather(SH, dst, dstride, M, at, sstride, n, buf):
            for s0 in range(u(0), n, u(4)):
                for q in range(4):
                    s = s0 + u(q)
                    buf[q] = load(M, at, s * sstride) if s < n else zero
                for q in range(4):
                    s = s0 + u(q)
                    if s < n:
                        SH[dst + s * dstride] = buf[q]

        return gather

    @cuda.jit(device=True, inline="always")
    def flat_at(M, at, off):
        return M[at + off]

    @cuda.jit(device=True, inline="always")
    def row_at(M, at, off):
        return M[at[0], at[1] + off]

    gather = gatherer(flat_at)  # the tape, the scratch values
    gather_row = gatherer(row_at)  # the step's input projection: P's row (t, bb) from unit j, H apart

    @cuda.jit(device=True, inline="always")
    def pack_global(M, base, width, V, src, g0, gstep, U, B, H, tid, nth):
        """M[base + bb * width + j] = V[src + bb * H + j] for the block's units j of every row bb (all
        its groups; int64, a division per element): ``pack`` for the global memory paths."""
        for u0 in range(g0, H, gstep):
            Ug = min(U, H - u0)
            for idx in range(tid, B * Ug, nth):
                bb, j = element(idx, Ug, u0)
                M[base + bb * width + j] = V[src + bb * H + j]

    @cuda.jit(device=True, inline="always")
    def column_output(o, lane, split, NC, Ug, u0, H, M, moff, width, cached, SH, cb, W, woff, ncol):
        """Output o of a GEMM stage in a block's group: (batch row, output k, unit's index in the group,
        unit, value) — row bb of M (rows of ``width`` from moff) times column cc = k*Ug + ju of the
        block's cached weights, or of the global weights from woff; with ``split`` > 1, only the
        terms i = lane (mod split) of it."""
        bb = o // NC
        cc = o - bb * NC
        k = cc // Ug
        ju = cc - k * Ug
        j = u0 + ju
        n = (width - lane + split - 1) // split
        if cached:
            v = dot(M, moff + bb * width + lane, split, SH, cb + cc + lane * NC, NC * split, n)
        else:
            v = dot(M, moff + bb * width + lane, split, W, woff + k * H + j + lane * ncol, ncol * split, n)
        return bb, k, ju, j, v

    @cuda.jit(device=True, inline="always")
    def split_of(split, n_out, nth):
        """Threads per output (a power of two): with ``split``, as many as leave no thread idle."""
        tpo = 1
        if split:
            while tpo < MAX_SPLIT and 2 * tpo * n_out <= nth:
                tpo *= 2
        return tpo

    @cuda.jit(device=True, inline="always")
    def reduce_split(RED, tid, tpo, lane, v, active):
        """In the first thread (lane 0) of each output's tpo threads, the sum of their partial dot
        products, in a fixed order; every thread of the block calls it (only lane 0 reads the others',
        so no read passes the block's last thread)."""
        RED[tid] = v if active else zero
        cuda.syncthreads()
        if lane == 0 and active:
            for q in range(1, tpo):
                v += RED[tid + q]
        cuda.syncthreads()
        return v

    @cuda.jit(device=True, inline="always")
    def forward_put(A, SH, vcache, stage_dst, mdst, aux, k, t, last, par, v_at, bb, Ug, ju, H, u0, v):
        """Add a forward GEMM stage's output v to destination k's element (bb, u0 + ju) (unsigned
        indices; ``par`` the step's parity, ``last`` whether it is the last step): in the mirror,
        writing the tape through (and the last step's scratch), or in the arena."""
        dd = u(stage_dst[aux, k, S_C]) + t * u(stage_dst[aux, k, S_M]) + bb * H + u0 + ju
        if vcache:
            vi = v_at + u(mdst[aux, k, par]) + bb * Ug + ju
            nv = SH[vi] + v
            SH[vi] = nv
            if stage_dst[aux, k, S_M] != 0 or last:  # taped, or the last step's scratch
                A[dd] = nv
        else:
            A[dd] += v

    @cuda.jit(device=True, inline="always")
    def backward_put(SH, G, vcache, stage_src, msrc, aux, i, g_at, bb, Ug, ju, H, u0, v):
        """Add a backward GEMM stage's output v to source i's gradient at (bb, u0 + ju) (unsigned)."""
        if vcache:
            SH[g_at + u(msrc[aux, i, 2]) + bb * Ug + ju] += v
        else:
            G[u(stage_src[aux, i, S_G]) + bb * H + u0 + ju] += v

    @cuda.jit(device=True, inline="always")
    def stage_outputs(forward, acc, kv, cbs, M, moff, width, ncol, woff, n_out, aux, cpre, cached, split, SH, Wg, RED, U, B, H,
                      t, last, par, base, vcache, D, stage_io, mio):  # fmt: skip
        """The block's output columns of a GEMM stage, all B rows (M: K or DZ, rows of ``width``
        from moff; the weights' rows ``ncol`` long from woff; unsigned; the block's cached weight
        columns of the stage from ``cpre * Ug``), added to their destinations (forward: D is the
        arena, base the mirror's start) or to their sources' gradients (backward: D is G, base the
        mirror's gradients'). At most 30 arguments: more, and Python passes them as *args, which
        Numba cannot inline."""
        tid = cuda.threadIdx.x
        nth = cuda.blockDim.x
        wid = tid // 32
        lane = tid - wid * 32
        nwarp = nth // 32
        g0 = cuda.blockIdx.x * U
        gstep = cuda.gridDim.x * U
        Bu = u(B)
        Hu = u(H)
        for u0 in range(g0, H, gstep):
            Ug = min(U, H - u0)
            Ugu = u(Ug)
            u0u = u(u0)
            NC = n_out * Ugu
            cb = cpre * Ugu
            if WARP:
                kc, jc = u(0), u(0)  # column c0 is output kc's unit jc (no division per pass: ``split_column``)
                for c0 in range(u(0), NC, u(CM)):
                    warp_columns(cbs, c0, kc, jc, Ugu, u0u, Hu, cached, cb, width, woff)
                    for p0 in range(u(0), Bu, u(nwarp * RP)):
                        rb = p0 + u(wid * RP)
                        v = warp_outputs(acc, kv, cbs, M, moff, width, rb, Bu - u(1), cached, SH, Wg, ncol, NC - c0, RED, tid,
                                         lane)  # fmt: skip
                        x = u(lane >> SHIFT)  # the output this lane holds: x = q * CM + c
                        q = x // u(CM)
                        c = x - q * u(CM)
                        if (lane & LOW) == 0 and c < NC - c0 and rb + q < Bu:
                            k, ju = split_column(kc, jc + c, Ugu)
                            if forward:
                                forward_put(D, SH, vcache, stage_io, mio, aux, k, t, last, par, base, rb + q, Ugu, ju, Hu, u0u, v)
                            else:
                                backward_put(SH, D, vcache, stage_io, mio, aux, k, base, rb + q, Ugu, ju, Hu, u0u, v)
                    kc, jc = split_column(kc, jc + u(CM), Ugu)
                continue
            NCi = np.int64(NC)
            wi = np.int64(width)
            tpo = split_of(split, B * NCi, nth)
            if tpo == 1:
                for o in range(tid, B * NCi, nth):
                    bb, k, ju, _j, v = column_output(o, 0, 1, NCi, Ug, u0, H, M, np.int64(moff), wi, cached, SH, np.int64(cb), Wg,
                                                    np.int64(woff), np.int64(ncol))  # fmt: skip
                    if forward:
                        forward_put(D, SH, vcache, stage_io, mio, aux, u(k), t, last, par, base, u(bb), Ugu, u(ju), Hu, u0u, v)
                    else:
                        backward_put(SH, D, vcache, stage_io, mio, aux, u(k), base, u(bb), Ugu, u(ju), Hu, u0u, v)
            else:  # one pass: tpo threads per output, tpo * B * NC <= nth / 2
                o = min(tid // tpo, B * NCi - 1)
                ln = tid - (tid // tpo) * tpo
                bb, k, ju, _j, v = column_output(o, ln, tpo, NCi, Ug, u0, H, M, np.int64(moff), wi, cached, SH, np.int64(cb), Wg,
                                                np.int64(woff), np.int64(ncol))  # fmt: skip
                active = tid < tpo * B * NCi
                v = reduce_split(RED, tid, tpo, ln, v, active)
                if active and ln == 0:
                    if forward:
                        forward_put(D, SH, vcache, stage_io, mio, aux, u(k), t, last, par, base, u(bb), Ugu, u(ju), Hu, u0u, v)
                    else:
                        backward_put(SH, D, vcache, stage_io, mio, aux, u(k), base, u(bb), Ugu, u(ju), Hu, u0u, v)

    @kernel_jit
    def forward_units(ops, info, stage_src, stage_dst, mops, msrc, mdst, mmisc, T, B, H, U, NT, cached, w_n, vcache,
                      split, scratch0, init_at, out_at, update_at, A, P, X, S0, consts, biases, peeps, W, K, Y, ST,
                      bar):  # fmt: skip
        """The forward over the whole sequence for the block's units: fills the tape A, K, the
        outputs Y [T, B, H] and the final states ST [n_states, B, H] (their units)."""
        SH = cuda.shared.array(SHN, dt)
        RED = cuda.shared.array(NRED, dt)  # split dot products' partial sums (and the simulator's warp sums)
        acc = cuda.local.array(NACC, dt)  # warp dot products: partial sums,
        kv = cuda.local.array(NKV, dt)  # the loaded elements of the sources,
        cbs = cuda.local.array(CM, np.uint64)  # where the columns' weights start
        tid = cuda.threadIdx.x
        nth = cuda.blockDim.x
        nblk = cuda.gridDim.x
        g0 = cuda.blockIdx.x * U
        gstep = nblk * U
        Bu, Hu, g0u, Ug1, Eb, Eu, tidu, nthu, bb0, ju0, dbb, dju = geometry(B, H, U, g0, tid, nth)
        v_at = u(w_n)
        NXu = u(mmisc[M_NX])  # the input projection's blocks mirrored after the scratch values (0: none, where they do not fit)
        p_at = v_at + u(2 * NT + (A.shape[0] - scratch0) // (B * H)) * Eu
        if cached:
            load_cache(SH, W, info, H, g0, min(U, H - g0), True, tid, nth)
            cuda.syncthreads()
        nbar = 0
        for s in range(init_at.shape[0]):  # initial states read in place from tape step 0
            off = init_at[s]
            if off >= 0:
                if vcache:
                    si = v_at + u(mmisc[M_STATE + s * M_STRIDE + 2])
                    idx, bb, ju = tidu, bb0, ju0
                    while idx < Eb:
                        f = bb * Hu + g0u + ju
                        x0 = S0[s, f]
                        A[u(off) + f] = x0
                        SH[si + idx] = x0
                        idx += nthu
                        bb, ju = advance(bb, ju, dbb, dju, Ug1)
                    continue
                for u0 in range(g0, H, gstep):
                    Ug = min(U, H - u0)
                    for idx in range(tid, B * Ug, nth):
                        bb, j = element(idx, Ug, u0)
                        f = bb * H + j
                        A[off + f] = S0[s, f]
        for t in range(T):
            tu = u(t)
            par = t & 1
            pc = u(par * 4)  # mops' columns for the step's parity
            last = t == T - 1
            if vcache:  # the step's input projection, all its blocks' loads in flight at once
                idx, bb, ju = tidu, bb0, ju0
                while idx < Eb:
                    gather_row(SH, p_at + idx, Eu, P, (tu * Bu + bb, g0u + ju), Hu, NXu, kv)
                    idx += nthu
                    bb, ju = advance(bb, ju, dbb, dju, Ug1)
            r = -1  # a while loop: the cell's own code (``fused``) moves r past a whole segment
            while r + 1 < ops.shape[0]:
                r += 1
                code = ops[r, C_CODE]
                aux = ops[r, C_AUX]
                dm = ops[r, C_DM]
                d = ops[r, C_DC] + t * dm
                if code == OP_GEMM:
                    ns = u(info[aux, I_NS])
                    nk = u(info[aux, I_NK])
                    width = ns * Hu
                    koff = u(info[aux, I_K]) + tu * Bu * width
                    if vcache:  # the block's units of the sources, packed
                        for i in range(u(0), ns, u(1)):
                            pack(K, koff + i * Hu + g0u, width, SH, v_at + u(msrc[aux, i, par]), tidu, bb0, ju0, Eb, nthu, dbb,
                                 dju, Ug1)  # fmt: skip
                    else:
                        wi = info[aux, I_NS] * H
                        for i in range(info[aux, I_NS]):
                            pack_global(
                                K,
                                info[aux, I_K] + t * B * wi + i * H,
                                wi,
                                A,
                                stage_src[aux, i, S_C] + t * stage_src[aux, i, S_M],
                                g0,
                                gstep,
                                U,
                                B,
                                H,
                                tid,
                                nth,
                            )
                    nbar += 1
                    barrier(bar, nbar * nblk)  # every unit of K is there
                    cpre = u(cache_base(info, aux, H, 1))
                    stage_outputs(True, acc, kv, cbs, K, koff, width, nk * Hu, u(info[aux, I_W]), nk, aux, cpre, cached, split,
                                  SH, W, RED, U, B, H, tu, last, par, v_at, vcache, A, stage_dst, mdst)  # fmt: skip
                    cuda.syncthreads()  # columns were computed by other threads than the units' own
                    continue
                flag = ops[r, C_BG]
                if vcache:
                    if FUSED:  # the segment that starts at op r, as the cell's own code; on to the op after it
                        r = fwd_segment(r, tu, par, last, SH, A, ops, v_at, Eu, g0u, tidu, bb0, ju0, Eb, nthu, dbb, dju, Ug1, Bu,
                                        Hu, X, P, S0, consts, biases, peeps) - 1  # fmt: skip
                        continue
                    if tidu >= Eb:  # (a thread with no elements: the block has more threads than elements)
                        continue
                    dv = v_at + u(mops[r, pc])
                    av = v_at + u(mops[r, pc + u(1)])
                    bv = v_at + u(mops[r, pc + u(2)])
                    cv = v_at + u(mops[r, pc + u(3)])
                    tape = dm != 0 or (last and d >= scratch0)  # the tape; the last step's scratch values too
                    du = u(d) + g0u
                    auxu = u(aux)
                    idx, bb, ju = tidu, bb0, ju0
                    while idx < Eb:
                        if code == OP_LOADP and NXu > 0:  # from the step's input projection, mirrored above
                            SH[dv + idx] = SH[av + idx]
                        else:
                            forward_op(code, auxu, flag, tu, SH, dv, av, bv, cv, idx, bb, g0u + ju, Bu, Hu, X, P, S0, consts,
                                       biases, peeps)  # fmt: skip
                        if tape:
                            A[du + bb * Hu + ju] = SH[dv + idx]
                        idx += nthu
                        bb, ju = advance(bb, ju, dbb, dju, Ug1)
                    continue
                a = ops[r, C_AC] + t * ops[r, C_AM]
                b = ops[r, C_BC] + t * ops[r, C_BM]
                c = ops[r, C_CC] + t * ops[r, C_CM]
                for u0 in range(g0, H, gstep):
                    Ug = min(U, H - u0)
                    for idx in range(tid, B * Ug, nth):
                        bb, j = element(idx, Ug, u0)
                        forward_op(code, aux, flag, t, A, d, a, b, c, bb * H + j, bb, j, B, H, X, P, S0, consts, biases, peeps)
            if vcache:  # the step's output
                unmirror(Y, t, SH, v_at + u(mmisc[M_OUT + par]), g0u, tidu, bb0, ju0, Eb, nthu, dbb, dju, Ug1)
            else:
                from_arena(Y, t, A, out_at[0] + t * out_at[1], g0, gstep, U, B, H, tid, nth)
        for s in range(update_at.shape[0]):  # the final states
            if vcache:
                m = M_STATE + s * M_STRIDE + ((T - 1) & 1)
                unmirror(ST, s, SH, v_at + u(mmisc[m]), g0u, tidu, bb0, ju0, Eb, nthu, dbb, dju, Ug1)
            else:
                from_arena(ST, s, A, update_at[s, 0] + (T - 1) * update_at[s, 1], g0, gstep, U, B, H, tid, nth)

    @kernel_jit
    def backward_units(ops, info, stage_src, stage_dst, mops, msrc, mdst, mmisc, T, B, H, U, NT, cached, w_n, vcache,
                       split, scratch0, A, state_g, update_g, output_g, dOut, dS, peeps, WT, DZ, G, dP, dX, dBr, dPeepr,
                       bar):  # fmt: skip
        """The reverse walk for the block's units, as ``backward_loop`` (dX comes in zeroed)."""
        SH = cuda.shared.array(SHN, dt)
        RED = cuda.shared.array(NRED, dt)  # split dot products' partial sums (and the simulator's warp sums)
        acc = cuda.local.array(NACC, dt)  # warp dot products: partial sums,
        kv = cuda.local.array(NKV, dt)  # the loaded elements of the sources,
        cbs = cuda.local.array(CM, np.uint64)  # where the columns' weights start
        tid = cuda.threadIdx.x
        nth = cuda.blockDim.x
        nblk = cuda.gridDim.x
        g0 = cuda.blockIdx.x * U
        gstep = nblk * U
        BH = B * H
        tmul = NT * BH
        nS = dS.shape[0]
        NG = G.shape[0] // BH
        NS = (A.shape[0] - scratch0) // BH
        Bu, Hu, g0u, Ug1, Eb, Eu, tidu, nthu, bb0, ju0, dbb, dju = geometry(B, H, U, g0, tid, nth)
        BHu = u(BH)
        NTu = u(NT)
        v_at = u(w_n)
        g_at = v_at + u(2 * NT + NS) * Eu  # the mirror: two tape steps, the scratch values, the step's gradients
        if cached:
            load_cache(SH, WT, info, H, g0, min(U, H - g0), False, tid, nth)
            cuda.syncthreads()
        nbar = 0
        if vcache:  # the scratch values the backward reads hold the same at every step (constants, biases)
            idx, bb, ju = tidu, bb0, ju0
            while idx < Eb:
                gather(SH, v_at + u(2 * NT) * Eu + idx, Eu, A, u(scratch0) + bb * Hu + g0u + ju, BHu, u(NS), kv)
                idx += nthu
                bb, ju = advance(bb, ju, dbb, dju, Ug1)
        for u0 in range(g0, H, gstep):
            Ug = min(U, H - u0)
            for idx in range(tid, B * Ug, nth):
                bb, j = element(idx, Ug, u0)
                for aux in range(dBr.shape[1] // H):
                    dBr[bb, aux * H + j] = zero
                for aux in range(dPeepr.shape[1] // H):
                    dPeepr[bb, aux * H + j] = zero
        for t in range(T - 1, -1, -1):
            tu = u(t)
            par = t & 1
            pc = u(par * 4)
            if vcache:  # tape step t (and t + 1 the first time) into the mirror; the step's gradients
                cur = v_at + u(par) * NTu * Eu
                nxt = v_at + u(1 - par) * NTu * Eu
                og = g_at + u(mmisc[M_OUTG])
                idx, bb, ju = tidu, bb0, ju0
                while idx < Eb:
                    j = g0u + ju
                    e = bb * Hu + j
                    at = tu * u(tmul) + e
                    if t == T - 1:
                        gather(SH, nxt + idx, Eu, A, at + u(tmul), BHu, NTu, kv)
                    gather(SH, cur + idx, Eu, A, at, BHu, NTu, kv)
                    for slot in range(u(0), u(NG), u(1)):
                        SH[g_at + slot * Eu + idx] = zero
                    SH[og + idx] += dOut[t, bb, j]
                    for s in range(nS):
                        SH[g_at + u(mmisc[M_STATE + s * M_STRIDE + 4]) + idx] += dS[s, e]
                        if state_g[s] < 0:
                            dS[s, e] = zero
                    idx += nthu
                    bb, ju = advance(bb, ju, dbb, dju, Ug1)
            else:
                for u0 in range(g0, H, gstep):
                    Ug = min(U, H - u0)
                    for idx in range(tid, B * Ug, nth):
                        bb, j = element(idx, Ug, u0)
                        e = bb * H + j
                        for slot in range(NG):
                            G[slot * BH + e] = zero
                        G[output_g + e] += dOut[t, bb, j]
                        for s in range(nS):
                            G[update_g[s] + e] += dS[s, e]
                            if state_g[s] < 0:
                                dS[s, e] = zero
            r = ops.shape[0]  # (a while loop, as in the forward)
            while r > 0:
                r -= 1
                code = ops[r, C_CODE]
                aux = ops[r, C_AUX]
                if code == OP_GEMM:
                    ns = u(info[aux, I_NS])
                    nk = u(info[aux, I_NK])
                    width = nk * Hu
                    zoff = u(info[aux, I_Z]) + tu * Bu * width
                    if vcache:  # the block's units of the destinations' gradients, packed
                        for k in range(u(0), nk, u(1)):
                            pack(DZ, zoff + k * Hu + g0u, width, SH, g_at + u(mdst[aux, k, 2]), tidu, bb0, ju0, Eb, nthu, dbb,
                                 dju, Ug1)  # fmt: skip
                    else:
                        wi = info[aux, I_NK] * H
                        for k in range(info[aux, I_NK]):
                            pack_global(
                                DZ,
                                info[aux, I_Z] + t * B * wi + k * H,
                                wi,
                                G,
                                stage_dst[aux, k, S_G],
                                g0,
                                gstep,
                                U,
                                B,
                                H,
                                tid,
                                nth,
                            )
                    nbar += 1
                    barrier(bar, nbar * nblk)
                    cpre = u(cache_base(info, aux, H, 1))
                    stage_outputs(False, acc, kv, cbs, DZ, zoff, width, ns * Hu, u(info[aux, I_W]), ns, aux, cpre, cached, split,
                                  SH, WT, RED, U, B, H, tu, False, par, g_at, vcache, G, stage_src, msrc)  # fmt: skip
                    cuda.syncthreads()
                    continue
                if FUSED and vcache:  # the segment that ends at op r, as the cell's own code; on to the op before it
                    r = bwd_segment(r, tu, par, SH, v_at, g_at, Eu, g0u, tidu, bb0, ju0, Eb, nthu, dbb, dju, Ug1, Bu, Hu, dS, dX,
                                    dP, dBr, dPeepr, peeps)  # fmt: skip
                    continue
                if code == OP_CONST:
                    continue
                if vcache:
                    if tidu >= Eb:
                        continue
                    dv = v_at + u(mops[r, pc])
                    av = v_at + u(mops[r, pc + u(1)])
                    bv = v_at + u(mops[r, pc + u(2)])
                    cv = v_at + u(mops[r, pc + u(3)])
                    gdv = g_at + u(mops[r, 8])
                    gav = g_at + u(mops[r, 9])
                    gbv = g_at + u(mops[r, 10])
                    gcv = g_at + u(mops[r, 11])
                    auxu = u(aux)
                    idx, bb, ju = tidu, bb0, ju0
                    while idx < Eb:
                        backward_op(code, auxu, tu, SH, SH, gdv, gav, gbv, gcv, dv, av, bv, cv, idx, bb, g0u + ju, Bu, Hu, dS, dX,
                                    dP, dBr, dPeepr, peeps)  # fmt: skip
                        idx += nthu
                        bb, ju = advance(bb, ju, dbb, dju, Ug1)
                    continue
                gd, ga, gb, gc = op_grads(ops, r)
                d, a, b, c = op_at(ops, r, t)
                for u0 in range(g0, H, gstep):
                    Ug = min(U, H - u0)
                    for idx in range(tid, B * Ug, nth):
                        bb, j = element(idx, Ug, u0)
                        backward_op(code, aux, t, A, G, gd, ga, gb, gc, d, a, b, c, bb * H + j, bb, j, B, H, dS, dX, dP, dBr,
                                    dPeepr, peeps)  # fmt: skip

    @cuda.jit(cache=True)
    def barriers(n, bar):
        """n grid barriers and nothing else: what one costs (``gpu/breakdown.py --probes``)."""
        for i in range(n):
            barrier(bar, (i + 1) * cuda.gridDim.x)

    return SimpleNamespace(forward_units=forward_units, backward_units=backward_units, barriers=barriers)


@lru_cache(maxsize=16)
def kernels(dtype: np.dtype, rows: int, unroll: int = 4) -> SimpleNamespace:
    """The time-loop kernels and helpers for one dtype (float32 or float64) and ``rows`` batch rows
    per block (a constant, so that the GEMM accumulators stay in registers); ``unroll`` (4 or 8)
    weights in flight in a GEMM stage's dot products."""
    dt = from_dtype(np.dtype(dtype))
    typ = np.dtype(dtype).type
    zero = typ(0)
    R = rows
    UN = unroll
    # unsigned indices in the GEMM stages' dot products on the GPU (the simulator's Python ints need none)
    u = int if bool(getattr(numba_config, "ENABLE_CUDASIM", 0)) else np.uint64
    elem = element_ops(np.dtype(dtype))
    forward_op = elem.forward_op
    backward_op = elem.backward_op
    op_at = elem.op_at
    op_grads = elem.op_grads

    @cuda.jit(device=True, inline="always")
    def column_dot(acc, rows, M, moff, Wm, col, ncol, width, r0, last):
        """acc[q] = sum over i < width of M[moff + row_q * width + i] * Wm[col + i * ncol] for the
        block's R rows (row_q = min(r0 + q, last)): one output column of a GEMM stage, each weight
        read serving R rows. ``unroll`` weights are in flight at a time (the loop is bound by the
        latency of its loads, not by arithmetic); the loops over them have constant trip counts, so
        the weights stay in registers. Indices unsigned (no negative-index tests), the rows' offsets
        found once (``rows``: R registers). Inlined in Numba's IR (``inline="always"``): the
        kernels' PTX is the loop written out in each, so acc stays in registers, and compile_ptx
        needs no GPU (a device function compiled on its own asks the driver for the device)."""
        wv = cuda.local.array(UN, dt)
        for q in range(R):
            acc[q] = zero
            rows[q] = moff + min(r0 + u(q), last) * width
        n = width - width % u(UN)
        for i in range(u(0), n, u(UN)):
            wb = col + i * ncol
            for w in range(UN):
                wv[w] = Wm[wb + u(w) * ncol]
            for q in range(R):
                mr = rows[q] + i
                v = acc[q]
                for w in range(UN):
                    v += M[mr + u(w)] * wv[w]
                acc[q] = v
        for i in range(n, width):
            wt = Wm[col + i * ncol]
            for q in range(R):
                acc[q] += M[rows[q] + i] * wt

    @cuda.jit(cache=True)
    def forward_loop(ops, info, stage_src, stage_dst, T, B, H, init_at, out_at, update_at, A, P, X, S0, consts, biases,
                     peeps, W, K, Y, ST):  # fmt: skip
        """The forward over the whole sequence for rows [blockIdx.x * R, +R): fills the tape A, the
        packed GEMM sources K, the outputs Y [T, B, H] and the final states ST [n_states, B, H]."""
        acc = cuda.local.array(R, dt)
        rows = cuda.local.array(R, np.uint64)  # the block's rows' offsets in a GEMM stage's sources
        tid = cuda.threadIdx.x
        nth = cuda.blockDim.x
        r0 = cuda.blockIdx.x * R
        r1 = min(r0 + R, B)
        last = B - 1  # a partial last block computes its missing rows on copies of the last row
        for s in range(init_at.shape[0]):  # initial states read in place from tape step 0
            off = init_at[s]
            if off >= 0:
                for j in range(tid, H, nth):
                    for bb in range(r0, r1):
                        A[off + bb * H + j] = S0[s, bb * H + j]
        for t in range(T):
            for r in range(ops.shape[0]):
                code = ops[r, C_CODE]
                aux = ops[r, C_AUX]
                d, a, b, c = op_at(ops, r, t)
                if code == OP_GEMM:
                    ns = info[aux, I_NS]
                    nk = info[aux, I_NK]
                    woff = info[aux, I_W]
                    width = ns * H
                    ncol = nk * H
                    koff = info[aux, I_K] + t * B * width
                    for i in range(ns):
                        src = stage_src[aux, i, S_C] + t * stage_src[aux, i, S_M]
                        for j in range(tid, H, nth):
                            for bb in range(r0, r1):
                                K[koff + bb * width + i * H + j] = A[src + bb * H + j]
                    cuda.syncthreads()  # the block's rows of K are complete
                    for kj in range(tid, ncol, nth):  # a thread per output column: (destination k, unit j)
                        k = kj // H
                        j = kj - k * H
                        dd = stage_dst[aux, k, S_C] + t * stage_dst[aux, k, S_M]
                        col = woff + kj
                        column_dot(acc, rows, K, u(koff), W, u(col), u(ncol), u(width), u(r0), u(last))
                        for q in range(R):
                            if r0 + q < B:
                                A[dd + (r0 + q) * H + j] += acc[q]
                    cuda.syncthreads()  # columns were computed by other threads than the units' own
                    continue
                flag = ops[r, C_BG]
                du, au, bu, cu, auxu, tu, Hu, Bu = u(d), u(a), u(b), u(c), u(aux), u(t), u(H), u(B)
                for j in range(u(tid), Hu, u(nth)):  # unsigned: no negative-index tests
                    for bb in range(u(r0), u(r1)):
                        forward_op(code, auxu, flag, tu, A, du, au, bu, cu, bb * Hu + j, bb, j, Bu, Hu, X, P, S0, consts, biases,
                                   peeps)  # fmt: skip
            o = out_at[0] + t * out_at[1]
            for j in range(tid, H, nth):
                for bb in range(r0, r1):
                    Y[t, bb, j] = A[o + bb * H + j]
        for s in range(update_at.shape[0]):
            uo = update_at[s, 0] + (T - 1) * update_at[s, 1]
            for j in range(tid, H, nth):
                for bb in range(r0, r1):
                    ST[s, bb, j] = A[uo + bb * H + j]

    @cuda.jit(cache=True)
    def backward_loop(ops, info, stage_src, stage_dst, T, B, H, A, state_g, update_g, output_g, dOut, dS, peeps, WT, DZ, G,
                      dP, dX, dBr, dPeepr):  # fmt: skip
        """The reverse walk for rows [blockIdx.x * R, +R). dS [n_states, B*H] comes in holding the
        final states' gradients and leaves holding the initial states'; dP [T*B, NX*H] and DZ are
        filled, dX [T, B, I] gets x's elementwise uses, dBr [B, nb*H] and dPeepr [B, np*H] the
        biases' and peepholes' gradients per element (all three zeroed here first). G holds one
        step's gradients, a slot per node."""
        acc = cuda.local.array(R, dt)
        rows = cuda.local.array(R, np.uint64)  # the block's rows' offsets in a GEMM stage's sources
        tid = cuda.threadIdx.x
        nth = cuda.blockDim.x
        r0 = cuda.blockIdx.x * R
        r1 = min(r0 + R, B)
        last = B - 1  # a partial last block computes its missing rows on copies of the last row
        BH = B * H
        nS = dS.shape[0]
        for bb in range(r0, r1):  # the accumulated outputs start at 0 (each element by the thread that adds to it)
            for j in range(tid, dX.shape[2], nth):
                for t in range(T):
                    dX[t, bb, j] = zero
            for aux in range(dBr.shape[1] // H):
                for j in range(tid, H, nth):
                    dBr[bb, aux * H + j] = zero
            for aux in range(dPeepr.shape[1] // H):
                for j in range(tid, H, nth):
                    dPeepr[bb, aux * H + j] = zero
        for t in range(T - 1, -1, -1):
            for slot in range(G.shape[0] // BH):
                for j in range(tid, H, nth):
                    for bb in range(r0, r1):
                        G[slot * BH + bb * H + j] = zero
            for j in range(tid, H, nth):
                for bb in range(r0, r1):
                    e = bb * H + j
                    G[output_g + e] += dOut[t, bb, j]
                    for s in range(nS):
                        G[update_g[s] + e] += dS[s, e]
                        if state_g[s] < 0:
                            dS[s, e] = zero
            for r in range(ops.shape[0] - 1, -1, -1):
                code = ops[r, C_CODE]
                aux = ops[r, C_AUX]
                gd, ga, gb, gc = op_grads(ops, r)
                d, a, b, c = op_at(ops, r, t)
                if code == OP_GEMM:
                    ns = info[aux, I_NS]
                    nk = info[aux, I_NK]
                    woff = info[aux, I_W]
                    width = nk * H
                    ncol = ns * H
                    zoff = info[aux, I_Z] + t * B * width
                    for k in range(nk):
                        src = stage_dst[aux, k, S_G]
                        for j in range(tid, H, nth):
                            for bb in range(r0, r1):
                                DZ[zoff + bb * width + k * H + j] = G[src + bb * H + j]
                    cuda.syncthreads()  # the block's rows of DZ are complete
                    for ij in range(tid, ncol, nth):  # a thread per output column: (source i, unit j)
                        i = ij // H
                        j = ij - i * H
                        dst = stage_src[aux, i, S_G]
                        col = woff + ij
                        column_dot(acc, rows, DZ, u(zoff), WT, u(col), u(ncol), u(width), u(r0), u(last))
                        for q in range(R):
                            if r0 + q < B:
                                G[dst + (r0 + q) * H + j] += acc[q]
                    cuda.syncthreads()  # as in the forward
                    continue
                if code == OP_CONST:
                    continue
                gdu, gau, gbu, gcu = u(gd), u(ga), u(gb), u(gc)
                du, au, bu, cu, auxu, tu, Hu, Bu = u(d), u(a), u(b), u(c), u(aux), u(t), u(H), u(B)
                for j in range(u(tid), Hu, u(nth)):  # unsigned: no negative-index tests
                    for bb in range(u(r0), u(r1)):
                        backward_op(code, auxu, tu, A, G, gdu, gau, gbu, gcu, du, au, bu, cu, bb * Hu + j, bb, j, Bu, Hu, dS, dX,
                                    dP, dBr, dPeepr, peeps)  # fmt: skip

    @cuda.jit(cache=True)
    def column_sums(M, out):
        """out[n] = sum over rows of M[:, n], one thread per column (rows in order: deterministic)."""
        n = cuda.grid(1)
        if n < M.shape[1]:
            s = zero
            for i in range(M.shape[0]):
                s += M[i, n]
            out[n] = s

    @cuda.jit(cache=True)
    def fill(flat, value):
        i = cuda.grid(1)
        if i < flat.shape[0]:
            flat[i] = value

    return SimpleNamespace(
        forward_loop=forward_loop,
        backward_loop=backward_loop,
        column_sums=column_sums,
        fill=fill,
        zero=zero,
        dt=dt,
    )
