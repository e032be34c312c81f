"""Every compiled backend against the reference, forward and backward, on every zoo cell and on 200
random cells, in float64 and float32."""

import numpy as np
import pytest

from cellsearch import compile, init_params, zoo
from cellsearch.ir.random import random_cell

BACKENDS = ["cpu"]
# the cpu backend's one-thread path (its default); test_cpu_batch_split_over_threads checks the split
ONE_THREAD = {"cpu": {"threads": 1}}
# float64 must agree to rounding; float32 to its precision over short sequences
TOL = {np.float64: 1e-10, np.float32: 2e-4}


def compare(name, got, want, tol):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape}"
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    err = np.abs(got - want) / scale
    if not np.all(err <= tol):
        bad = np.argwhere(err > tol)[:5]
        detail = ", ".join(f"{tuple(i)}: {got[tuple(i)]:.8g} vs {want[tuple(i)]:.8g}" for i in bad)
        raise AssertionError(f"{name}: {len(np.argwhere(err > tol))} mismatches (scaled tol {tol:g}); first: {detail}")


def check(cell, backend, dtype, seed, T=6, B=3, I=4, H=5, **options):
    rng = np.random.default_rng(seed)
    if cell.x_elementwise:
        I = H
    params = init_params(cell, I, H, rng)
    x = rng.normal(scale=0.5, size=(T, B, I))
    s0 = {s: rng.normal(scale=0.5, size=(B, H)) for s in cell.states}
    d_out = rng.normal(size=(T, B, H))
    d_state = {s: rng.normal(size=(B, H)) for s in cell.states}
    ref = compile(cell, "reference")
    fr = ref.forward(params, x, s0)
    gr = ref.backward(params, fr.tape, d_out, d_state)
    kern = compile(cell, backend, dtype, **options)
    p_cast = {k: v.astype(dtype) for k, v in params.items()}
    f = kern.forward(p_cast, x.astype(dtype), {k: v.astype(dtype) for k, v in s0.items()})
    g = kern.backward(p_cast, f.tape, d_out.astype(dtype), {k: v.astype(dtype) for k, v in d_state.items()})
    tol = TOL[dtype]
    values = [fr.outputs, gr.x, *gr.params.values(), *fr.states.values(), *gr.state0.values()]
    if not all(np.isfinite(v).all() for v in values):  # the reference itself overflowed: nothing to compare
        return False
    growth = max(float(np.abs(v).max()) for v in values)
    if dtype == np.float32 and growth > 1e30:  # beyond float32's range: nothing to compare
        return False
    if growth > 1e3:  # exponential growth amplifies rounding-order differences: compare more loosely
        tol *= growth
    where = f"{cell.name} [{backend}, {np.dtype(dtype).name}]"
    assert f.outputs.dtype == dtype
    compare(f"{where} outputs", f.outputs, fr.outputs, tol)
    for s in cell.states:
        compare(f"{where} state {s}", f.states[s], fr.states[s], tol)
        compare(f"{where} d{s}0", g.state0[s], gr.state0[s], tol)
    compare(f"{where} dx", g.x, gr.x, tol)
    assert set(g.params) == set(gr.params)
    for name in gr.params:
        compare(f"{where} d{name}", g.params[name], gr.params[name], tol)
    return True


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", zoo.names())
def test_zoo_cell(name, backend, dtype):
    check(zoo.get(name), backend, dtype, seed=1, **ONE_THREAD[backend])


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_200_random_cells(backend, dtype):
    compared = 0
    for seed in range(200):
        cell = random_cell(np.random.default_rng(seed), name=f"random{seed}")
        compared += check(cell, backend, dtype, seed=seed, **ONE_THREAD[backend])
    assert compared >= 190  # only cells that overflow float32 within 6 steps are not compared


def test_the_check_has_teeth():
    """A kernel that is slightly wrong fails the comparison."""
    with pytest.raises(AssertionError, match="mismatches"):
        compare("x", np.array([1.0, 2.0]), np.array([1.0, 2.001]), 1e-10)


@pytest.mark.parametrize("name", ["mut1", "lstm"])  # mut1: x used elementwise and through linears
@pytest.mark.parametrize("backend", ["reference", *BACKENDS, "cpu-split"])
def test_input_gradient_can_be_skipped(backend, name):
    cell = zoo.get(name)
    rng = np.random.default_rng(0)
    params = init_params(cell, 4, 4, rng)
    x = rng.normal(size=(5, 3, 4))
    kern = compile(cell, "cpu", np.float64, threads=2) if backend == "cpu-split" else compile(cell, backend, np.float64)
    full = kern.backward(params, kern.forward(params, x).tape, np.ones((5, 3, 4)))
    part = kern.backward(params, kern.forward(params, x).tape, np.ones((5, 3, 4)), grad_x=False)
    assert part.x is None and full.x is not None
    for name in full.params:
        np.testing.assert_allclose(part.params[name], full.params[name], rtol=1e-12)


def test_a_stale_tape_is_refused():
    from cellsearch import ShapeError

    cell = zoo.get("gru")
    params = init_params(cell, 3, 4, np.random.default_rng(0))
    kern = compile(cell, "cpu")
    x = np.ones((2, 1, 3), dtype=np.float32)
    old = kern.forward(params, x).tape
    kern.forward(params, x)
    with pytest.raises(ShapeError, match="stale"):
        kern.backward(params, old, None)


EDGE_CELLS = {
    # two states share one update: one tape slot cannot hold both initial states
    "shared_update": "state(c, h)\nc = tanh(linear(x, h, c))\nh = c\nreturn h\n",
    # a delay line: b's update is a's previous value (a leaf)
    "delay_line": "state(a, b)\na_old = a\na = tanh(linear(x, a, b))\nb = a_old\nreturn a\n",
    # a state that takes the input itself (needs I == H)
    "input_state": "state(h, m)\nh = tanh(linear(x, h, m))\nm = x\nreturn h\n",
    # the output is not a state
    "output_not_state": "state(c)\nc = sigmoid(linear(x, c)) * c + tanh(linear(x))\ny = tanh(c) * x\nreturn y\n",
    # linears without a bias: an input-GEMM block with none (x and h; x only, beside biased blocks),
    # and recurrent ones that start from 0 (on h, and mid-step on a product)
    "no_bias_x_h": "state(h)\nh = tanh(linear(x, h, bias=none))\nreturn h\n",
    "no_bias_mixed": (
        "state(c, h)\ni = sigmoid(linear(x, h, bias=none))\nf = sigmoid(linear(h, bias=none) + linear(x))\n"
        "r = sigmoid(linear(x, bias=none))\nc = f * c + i * tanh(linear(x, bias=none) + linear(r * h, bias=none))\n"
        "h = tanh(c) * sigmoid(linear(x, h, c, bias=-0.5))\nreturn h\n"
    ),
    # a source twice in one linear: its two weights summed into one block (x's, then h's)
    "x_twice": "state(h)\nh = tanh(linear(x, x, h))\nreturn h\n",
    "h_twice": "state(c, h)\nc = sigmoid(linear(x, h, h)) * c + tanh(linear(c, x))\nh = tanh(c)\nreturn h\n",
}


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(EDGE_CELLS))
def test_edge_cells(name, backend, dtype):
    from cellsearch import parse

    assert check(parse(EDGE_CELLS[name], name=name), backend, dtype, seed=3, I=5, H=5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", zoo.names())
def test_cpu_batch_split_over_threads(name, dtype):
    """The batch split into chunks that run the time loop on parallel threads, each in buffers of its
    own, gives the same answer: even and uneven chunks, and more threads than rows."""
    for B, threads in ((5, 2), (6, 3), (2, 4)):
        assert check(zoo.get(name), "cpu", dtype, seed=2, B=B, threads=threads)


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_cpu_batch_split_random_cells(dtype):
    compared = 0
    for seed in range(40):
        cell = random_cell(np.random.default_rng(1000 + seed), name=f"random{seed}")
        compared += check(cell, "cpu", dtype, seed=seed, B=7, threads=2)
    assert compared >= 36


def test_cpu_split_reuses_its_buffers_with_unused_rows_zero():
    """Uneven chunks leave a row of the first chunk's buffers unused: it must stay out of the weight
    gradients call after call, as the kernel keeps its buffers between calls of one shape."""
    cell = zoo.get("gru")
    ref, kern = compile(cell, "reference"), compile(cell, "cpu", np.float64, threads=2)
    rng = np.random.default_rng(5)
    for _ in range(3):
        params = init_params(cell, 4, 5, rng)
        x, d_out = rng.normal(size=(6, 5, 4)), rng.normal(size=(6, 5, 5))
        gr = ref.backward(params, ref.forward(params, x).tape, d_out)
        g = kern.backward(params, kern.forward(params, x).tape, d_out)
        compare("dx", g.x, gr.x, 1e-10)
        for name in gr.params:
            compare(f"d{name}", g.params[name], gr.params[name], 1e-10)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("name", ["lstm", "mut1"])  # mut1: x also used elementwise (the walk writes dX)
def test_cpu_reuses_its_buffers_call_after_call(name, dtype, threads):
    """The kernel keeps its gradient buffers and its weight-gradient jobs between calls of one shape:
    each call's x (one thread reads the caller's in place), weights and wish for x's gradient are its
    own, and the gradients it returns are new arrays that later calls leave alone."""
    cell = zoo.get(name)
    ref, kern = compile(cell, "reference"), compile(cell, "cpu", dtype, threads=threads)
    rng = np.random.default_rng(7)
    kept = []
    for grad_x in (True, False, False, True, True):
        params = init_params(cell, 4, 4, rng)
        x, d_out = rng.normal(size=(6, 3, 4)), rng.normal(size=(6, 3, 4))
        gr = ref.backward(params, ref.forward(params, x).tape, d_out)
        p = {k: v.astype(dtype) for k, v in params.items()}
        g = kern.backward(p, kern.forward(p, x.astype(dtype)).tape, d_out.astype(dtype), grad_x=grad_x)
        assert (g.x is not None) == grad_x
        kept.append((g, gr))
    for call, (g, gr) in enumerate(kept):  # checked after all the calls: none wrote into an earlier one's
        where = f"{name} call {call}"
        if g.x is not None:
            compare(f"{where} dx", g.x, gr.x, TOL[dtype])
        for p_name in gr.params:
            compare(f"{where} d{p_name}", g.params[p_name], gr.params[p_name], TOL[dtype])
        for s in cell.states:
            compare(f"{where} d{s}0", g.state0[s], gr.state0[s], TOL[dtype])


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_cpu_reads_parameters_updated_in_place(dtype, threads):
    """A training loop updates its parameters in place: the kernel, which keeps the addresses of the
    arrays its last call was given, reads their new values at every call. Arrays it must convert (of
    another dtype, or not contiguous) are converted at every call; a wrong shape is refused."""
    from cellsearch import ShapeError, parse

    cell = parse(EDGE_CELLS["h_twice"], name="h_twice")
    ref, kern = compile(cell, "reference"), compile(cell, "cpu", dtype, threads=threads)
    rng = np.random.default_rng(11)
    params = {k: v.astype(dtype) for k, v in init_params(cell, 4, 5, rng).items()}
    x, d_out = rng.normal(size=(6, 3, 4)), rng.normal(size=(6, 3, 5))
    for step in range(4):
        given = dict(params)
        if step == 2:  # one converted from float64, one a transposed view
            name, other = sorted(given)[:2]
            given[name] = given[name].astype(np.float64)
            given[other] = np.ascontiguousarray(given[other].T).T
        p64 = {k: np.asarray(v, dtype=np.float64) for k, v in given.items()}
        gr = ref.backward(p64, ref.forward(p64, x).tape, d_out)
        f = kern.forward(given, x.astype(dtype))
        g = kern.backward(given, f.tape, d_out.astype(dtype))
        compare(f"step {step} output", f.outputs, ref.forward(p64, x).outputs, TOL[dtype])
        for name in gr.params:
            compare(f"step {step} d{name}", g.params[name], gr.params[name], TOL[dtype])
        for v in params.values():  # an optimiser's step, in place
            v *= dtype(0.8)
            v += rng.normal(size=v.shape).astype(dtype) * dtype(0.3)
    bad = dict(params)
    name = next(iter(bad))
    bad[name] = np.zeros((*bad[name].shape, 1), dtype=dtype)
    with pytest.raises(ShapeError):
        kern.backward(bad, f.tape, d_out.astype(dtype))


@pytest.mark.parametrize("backend", ["reference", *BACKENDS])
def test_bad_initial_states_are_refused(backend):
    from cellsearch import ShapeError

    cell = zoo.get("lstm")
    params = init_params(cell, 3, 4, np.random.default_rng(0))
    kern = compile(cell, backend)
    x = np.ones((2, 5, 3))
    with pytest.raises(ShapeError, match="unknown states"):
        kern.forward(params, x, {"m": np.zeros((5, 4))})
    with pytest.raises(ShapeError, match="initial state 'c' has shape"):
        kern.forward(params, x, {"c": np.zeros((4, 4))})


def test_cpu_gradient_slots_are_shared():
    """The backward keeps one G slot per group of gradients never live at once (the conformance tests
    above check the answers): fewer slots than nodes for the zoo's gated cells."""
    from cellsearch.backends.cpu.kernel import gradient_slots
    from cellsearch.lowering import lower

    for name, most in (("lstm", 6), ("gru", 6), ("rnn", 2)):
        plan = lower(zoo.get(name))
        slot, n = gradient_slots(plan)
        assert n <= most < plan.n_slots, (name, n, plan.n_slots)
        used = {slot[v] for ins in plan.program for v in (ins.dst, ins.a, ins.b, ins.c) if v >= 0}
        assert used == set(range(n))


@pytest.mark.parametrize("H", [32, 40, 64])
@pytest.mark.parametrize("threads", [1, 2])
def test_cpu_float32_at_panel_widths(H, threads):
    """Hidden sizes that fill the microkernel's 32-column panels (the backward's GEMM then adds into
    the source's gradient directly) or leave a partial one, over blocks of several steps (B = 5 rows
    a chunk: 13 steps a block) and the batch split: the paths that H = 5 above never takes."""
    cells = [zoo.get("lstm"), zoo.get("gru"), zoo.get("lstm_peephole")]
    cells += [random_cell(np.random.default_rng(1000 + s), name=f"random{s}") for s in range(6)]
    compared = sum(check(c, "cpu", np.float32, seed=7, T=15, B=5 * threads, I=7, H=H, threads=threads) for c in cells)
    assert compared >= len(cells) - 1


def _run_bytes(cell, dtype, threads, seed, T=5, B=7, I=4, H=6):
    """Every array a forward and backward return, as bytes (the input's gradient included)."""
    rng = np.random.default_rng(seed)
    I = H if cell.x_elementwise else I
    params = {k: v.astype(dtype) for k, v in init_params(cell, I, H, rng).items()}
    x = rng.normal(scale=0.5, size=(T, B, I)).astype(dtype)
    s0 = {s: rng.normal(scale=0.5, size=(B, H)).astype(dtype) for s in cell.states}
    kern = compile(cell, "cpu", dtype, threads=threads)
    f = kern.forward(params, x, s0)
    g = kern.backward(params, f.tape, rng.normal(size=(T, B, H)).astype(dtype), {s: v * 0.5 for s, v in s0.items()})
    arrays = [f.outputs, g.x, *(f.states[s] for s in cell.states), *(g.state0[s] for s in cell.states)]
    return [a.tobytes() for a in arrays] + [g.params[n].tobytes() for n in sorted(g.params)]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
def test_cpu_row_tiles_give_the_same_bits(dtype, threads, monkeypatch):
    """The ops between GEMMs run a tile of rows at a time (``kernel.tile_rows``): every op's values
    and gradients row by row as one pass over all rows gives them, so the same bytes, with tiles of
    1 and 2 rows (a short last tile) against one tile for all rows: zoo cells and random cells."""
    from cellsearch.backends.cpu import kernel

    cells = [zoo.get(n) for n in zoo.names()] + [random_cell(np.random.default_rng(2000 + s)) for s in range(20)]
    for cell in cells:
        monkeypatch.setattr(kernel, "TILE_ELEMENTS", 1 << 30)
        whole = _run_bytes(cell, dtype, threads, seed=4)
        for per_tile in (6, 12):  # H = 6: 1 and 2 rows
            monkeypatch.setattr(kernel, "TILE_ELEMENTS", per_tile)
            assert _run_bytes(cell, dtype, threads, seed=4) == whole, f"{cell.name}: tiles of {per_tile // 6} rows"
