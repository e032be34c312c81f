"""The executor's elementwise ops (``cpu/vector.py``) against NumPy doing the same arithmetic: every
length around the vector width (the whole-vector loop, the scalar rest, both, neither), both dtypes,
the backward's accumulation and zeroing, NaN and Inf passed through, operands that are the same block."""

from __future__ import annotations

import numpy as np
import pytest
from numba import njit

from cellsearch.backends.cpu import interp, vector
from cellsearch.backends.cpu.kernel import aligned

OPS = {
    "f_add": vector.f_add,
    "f_mul": vector.f_mul,
    "f_blend": vector.f_blend,
    "f_sigmoid": vector.f_sigmoid,
    "f_tanh": vector.f_tanh,
    "b_add": vector.b_add,
    "b_mul": vector.b_mul,
    "b_blend": vector.b_blend,
    "b_sigmoid": vector.b_sigmoid,
    "b_tanh": vector.b_tanh,
}


def _caller(op):
    @njit
    def call(n, p, R):
        op(n, p[0], p[1], p[2], p[3], p[4], p[5], p[6], R)

    return call


CALLERS = {name: _caller(op) for name, op in OPS.items()}


def _tanh32(v, R):
    """interp's float32 rational tanh, in NumPy float32 (the same operations in the same order)."""
    x = np.where(v > R[0], R[0], v)
    x = np.where(x < -R[0], -R[0], x)
    x2 = x * x
    p = x * (R[1] + x2 * (R[2] + x2 * (R[3] + x2 * (R[4] + x2 * (R[5] + x2 * (R[6] + x2 * R[7]))))))
    q = R[8] + x2 * (R[9] + x2 * (R[10] + x2 * R[11]))
    return p / q


def _expected(name, ops, R):
    """What the op leaves in its operands (a list of arrays, p_0 first)."""
    one, half = R[vector.R_ONE], R[vector.R_HALF]
    tanh = _tanh32 if R.dtype == np.float32 else (lambda v, R: np.tanh(v))
    out = [o.copy() for o in ops]
    if name.startswith("f_"):
        a, b, c = (ops[k] if k < len(ops) else None for k in (1, 2, 3))
        out[0] = {
            "f_add": lambda: a + b,
            "f_mul": lambda: a * b,
            "f_blend": lambda: c * a + (one - c) * b,
            "f_sigmoid": lambda: half * tanh(half * a, R) + half,
            "f_tanh": lambda: tanh(a, R),
        }[name]()
        return out
    g = ops[0]
    out[0] = np.zeros_like(g)
    if name == "b_add":
        out[1] = ops[1] + g
        out[2] = ops[2] + g
    elif name == "b_mul":
        out[1] = ops[1] + g * ops[4]
        out[2] = ops[2] + g * ops[3]
    elif name == "b_blend":
        w = ops[6]
        out[1] = ops[1] + g * w
        out[2] = ops[2] + g * (one - w)
        out[3] = ops[3] + g * (ops[4] - ops[5])
    elif name == "b_sigmoid":
        y = ops[2]
        out[1] = ops[1] + g * y * (one - y)
    else:
        y = ops[2]
        out[1] = ops[1] + g * (one - y * y)
    return out


N_OPERANDS = {"f_add": 3, "f_mul": 3, "f_blend": 4, "f_sigmoid": 2, "f_tanh": 2, "b_add": 3, "b_mul": 5, "b_blend": 7,
              "b_sigmoid": 3, "b_tanh": 3}  # fmt: skip


def _run(name, ops, R):
    arena = aligned(sum(o.size for o in ops) + 16 * len(ops), R.dtype)
    arena[:] = -7.0  # between the operands: must stay untouched
    views, at = [], 1  # start one element past a cache line: the vectors straddle lines
    for o in ops:
        arena[at : at + o.size] = o
        views.append(arena[at : at + o.size])
        at += o.size + 3
    p = np.zeros(7, dtype=np.uint64)
    p[: len(ops)] = [v.ctypes.data for v in views]
    before = arena.copy()
    CALLERS[name](ops[0].size, p, R)
    mask = np.ones(arena.size, bool)
    at = 1
    for o in ops:
        mask[at : at + o.size] = False
        at += o.size + 3
    assert np.array_equal(arena[mask], before[mask]), "an element outside the operands was written"
    return [v.copy() for v in views]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n", [0, 1, 7, 8, 15, 16, 17, 33, 100])
@pytest.mark.parametrize("name", sorted(OPS))
def test_op_matches_numpy(name, n, dtype):
    rng = np.random.default_rng(n)
    R = interp.constants(np.dtype(dtype))
    ops = [rng.normal(size=n).astype(dtype) * 4 for _ in range(N_OPERANDS[name])]
    if name in ("b_sigmoid", "b_tanh"):
        ops[2] = np.tanh(ops[2]).astype(dtype)  # an activation's output
    got = _run(name, ops, R)
    want = _expected(name, ops, R)
    exact = dtype == np.float32 or ("sigmoid" not in name and "tanh" not in name) or name.startswith("b_")
    for k, (g, w) in enumerate(zip(got, want, strict=True)):
        if exact:  # the same IEEE operations in the same order: the same bits
            np.testing.assert_array_equal(g, w, err_msg=f"{name} operand {k}")
        else:  # float64 tanh: libm's against NumPy's
            np.testing.assert_allclose(g, w, rtol=1e-15, atol=1e-15, err_msg=f"{name} operand {k}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", ["f_sigmoid", "f_tanh", "f_add", "f_blend"])
def test_nan_and_inf_propagate(name, dtype):
    """A diverging candidate must be detected: NaN stays NaN, tanh(+-Inf) = +-1, sigmoid(Inf) = 1."""
    R = interp.constants(np.dtype(dtype))
    a = np.array([np.nan, np.inf, -np.inf, 0.5] * 5, dtype=dtype)
    ops = [np.zeros_like(a), a, np.ones_like(a), np.full_like(a, 0.25)][: N_OPERANDS[name]]
    got = _run(name, ops, R)[0]
    assert np.isnan(got[0::4]).all()
    if name == "f_tanh":
        assert (got[1::4] == 1).all() and (got[2::4] == -1).all()
    if name == "f_sigmoid":
        assert (got[1::4] == 1).all() and (got[2::4] == 0).all()


def test_backward_operands_that_are_the_same_block():
    """mul(x, x) and add(x, x): both gradients go to one slot, each term added in turn."""
    R = interp.constants(np.dtype(np.float32))
    rng = np.random.default_rng(1)
    n = 37
    g, acc, x = (rng.normal(size=n).astype(np.float32) for _ in range(3))
    arena = aligned(3 * n, np.float32)
    arena[:n], arena[n : 2 * n], arena[2 * n :] = g, acc, x
    base, isz = arena.ctypes.data, 4
    p = np.array([base, base + n * isz, base + n * isz, base + 2 * n * isz, base + 2 * n * isz, 0, 0], dtype=np.uint64)
    CALLERS["b_mul"](n, p, R)
    np.testing.assert_array_equal(arena[n : 2 * n], (acc + g * x) + g * x)
    assert not arena[:n].any()


def test_aligned_arrays_start_on_a_cache_line():
    for shape in [(3,), (2, 1000), (5, 7, 9)]:
        for zero in (False, True):
            a = aligned(shape, np.float32, zero=zero)
            assert a.shape == shape and a.ctypes.data % 64 == 0 and a.flags.c_contiguous
            if zero:
                assert not a.any()


ROW_OPS = {
    "copy_rows": (vector.copy_rows, 2),
    "add_rows": (vector.add_rows, 3),
    "add3_rows": (vector.add3_rows, 4),
    "add_scalar_rows": (vector.add_scalar_rows, 3),
    "flush_copy_rows": (vector.flush_copy_rows, 2),
    "b_bias_rows": (vector.b_bias_rows, 2),
    "b_loadp_rows": (vector.b_loadp_rows, 3),
    "b_loadp_bias_rows": (vector.b_loadp_bias_rows, 2),
}


def _row_caller(op):
    @njit
    def call(n, rows, p, s, R):
        op(n, rows, p[0], s[0], p[1], s[1], p[2], s[2], p[3], s[3], R)

    return call


ROW_CALLERS = {name: _row_caller(op) for name, (op, _) in ROW_OPS.items()}


def _flush(v, R):
    return np.where(np.abs(v) < R[vector.R_TINY], R[vector.R_ZERO], v)


def _row_expected(name, rows, R):
    """Row by row, in order, as the scalar loops did (a row stride of 0: the same row each time)."""
    out = [r.copy() for r in rows]  # each [rows, n] (one row where its stride is 0)
    for i in range(out[0].shape[0]):

        def at(k, out=out, i=i):
            return out[k][i if out[k].shape[0] > 1 else 0]

        if name == "copy_rows":
            at(0)[:] = at(1)
        elif name == "add_rows":
            at(0)[:] = at(1) + at(2)
        elif name == "add3_rows":
            at(0)[:] = at(1) + (at(2) + at(3))
        elif name == "add_scalar_rows":
            at(0)[:] = at(1) + at(2)[0]
        elif name == "flush_copy_rows":
            at(0)[:] = _flush(at(1), R)
        elif name == "b_bias_rows":
            at(1)[:] = at(1) + at(0)
            at(0)[:] = 0
        elif name == "b_loadp_rows":
            g = _flush(at(0), R)
            at(1)[:] = g
            at(2)[:] = at(2) + g
            at(0)[:] = 0
        else:  # b_loadp_bias_rows
            at(1)[:] = at(1) + _flush(at(0), R)
            at(0)[:] = 0
    return out


# which operands are one row shared by all rows (stride 0): a bias, a constant, a bias's gradient
SHARED = {"add3_rows": {3}, "add_scalar_rows": {2}, "b_bias_rows": {1}, "b_loadp_rows": {2}, "b_loadp_bias_rows": {1}}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n,rows", [(0, 3), (5, 0), (16, 1), (17, 4), (32, 5), (40, 3)])
@pytest.mark.parametrize("name", sorted(ROW_OPS))
def test_row_op_matches_numpy(name, n, rows, dtype):
    rng = np.random.default_rng(n * 10 + rows)
    R = interp.constants(np.dtype(dtype))
    k = ROW_OPS[name][1]
    shared = SHARED.get(name, set())
    ld = [n + 3 * (i + 1) for i in range(k)]  # each operand's row stride: its rows apart, gaps between
    mats = [rng.normal(size=(1 if i in shared else rows, n)).astype(dtype) for i in range(k)]
    if name == "add_scalar_rows":  # the constant: one element, whatever n
        mats[2] = np.full((1, max(n, 1)), 0.625, dtype=dtype)
    if "flush" in name or "loadp" in name:
        mats[0].flat[::3] = np.finfo(dtype).tiny / 4  # denormals: flushed to zero
        if mats[0].size > 1:
            mats[0].flat[1] = np.nan  # NaN is kept
    sizes = [ld[i] * max(m.shape[0], 1) for i, m in enumerate(mats)]
    arena = aligned(sum(sizes) + 8 * k, R.dtype)
    arena[:] = -7.0
    starts, at = [], 1
    for i, m in enumerate(mats):
        starts.append(at)
        for r in range(m.shape[0]):
            arena[at + r * ld[i] : at + r * ld[i] + m.shape[1]] = m[r]
        at += sizes[i] + 5
    before = arena.copy()
    isz = arena.itemsize
    p = np.zeros(4, dtype=np.uint64)
    s = np.zeros(4, dtype=np.int64)
    for i in range(k):
        p[i] = arena.ctypes.data + starts[i] * isz
        s[i] = 0 if i in shared else ld[i]
    ROW_CALLERS[name](n, rows, p, s, R)
    want = _row_expected(name, mats, R) if rows else mats
    inside = np.zeros(arena.size, bool)
    for i, m in enumerate(want):
        for r in range(m.shape[0]):
            lo = starts[i] + r * ld[i]
            np.testing.assert_array_equal(arena[lo : lo + m.shape[1]], m[r], err_msg=f"{name} operand {i} row {r}")
            inside[lo : lo + m.shape[1]] = True
    assert np.array_equal(arena[~inside], before[~inside]), "an element outside the operands' rows was written"
