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
#: the layout of the units schedule's misc mirror table: the output's (slot, parity), its gradient
#: slot, then per state (update slot, update parity, initial slot, leaf's gradient slot, update's
#: gradient slot)
M_OUT, M_OUTG, M_STATE, M_STRIDE = 0, 2, 3, 5


def shared_elements(dtype: np.dtype) -> int:
    return SHARED_BYTES // np.dtype(dtype).itemsize


#: warp dot products (``unit_kernels(warp=True)``): output columns a warp's pass computes at once
#: (accumulators per row in registers), the rows of a pass, and loads in flight per row per lane
WARP_COLS = 8
WARP_ROWS = (1, 2, 4)
WARP_LOADS = (4, 8, 16)
WARP_INFLIGHT = 16  # rows x loads: more, and NVVM leaves the loaded elements in local memory


@lru_cache(maxsize=16)
def unit_kernels(
    dtype: np.dtype, cooperative: bool, unroll: int = 4, warp: bool = False, wrows: int = 2, wloads: int = 8
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
    elements at 0), and after them the **mirror** (``vcache``): its elements of every value of the step (the taped
    values of tape steps t and t+1 by parity, then the scratch values) — ops read and write it
    instead of the arena in global memory, and write the tape (and at the last step the scratch
    values) for the backward; the backward mirrors the two tape steps it reads and the scratch values
    (those it reads are the same at every step: constants, biases) and keeps the step's gradients
    there. ``mops``/``msrc``/``mdst``/``mmisc`` give every operand's mirror slot
    (``kernel.mirror_tables``). What does not fit goes through global memory.

    A GEMM stage's outputs: with ``warp``, **warp dot products** — a warp takes ``wrows`` batch rows
    at a time and its 32 lanes split the inner dimension (consecutive lanes, consecutive elements of
    a source row: coalesced loads, ``wloads`` of them in flight per row and lane), each lane keeping
    partial sums for up to ``WARP_COLS`` of the block's output columns, so every element loaded
    serves all of them; the partial sums are then added across the lanes by an xor butterfly, in
    the same order on every run (every lane ends with the same, bitwise, sums), and the outputs are
    spread over the lanes to be stored. The weights cached in shared memory are then stored a column
    after another (lanes read consecutive words: no bank conflicts). The block needs 32 threads a
    warp (the host launches a multiple of 32). Without ``warp``, a thread per output (or ``split``
    threads, see ``split_of``) with ``unroll`` terms in flight.

    The barrier: ``cooperative`` uses cooperative groups' grid sync (a cooperative launch, linking
    libcudadevrt); otherwise a counter in global memory (``bar``, zeroed before the launch) that
    every block increments and thread 0 of each spins on. Either needs every block resident at
    once: the host launches at most one block per multiprocessor."""
    dt = from_dtype(np.dtype(dtype))
    typ = np.dtype(dtype).type
    zero = typ(0)
    SHN = shared_elements(np.dtype(dtype))
    UN = unroll
    WARP = warp
    CM = WARP_COLS
    RP = wrows
    WL = wloads
    NACC = RP * CM  # local arrays' sizes must be single constants; a lane stores at most one output: NACC <= 32
    NKV = RP * WL
    elem = element_ops(np.dtype(dtype))
    forward_op = elem.forward_op
    backward_op = elem.backward_op
    op_at = elem.op_at
    op_grads = elem.op_grads

    SIM = bool(getattr(numba_config, "ENABLE_CUDASIM", 0))
    NRED = MAX_RED * RP * CM if SIM and WARP else MAX_RED

    if SIM:  # no warp shuffles in the simulator: the same sums through shared memory, two barriers a pass

        @cuda.jit(device=True, inline="always")
        def warp_sums(acc, RED, tid, lane, ncols):
            """Sum x = lane (x = q * CM + c, c < ncols; NACC <= 32) of acc over the thread's warp:
            each lane stores the output whose index is its own. Added pairwise as the GPU's
            butterfly (below) adds them; every thread of the block calls it."""
            nth = cuda.blockDim.x
            for x in range(RP * CM):
                RED[x * nth + tid] = acc[x]
            cuda.syncthreads()
            base = tid - lane
            mine = zero
            x = lane
            if x < RP * CM and x % CM < ncols:
                vals = cuda.local.array(32, dt)
                for L in range(32):
                    vals[L] = RED[x * nth + base + L]
                off = 16
                while off > 0:  # lane L adds lane L ^ off's: lane 0's sums, which every lane ends with
                    for L in range(off):
                        vals[L] = vals[L] + vals[L + off]
                    off //= 2
                mine = vals[0]
            cuda.syncthreads()
            return mine

    else:

        @cuda.jit(device=True, inline="always")
        def warp_sums(acc, RED, tid, lane, ncols):
            """Each acc[x] (c < ncols) summed over the warp by an xor butterfly — lane L adds lane L ^
            off's value for off = 16, 8, 4, 2, 1, so partners compute the same sum (addition
            commutes) and every lane ends with the same, whatever the run; returns sum x = lane."""
            mine = zero
            for x in range(RP * CM):
                if x % CM < ncols:
                    v = acc[x]
                    off = 16
                    while off > 0:
                        v = v + cuda.shfl_xor_sync(0xFFFFFFFF, v, off)
                        off //= 2
                    if x == lane:  # a select, not an index: acc stays in registers
                        mine = v
            return mine

    @cuda.jit(device=True, inline="always")
    def warp_dot(acc, kv, cbs, M, moff, width, rb, last, Wv, istride, ncols, lane):
        """acc[q * CM + c] = this lane's part of sum over i < width of M[moff + row_q * width + i] *
        Wv[cbs[c] + i * istride] for rows row_q = min(rb + q, last), q < RP, and columns c < ncols:
        the lane's terms are i = lane (mod 32), WL of them loaded at once per row (constant trip
        counts: acc, kv and cbs stay in registers)."""
        for x in range(RP * CM):
            acc[x] = zero
        for i0 in range(0, width, 32 * WL):
            for q in range(RP):
                mr = moff + min(rb + q, last) * width
                for u in range(WL):
                    i = i0 + u * 32 + lane
                    kv[q * WL + u] = M[mr + i] if i < width else zero
            for u in range(WL):
                i = i0 + u * 32 + lane
                if i < width:
                    for c in range(CM):
                        if c < ncols:
                            w = Wv[cbs[c] + i * istride]
                            for q in range(RP):
                                acc[q * CM + c] += kv[q * WL + u] * w

    @cuda.jit(device=True, inline="always")
    def warp_outputs(acc, kv, cbs, M, moff, width, rb, last, cached, SH, Wg, wstride, ncols, RED, tid, lane):
        """One warp pass of a GEMM stage: rows rb.. of M times the columns in cbs (the block's
        cached weights, or the global matrix Wg whose rows are ``wstride`` apart), summed across
        the warp; returns the sum this lane stores (``warp_sums``). Every thread calls it."""
        if cached:
            warp_dot(acc, kv, cbs, M, moff, width, rb, last, SH, 1, ncols, lane)
        else:
            warp_dot(acc, kv, cbs, M, moff, width, rb, last, Wg, wstride, ncols, lane)
        return warp_sums(acc, RED, tid, lane, ncols)

    @cuda.jit(device=True, inline="always")
    def warp_columns(cbs, c0, Ug, u0, H, cached, cb, width, woff):
        """cbs[c]: where column c0 + c (output k = cc // Ug, unit u0 + cc % Ug) of a stage's weights
        starts — in the block's cache (a column after another, ``width`` long) or in the global
        matrix (from its row 0)."""
        for c in range(CM):
            cc = c0 + c
            k = cc // Ug
            cbs[c] = cb + cc * width if cached else woff + k * H + u0 + cc - k * Ug

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
        for u in range(UN):
            s[u] = zero
        n = width - width % UN
        for i in range(0, n, UN):
            w = woff + i * wstride
            m = moff + i * mstep
            for u in range(UN):
                s[u] += M[m + u * mstep] * Wv[w + u * wstride]
        for i in range(n, width):
            s[0] += M[moff + i * mstep] * Wv[woff + i * wstride]
        h = 1
        while h < UN:  # ((s0 + s1) + (s2 + s3)) + ...
            for u in range(0, UN, 2 * h):
                s[u] += s[u + h]
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
        """(batch row, unit) of element idx of a group of Ug units from u0 (row-major: the mirror's order)."""
        bb = idx // Ug
        return bb, u0 + idx - bb * Ug

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
    def forward_put(A, SH, vcache, stage_dst, mdst, aux, k, t, T, NT, v_at, E, bb, Ug, ju, j, H, v):
        """Add a forward GEMM stage's output v to destination k's element (bb, j): in the mirror,
        writing the tape through (and the last step's scratch), or in the arena."""
        dd = stage_dst[aux, k, S_C] + t * stage_dst[aux, k, S_M] + bb * H + j
        if vcache:
            vi = v_at + mslot(mdst[aux, k, 0], mdst[aux, k, 1], t, NT) * E + bb * Ug + ju
            nv = SH[vi] + v
            SH[vi] = nv
            if stage_dst[aux, k, S_M] != 0 or t == T - 1:  # taped, or the last step's scratch
                A[dd] = nv
        else:
            A[dd] += v

    @cuda.jit(device=True, inline="always")
    def backward_put(SH, G, vcache, stage_src, msrc, aux, i, g_at, E, bb, Ug, ju, j, H, v):
        """Add a backward GEMM stage's output v to source i's gradient at (bb, j)."""
        if vcache:
            SH[g_at + msrc[aux, i, 2] * E + bb * Ug + ju] += v
        else:
            G[stage_src[aux, i, S_G] + bb * H + j] += v

    @cuda.jit(device=True, inline="always")
    def mslot(s, par, t, NT):
        """The mirror slot of a value: a taped one (par 0 or 1: tape step t + par) by the tape step's
        parity; a scratch one (par -1) as it is."""
        return s + ((t + par) & 1) * NT if par >= 0 else s

    @cuda.jit(cache=True)
    def forward_units(ops, info, stage_src, stage_dst, mops, msrc, mdst, mmisc, T, B, H, U, NT, cached, w_n, vcache,
                      split, scratch0, init_at, out_at, update_at, A, P, X, S0, consts, biases, peeps, W, K, Y, ST,
                      bar):  # fmt: skip
        """The forward over the whole sequence for the block's units: fills the tape A, K, the
        outputs Y [T, B, H] and the final states ST [n_states, B, H] (their units)."""
        SH = cuda.shared.array(SHN, dt)
        RED = cuda.shared.array(NRED, dt)  # split dot products' partial sums (and the simulator's warp sums)
        acc = cuda.local.array(NACC, dt)  # warp dot products: partial sums,
        kv = cuda.local.array(NKV, dt)  # the loaded elements of the sources,
        cbs = cuda.local.array(CM, np.int64)  # where the columns' weights start
        tid = cuda.threadIdx.x
        nth = cuda.blockDim.x
        nblk = cuda.gridDim.x
        wid = tid // 32
        lane = tid - wid * 32
        nwarp = nth // 32
        g0 = cuda.blockIdx.x * U
        gstep = nblk * U
        v_at = w_n
        E = B * min(U, H - g0)  # the mirror's elements (vcache: the block has one group)
        if cached:
            load_cache(SH, W, info, H, g0, min(U, H - g0), True, tid, nth)
            cuda.syncthreads()
        nbar = 0
        for s in range(init_at.shape[0]):  # initial states read in place from tape step 0
            off = init_at[s]
            if off >= 0:
                si = v_at + mmisc[M_STATE + s * M_STRIDE + 2] * E
                for u0 in range(g0, H, gstep):
                    Ug = min(U, H - u0)
                    for idx in range(tid, B * Ug, nth):
                        bb, j = element(idx, Ug, u0)
                        f = bb * H + j
                        A[off + f] = S0[s, f]
                        if vcache:
                            SH[si + idx] = S0[s, f]
        for t in range(T):
            for r in range(ops.shape[0]):
                code = ops[r, C_CODE]
                aux = ops[r, C_AUX]
                dm = ops[r, C_DM]
                d = ops[r, C_DC] + t * dm
                if code == OP_GEMM:
                    ns = info[aux, I_NS]
                    nk = info[aux, I_NK]
                    woff = info[aux, I_W]
                    width = ns * H
                    ncol = nk * H
                    koff = info[aux, I_K] + t * B * width
                    for u0 in range(g0, H, gstep):  # the block's units of the sources, packed
                        Ug = min(U, H - u0)
                        for i in range(ns):
                            src = stage_src[aux, i, S_C] + t * stage_src[aux, i, S_M]
                            vs = v_at + mslot(msrc[aux, i, 0], msrc[aux, i, 1], t, NT) * E
                            for idx in range(tid, B * Ug, nth):
                                bb, j = element(idx, Ug, u0)
                                K[koff + bb * width + i * H + j] = SH[vs + idx] if vcache else A[src + bb * H + j]
                    nbar += 1
                    barrier(bar, nbar * nblk)  # every unit of K is there
                    for u0 in range(g0, H, gstep):  # the block's output columns, all rows
                        Ug = min(U, H - u0)
                        NC = nk * Ug
                        cb = cache_base(info, aux, H, Ug)
                        if WARP:
                            for c0 in range(0, NC, CM):
                                warp_columns(cbs, c0, Ug, u0, H, cached, cb, width, woff)
                                for p0 in range(0, B, nwarp * RP):
                                    rb = p0 + wid * RP
                                    v = warp_outputs(acc, kv, cbs, K, koff, width, rb, B - 1, cached, SH, W, ncol, NC - c0, RED,
                                                     tid, lane)  # fmt: skip
                                    q = lane // CM  # the lane stores output lane = q * CM + c
                                    c = lane - q * CM
                                    if lane < NACC and c < NC - c0 and rb + q < B:
                                        k = (c0 + c) // Ug
                                        ju = c0 + c - k * Ug
                                        forward_put(A, SH, vcache, stage_dst, mdst, aux, k, t, T, NT, v_at, E, rb + q, Ug, ju,
                                                    u0 + ju, H, v)  # fmt: skip
                            continue
                        tpo = split_of(split, B * NC, nth)
                        if tpo == 1:
                            for o in range(tid, B * NC, nth):
                                bb, k, ju, j, v = column_output(o, 0, 1, NC, Ug, u0, H, K, koff, width, cached, SH, cb, W, woff,
                                                                ncol)  # fmt: skip
                                forward_put(A, SH, vcache, stage_dst, mdst, aux, k, t, T, NT, v_at, E, bb, Ug, ju, j, H, v)
                        else:  # one pass: tpo threads per output, tpo * B * NC <= nth / 2
                            o = min(tid // tpo, B * NC - 1)
                            lane = tid - (tid // tpo) * tpo
                            bb, k, ju, j, v = column_output(o, lane, tpo, NC, Ug, u0, H, K, koff, width, cached, SH, cb, W,
                                                            woff, ncol)  # fmt: skip
                            active = tid < tpo * B * NC
                            v = reduce_split(RED, tid, tpo, lane, v, active)
                            if active and lane == 0:
                                forward_put(A, SH, vcache, stage_dst, mdst, aux, k, t, T, NT, v_at, E, bb, Ug, ju, j, H, v)
                    cuda.syncthreads()  # columns were computed by other threads than the units' own
                    continue
                flag = ops[r, C_BG]
                if vcache:
                    Ug = min(U, H - g0)
                    dv = v_at + mslot(mops[r, 0], mops[r, 1], t, NT) * E
                    av = v_at + mslot(mops[r, 2], mops[r, 3], t, NT) * E
                    bv = v_at + mslot(mops[r, 4], mops[r, 5], t, NT) * E
                    cv = v_at + mslot(mops[r, 6], mops[r, 7], t, NT) * E
                    for idx in range(tid, E, nth):
                        bb, j = element(idx, Ug, g0)
                        forward_op(code, aux, flag, t, SH, dv, av, bv, cv, idx, bb, j, B, H, X, P, S0, consts, biases, peeps)
                        if dm != 0 or (t == T - 1 and d >= scratch0):  # the tape; the last step's scratch values too
                            A[d + bb * H + j] = SH[dv + idx]
                    continue
                a = ops[r, C_AC] + t * ops[r, C_AM]
                b = ops[r, C_BC] + t * ops[r, C_BM]
                c = ops[r, C_CC] + t * ops[r, C_CM]
                for u0 in range(g0, H, gstep):
                    Ug = min(U, H - u0)
                    for idx in range(tid, B * Ug, nth):
                        bb, j = element(idx, Ug, u0)
                        forward_op(code, aux, flag, t, A, d, a, b, c, bb * H + j, bb, j, B, H, X, P, S0, consts, biases, peeps)
            o = out_at[0] + t * out_at[1]
            ov = v_at + mslot(mmisc[M_OUT], mmisc[M_OUT + 1], t, NT) * E
            for u0 in range(g0, H, gstep):
                Ug = min(U, H - u0)
                for idx in range(tid, B * Ug, nth):
                    bb, j = element(idx, Ug, u0)
                    Y[t, bb, j] = SH[ov + idx] if vcache else A[o + bb * H + j]
        for s in range(update_at.shape[0]):
            u = update_at[s, 0] + (T - 1) * update_at[s, 1]
            m = M_STATE + s * M_STRIDE
            uv = v_at + mslot(mmisc[m], mmisc[m + 1], T - 1, NT) * E
            for u0 in range(g0, H, gstep):
                Ug = min(U, H - u0)
                for idx in range(tid, B * Ug, nth):
                    bb, j = element(idx, Ug, u0)
                    ST[s, bb, j] = SH[uv + idx] if vcache else A[u + bb * H + j]

    @cuda.jit(cache=True)
    def backward_units(ops, info, stage_src, stage_dst, mops, msrc, mdst, mmisc, T, B, H, U, NT, cached, w_n, vcache,
                       split, scratch0, A, state_g, update_g, output_g, dOut, dS, peeps, WT, DZ, G, dP, dX, dBr, dPeepr,
                       bar):  # fmt: skip
        """The reverse walk for the block's units, as ``backward_loop`` (dX comes in zeroed)."""
        SH = cuda.shared.array(SHN, dt)
        RED = cuda.shared.array(NRED, dt)  # split dot products' partial sums (and the simulator's warp sums)
        acc = cuda.local.array(NACC, dt)  # warp dot products: partial sums,
        kv = cuda.local.array(NKV, dt)  # the loaded elements of the sources,
        cbs = cuda.local.array(CM, np.int64)  # where the columns' weights start
        tid = cuda.threadIdx.x
        nth = cuda.blockDim.x
        nblk = cuda.gridDim.x
        wid = tid // 32
        lane = tid - wid * 32
        nwarp = nth // 32
        g0 = cuda.blockIdx.x * U
        gstep = nblk * U
        BH = B * H
        tmul = NT * BH
        nS = dS.shape[0]
        NG = G.shape[0] // BH
        v_at = w_n
        E = B * min(U, H - g0)
        NS = (A.shape[0] - scratch0) // BH
        g_at = v_at + (2 * NT + NS) * E  # the mirror: two tape steps, the scratch values, the step's gradients
        if cached:
            load_cache(SH, WT, info, H, g0, min(U, H - g0), False, tid, nth)
            cuda.syncthreads()
        nbar = 0
        if vcache:  # the scratch values the backward reads hold the same at every step (constants, biases)
            Ug = min(U, H - g0)
            for idx in range(tid, E, nth):
                bb, j = element(idx, Ug, g0)
                e = bb * H + j
                for s in range(NS):
                    SH[v_at + (2 * NT + s) * E + idx] = A[scratch0 + s * BH + e]
        for u0 in range(g0, H, gstep):
            Ug = min(U, H - u0)
            for idx in range(tid, B * Ug, nth):
                bb, j = element(idx, Ug, u0)
                for aux in range(dBr.shape[1] // H):
                    dBr[bb, aux * H + j] = zero
                for aux in range(dPeepr.shape[1] // H):
                    dPeepr[bb, aux * H + j] = zero
        for t in range(T - 1, -1, -1):
            for u0 in range(g0, H, gstep):
                Ug = min(U, H - u0)
                for idx in range(tid, B * Ug, nth):
                    bb, j = element(idx, Ug, u0)
                    e = bb * H + j
                    if vcache:
                        for s in range(NT):  # tape step t (and t + 1 the first time) into the mirror
                            if t == T - 1:
                                SH[v_at + (((t + 1) & 1) * NT + s) * E + idx] = A[(t + 1) * tmul + s * BH + e]
                            SH[v_at + ((t & 1) * NT + s) * E + idx] = A[t * tmul + s * BH + e]
                        for slot in range(NG):
                            SH[g_at + slot * E + idx] = zero
                        SH[g_at + mmisc[M_OUTG] * E + idx] += dOut[t, bb, j]
                        for s in range(nS):
                            SH[g_at + mmisc[M_STATE + s * M_STRIDE + 4] * E + idx] += dS[s, e]
                            if state_g[s] < 0:
                                dS[s, e] = zero
                        continue
                    for slot in range(NG):
                        G[slot * BH + e] = zero
                    G[output_g + e] += dOut[t, bb, j]
                    for s in range(nS):
                        G[update_g[s] + e] += dS[s, e]
                        if state_g[s] < 0:
                            dS[s, e] = zero
            for r in range(ops.shape[0] - 1, -1, -1):
                code = ops[r, C_CODE]
                aux = ops[r, C_AUX]
                if code == OP_GEMM:
                    ns = info[aux, I_NS]
                    nk = info[aux, I_NK]
                    woff = info[aux, I_W]
                    width = nk * H
                    ncol = ns * H
                    zoff = info[aux, I_Z] + t * B * width
                    for u0 in range(g0, H, gstep):  # the block's units of the destinations' gradients, packed
                        Ug = min(U, H - u0)
                        for k in range(nk):
                            src = stage_dst[aux, k, S_G]
                            gs = g_at + mdst[aux, k, 2] * E
                            for idx in range(tid, B * Ug, nth):
                                bb, j = element(idx, Ug, u0)
                                DZ[zoff + bb * width + k * H + j] = SH[gs + idx] if vcache else G[src + bb * H + j]
                    nbar += 1
                    barrier(bar, nbar * nblk)
                    for u0 in range(g0, H, gstep):  # the block's columns of the sources' gradients
                        Ug = min(U, H - u0)
                        NC = ns * Ug
                        cb = cache_base(info, aux, H, Ug)
                        if WARP:
                            for c0 in range(0, NC, CM):
                                warp_columns(cbs, c0, Ug, u0, H, cached, cb, width, woff)
                                for p0 in range(0, B, nwarp * RP):
                                    rb = p0 + wid * RP
                                    v = warp_outputs(acc, kv, cbs, DZ, zoff, width, rb, B - 1, cached, SH, WT, ncol, NC - c0,
                                                     RED, tid, lane)  # fmt: skip
                                    q = lane // CM
                                    c = lane - q * CM
                                    if lane < NACC and c < NC - c0 and rb + q < B:
                                        i = (c0 + c) // Ug
                                        ju = c0 + c - i * Ug
                                        backward_put(SH, G, vcache, stage_src, msrc, aux, i, g_at, E, rb + q, Ug, ju, u0 + ju,
                                                     H, v)  # fmt: skip
                            continue
                        tpo = split_of(split, B * NC, nth)
                        if tpo == 1:
                            for o in range(tid, B * NC, nth):
                                bb, i, ju, j, v = column_output(o, 0, 1, NC, Ug, u0, H, DZ, zoff, width, cached, SH, cb, WT,
                                                                woff, ncol)  # fmt: skip
                                backward_put(SH, G, vcache, stage_src, msrc, aux, i, g_at, E, bb, Ug, ju, j, H, v)
                        else:
                            o = min(tid // tpo, B * NC - 1)
                            lane = tid - (tid // tpo) * tpo
                            bb, i, ju, j, v = column_output(o, lane, tpo, NC, Ug, u0, H, DZ, zoff, width, cached, SH, cb, WT,
                                                            woff, ncol)  # fmt: skip
                            active = tid < tpo * B * NC
                            v = reduce_split(RED, tid, tpo, lane, v, active)
                            if active and lane == 0:
                                backward_put(SH, G, vcache, stage_src, msrc, aux, i, g_at, E, bb, Ug, ju, j, H, v)
                    cuda.syncthreads()
                    continue
                if code == OP_CONST:
                    continue
                if vcache:
                    Ug = min(U, H - g0)
                    dv = v_at + mslot(mops[r, 0], mops[r, 1], t, NT) * E
                    av = v_at + mslot(mops[r, 2], mops[r, 3], t, NT) * E
                    bv = v_at + mslot(mops[r, 4], mops[r, 5], t, NT) * E
                    cv = v_at + mslot(mops[r, 6], mops[r, 7], t, NT) * E
                    gdv = g_at + mops[r, 8] * E
                    gav = g_at + mops[r, 9] * E
                    gbv = g_at + mops[r, 10] * E
                    gcv = g_at + mops[r, 11] * E
                    for idx in range(tid, E, nth):
                        bb, j = element(idx, Ug, g0)
                        backward_op(code, aux, t, SH, SH, gdv, gav, gbv, gcv, dv, av, bv, cv, idx, bb, j, B, H, dS, dX, dP, dBr,
                                    dPeepr, peeps)  # fmt: skip
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
    elem = element_ops(np.dtype(dtype))
    forward_op = elem.forward_op
    backward_op = elem.backward_op
    op_at = elem.op_at
    op_grads = elem.op_grads

    @cuda.jit(device=True, inline="always")
    def column_dot(acc, M, moff, Wm, col, ncol, width, r0, last):
        """acc[q] = sum over i < width of M[moff + row_q * width + i] * Wm[col + i * ncol] for the
        block's R rows (row_q = min(r0 + q, last)): one output column of a GEMM stage, each weight
        read serving R rows. ``unroll`` weights are in flight at a time (the loop is bound by the
        latency of its loads, not by arithmetic); the loops over them have constant trip counts, so
        the weights stay in registers. Inlined in Numba's IR (``inline="always"``): the kernels' PTX
        is the loop written out in each, so acc stays in registers, and compile_ptx needs no GPU (a
        device function compiled on its own asks the driver for the device)."""
        wv = cuda.local.array(UN, dt)
        for q in range(R):
            acc[q] = zero
        n = width - width % UN
        for i in range(0, n, UN):
            for u in range(UN):
                wv[u] = Wm[col + (i + u) * ncol]
            for q in range(R):
                mr = moff + min(r0 + q, last) * width + i
                v = acc[q]
                for u in range(UN):
                    v += M[mr + u] * wv[u]
                acc[q] = v
        for i in range(n, width):
            w = Wm[col + i * ncol]
            for q in range(R):
                acc[q] += M[moff + min(r0 + q, last) * width + i] * w

    @cuda.jit(cache=True)
    def forward_loop(ops, info, stage_src, stage_dst, T, B, H, init_at, out_at, update_at, A, P, X, S0, consts, biases,
                     peeps, W, K, Y, ST):  # fmt: skip
        """The forward over the whole sequence for rows [blockIdx.x * R, +R): fills the tape A, the
        packed GEMM sources K, the outputs Y [T, B, H] and the final states ST [n_states, B, H]."""
        acc = cuda.local.array(R, dt)
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
                        column_dot(acc, K, koff, W, col, ncol, width, r0, last)
                        for q in range(R):
                            if r0 + q < B:
                                A[dd + (r0 + q) * H + j] += acc[q]
                    cuda.syncthreads()  # columns were computed by other threads than the units' own
                    continue
                for j in range(tid, H, nth):
                    for bb in range(r0, r1):
                        forward_op(code, aux, ops[r, C_BG], t, A, d, a, b, c, bb * H + j, bb, j, B, H, X, P, S0, consts, biases,
                                   peeps)  # fmt: skip
            o = out_at[0] + t * out_at[1]
            for j in range(tid, H, nth):
                for bb in range(r0, r1):
                    Y[t, bb, j] = A[o + bb * H + j]
        for s in range(update_at.shape[0]):
            u = update_at[s, 0] + (T - 1) * update_at[s, 1]
            for j in range(tid, H, nth):
                for bb in range(r0, r1):
                    ST[s, bb, j] = A[u + bb * H + j]

    @cuda.jit(cache=True)
    def backward_loop(ops, info, stage_src, stage_dst, T, B, H, A, state_g, update_g, output_g, dOut, dS, peeps, WT, DZ, G,
                      dP, dX, dBr, dPeepr):  # fmt: skip
        """The reverse walk for rows [blockIdx.x * R, +R). dS [n_states, B*H] comes in holding the
        final states' gradients and leaves holding the initial states'; dP [T*B, NX*H] and DZ are
        filled, dX [T, B, I] gets x's elementwise uses, dBr [B, nb*H] and dPeepr [B, np*H] the
        biases' and peepholes' gradients per element (all three zeroed here first). G holds one
        step's gradients, a slot per node."""
        acc = cuda.local.array(R, dt)
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
                        column_dot(acc, DZ, zoff, WT, col, ncol, width, r0, last)
                        for q in range(R):
                            if r0 + q < B:
                                G[dst + (r0 + q) * H + j] += acc[q]
                    cuda.syncthreads()  # as in the forward
                    continue
                if code == OP_CONST:
                    continue
                for j in range(tid, H, nth):
                    for bb in range(r0, r1):
                        backward_op(code, aux, t, A, G, gd, ga, gb, gc, d, a, b, c, bb * H + j, bb, j, B, H, dS, dX, dP, dBr,
                                    dPeepr, peeps)  # fmt: skip

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
