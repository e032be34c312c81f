"""blas.Jobs / run_jobs (BLAS GEMMs on strided views at raw addresses, run by a chunk's thread)
against NumPy, and the BLAS whose threads the cpu kernel turns down being the one Numba calls."""

import itertools

import numpy as np
import pytest
from numba import njit

from cellsearch.backends.cpu.blas import Jobs, run_jobs
from cellsearch.backends.cpu.kernel import BLAS


@njit
def _run(table, chunk, ab):
    run_jobs(table, chunk, ab.ctypes.data, ab.itemsize)


def run(jobs, chunk=0):
    _run(jobs.table(), chunk, np.array((1, 0, 1, 1), dtype=jobs.dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("shape", [(7, 5, 3), (1, 9, 4), (9, 1, 4), (6, 6, 1), (130, 70, 33)])
def test_jobs_match_numpy(dtype, shape):
    M, N, K = shape
    rng = np.random.default_rng(0)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    for ta, tb, acc in itertools.product((False, True), (False, True), (False, True)):
        a = rng.normal(size=(K, M) if ta else (M, K)).astype(dtype)
        a = a.T if ta else a
        b = rng.normal(size=(N, K) if tb else (K, N)).astype(dtype)
        b = b.T if tb else b
        big = np.zeros((M, N + 3), dtype)  # out is a view with a leading dimension wider than N
        out = big[:, 1 : N + 1]
        out[...] = rng.normal(size=(M, N))
        want = a @ b + (out if acc else 0)
        jobs = Jobs(dtype)
        jobs.add(1, a, b, out, acc)
        run(jobs, chunk=0)  # not chunk 0's job: nothing happens
        assert not np.allclose(out, want, rtol=tol, atol=tol * K)
        run(jobs, chunk=1)
        np.testing.assert_allclose(out, want, rtol=tol, atol=tol * K, err_msg=f"ta={ta} tb={tb} acc={acc}")
        assert not big[:, 0].any() and not big[:, N + 1 :].any()  # nothing written outside the view


def test_jobs_on_sliced_views_in_order_and_refusals():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(40, 30))
    a, b = X[3:20, 2:12], X[5:15, 7:29]
    out = np.empty((17, 22))
    jobs = Jobs(np.float64)
    jobs.add(0, a, b, out)
    jobs.add(0, a, b, out, accumulate=True)  # jobs run in order: twice the product
    run(jobs)
    np.testing.assert_allclose(out, 2 * (a @ b), rtol=1e-12)
    with pytest.raises(ValueError, match="shapes"):
        jobs.add(0, a, a, out)
    with pytest.raises(ValueError, match="unit stride"):
        jobs.add(0, X[::2, ::2][:5, :5], X[:5, :5], np.empty((5, 5)))
    with pytest.raises(ValueError, match="unit column stride"):
        jobs.add(0, a, b, np.empty((22, 17)).T)
    empty = np.full((3, 4), 7.0)
    jobs.add(0, np.empty((3, 0)), np.empty((0, 4)), empty)  # K = 0: the product is zero
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
