"""blas.Jobs / run_jobs (GEMMs on strided views at raw addresses, run by a chunk's thread for a block
of steps: float32 through the microkernel, float64 through BLAS) against NumPy, and the BLAS whose
threads the cpu kernel turns down being the one Numba calls."""

import itertools

import numpy as np
import pytest
from numba import njit

from cellsearch.backends.cpu.blas import Jobs, run_jobs
from cellsearch.backends.cpu.kernel import BLAS
from cellsearch.backends.cpu.microkernel import address, gemm_scratch


@njit
def _run(table, chunk, t0, n, ab, fpp, fpk, S):
    run_jobs(table.ctypes.data, table.shape[0], chunk, t0, n, ab.ctypes.data, ab.itemsize, fpp, fpk, S.ctypes.data)


def run(jobs, chunk=0, t0=0, n=1):
    S = np.empty(gemm_scratch(*jobs.widest) if jobs.widest[0] else 1, dtype=np.float32)
    _run(
        jobs.table(),
        chunk,
        t0,
        n,
        np.array((1, 0, 1, 1), dtype=jobs.dtype),
        np.uint64(address("panels")),
        np.uint64(address("packed")),
        S,
    )


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(7, 5, 3), (1, 9, 4), (9, 1, 4), (6, 6, 1), (130, 70, 33)])
def test_jobs_match_numpy(dtype, shape):
    M, N, K = shape
    rng = np.random.default_rng(0)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    for ta, acc in itertools.product((False, True), (False, True)):
        a = rng.normal(size=(K, M + 1) if ta else (M, K + 1)).astype(dtype)[:, 1:]  # leading dimensions wider than the rows
        b = rng.normal(size=(K, N + 2)).astype(dtype)[:, :N]
        big = np.zeros((M, N + 3), dtype)
        out = big[:, 1 : N + 1]
        out[...] = rng.normal(size=(M, N))
        want = (a.T if ta else a) @ b + (out if acc else 0)
        jobs = Jobs(dtype)
        jobs.add(1, a, b, out, m=(M, 0), k=(K, 0), strides=(0, 0, 0), transposed=ta, steps=1, accumulate=acc)
        run(jobs, chunk=0)  # not chunk 0's job: nothing happens
        assert not np.allclose(out, want, rtol=tol, atol=tol * K)
        run(jobs, chunk=1)
        np.testing.assert_allclose(out, want, rtol=tol, atol=tol * K, err_msg=f"ta={ta} acc={acc}")
        assert not big[:, 0].any() and not big[:, N + 1 :].any()  # nothing written outside the view


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
def test_jobs_run_per_block_of_steps(dtype):
    """As the backward runs them: a weight gradient summed over blocks of steps (K grows with the
    block, B moves with its first step) and an input gradient written per block (M grows, C moves)."""
    rng = np.random.default_rng(3)
    T, Bp, I, H = 7, 3, 5, 6
    X = rng.normal(size=(T * Bp, I)).astype(dtype)
    dz = rng.normal(size=(T * Bp, H)).astype(dtype)  # the whole walk's gradients (a ring would hold a block)
    Wt = rng.normal(size=(H, I)).astype(dtype)
    dW = np.zeros((H, I), dtype)
    dX = np.zeros((T * Bp, I), dtype)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    for t0, n in ((5, 2), (2, 3), (0, 2)):  # blocks of up to 3 steps, last block first
        ring = np.ascontiguousarray(dz[t0 * Bp : (t0 + n) * Bp])
        jobs = Jobs(dtype)
        jobs.add(0, ring, X, dW, m=(H, 0), k=(0, Bp), strides=(0, Bp * I, 0), transposed=True, steps=3)
        jobs.add(0, ring, Wt, dX, m=(0, Bp), k=(H, 0), strides=(0, 0, Bp * I), transposed=False, steps=3)
        run(jobs, t0=t0, n=n)
    np.testing.assert_allclose(dW, dz.T @ X, rtol=tol, atol=tol * T * Bp)
    np.testing.assert_allclose(dX, dz @ Wt, rtol=tol, atol=tol * H)


def test_jobs_refuse_what_they_cannot_address():
    jobs = Jobs(np.float64)
    X = np.zeros((6, 6))
    kw = {"m": (3, 0), "k": (3, 0), "strides": (0, 0, 0), "transposed": False, "steps": 1}
    with pytest.raises(ValueError, match="unit column stride"):
        jobs.add(0, X[::2, ::2], X[:3, :3], np.empty((3, 3)), **kw)
    with pytest.raises(ValueError, match="float64"):
        jobs.add(0, X.astype(np.float32)[:3, :3], X[:3, :3], np.empty((3, 3)), **kw)
    empty = np.full((3, 4), 7.0)
    jobs.add(0, np.empty((3, 0)), np.empty((0, 4)), empty, **{**kw, "k": (0, 0)}, accumulate=False)  # K = 0: C = 0
    run(jobs)
    assert not empty.any()


def test_the_blas_turned_down_is_numbas():
    """Numba's np.dot calls SciPy's OpenBLAS; NumPy's copy (numpy.libs, also 'libscipy_openblas64_')
    is another library: setting its threads does nothing for the kernels (it did, once)."""
    lib = BLAS.lib()
    if lib is None:
        pytest.skip("no OpenBLAS controlled by threadpoolctl here")
    assert "scipy.libs" in lib.filepath.replace("\\", "/")
    before = lib.get_num_threads()
    with BLAS.single(True):
        assert lib.get_num_threads() == 1
    assert lib.get_num_threads() == before
