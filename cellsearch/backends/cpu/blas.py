"""BLAS GEMMs at raw addresses, callable inside the kernels' loops and parallel regions.

Numba's ``np.dot`` copies any operand that is not C- or F-contiguous, takes views (whose reference
counts parallel threads fight over), and runs on the BLAS library's own thread pool. Here the kernels
call SciPy's BLAS through Numba's own ``numba_xxgemm`` helper (the function ``np.dot`` calls) with
addresses and leading dimensions (``gemm_at``). The weight gradients are a table of jobs (``Jobs``)
that each kernel thread runs for its own chunk of the batch, a block of steps at a time inside its
reverse walk (``run_jobs``): float32 through the packed microkernel GEMM, float64 through BLAS. When
the batch is split over Numba's threads, BLAS stays at one thread (two pools spinning on the same
cores cost 1.2-1.7x here).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, types
from numba.core.typing import signature
from numba.extending import intrinsic

from .microkernel import FUNCTIONS, call_c, call_packed, load_i64

Array = np.ndarray

# int numba_xxgemm(kind, transa, transb, m, n, k, *alpha, *a, lda, *b, ldb, *beta, *c, ldc): column-major
# BLAS gemm in Numba's helper library (resolved by name at link time, so cached code keeps working)
_ptr = types.uintp
_xxgemm: Any = types.ExternalFunction(
    "numba_xxgemm",
    signature(types.intc, types.int8, types.int8, types.int8, types.intp, types.intp, types.intp, _ptr, _ptr, types.intp,
              _ptr, types.intp, _ptr, _ptr, types.intp),
)  # fmt: skip
_N, _T = 110, 116  # ord("n"), ord("t")


@njit(cache=True, error_model="numpy", inline="always")
def gemm_at(ta, tb, M, N, K, a, lda, b, ldb, c, ldc, ab, isz):  # pragma: no cover - njit
    """Row-major ``C[M,N] = alpha * op(A) @ op(B) + beta * C`` with every matrix given by its address
    and leading dimension (in elements), ``ab`` the address of (alpha, beta), ``isz`` the element size
    (4: float32, 8: float64). Raw addresses, not views: a view made in a loop on parallel threads
    updates its parent's shared reference count, an atomic on one cache line that both cores fight
    over. As column-major BLAS sees it, ``C^T = op(B)^T @ op(A)^T``. Returns BLAS's error code."""
    return _xxgemm(
        np.int8(115) if isz == 4 else np.int8(100),  # "s" or "d"
        np.int8(_T if tb else _N),
        np.int8(_T if ta else _N),
        np.int64(N),
        np.int64(M),
        np.int64(K),
        ab,
        b,
        np.int64(ldb),
        a,
        np.int64(lda),
        ab + np.uint64(isz),
        c,
        np.int64(ldc),
    )


@njit(cache=True, error_model="numpy")
def _one_by_one(a, ab):  # pragma: no cover - njit
    """a[1] = a[0] * a[0] through gemm_at (a: 2 elements; ab: (1, 0))."""
    isz = np.uint64(a.itemsize)
    return gemm_at(False, False, 1, 1, 1, a.ctypes.data, 1, a.ctypes.data, 1, a.ctypes.data + isz, 1, ab.ctypes.data, isz)


_WARM: set[np.dtype] = set()


def warm(dtype: np.dtype) -> None:
    """Numba's helper finds SciPy's BLAS function under the GIL at its first call of each kind, so
    that call must happen here on the calling thread, not on a worker while this thread waits."""
    dtype = np.dtype(dtype)
    if dtype not in _WARM:
        a = np.array((3.0, 0.0), dtype=dtype)
        if _one_by_one(a, np.array((1.0, 0.0), dtype=dtype)) != 0 or a[1] != 9.0:
            raise RuntimeError("BLAS gemm failed (is SciPy installed?)")
        _WARM.add(dtype)


# columns of a job table (``Jobs``): the chunk (thread) that runs it; whether A is stored transposed
# ([K, M], a weight gradient's x^T); M and K as fixed parts plus parts per step of the block it runs
# for (M0 + MS*n, K0 + KS*n for n steps); N; the addresses of A, B and C at step 0 and their strides
# per step (bytes); leading dimensions; whether it adds to C (beta 1) or overwrites it
J_CHUNK, J_TA, J_M0, J_MS, J_N, J_K0, J_KS, J_A, J_SA, J_LDA, J_B, J_SB, J_LDB, J_C, J_SC, J_LDC, J_ACC = range(17)
N_JCOLS = 17


@njit(cache=True, error_model="numpy")
def run_jobs(jobs, rows, c, t0, n, ab, isz, fpp, fpk, sp):  # pragma: no cover - njit
    """Run the GEMMs of the job table at address ``jobs`` (``rows`` rows of N_JCOLS int64) that chunk c
    owns, in order, for the block of n steps from step t0: float32 ones with A stored transposed (the
    weight gradients) through the packed microkernel GEMM (``microkernel.gemm_packed`` at address
    fpk, its scratch at sp, the microkernel at fpp), the others through BLAS; ab: the address of
    (1, 0, 1, 1), the (alpha, beta) pairs that overwrite and accumulate. The kernels call it by its
    address (``call_jobs``)."""
    isz = np.uint64(isz)
    tu = np.uint64(t0)
    for r in range(rows):
        o = r * N_JCOLS
        if load_i64(jobs, o + J_CHUNK) != c:
            continue
        M = load_i64(jobs, o + J_M0) + load_i64(jobs, o + J_MS) * n
        K = load_i64(jobs, o + J_K0) + load_i64(jobs, o + J_KS) * n
        N = load_i64(jobs, o + J_N)
        a = np.uint64(load_i64(jobs, o + J_A)) + tu * np.uint64(load_i64(jobs, o + J_SA))
        b = np.uint64(load_i64(jobs, o + J_B)) + tu * np.uint64(load_i64(jobs, o + J_SB))
        cc = np.uint64(load_i64(jobs, o + J_C)) + tu * np.uint64(load_i64(jobs, o + J_SC))
        lda, ldb, ldc = load_i64(jobs, o + J_LDA), load_i64(jobs, o + J_LDB), load_i64(jobs, o + J_LDC)
        acc = load_i64(jobs, o + J_ACC)
        ta = load_i64(jobs, o + J_TA) != 0
        if isz == 4 and ta:
            call_packed(fpk, M, N, K, a, lda, b, ldb, cc, ldc, acc, sp, fpp)
        else:
            gemm_at(ta, False, M, N, K, a, lda, b, ldb, cc, ldc, ab + (np.uint64(2) * isz if acc != 0 else np.uint64(0)), isz)


_U64, _I64 = types.uint64, types.int64
JOBS_SIG = types.void(_U64, _I64, _I64, _I64, _I64, _U64, _I64, _U64, _U64, _U64)
FUNCTIONS["jobs"] = (run_jobs, JOBS_SIG)


@intrinsic(prefer_literal=False)
def call_jobs(typingctx: Any, fn: Any, jobs: Any, rows: Any, c: Any, t0: Any, n: Any, ab: Any, isz: Any, fpp: Any, fpk: Any,
              sp: Any) -> Any:  # fmt: skip
    """``run_jobs``'s arguments, to its C function at address fn (``microkernel.address("jobs")``)."""
    return types.void(types.uintp, *JOBS_SIG.args), lambda ctx, b, sg, args: call_c(ctx, b, JOBS_SIG, sg, args)


class Jobs:
    """A table of GEMMs for ``run_jobs``, built here and run inside a kernel's loop, by the thread of
    each job's chunk, at the end of each block of steps: ``C (+)= op(A) @ B`` where A, B and C start
    at arrays' addresses plus a stride per step. The arrays must stay alive until the jobs have run
    (this keeps them)."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.rows: list[tuple[int, ...]] = []
        self._keep: list[Array] = []
        self.widest = (0, 0)  # the largest M and N of any job (the microkernel's scratch)

    def add(self, chunk: int, a: Array, b: Array, out: Array, *, m: tuple[int, int], k: tuple[int, int],
            strides: tuple[int, int, int], transposed: bool, steps: int, accumulate: bool = True) -> None:  # fmt: skip
        """chunk's thread runs ``out (+)= A @ B`` for each block of n steps from t0, with M = m[0] +
        m[1]*n, K = k[0] + k[1]*n and A, B, out at the first elements of ``a``, ``b``, ``out`` plus
        ``strides`` (elements) times t0. ``a``: A's [M, K] rows, or (``transposed``) its [K, M]
        columns; each 2-D view has a unit column stride; ``steps``: the most steps a block has."""
        for v in (a, b, out):
            if v.dtype != self.dtype or v.ndim != 2 or (v.strides[1] != v.itemsize and v.shape[1] > 1 and v.size > 0):
                raise ValueError(f"Jobs.add: needs 2-D {self.dtype} views with unit column stride; got {v.dtype} {v.strides}")
        M, N = m[0] + m[1] * steps, b.shape[1]
        if M == 0 or N == 0:
            return
        isz = self.dtype.itemsize
        lda, ldb, ldc = (max(v.strides[0] // isz, v.shape[1], 1) for v in (a, b, out))
        self._keep += [a, b, out]  # each view keeps its memory alive; its address is its first element's
        addr = [int(v.__array_interface__["data"][0]) for v in (a, b, out)]
        self.rows.append((chunk, int(transposed), m[0], m[1], N, k[0], k[1], addr[0], strides[0] * isz, lda, addr[1],
                          strides[1] * isz, ldb, addr[2], strides[2] * isz, ldc, int(accumulate)))  # fmt: skip
        self.widest = (max(self.widest[0], M), max(self.widest[1], N))

    def table(self) -> Array:
        return np.array(self.rows, dtype=np.int64).reshape(-1, N_JCOLS)


__all__ = ["N_JCOLS", "Jobs", "call_jobs", "gemm_at", "run_jobs", "warm"]
