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

The two time loops themselves are written in LLVM IR (``ir_loops``: ``forward_rows`` and
``backward_rows`` are one call each), which Numba's front end compiled in ~1 s each; their docstrings
here describe them. Every loop over a block's elements (the ops, the seeding, copies, the gradients'
bookkeeping) is a vector op from ``vector`` (explicit vectors written in LLVM IR). The float32 GEMMs
(``microkernel``), the job runner (``blas.run_jobs``) and the rarely used ops (``rare``) are C
functions called by address: an njit
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
speed up in A/Bs in one process, while they cost ~0.1 s of each interpreter's first compile on a
machine (benchmarks/README.md, session 13). (-O0 would save more, but its code held addresses Numba
will not cache, and ran the search's small steps 10-15 % slower.)
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from typing import Any

import numpy as np
from numba import njit, prange
from numba.core import config
from numba.core.compiler_lock import global_compiler_lock

from . import ir_loops, vector

#: LLVM's optimisation level for the interpreters' first compile (Numba's own, ``NUMBA_OPT``, if lower)
OPT = 1
_compiled: set[tuple[str, Any]] = set()


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
    key = (which, dtype)  # (a dtype hashes as its type: no ``.name``, which NumPy computes in Python)
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
# and three for the row tiles (``kernel.cpu_tables``): the ops between two GEMMs run a tile of C_TILE
# rows at a time, every op on it before the next tile (rows never interact; a tile's values stay in
# L1 from op to op). C_NEXT, on each forward run's first op (op 0 and every GEMM; -1 elsewhere): the
# op after its last. C_PREV, on each backward run's first op (the last op and every op just before a
# GEMM; -1 elsewhere), walking down: its last op (a GEMM or op 0), and C_SCAT the GEMM just above it
# (whose product's scatter it starts with), else -1. C_TILE: on the runs' first ops.
C_NEXT, C_PREV, C_SCAT, C_TILE = 16, 17, 18, 19
N_OPS_COLS = 20
SEED_ADD, SEED_P, SEED_BIAS, SEED_CONST = 0, 1, 2, 3
# columns of the stage tables (one row per source or destination): g offset, const, tmul
S_G, S_C, S_M = 0, 1, 2
# two columns the cpu backend appends to the stage info table: where the stage's weight panels
# (microkernel.pack_panels) start in W (forward) and in WT (backward), which then hold the panels
# alone; -1 where the GEMM goes to BLAS instead (float64: W and WT hold the plain matrices)
C_PF, C_PB = 6, 7
# and a third: where the stage's ring of output gradients starts in DZ (``backward_rows``)
C_ZR = 8


@njit(cache=True, error_model="numpy")
def forward_rows(
    ops, stage_info, stage_src, stage_dst, seed, T, B, H, A, P, bx, X, WX, wx_panels, S0, consts, biases, peeps, W, K, TMP, R, r0,
    r1, out, out_at, out_step, xr, fpp, fpr,
):  # fmt: skip
    """The whole time loop for batch rows r0..r1 (rows of an RNN never interact); then the output's
    values, taped at ``out_at + (t + 1) * out_step`` in A, copied to ``out[t, xr + r0 .. xr + r1]``
    (by this thread: a chunk's copy runs in parallel with the others').

    Each step's ops run as runs from one GEMM to the next (``C_NEXT``): the GEMM's product over all
    rows, then the run's ops (the GEMM's unpacking first) a tile of ``C_TILE`` rows at a time, every op
    on one tile before the next, so a tile's values pass from op to op in L1.

    The input projection is computed step by step: at the start of step t, P [B, row stride
    P.shape[1]] = X[t] @ Wx (WX: Wx packed as panels where ``wx_panels``, float32's microkernel;
    else the plain [I, NX*H] matrix through BLAS), so it is read from cache by the ops that use it,
    never written to and read back from a [T, B, NX*H] array in memory."""
    ir_loops.forward(ops, stage_info, stage_src, stage_dst, seed, T, B, H, A, P, bx, X, WX, wx_panels, S0, consts, biases, peeps,
                     W, K, TMP, R, r0, r1, out, out_at, out_step, xr, fpp, fpr)  # fmt: skip


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
    (its address fpk; fpp the per-step microkernel's, fpj ``blas.run_jobs``', all ``microkernel.address``).

    As the forward, the ops between GEMMs run a tile of rows at a time: walking down from a run's
    first op (``C_PREV``) each tile adds the product of the GEMM above (``C_SCAT``) to its sources'
    gradients, runs the ops, and gathers the gradients of the GEMM that ends the run, whose product
    over all rows follows."""
    ir_loops.backward(ops, stage_info, stage_src, stage_dst, T, B, H, A, state_g, update_g, output_g, dOut, dS, peeps, WT, DZ,
                      TMP, G, dP, dX, dB, dPeep, dBx, R, r0, r1, xr, jobs, chunk, SB, PK, fpp, fpk, fpj, fpr)  # fmt: skip


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
