"""The compile-once Plan executor: one ``@njit`` forward and one backward that run any cell's step
program (int opcodes over a flat value arena), compiled once per dtype and cached on disk.

The time loop, forward and backward, runs inside these functions: no Python per step. A new cell
costs no compilation, only the Plan's arrays. Values live in one flat arena ``A``: the tape
``[T+1, NT, B, H]`` (step 0 holds the initial states) for the values the backward reads, and scratch
slots reused every step for the rest; each operand's address is ``const + t * tmul``. A state's
previous value is read in place, one tape step back. Each step's input projection is computed at
the step's start into a small buffer read from cache. The recurrent GEMMs pack their sources into
contiguous buffers kept for the weight gradients; a linear that a GEMM stage writes is seeded
(input projection plus bias, or bias) while the stage unpacks its product, not by a pass of its own.
The backward clears each gradient slot as its op reads it, not the whole of G every step; gradients
never live at once share a slot (``kernel.gradient_slots``); the weight gradients are summed a block
of steps at a time while that block's output gradients are in cache (``backward_rows``).

Every loop over a block's elements (the ops, the seeding, copies, the gradients' bookkeeping) is a
vector op from ``vector`` (explicit vectors written in LLVM IR): here they are calls with addresses,
so the interpreters stay small to compile. The float32 GEMMs (``microkernel``), the job runner
(``blas.run_jobs``) and the rarely used ops (``rare``) are C functions called by address: an njit
callee would be linked into, and compiled again inside, each kernel's module (a machine's first use
compiles all this; ``ahead.py``). Addresses are taken only of arrays passed in: Numba frees a local
array after its last use by name, however long its address lives on.

Speed notes (PERF-NOTES.md): vanishing gradients underflow into denormal numbers, on which the
CPU is ~100x slower (a tanh RNN at lag 200 spent 10-20 ms per GEMM on them), so the gradients that
feed GEMMs are flushed to zero below the smallest normal number; in float32 tanh and sigmoid use a
rational approximation (max error ~3e-7) instead of libm; constants come typed from the caller's
dtype (R, ``constants``) so float32 code never promotes to float64. No fastmath: NaN and Inf must
survive, so that divergence is detected.

The interpreters compile at LLVM's -O1, not Numba's -O3 (``compiling``): their loops are explicit
vectors already and the rest is the dispatch of a few ops per step, which -O3's extra passes did not
speed up in A/Bs in one process, while they cost ~0.1 s (7 %) of each interpreter's ~1.6 s compile
on a machine's first use (benchmarks/README.md, session 13). (-O0 would save ~0.35 s, but its code
holds addresses Numba will not cache, and ran the search's small steps 10-15 % slower.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
from numba import njit, prange
from numba.core import config
from numba.core.compiler_lock import global_compiler_lock

from . import vector
from .blas import call_jobs, gemm_at
from .microkernel import NR, call_panels
from .rare import call_rare_backward, call_rare_forward
from .vector import R_ZERO

#: LLVM's optimisation level for the interpreters' first compile (Numba's own, ``NUMBA_OPT``, if lower)
OPT = 1
_compiled: set[tuple[str, str]] = set()


@contextmanager
def _opt(level: int) -> Iterator[None]:
    with global_compiler_lock:  # (no other thread compiles meanwhile: the level is Numba's global setting)
        before = config.OPT
        try:
            config.OPT = type(before)(min(int(before), level))
        except (TypeError, ValueError):  # Numba's setting changed form: compile at its own level
            pass
        try:
            yield
        finally:
            config.OPT = before


def compiling(which: str, dtype: np.dtype) -> Any:
    """Around an interpreter's call (``which``: its name): the first one in this process for
    ``dtype`` compiles it (or loads it from the cache) at ``OPT``; later ones change nothing."""
    key = (which, np.dtype(dtype).name)
    if key in _compiled:
        return nullcontext()
    _compiled.add(key)
    return _opt(OPT)


# opcodes: keep in step with cellsearch.lowering.plan.Code (tests/test_tables.py checks)
OP_STATE, OP_X, OP_CONST, OP_LOADP, OP_BIAS, OP_GEMM, OP_ADD, OP_SUB, OP_MUL, OP_BLEND, OP_SIGMOID, OP_TANH, OP_RELU, OP_PEEP = (
    range(14)
)

#: tanh(x) ~ x * P(x^2) / Q(x^2) on [-CLAMP, CLAMP] (the float32 rational fit Eigen uses)
RATIONAL_TANH = (
    7.90531110763549805,  # clamp
    4.89352455891786e-03,  # alpha 1, 3, ..., 13
    6.37261928875436e-04,
    1.48572235717979e-05,
    5.12229709037114e-08,
    -8.60467152213735e-11,
    2.00018790482477e-13,
    -2.76076847742355e-16,
    4.89352518554385e-03,  # beta 0, 2, 4, 6
    2.26843463243900e-03,
    1.18534705686654e-04,
    1.19825839466702e-06,
)

# where the other constants sit in R, after the rational-tanh coefficients: 0, 1/2, 1, the dtype's
# smallest normal number (``vector.R_ZERO`` .. ``R_TINY``: its ops read them), then the GEMMs' (alpha,
# beta) pairs (1, 0) and (1, 1)
R_AB = vector.R_TINY + 1


def constants(dtype: np.dtype) -> np.ndarray:
    """R: every constant the kernels use, typed as the kernels' values (float32 code never meets a
    float64 literal)."""
    tiny = float(np.finfo(dtype).tiny)
    return np.array((*RATIONAL_TANH, 0.0, 0.5, 1.0, tiny, 1.0, 0.0, 1.0, 1.0), dtype=dtype)


# columns of the ops table: per operand (d, a, b, c) its gradient slot offset in G (g), and its value
# address in A at step t, const + t * tmul (taped values move with t, scratch values do not)
C_CODE, C_AUX = 0, 1
C_DG, C_DC, C_DM, C_AG, C_AC, C_AM, C_BG, C_BC, C_BM, C_CG, C_CC, C_CM = range(2, 14)
# two columns the cpu backend appends to the shared table (kernel.py, ``cpu_tables``): C_FOLD is 1 on a
# linear's seeding op (LOADP, BIAS, CONST) whose seed its GEMM stage adds while unpacking instead
# (``seed``: per stage destination (kind, index), kinds SEED_*); C_DPB is the block of dP a LOADP
# writes its gradient to, -1 where the stage's DZ already holds it
C_FOLD, C_DPB = 14, 15
SEED_ADD, SEED_P, SEED_BIAS, SEED_CONST = 0, 1, 2, 3
# columns of the stage tables (one row per source or destination): g offset, const, tmul
S_G, S_C, S_M = 0, 1, 2
# two columns the cpu backend appends to the stage info table: where the stage's weight panels
# (microkernel.pack_panels) start in W (forward) and in WT (backward), after the plain weights; -1
# where the GEMM goes to BLAS instead (float64)
C_PF, C_PB = 6, 7
# and a third: where the stage's ring of output gradients starts in DZ (``backward_rows``)
C_ZR = 8


@njit(cache=True, error_model="numpy", inline="always")
def _step_gemm(M, N, K, a, wp, woff, panels, c, ldc, ab, isz, acc, fpp):
    """A stage's per-step GEMM: C[M, N] (row stride ldc) (+)= A[M, K] (address a, rows of K) @ the
    stage's weights in the flat array at wp: as panels at offset ``panels`` where the weights were
    packed (float32: the microkernel), else the plain [K, N] matrix at offset woff through BLAS;
    ``+=`` where acc is nonzero (ab: the address of the (alpha, beta) pairs (1, 0), (1, 1); fpp: the
    microkernel's address, ``microkernel.address("panels")``)."""
    if panels >= 0:
        call_panels(fpp, M, N, K, a, K, wp + np.uint64(panels) * isz, c, ldc, acc, 0)
    else:
        gemm_at(False, False, M, N, K, a, K, wp + woff * isz, N, c, ldc, ab + (np.uint64(2) * isz if acc else np.uint64(0)), isz)


@njit(cache=True, error_model="numpy")
def forward_rows(
    ops, stage_info, stage_src, stage_dst, seed, T, B, H, A, P, bx, X, WX, wx_panels, S0, consts, biases, peeps, W, K, TMP, R, r0,
    r1, out, out_at, out_step, xr, fpp, fpr,
):  # fmt: skip
    """The whole time loop for batch rows r0..r1 (rows of an RNN never interact); then the output's
    values, taped at ``out_at + (t + 1) * out_step`` in A, copied to ``out[t, xr + r0 .. xr + r1]``
    (by this thread: a chunk's copy runs in parallel with the others').

    The input projection is computed step by step: at the start of step t, P [B, row stride
    P.shape[1]] = X[t] @ Wx (WX: Wx packed as panels where ``wx_panels``, float32's microkernel;
    else the plain [I, NX*H] matrix through BLAS), so it is read from cache by the ops that use it,
    never written to and read back from a [T, B, NX*H] array in memory."""
    Hu = np.uint64(H)
    Bu = np.uint64(B)
    R0 = np.uint64(r0)
    R1 = np.uint64(r1)
    nr = r1 - r0
    e0 = R0 * Hu
    e1 = R1 * Hu
    zero = R[R_ZERO]
    # raw addresses for the per-step GEMMs (gemm_at: no views inside the loop)
    isz = np.uint64(A.itemsize)
    ap = A.ctypes.data  # the elementwise ops (``vector``) take their operands' addresses
    ne = e1 - e0
    kp = K.ctypes.data
    wp = W.ctypes.data
    tp = TMP.ctypes.data
    ab = R.ctypes.data + np.uint64(R_AB) * isz  # (alpha, beta) = (1, 0), then (1, 1)
    mw = np.uint64(TMP.shape[0] // B)  # TMP is [B, mw]: each range owns its rows
    mwi = np.int64(mw)
    I = X.shape[2]
    nx = P.shape[1]  # P's row stride (NX*H, padded to whole panels)
    xp = X.ctypes.data
    pp = P.ctypes.data + R0 * np.uint64(nx) * isz
    wxp = WX.ctypes.data
    nxh = bx.shape[0]
    nxu = np.uint64(nx)
    pb0 = P.ctypes.data  # (addresses of P, bx, biases and consts for the ops that read them)
    bxp = bx.ctypes.data
    bp0 = biases.ctypes.data
    cp0 = consts.ctypes.data
    for t in range(T):
        tu = np.uint64(t)
        if nxh > 0:  # this step's input projection, rows R0..R1
            xa = xp + (tu * np.uint64(X.shape[1]) + R0) * np.uint64(I) * isz
            if wx_panels:
                call_panels(fpp, nr, nxh, I, xa, I, wxp, pp, nx, 0, 0)
            else:
                gemm_at(False, False, nr, nxh, I, xa, I, wxp, nxh, pp, nx, ab, isz)
        for r in range(ops.shape[0]):
            code = ops[r, C_CODE]
            aux = ops[r, C_AUX]
            d = np.uint64(ops[r, C_DC]) + tu * np.uint64(ops[r, C_DM])
            a = np.uint64(ops[r, C_AC]) + tu * np.uint64(ops[r, C_AM])
            b = np.uint64(ops[r, C_BC]) + tu * np.uint64(ops[r, C_BM])
            c = np.uint64(ops[r, C_CC]) + tu * np.uint64(ops[r, C_CM])
            if code == OP_STATE:
                if ops[r, C_BG] == 1:  # a copied state; the others are read in place from the tape
                    src = S0.ctypes.data + (np.uint64(aux) * np.uint64(S0.shape[1]) + e0) * isz if t == 0 else ap + (a + e0) * isz
                    vector.copy(ne, ap + (d + e0) * isz, src, 0, 0, 0, 0, 0, R)
            elif (
                code == OP_X or code == OP_SUB or code == OP_RELU or code == OP_PEEP or (code == OP_CONST and ops[r, C_FOLD] == 0)
            ):
                call_rare_forward(fpr, code, aux, d, a, b, A.ctypes.data, A.shape[0], X.ctypes.data, X.shape[0], X.shape[1],
                                  X.shape[2], t, consts.ctypes.data, consts.shape[0], peeps.ctypes.data, peeps.shape[0], H, r0,
                                  r1, zero)  # fmt: skip
            elif code == OP_LOADP:
                if ops[r, C_FOLD] != 0:
                    continue
                col = np.uint64(aux) * Hu
                vector.add_rows(H, nr, ap + (d + e0) * isz, H, pb0 + (R0 * nxu + col) * isz, nx, bxp + col * isz, 0, 0, 0, R)
            elif code == OP_BIAS:
                if ops[r, C_FOLD] != 0:
                    continue
                vector.copy_rows(H, nr, ap + (d + e0) * isz, H, bp0 + np.uint64(aux) * Hu * isz, 0, 0, 0, 0, 0, R)
            elif code == OP_GEMM:
                ns = np.uint64(stage_info[aux, 0])
                nk = np.uint64(stage_info[aux, 1])
                woff = np.uint64(stage_info[aux, 2])
                width = ns * Hu
                koff = np.uint64(stage_info[aux, 3]) + tu * Bu * width
                for i in range(ns):  # K[t] = [src_0 | src_1 | ...], one row per batch row
                    src = np.uint64(stage_src[aux, i, S_C]) + tu * np.uint64(stage_src[aux, i, S_M])
                    kr = kp + (koff + R0 * width + i * Hu) * isz
                    vector.copy_rows(H, nr, kr, np.int64(width), ap + (src + e0) * isz, H, 0, 0, 0, 0, R)
                ow = nk * Hu  # out: TMP's rows R0..R1 (each range owns its rows), [nr, nk*H], row stride mw
                oo = R0 * mw
                _step_gemm(
                    nr,
                    ow,
                    width,
                    kp + (koff + R0 * width) * isz,
                    wp,
                    woff,
                    stage_info[aux, C_PF],
                    tp + oo * isz,
                    mw,
                    ab,
                    isz,
                    0,
                    fpp,
                )
                for k in range(nk):
                    dd = np.uint64(stage_dst[aux, k, S_C]) + tu * np.uint64(stage_dst[aux, k, S_M])
                    kind = seed[aux, k, 0]
                    sx = seed[aux, k, 1]
                    kc = np.uint64(k) * Hu
                    dst = ap + (dd + e0) * isz  # rows R0..R1 of the destination and of its columns in TMP
                    prod = tp + (oo + kc) * isz
                    if kind == SEED_P:  # the input projection's block and bias, folded in: one pass
                        pc = np.uint64(sx) * Hu
                        vector.add3_rows(H, nr, dst, H, prod, mwi, pb0 + (R0 * nxu + pc) * isz, nx, bxp + pc * isz, 0, R)
                    elif kind == SEED_BIAS:
                        vector.add_rows(H, nr, dst, H, prod, mwi, bp0 + np.uint64(sx) * Hu * isz, 0, 0, 0, R)
                    elif kind == SEED_CONST:
                        vector.add_scalar_rows(H, nr, dst, H, prod, mwi, cp0 + np.uint64(sx) * isz, 0, 0, 0, R)
                    else:
                        vector.add_rows(H, nr, dst, H, dst, H, prod, mwi, 0, 0, R)
            elif code == OP_ADD:
                vector.f_add(ne, ap + (d + e0) * isz, ap + (a + e0) * isz, ap + (b + e0) * isz, 0, 0, 0, 0, R)
            elif code == OP_MUL:
                vector.f_mul(ne, ap + (d + e0) * isz, ap + (a + e0) * isz, ap + (b + e0) * isz, 0, 0, 0, 0, R)
            elif code == OP_BLEND:
                vector.f_blend(ne, ap + (d + e0) * isz, ap + (a + e0) * isz, ap + (b + e0) * isz, ap + (c + e0) * isz, 0, 0, 0,
                               R)  # fmt: skip
            elif code == OP_SIGMOID:
                vector.f_sigmoid(ne, ap + (d + e0) * isz, ap + (a + e0) * isz, 0, 0, 0, 0, 0, R)
            elif code == OP_TANH:
                vector.f_tanh(ne, ap + (d + e0) * isz, ap + (a + e0) * isz, 0, 0, 0, 0, 0, R)
    XR = np.uint64(xr)
    for t in range(T):
        o = np.uint64(out_at) + np.uint64(t + 1) * np.uint64(out_step)
        dst = out.ctypes.data + ((np.uint64(t) * np.uint64(out.shape[1]) + XR + R0) * Hu) * isz
        vector.copy(ne, dst, ap + (o + e0) * isz, 0, 0, 0, 0, 0, R)


@njit(cache=True, error_model="numpy")
def backward_rows(
    ops, stage_info, stage_src, stage_dst, T, B, H, A, state_g, update_g, output_g, dOut, dS, peeps, WT, DZ, TMP, G, dP, dX, dB,
    dPeep, dBx, R, r0, r1, xr, jobs, chunk, SB, PK, fpp, fpk, fpj, fpr,
):  # fmt: skip
    """Reverse walk over batch rows r0..r1 (dOut, read only, holds them at xr + r0..); on return dS
    holds the initial states' gradients (those rows); dX rows filled; dB, dPeep and dBx (the input
    projection's bias) accumulate this range's sums. G holds one step's gradients, one slot per node:
    zeroed once, then each op zeroes its own slot once it has read it (every gradient is complete
    when the reverse walk reaches its node's op), so no step clears the whole of G.

    The weight gradients are summed as the walk goes, in blocks of SB steps (t0 = a multiple of SB):
    DZ (each stage's output gradient, at ``stage_info[g, C_ZR]``) and dP (the input projection's
    blocks that no DZ holds, ``C_DPB``) are rings of SB steps x B rows, and when the walk reaches a
    block's first step it runs chunk ``chunk``'s ``jobs`` (``blas.run_jobs``: ``dW += DZ^T @ K``,
    ``dWx += x^T @ dP``, ...) on them while they are in cache. PK: the scratch of the packed GEMM
    (its address fpk; fpp the per-step microkernel's, fpj ``blas.run_jobs``', all ``microkernel.address``)."""
    Hu = np.uint64(H)
    Bu = np.uint64(B)
    BH = Bu * Hu
    R0 = np.uint64(r0)
    R1 = np.uint64(r1)
    XR = np.uint64(xr)
    nr = r1 - r0
    e0 = R0 * Hu
    e1 = R1 * Hu
    nS = dS.shape[0]
    zero = R[R_ZERO]
    isz = np.uint64(A.itemsize)
    ap = A.ctypes.data  # the elementwise ops (``vector``) take their operands' addresses
    gq = G.ctypes.data
    ne = e1 - e0
    zp = DZ.ctypes.data
    wp = WT.ctypes.data
    tp = TMP.ctypes.data
    ab = R.ctypes.data + np.uint64(R_AB) * isz  # (alpha, beta) = (1, 0), then (1, 1)
    mw = np.uint64(TMP.shape[0] // B)  # TMP is [B, mw]: each range owns its rows
    SBu = np.uint64(SB)
    # dS [nS, B*H] is the carry: each state's gradient into the step before (the next one the walk
    # reaches), from d_state_T on entry to the initial states' on return. (In place: a local array
    # here would be freed by Numba after its last use by name, however long its address lives on.)
    cq = dS.ctypes.data + e0 * isz  # state s's rows at cq + s * BH * isz
    dBp = dB.ctypes.data
    dBxp = dBx.ctypes.data
    dPp = dP.ctypes.data
    dPw = np.uint64(dP.shape[1])
    for slot in range(G.shape[0] // (B * H)):
        vector.zero(ne, gq + (np.uint64(slot) * BH + e0) * isz, 0, 0, 0, 0, 0, 0, R)
    for t in range(T - 1, -1, -1):
        tu = np.uint64(t)
        slot = tu % SBu  # this step's row block in the rings DZ and dP
        og = gq + (np.uint64(output_g) + e0) * isz
        vector.f_add(ne, og, og, dOut.ctypes.data + ((tu * np.uint64(dOut.shape[1]) + XR + R0) * Hu) * isz, 0, 0, 0, 0, R)
        for s in range(nS):
            ug = gq + (np.uint64(update_g[s]) + e0) * isz
            cs = cq + np.uint64(s) * BH * isz
            vector.f_add(ne, ug, ug, cs, 0, 0, 0, 0, R)
            if state_g[s] < 0:
                vector.zero(ne, cs, 0, 0, 0, 0, 0, 0, R)
        for r in range(ops.shape[0] - 1, -1, -1):
            code = ops[r, C_CODE]
            aux = ops[r, C_AUX]
            gd = np.uint64(ops[r, C_DG])
            ga = np.uint64(ops[r, C_AG])
            gb = np.uint64(ops[r, C_BG])
            gc = np.uint64(ops[r, C_CG])
            d = np.uint64(ops[r, C_DC]) + tu * np.uint64(ops[r, C_DM])
            a = np.uint64(ops[r, C_AC]) + tu * np.uint64(ops[r, C_AM])
            b = np.uint64(ops[r, C_BC]) + tu * np.uint64(ops[r, C_BM])
            c = np.uint64(ops[r, C_CC]) + tu * np.uint64(ops[r, C_CM])
            if code == OP_STATE:
                vector.move(ne, gq + (gd + e0) * isz, cq + np.uint64(aux) * BH * isz, 0, 0, 0, 0, 0, R)
            elif code == OP_X or code == OP_CONST or code == OP_SUB or code == OP_RELU or code == OP_PEEP:
                call_rare_backward(fpr, code, aux, gd, ga, gb, a, A.ctypes.data, A.shape[0], G.ctypes.data, G.shape[0],
                                   dX.ctypes.data, dX.shape[0], dX.shape[1], dX.shape[2], t, peeps.ctypes.data, peeps.shape[0],
                                   dPeep.ctypes.data, H, r0, r1, zero)  # fmt: skip
            elif code == OP_LOADP:
                col = np.uint64(aux) * Hu
                pb = ops[r, C_DPB]
                grow = gq + (gd + e0) * isz  # (denormals flushed to zero, NaN kept)
                if pb >= 0:
                    prow = dPp + ((slot * Bu + R0) * dPw + np.uint64(pb) * Hu) * isz
                    vector.b_loadp_rows(H, nr, grow, H, prow, np.int64(dPw), dBxp + col * isz, 0, 0, 0, R)
                else:  # the stage's DZ holds this gradient already
                    vector.b_loadp_bias_rows(H, nr, grow, H, dBxp + col * isz, 0, 0, 0, 0, 0, R)
            elif code == OP_BIAS:
                vector.b_bias_rows(H, nr, gq + (gd + e0) * isz, H, dBp + np.uint64(aux) * Hu * isz, 0, 0, 0, 0, 0, R)
            elif code == OP_GEMM:
                ns = np.uint64(stage_info[aux, 0])
                nk = np.uint64(stage_info[aux, 1])
                woff = np.uint64(stage_info[aux, 2])
                width = nk * Hu
                zoff = np.uint64(stage_info[aux, C_ZR]) + slot * Bu * width
                for k in range(nk):  # DZ[t] = [g_dst_0 | g_dst_1 | ...], one row per batch row
                    src = np.uint64(stage_dst[aux, k, S_G])
                    zr = zp + (zoff + R0 * width + k * Hu) * isz  # (denormals flushed to zero, NaN kept)
                    vector.flush_copy_rows(H, nr, zr, np.int64(width), gq + (src + e0) * isz, H, 0, 0, 0, 0, R)
                sw = ns * Hu
                pb = stage_info[aux, C_PB]
                oo = R0 * mw
                direct = ns == 1 and (pb < 0 or Hu % np.uint64(NR) == 0)
                if direct:  # straight into the source's gradient: G[src] +=
                    cp, ldc, acc = G.ctypes.data + (np.uint64(stage_src[aux, 0, S_G]) + R0 * Hu) * isz, Hu, 1
                else:  # into TMP's rows R0..R1, [nr, ns*H], row stride mw, then added below
                    cp, ldc, acc = tp + oo * isz, mw, 0
                _step_gemm(nr, sw, width, zp + (zoff + R0 * width) * isz, wp, woff, pb, cp, ldc, ab, isz, acc, fpp)
                if direct:
                    continue
                for i in range(ns):
                    dst = np.uint64(stage_src[aux, i, S_G])
                    ic = np.uint64(i) * Hu
                    grow = gq + (dst + e0) * isz
                    vector.add_rows(H, nr, grow, H, grow, H, tp + (oo + ic) * isz, np.int64(mw), 0, 0, R)
            elif code == OP_ADD:
                vector.b_add(ne, gq + (gd + e0) * isz, gq + (ga + e0) * isz, gq + (gb + e0) * isz, 0, 0, 0, 0, R)
            elif code == OP_MUL:
                vector.b_mul(ne, gq + (gd + e0) * isz, gq + (ga + e0) * isz, gq + (gb + e0) * isz, ap + (a + e0) * isz,
                             ap + (b + e0) * isz, 0, 0, R)  # fmt: skip
            elif code == OP_BLEND:
                vector.b_blend(ne, gq + (gd + e0) * isz, gq + (ga + e0) * isz, gq + (gb + e0) * isz, gq + (gc + e0) * isz,
                               ap + (a + e0) * isz, ap + (b + e0) * isz, ap + (c + e0) * isz, R)  # fmt: skip
            elif code == OP_SIGMOID:
                vector.b_sigmoid(ne, gq + (gd + e0) * isz, gq + (ga + e0) * isz, ap + (d + e0) * isz, 0, 0, 0, 0, R)
            elif code == OP_TANH:
                vector.b_tanh(ne, gq + (gd + e0) * isz, gq + (ga + e0) * isz, ap + (d + e0) * isz, 0, 0, 0, 0, R)
        if slot == 0:  # the first step of a block: its weight gradients
            call_jobs(fpj, jobs.ctypes.data, jobs.shape[0], chunk, t, min(SB, T - t), ab, A.itemsize, fpp, fpk, PK.ctypes.data)


@njit(cache=True, error_model="numpy", parallel=True)
def forward_kernel_split(
    ops, stage_info, stage_src, stage_dst, seed, T, B, H, A, P, bx, x, X, WX, wx_panels, S0, consts, biases, peeps, W, K, TMP,
    R, rows, out, out_at, out_step, fpp, fpr,
):  # fmt: skip
    """The forward pass with the batch split into chunks run on parallel threads (BLAS must be at 1
    thread then); each thread runs the whole time loop for its chunk, with no synchronisation. A, P,
    X, S0, K, TMP have a leading chunk axis: each chunk has buffers of its own, laid out for B rows
    (threads writing rows of one shared buffer measured up to 2.5x slower: cache lines and prefetches
    bounce between the cores), of which chunk c uses the first ``rows[c+1] - rows[c]``; each thread
    copies its rows of x (the whole batch's ``x``) into its X first, and its rows of the output to
    ``out`` [T, batch, H] at the end."""
    for c in prange(rows.shape[0] - 1):
        n = rows[c + 1] - rows[c]
        I = np.uint64(x.shape[2])
        isz = np.uint64(x.itemsize)
        for t in range(T):  # this chunk's rows of x, in its own buffer (the backward reads them too)
            tu = np.uint64(t)
            src = x.ctypes.data + (tu * np.uint64(x.shape[1]) + np.uint64(rows[c])) * I * isz
            vector.copy(n * x.shape[2], X.ctypes.data + ((np.uint64(c) * np.uint64(T) + tu) * np.uint64(B)) * I * isz, src, 0, 0,
                        0, 0, 0, R)  # fmt: skip
        forward_rows(ops, stage_info, stage_src, stage_dst, seed, T, B, H, A[c], P[c], bx, X[c], WX, wx_panels, S0[c], consts,
                      biases, peeps, W, K[c], TMP[c], R, 0, n, out, out_at, out_step, rows[c], fpp, fpr)  # fmt: skip


@njit(cache=True, error_model="numpy", parallel=True)
def backward_kernel_split(
    ops, stage_info, stage_src, stage_dst, T, B, H, A, state_g, update_g, output_g, dOut, dS, peeps, WT, DZ, TMP, G, dP, dX, dB,
    dPeep, dBx, R, jobs, rows, SB, PK, fpp, fpk, fpj, fpr,
):  # fmt: skip
    """The backward pass, split like ``forward_kernel_split``: every array but dOut (the whole
    batch's, only read; chunk c at rows[c]..), peeps and WT has a leading chunk axis; each thread
    runs its chunk's GEMMs in ``jobs`` as its reverse walk goes (its part of the weight gradients)."""
    for c in prange(rows.shape[0] - 1):
        n = rows[c + 1] - rows[c]
        backward_rows(ops, stage_info, stage_src, stage_dst, T, B, H, A[c], state_g, update_g, output_g, dOut, dS[c], peeps,
                       WT, DZ[c], TMP[c], G[c], dP[c], dX[c], dB[c], dPeep[c], dBx[c], R, 0, n, rows[c], jobs, c, SB,
                       PK[c], fpp, fpk, fpj, fpr)  # fmt: skip


# The GEMMs around the time loop also go through Numba's np.dot, so that one BLAS library (and one
# thread pool) serves the whole step: NumPy's own BLAS beside it spins its threads against this one.
@njit(cache=True, error_model="numpy")
def gemm(a, b, out):
    """out = a @ b (a or b may be transposed views)."""
    np.dot(a, b, out)


@njit(cache=True, error_model="numpy")
def column_sums(a, out):
    out[:] = 0
    for i in range(a.shape[0]):
        for j in range(a.shape[1]):
            out[j] += a[i, j]


@njit(cache=True, error_model="numpy")
def scatter_add_rows(out, index, rows):  # out[index[i]] += rows[i]: an embedding's gradient
    for i in range(index.shape[0]):
        k = index[i]
        for j in range(rows.shape[1]):
            out[k, j] += rows[i, j]
