"""The float32 per-step GEMM (weights packed as panels, register tiles in LLVM IR) against NumPy."""

import numpy as np
import pytest
from numba import njit

from cellsearch.backends.cpu.microkernel import (
    DIRECT_LD,
    NR,
    address,
    call_packed,
    gemm_packed,
    gemm_panels,
    gemm_scratch,
    pack_panels,
    padded,
    panels_size,
    tile_shape,
)


@njit
def _run(M, N, K, A, lda, Bp, C, ldc):
    gemm_panels(M, N, K, A.ctypes.data, lda, Bp.ctypes.data, C.ctypes.data, ldc, 0, 0)


@pytest.mark.parametrize(
    "M,K,N",
    [(8, 4, 32), (5, 3, 7), (13, 17, 45), (1, 64, 256), (12, 1, 33), (4, 0, 32), (27, 40, 96), (64, 128, 512)],
)
def test_gemm_panels_matches_numpy(M, K, N):
    rng = np.random.default_rng(M * 1000 + K * 10 + N)
    A = rng.normal(size=(M, K + 3)).astype(np.float32)  # a leading dimension wider than K
    W = rng.normal(size=(K, N)).astype(np.float32)
    Bp = np.full(panels_size(K, N), np.nan, dtype=np.float32)  # every element must be written
    pack_panels(W.ravel(), K, N, Bp, False)
    Bt = np.full_like(Bp, np.nan)
    pack_panels(np.ascontiguousarray(W.T).ravel(), K, N, Bt, True)  # from the transpose: the same panels
    np.testing.assert_array_equal(Bt, Bp)
    assert not np.isnan(Bp).any() and Bp.size == padded(N) * K and padded(N) % NR == 0
    ldc = padded(N) + 5
    C = np.full((M + 1, ldc), np.nan, dtype=np.float32)  # a row past M: must stay untouched
    _run(M, N, K, A, K + 3, Bp, C, ldc)
    want = A[:, :K].astype(np.float64) @ W.astype(np.float64)
    np.testing.assert_allclose(C[:M, :N], want, rtol=1e-5, atol=1e-5 * max(1, K))
    assert (C[:M, N : padded(N)] == 0).all()  # the padding columns hold zeros
    assert np.isnan(C[:M, padded(N) :]).all() and np.isnan(C[M]).all()


def test_nan_and_inf_pass_through():
    """A diverging cell must be seen as diverging: no fast-math assumption drops NaN or Inf."""
    A = np.ones((8, 4), dtype=np.float32)
    A[2, 1] = np.nan
    A[5, 3] = np.inf
    W = np.ones((4, 32), dtype=np.float32)
    Bp = np.empty(panels_size(4, 32), dtype=np.float32)
    pack_panels(W.ravel(), 4, 32, Bp, False)
    C = np.empty((8, 32), dtype=np.float32)
    _run(8, 32, 4, A, 4, Bp, C, 32)
    assert np.isnan(C[2]).all() and np.isposinf(C[5]).all() and (C[0] == 4).all()


@njit
def _run_packed(M, N, K, A, lda, B, ldb, C, ldc, acc, S, fpp):
    gemm_packed(M, N, K, A.ctypes.data, lda, B.ctypes.data, ldb, C.ctypes.data, ldc, acc, S.ctypes.data, fpp)


@njit
def _call_packed(fn, M, N, K, A, lda, B, ldb, C, ldc, acc, S, fpp):
    call_packed(fn, M, N, K, A.ctypes.data, lda, B.ctypes.data, ldb, C.ctypes.data, ldc, acc, S.ctypes.data, fpp)


@pytest.mark.parametrize(
    "M,K,N",
    [(8, 4, 32), (5, 3, 7), (13, 17, 45), (768, 300, 64), (64, 600, 256), (3, 1, 1), (9, 0, 40), (100, 257, 33)],
)
@pytest.mark.parametrize("acc", [0, 1])
@pytest.mark.parametrize("by_address", [False, True])
def test_gemm_packed_matches_numpy(M, K, N, acc, by_address):
    """C (+)= A^T @ B with A stored [K, M] (a weight gradient's x^T), blocks of KC rows, partial
    panels; C's columns past N and rows past M stay untouched. by_address: the compiled C function
    the kernels call (``call_packed``)."""
    rng = np.random.default_rng(M * 7919 + K * 31 + N + acc)
    At = rng.normal(size=(K, M + 2)).astype(np.float32)  # stored [K, M] with a wider leading dimension
    B = rng.normal(size=(K, N + 3)).astype(np.float32)
    ldc = N + 4
    C0 = rng.normal(size=(M + 1, ldc)).astype(np.float32)
    C = C0.copy()
    S = np.full(gemm_scratch(M, N), np.nan, dtype=np.float32)
    if by_address:
        _call_packed(np.uint64(address("packed")), M, N, K, At, M + 2, B, N + 3, C, ldc, acc, S, np.uint64(address("panels")))
    else:
        _run_packed(M, N, K, At, M + 2, B, N + 3, C, ldc, acc, S, np.uint64(address("panels")))
    want = At[:, :M].T.astype(np.float64) @ B[:, :N].astype(np.float64) + (C0[:M, :N] if acc else 0)
    np.testing.assert_allclose(C[:M, :N], want, rtol=1e-5, atol=1e-5 * max(1, K))
    assert (C[:M, N:] == C0[:M, N:]).all() and (C[M] == C0[M]).all()


@pytest.mark.parametrize("M,K,N", [(96, 128, 32), (13, 300, 70), (128, 129, 96), (5, 3, 7)])
def test_gemm_packed_in_place_gives_the_packed_bytes(M, K, N):
    """Rows close enough together (``DIRECT_LD``): whole panels read in place, the rest packed; rows
    further apart: all of it packed. The same sums in the same order, so the same bytes."""
    rng = np.random.default_rng(M + K + N)
    At, B = rng.normal(size=(K, M)).astype(np.float32), rng.normal(size=(K, N)).astype(np.float32)
    C0 = rng.normal(size=(M, N)).astype(np.float32)
    out = []
    for ld in (max(M, N) + 3, DIRECT_LD + 1):  # in place, then packed
        Ap, Bp = np.zeros((K, ld), np.float32), np.zeros((K, ld), np.float32)
        Ap[:, :M], Bp[:, :N] = At, B
        C = C0.copy()
        _run_packed(M, N, K, Ap, ld, Bp, ld, C, N, 1, np.empty(gemm_scratch(M, N), np.float32), np.uint64(address("panels")))
        out.append(C.tobytes())
    assert out[0] == out[1]


def test_gemm_packed_keeps_nan_and_inf():
    At = np.ones((4, 8), dtype=np.float32)  # A^T: column 2 of A^T is row 2 of A
    At[1, 2] = np.nan
    At[3, 5] = np.inf
    B = np.ones((4, 40), dtype=np.float32)
    C = np.zeros((8, 40), dtype=np.float32)
    _run_packed(8, 40, 4, At, 8, B, 40, C, 40, 0, np.empty(gemm_scratch(8, 40), dtype=np.float32), np.uint64(address("panels")))
    assert np.isnan(C[2]).all() and np.isposinf(C[5]).all() and (C[0] == 4).all()


def test_tile_shape_follows_the_vector_registers():
    """AVX-512's 32 registers: 12-row tiles of two 16-float vectors; AVX2's (and SSE's) 16: 6-row tiles
    of two 8-float (4-float) vectors, which divide the 32-column panels."""
    assert tile_shape("+avx,+avx2,+fma,+avx512f,+avx512bw") == (16, (12, 4, 1))
    assert tile_shape("+avx,+avx2,+fma,-avx512f") == (8, (6, 4, 2, 1))
    assert tile_shape("+sse2,-avx,-avx2") == (4, (6, 4, 2, 1))
    for width, heights in (tile_shape("+avx512f"), tile_shape("+avx")):
        assert NR % (2 * width) == 0 and heights[-1] == 1


_NARROW = """
import sys
import numpy as np
from cellsearch.backends.cpu import microkernel as mk
sys.path.insert(0, {tests!r})
from test_microkernel import _products
print(mk._W, mk.SH)
sys.stdout.buffer.write(_products())
"""


def _products() -> bytes:
    """The bytes of a per-step GEMM and a weight gradient's (partial tiles and panels in both)."""
    rng = np.random.default_rng(5)
    M, K, N = 29, 70, 77
    A, W = rng.normal(size=(M, K)).astype(np.float32), rng.normal(size=(K, N)).astype(np.float32)
    Bp = np.empty(panels_size(K, N), np.float32)
    pack_panels(W.ravel(), K, N, Bp, False)
    C = np.zeros((M, padded(N)), np.float32)
    _run(M, N, K, A, K, Bp, C, padded(N))
    At, B = rng.normal(size=(K, M)).astype(np.float32), rng.normal(size=(K, N)).astype(np.float32)
    D = np.zeros((M, N), np.float32)
    for ld in (N, DIRECT_LD + 1):  # in place, then packed
        Ap, Bq = np.zeros((K, ld), np.float32), np.zeros((K, ld), np.float32)
        Ap[:, :M], Bq[:, :N] = At, B
        _run_packed(M, N, K, Ap, ld, Bq, ld, D, N, 1, np.empty(gemm_scratch(M, N), np.float32), np.uint64(address("panels")))
    return C.tobytes() + D.tobytes()


def test_a_narrower_tile_gives_the_same_bytes(tmp_path):
    """The tiles' shape follows the machine, but every element's sum runs over k in order: compiled for
    this CPU less its widest vectors (AVX-512, else AVX and FMA), in a fresh process, the GEMMs give
    this process's bytes."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from cellsearch.backends.cpu import microkernel

    flags = microkernel._features().split(",")  # what this process compiled for
    if "+avx" not in flags:
        pytest.skip("no vectors narrower than this CPU's to compile for")
    drop = ("+avx512",) if "+avx512f" in flags else ("+avx", "+fma", "+f16c", "+vaes", "+vpclmulqdq")
    narrow = ",".join("-" + f[1:] if f.startswith(drop) else f for f in flags)
    env = {**os.environ, "NUMBA_CPU_FEATURES": narrow, "NUMBA_CACHE_DIR": str(tmp_path)}
    code = _NARROW.format(tests=str(Path(__file__).parent))
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    shape, _, out = done.stdout.partition(b"\n")
    assert int(shape.split()[0]) < microkernel._W
    assert out == _products()
