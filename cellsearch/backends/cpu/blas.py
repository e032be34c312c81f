"""BLAS GEMMs at raw addresses, callable inside the kernels' loops and parallel regions.

Numba's ``np.dot`` copies any operand that is not C- or F-contiguous, takes views (whose reference
counts parallel threads fight over), and runs on the BLAS library's own thread pool. Here the kernels
call SciPy's BLAS through Numba's own ``numba_xxgemm`` helper (the function ``np.dot`` calls) with
addresses and leading dimensions (``gemm_at``), and the GEMMs around the time loop (the input
projection, the deferred weight gradients) are a table of jobs (``Jobs``) that the kernel's threads run
for their own chunk of the batch, inside the same parallel region: when the batch is split over
Numba's threads, BLAS stays at one thread (two pools spinning on the same cores cost 1.2-1.7x here).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, types
from numba.core.typing import signature

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


def _operand(a: Array) -> tuple[bool, int]:
    """(transposed, leading dimension) of a 2-D view with one unit stride."""
    rows, cols = a.shape
    isz = a.itemsize
    s0, s1 = a.strides
    if s1 == isz or cols == 1:
        return False, max(s0 // isz, cols, 1)
    if s0 == isz or rows == 1:
        return True, max(s1 // isz, rows, 1)
    raise ValueError(f"gemm needs one unit stride; got strides {a.strides}")


# columns of a GEMM job table (``Jobs``): the chunk (thread) that runs it, transposes, sizes, addresses
# and leading dimensions, and whether it adds to C (beta 1) or overwrites it
J_CHUNK, J_TA, J_TB, J_M, J_N, J_K, J_A, J_LDA, J_B, J_LDB, J_C, J_LDC, J_ACC = range(13)


@njit(cache=True, error_model="numpy", inline="always")
def run_jobs(jobs, c, ab, isz):  # pragma: no cover - njit
    """Run the GEMMs of ``jobs`` that chunk c owns, in order; ab: the address of (1, 0, 1, 1), the
    (alpha, beta) pairs that overwrite and accumulate."""
    isz = np.uint64(isz)
    for r in range(jobs.shape[0]):
        if jobs[r, J_CHUNK] == c:
            gemm_at(jobs[r, J_TA] != 0, jobs[r, J_TB] != 0, jobs[r, J_M], jobs[r, J_N], jobs[r, J_K], np.uint64(jobs[r, J_A]),
                    jobs[r, J_LDA], np.uint64(jobs[r, J_B]), jobs[r, J_LDB], np.uint64(jobs[r, J_C]), jobs[r, J_LDC],
                    ab + (np.uint64(2) * isz if jobs[r, J_ACC] != 0 else np.uint64(0)), isz)  # fmt: skip


class Jobs:
    """A table of GEMMs on views (one unit stride each) for ``run_jobs``: built here, run inside a
    kernel's parallel region by the thread of each job's chunk, so that no GEMM needs a region (and a
    BLAS thread pool) of its own. The views must stay alive until the jobs have run (this keeps them)."""

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = np.dtype(dtype)
        self.rows: list[tuple[int, ...]] = []
        self._keep: list[Array] = []

    def add(self, chunk: int, a: Array, b: Array, out: Array, accumulate: bool = False) -> None:
        """chunk's thread runs ``out = a @ b`` (``+=`` with accumulate)."""
        M, K = a.shape
        N = b.shape[1]
        if b.shape[0] != K or out.shape != (M, N) or not (a.dtype == b.dtype == out.dtype == self.dtype):
            raise ValueError(f"Jobs.add: shapes {a.shape} @ {b.shape} -> {out.shape}")
        if out.strides[1] != out.itemsize and N > 1:
            raise ValueError("Jobs.add: out must have unit column stride")
        if M == 0 or N == 0:
            return
        if K == 0:
            if not accumulate:
                out[...] = 0
            return
        ta, lda = _operand(a)
        tb, ldb = _operand(b)
        _, ldc = _operand(out)
        self._keep += [a, b, out]  # each view keeps its memory alive; its address is its first element's
        addr = [int(v.__array_interface__["data"][0]) for v in (a, b, out)]
        self.rows.append((chunk, int(ta), int(tb), M, N, K, addr[0], lda, addr[1], ldb, addr[2], ldc, int(accumulate)))

    def table(self) -> Array:
        return np.array(self.rows, dtype=np.int64).reshape(-1, 13)


__all__ = ["Jobs", "gemm_at", "run_jobs", "warm"]
