"""GEMM on strided views, split over Numba's threads, each calling BLAS at one thread.

Numba's ``np.dot`` copies any operand that is not C- or F-contiguous and runs on the BLAS library's
own thread pool. When the cpu kernel splits the batch over Numba's threads, that second pool must stay
at one thread (two pools spinning on the same cores cost 1.2-1.7x here), so the GEMMs around the time
loop are split over Numba's threads too: ``pgemm`` cuts the output into row or column blocks and each
thread calls SciPy's BLAS (through Numba's own ``numba_xxgemm`` helper, the function ``np.dot`` calls)
on its block, with leading dimensions, so views are never copied.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numba import njit, prange, types
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


@njit(cache=True, error_model="numpy", inline="always")
def _gemm_block(ta, tb, M, N, K, A, aoff, lda, B, boff, ldb, ab, C, coff, ldc):  # pragma: no cover - njit
    """``gemm_at`` on flat arrays, at element offsets."""
    if M == 0 or N == 0:
        return 0
    isz = np.uint64(C.itemsize)
    a = A.ctypes.data + np.uint64(aoff) * isz
    b = B.ctypes.data + np.uint64(boff) * isz
    return gemm_at(ta, tb, M, N, K, a, lda, b, ldb, C.ctypes.data + np.uint64(coff) * isz, ldc, ab.ctypes.data, isz)


@njit(cache=True, error_model="numpy", parallel=True)
def _pgemm(ta, tb, M, N, K, A, lda, B, ldb, ab, C, ldc, chunks):  # pragma: no cover - njit
    """``_gemm_block`` with the output cut into ``chunks`` blocks of rows (or of columns where the
    output is wider than tall), one per thread. Returns the number of blocks that failed."""
    by_rows = M >= N
    failed = 0
    for c in prange(chunks):
        if by_rows:
            m0 = c * M // chunks
            m1 = (c + 1) * M // chunks
            aoff = m0 if ta else m0 * lda  # op(A)'s rows m0.. are A's columns m0.. where transposed
            err = _gemm_block(ta, tb, m1 - m0, N, K, A, aoff, lda, B, 0, ldb, ab, C, m0 * ldc, ldc)
        else:
            n0 = c * N // chunks
            n1 = (c + 1) * N // chunks
            boff = n0 * ldb if tb else n0
            err = _gemm_block(ta, tb, M, n1 - n0, K, A, 0, lda, B, boff, ldb, ab, C, n0, ldc)
        failed += 1 if err != 0 else 0
    return failed


@njit(cache=True, error_model="numpy")
def _gemm_serial(ta, tb, M, N, K, A, lda, B, ldb, ab, C, ldc):  # pragma: no cover - njit
    return _gemm_block(ta, tb, M, N, K, A, 0, lda, B, 0, ldb, ab, C, 0, ldc)


_WARM: set[np.dtype] = set()


def warm(dtype: np.dtype) -> None:
    """Numba's helper finds SciPy's BLAS function under the GIL at its first call of each kind, so
    that call must happen here on the calling thread, not on a worker while this thread waits."""
    if dtype not in _WARM:
        a = np.ones(1, dtype=dtype)
        if _gemm_serial(False, False, 1, 1, 1, a, 1, a, 1, np.array((1.0, 0.0), dtype=dtype), np.empty(1, dtype=dtype), 1):
            raise RuntimeError("BLAS gemm failed (is SciPy installed?)")
        _WARM.add(dtype)


def _operand(a: Array) -> tuple[bool, int, Array]:
    """(transposed, leading dimension, flat view from the first element) of a 2-D view with one unit stride."""
    rows, cols = a.shape
    isz = a.itemsize
    s0, s1 = a.strides
    if s1 == isz or cols == 1:
        trans, ld = False, max(s0 // isz, cols, 1)
    elif s0 == isz or rows == 1:
        trans, ld = True, max(s1 // isz, rows, 1)
    else:
        raise ValueError(f"gemm needs one unit stride; got strides {a.strides}")
    span = (rows - 1) * (s0 // isz) + (cols - 1) * (s1 // isz) + 1 if a.size else 0
    flat = np.lib.stride_tricks.as_strided(a, shape=(span,), strides=(isz,), writeable=a.flags.writeable)
    return trans, ld, flat


def pgemm(a: Array, b: Array, out: Array, chunks: int = 1, accumulate: bool = False) -> Array:
    """``out = a @ b`` (``out += a @ b`` with ``accumulate``) for 2-D views with one unit stride each
    (transposed views included), split over ``chunks`` of Numba's threads. BLAS must be at one thread
    when ``chunks > 1`` (``kernel.BLAS.single``); with ``chunks == 1`` it runs on this thread (and
    BLAS's own threads)."""
    M, K = a.shape
    K2, N = b.shape
    if K2 != K or out.shape != (M, N) or not (a.dtype == b.dtype == out.dtype) or a.dtype not in (np.float32, np.float64):
        raise ValueError(f"pgemm: shapes {a.shape} @ {b.shape} -> {out.shape}, dtypes {a.dtype} {b.dtype} {out.dtype}")
    if out.strides[1] != out.itemsize and N > 1:
        raise ValueError("pgemm: out must have unit column stride")
    if M == 0 or N == 0:
        return out
    if K == 0:
        if not accumulate:
            out[...] = 0
        return out
    ta, lda, fa = _operand(a)
    tb, ldb, fb = _operand(b)
    _, ldc, fc = _operand(out)
    warm(out.dtype)
    ab = np.array((1.0, 1.0 if accumulate else 0.0), dtype=out.dtype)
    chunks = max(1, min(chunks, max(M, N)))
    if chunks == 1:  # here: no parallel region (whose idle threads would spin beside BLAS's own)
        failed = _gemm_serial(ta, tb, M, N, K, fa, lda, fb, ldb, ab, fc, ldc)
    else:
        failed = _pgemm(ta, tb, M, N, K, fa, lda, fb, ldb, ab, fc, ldc, chunks)
    if failed:
        raise RuntimeError("BLAS gemm failed")
    return out


__all__ = ["gemm_at", "pgemm", "warm"]
