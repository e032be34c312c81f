"""The cuda backend against the reference: every zoo cell, random cells and the edge cells, forward
and backward, float64 and float32, on tiny shapes. On a machine without a GPU these run in Numba's
CUDA simulator (NUMBA_ENABLE_CUDASIM=1, as .ci/run does); without either they skip. Also: launch
geometries, the tiled GEMM at the GPU's tile size, the population runner, NaN, the one-line error
without CUDA, a model trained on it, and (with NVVM installed) every kernel compiled to PTX."""

import os
import subprocess
import sys

import numpy as np
import pytest

try:  # (module-level: the simulator swaps a kernel's global ``cuda`` for its fake module)
    from numba import cuda
except ImportError:
    cuda = None
from test_conformance import EDGE_CELLS, check

from cellsearch import compile, init_params, parse, zoo
from cellsearch.ir.random import random_cell

pytestmark = pytest.mark.cuda


def _why_not() -> str | None:
    try:
        from numba import config, cuda
    except ImportError:
        return "numba-cuda is not installed (the cuda extra)"
    if config.ENABLE_CUDASIM or cuda.is_available():
        return None
    return "no GPU here; NUMBA_ENABLE_CUDASIM=1 runs these in Numba's CUDA simulator"


WHY_NOT = _why_not()
needs_cuda = pytest.mark.skipif(WHY_NOT is not None, reason=WHY_NOT or "")
SIMULATED = os.environ.get("NUMBA_ENABLE_CUDASIM", "") not in ("", "0")
DTYPES = pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["f64", "f32"])
TINY = {"T": 4, "B": 2, "I": 3, "H": 3}  # the simulator runs every GPU thread as a Python thread


@needs_cuda
@DTYPES
@pytest.mark.parametrize("name", zoo.names())
def test_zoo_cell(name, dtype):
    assert check(zoo.get(name), "cuda", dtype, seed=1, **TINY)


@needs_cuda
@DTYPES
def test_random_cells(dtype):
    compared = 0
    for seed in range(12):
        cell = random_cell(np.random.default_rng(seed), name=f"random{seed}")
        compared += check(cell, "cuda", dtype, seed=seed, **TINY)
    assert compared >= 11


@needs_cuda
@DTYPES
@pytest.mark.parametrize("name", list(EDGE_CELLS))
def test_edge_cells(name, dtype):
    assert check(parse(EDGE_CELLS[name], name=name), "cuda", dtype, seed=3, T=4, B=2, I=3, H=3)


GEOMETRIES = {
    "rows1": {"schedule": "rows", "rows_per_block": 1},
    "rows2-t2": {"schedule": "rows", "rows_per_block": 2, "threads_per_block": 2},
    "rows4-t1": {"schedule": "rows", "rows_per_block": 4, "threads_per_block": 1},
    "rows8-t3": {"schedule": "rows", "rows_per_block": 8, "threads_per_block": 3},
    "units": {"schedule": "units"},  # warp dot products: 16 forward columns in two passes of 8, 3 rows in a pass of 4
    "units3-nocache": {"schedule": "units", "units_per_block": 3, "weight_cache": False},  # a partial last group
    "units2-t3": {"schedule": "units", "units_per_block": 2, "threads_per_block": 3, "warp_dots": False},
    "units1-atomic": {"schedule": "units", "units_per_block": 1, "barrier": "atomic"},
    "units-grid": {"schedule": "units", "barrier": "grid"},
    "units-t5": {"schedule": "units", "threads_per_block": 5},  # warp dots: rounded up to a warp
    "units-t5-thread": {"schedule": "units", "threads_per_block": 5, "warp_dots": False},
    "units-novalues": {"schedule": "units", "value_cache": False},
    "units-global": {"schedule": "units", "value_cache": False, "weight_cache": False},
    "units-warp1-4": {"schedule": "units", "warp_rows": 1, "warp_loads": 4},
    "units-warp2-8": {"schedule": "units", "warp_rows": 2, "warp_loads": 8},
    "units-warp4-4-global": {"schedule": "units", "warp_rows": 4, "warp_loads": 4, "weight_cache": False, "units_per_block": 3},
    "units-warp1-16-novalues": {"schedule": "units", "warp_rows": 1, "warp_loads": 16, "value_cache": False},
    "rows2-unroll8": {"schedule": "rows", "rows_per_block": 2, "dot_unroll": 8},  # H=4: the 4H-wide backward dot
    "units-unroll8": {"schedule": "units", "dot_unroll": 8, "warp_dots": False},
    "units-global-unroll8": {
        "schedule": "units",
        "value_cache": False,
        "weight_cache": False,
        "dot_unroll": 8,
        "warp_dots": False,
    },
    "units-split": {
        "schedule": "units",
        "split_dot": True,
        "threads_per_block": 128,
        "warp_dots": False,
    },  # forward 2, backward 8 threads a dot
    "units-split-256": {
        "schedule": "units",
        "split_dot": True,
        "threads_per_block": 256,
        "warp_dots": False,
    },  # the last threads idle
    "units-fused": {"schedule": "units", "fuse_ops": True},  # the cell's elementwise ops as its own code
    "units-fused-t5": {"schedule": "units", "fuse_ops": True, "threads_per_block": 5, "warp_dots": False},  # 12 elements
    "units-fused-novalues": {"schedule": "units", "fuse_ops": True, "value_cache": False},  # no mirror: the interpreter
    "units-split-global8": {
        "schedule": "units",
        "split_dot": True,
        "value_cache": False,
        "weight_cache": False,
        "dot_unroll": 8,
        "units_per_block": 3,
        "threads_per_block": 32,
        "warp_dots": False,
    },
}


@needs_cuda
@pytest.mark.parametrize("geometry", list(GEOMETRIES))
@pytest.mark.parametrize("name", ["lstm", "mut2", "gru"])  # mut2, gru: two GEMM stages in a step
def test_launch_geometry(name, geometry):
    """Both schedules, any rows or units per block (partial last blocks included), threads per block,
    barrier, and what the units schedule keeps in shared memory give the same answers. (In the
    simulator a units-schedule grid is one block that walks every group of units, and keeps its
    weights and values in shared memory only when it owns one group: all of H; several blocks that run at once:
    test_units_schedule_over_several_blocks.)"""
    options = GEOMETRIES[geometry]
    if options.get("fuse_ops") and name != "lstm" and not SIMULATED:
        pytest.skip("a cell's fused kernels compile for ~30 s on a GPU: lstm's here (test_fused_segments_* for the rest)")
    assert check(zoo.get(name), "cuda", np.float64, seed=4, T=3, B=3, I=2, H=4, **options)


@needs_cuda
def test_units_schedule_zoo_and_random_cells():
    """The units schedule (the default on a GPU at small batch) on every zoo cell (float64) and random
    cells (float32, two units per block)."""
    compared = 0
    for name in zoo.names():
        compared += check(zoo.get(name), "cuda", np.float64, seed=2, schedule="units", **TINY)
    for seed in range(8):  # the first six with the block's values, weights and sources in shared memory
        cell = random_cell(np.random.default_rng(100 + seed), name=f"random{seed}")
        options = {"units_per_block": 2} if seed >= 6 else {}
        compared += check(cell, "cuda", np.float32, seed=seed, schedule="units", **options, **TINY)
    # and the same numbers on every run (no atomics touch the data; the barrier only orders)
    assert_same_bits_twice(compile(zoo.get("gru"), "cuda", np.float32, schedule="units", units_per_block=2))
    assert compared >= len(zoo.names()) + 7


def assert_same_bits_twice(kern):
    """gru's outputs and parameter gradients (I=3, H=5) are the same bits in two runs of ``kern``."""
    rng = np.random.default_rng(7)
    p = init_params(zoo.get("gru"), 3, 5, rng, dtype=np.float32)
    x = rng.normal(size=(4, 3, 3)).astype(np.float32)
    runs = []
    for _ in range(2):
        f = kern.forward(p, x)
        runs.append((f.outputs.copy(), kern.backward(p, f.tape, np.ones_like(f.outputs)).params))
    np.testing.assert_array_equal(runs[0][0], runs[1][0])
    for name in runs[0][1]:
        np.testing.assert_array_equal(runs[0][1][name], runs[1][1][name])


needs_simulator = pytest.mark.skipif(not SIMULATED or WHY_NOT is not None, reason="needs Numba's CUDA simulator")

#: the units schedule over several blocks, in the simulator with a launch's blocks run at once
#: (``simgrid.concurrent_blocks``): (simulated multiprocessors, H, options). Two blocks of 2 units
#: each owning one group (the mirror, the weight cache, a block's units starting past 0); 3 + 2 units
#: (a partial last block); 4 groups over 3 blocks (the first walks two: no mirror); both barriers.
SEVERAL_BLOCKS = {
    "2x2": (2, 4, {}),
    "3+2": (2, 5, {}),
    "4x1-grid": (4, 4, {"barrier": "grid"}),
    "3+2-fused": (2, 5, {"fuse_ops": True}),
    "3+2-thread": (2, 5, {"warp_dots": False, "threads_per_block": 3}),
    "3+2-novalues": (2, 5, {"value_cache": False}),
    "2x2-global": (2, 4, {"value_cache": False, "weight_cache": False}),
    "groups": (3, 4, {"units_per_block": 1}),
    "2x2-split": (2, 4, {"split_dot": True, "warp_dots": False, "threads_per_block": 32}),
    "3+2-warp2-8": (2, 5, {"warp_rows": 2, "warp_loads": 8}),
    "3+2-warp1-16": (2, 5, {"warp_rows": 1, "warp_loads": 16}),
    # 3 x 11 units, one warp a block: the forward's 44 columns in 6 passes of 8, the backward's 132-long dots
    # over two tiles of 32 lanes x 4 loads (the second partial)
    "3x11-passes": (3, 33, {"warp_loads": 4, "threads_per_block": 32}),
}
SEVERAL_BLOCKS_CASES = [("lstm", g) for g in SEVERAL_BLOCKS] + [
    (name, g) for name in ("gru", "mut2") for g in ("3+2", "3+2-fused", "groups", "4x1-grid")
]


@needs_simulator
@pytest.mark.parametrize("name,geometry", SEVERAL_BLOCKS_CASES)
def test_units_schedule_over_several_blocks(name, geometry):
    """The multi-block paths a GPU takes — a block's units starting past 0, a partial last block, the
    grid barrier between blocks that really run at once — against the reference, without a GPU.
    (Checked to catch a block that reads its elements at unit 0 instead of its own, and a barrier
    that lets a block pass before the others arrive: both pass in the one-block simulator.)"""
    from cellsearch.backends.cuda.simgrid import concurrent_blocks

    sms, H, options = SEVERAL_BLOCKS[geometry]
    with concurrent_blocks(sms, timeout=300):
        kern = compile(zoo.get(name), "cuda", np.float64, schedule="units", **options)
        U, blocks, one_group = kern.units_geometry(H)
        assert blocks == min(sms, -(-H // U)) > 1 and one_group == (geometry != "groups")
        assert check(zoo.get(name), "cuda", np.float64, seed=4, T=3, B=3, I=2, H=H, schedule="units", **options)


@needs_simulator
def test_units_schedule_zoo_and_random_cells_over_several_blocks():
    """Every zoo cell (float64) and random cells (float32) in the units schedule over two blocks of
    2 + 1 units that run at once, each block's values and weights in its shared memory; and the same
    bits on every run, however the blocks interleave."""
    from cellsearch.backends.cuda.simgrid import concurrent_blocks

    compared = 0
    THREADS = {"warp_dots": False, "threads_per_block": 4}
    with concurrent_blocks(2, timeout=300):
        assert compile(zoo.get("lstm"), "cuda", np.float64, schedule="units").units_layout(2, 3, False).blocks == 2
        for name in zoo.names():  # (a thread per output: the warp dots' paths are the same for every cell)
            compared += check(zoo.get(name), "cuda", np.float64, seed=2, schedule="units", **THREADS, **TINY)
        for seed in range(4):
            cell = random_cell(np.random.default_rng(200 + seed), name=f"random{seed}")
            compared += check(cell, "cuda", np.float32, seed=seed, schedule="units", **THREADS, **TINY)
        kern = compile(zoo.get("gru"), "cuda", np.float32, schedule="units")
        assert kern.units_geometry(5)[:2] == (3, 2)
        assert_same_bits_twice(kern)
    assert compared >= len(zoo.names()) + 3


@needs_simulator
def test_concurrent_blocks_run_at_once_and_fail_fast():
    """simgrid's blocks run at once (block 1 reads what block 0 wrote before a grid sync; each has its
    own shared memory), a failing block stops the launch instead of leaving the others waiting, and a
    block that waits for ever is stopped at the time limit."""
    from cellsearch.backends.cuda.simgrid import GridAborted, concurrent_blocks

    @cuda.jit
    def exchange(out):
        sh = cuda.shared.array(1, np.float64)
        b = cuda.blockIdx.x
        if cuda.threadIdx.x == 0:
            sh[0] = 10.0 * (b + 1)
            out[b] = sh[0]
        cuda.cg.this_grid().sync()
        if cuda.threadIdx.x == 0:
            out[2 + b] = out[1 - b] + sh[0]  # the other block's value, and this block's own shared word

    @cuda.jit
    def one_fails(out, bar):
        if cuda.blockIdx.x == 1 and cuda.threadIdx.x == 0:
            out[10] = 1.0  # out of bounds: raises in the simulator
        if cuda.threadIdx.x == 0:
            cuda.atomic.add(bar, 0, 1)
            while cuda.atomic.add(bar, 0, 0) < 2:
                pass

    @cuda.jit
    def waits_for_ever(bar):
        while cuda.atomic.add(bar, 0, 0) < 1:
            pass

    out = np.zeros(4)
    with concurrent_blocks(2):
        exchange[2, 4](out)
    assert out.tolist() == [10.0, 20.0, 30.0, 30.0]
    with concurrent_blocks(2), pytest.raises(IndexError):
        one_fails[2, 2](np.zeros(2), np.zeros(1, np.int32))
    with concurrent_blocks(2, timeout=1.0), pytest.raises(GridAborted):
        waits_for_ever[1, 1](np.zeros(1, np.int32))


@needs_simulator
def test_simulated_shared_arrays_are_one_per_block_when_threads_race(monkeypatch):
    """The simulator's ``cuda.shared.array`` checks for a block's array and creates it unlocked: threads
    preempted in between got arrays of their own (a wrong GEMM in CI). With ``fast_simulator`` every
    thread gets the one array, however slow its creation (fails with the simulator's own method)."""
    import threading
    import time

    from numba.cuda.simulator import kernelapi

    from cellsearch.backends.cuda.simgrid import fast_simulator

    fast_simulator()
    shared = kernelapi.FakeCUDAShared(0)
    real_empty = np.empty

    def slow_empty(*args, **kwargs):
        time.sleep(0.02)  # a thread preempted between looking for the array and storing it
        return real_empty(*args, **kwargs)

    monkeypatch.setattr(np, "empty", slow_empty)
    got = []
    start = threading.Barrier(6)

    def thread():
        start.wait()
        got.append(shared.array(4, np.float64))  # one line: one shared array

    threads = [threading.Thread(target=thread) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 6 and all(a is got[0] for a in got)
    assert shared.array(3, np.float64) is not got[0]  # another line, another array


@needs_cuda
def test_mirror_tables_at_both_parities_and_a_partial_group():
    """kernel.mirror_tables' finished offsets, against the arena's addresses evaluated at an even and an odd step
    (t = 2 and 3): a taped value's slot is its tape slot at the tape step's parity, a scratch value's its scratch slot
    after both tape steps, times E = B*U — also where U does not divide H (a partial last block: E != B*Ug, which the
    kernels meet in test_units_schedule_over_several_blocks). LOADP reads its projection block after the scratch values; every offset
    stays inside the mirror the host sizes (units_layout)."""
    pytest.importorskip("numba.cuda")
    from cellsearch.backends.cuda.kernel import mirror_tables
    from cellsearch.backends.cuda.kernels import M_NX, M_OUT, M_STATE, M_STRIDE, OP_LOADP
    from cellsearch.backends.tables import C_AC, C_AM, C_AUX, C_BC, C_BM, C_CC, C_CM, C_CODE, C_DC, C_DM, S_C, S_M, tables
    from cellsearch.lowering import lower

    T, B, H, U = 6, 3, 5, 2
    E, BH = B * U, B * H
    cells = [zoo.get(n) for n in ("lstm", "gru", "lstm_peephole", "sru")]
    cells += [random_cell(np.random.default_rng(s)) for s in range(6)]
    for cell in cells:
        p = lower(cell)
        tb = tables(p, T, B, H)
        NT = p.n_taped
        mops, msrc, mdst, mmisc = mirror_tables(p, tb, B, H, U, True)

        def slot(const, mul, t):  # the mirror slot of arena address const + t * mul at step t, from the address
            at = const + t * mul
            if mul:
                step, s = divmod(at, NT * BH)
                return (s // BH + (step % 2) * NT) * E
            return (2 * NT + (at - tb.scratch0) // BH) * E if at >= tb.scratch0 and p.n_scratch else 0

        room = (2 * NT + p.n_scratch + len(p.xblocks)) * E
        for r, row in enumerate(tb.ops):
            for t in (2, 3):
                for q, (c, m) in enumerate(((C_DC, C_DM), (C_AC, C_AM), (C_BC, C_BM), (C_CC, C_CM))):
                    want = slot(int(row[c]), int(row[m]), t)
                    if q == 1 and row[C_CODE] == OP_LOADP:
                        want = (2 * NT + p.n_scratch + int(row[C_AUX])) * E
                    assert int(mops[r, 4 * (t % 2) + q]) == want, (cell.name, r, t, q)
                    assert want + E <= room
        for mtab, stab in ((msrc, tb.stage_src), (mdst, tb.stage_dst)):
            for g in range(stab.shape[0]):
                for i in range(stab.shape[1]):
                    for t in (2, 3):
                        assert int(mtab[g, i, t % 2]) == slot(int(stab[g, i, S_C]), int(stab[g, i, S_M]), t)
        for t in (2, 3):
            assert int(mmisc[M_OUT + t % 2]) == slot(*map(int, tb.output_at), t)
            for s_ in range(len(p.states)):
                m = M_STATE + s_ * M_STRIDE
                assert int(mmisc[m + t % 2]) == slot(*map(int, tb.update_at[s_]), t)
        assert int(mmisc[M_NX]) == len(p.xblocks)


def test_schedule_choice_and_units_geometry(monkeypatch):
    """On a 132-multiprocessor GPU: the units schedule from H = 192 with at most 66 rows (where it was
    measured faster), rows otherwise; units per block spread H over at most one block per
    multiprocessor; a block's values of the step and its weight columns go in its shared memory when
    they fit, the mirror first; a population refuses the units schedule; bad options are one clear
    error."""
    pytest.importorskip("numba.cuda")
    from cellsearch.backends.cuda import kernel as kmod
    from cellsearch.backends.cuda.population import CudaPopulation
    from cellsearch.errors import ShapeError

    monkeypatch.setattr(kmod, "simulated", lambda: False)
    monkeypatch.setattr(kmod, "_multiprocessors", lambda: 132)
    k = kmod.CudaKernel.__new__(kmod.CudaKernel)  # no stream: nothing here touches the device
    k.plan, k.dtype = __import__("cellsearch.lowering", fromlist=["lower"]).lower(zoo.get("lstm")), np.dtype(np.float32)
    k.schedule = k.units_per_block = k.barrier = None
    k.weight_cache = k.value_cache = True
    assert [k.schedule_for(B, H) for B, H in ((64, 256), (66, 192), (67, 256), (128, 256), (64, 128), (16, 32))] == [
        "units", "units", "rows", "rows", "rows", "rows"
    ]  # fmt: skip
    k.schedule = "units"
    assert k.schedule_for(16, 32) == "units"  # asked for
    assert k.units_geometry(256) == (2, 128, True)
    assert k.units_geometry(32) == (1, 32, True)
    # lstm (7 taped values, 6 scratch, 16 gradient slots) at B=64, H=256, float32, in 11648 elements:
    # forward mirror (14 + 6) x 128 = 2560, backward (14 + 6 + 16) x 128 = 4608; weights 2 x 256 x 4 = 2048
    fwd = k.units_layout(64, 256, forward=True)  # and the input projection's 4 blocks, 512
    assert (fwd.units, fwd.blocks, fwd.vcache, fwd.pmirror, fwd.cached, fwd.w_n) == (2, 128, True, True, True, 2048)
    bwd = k.units_layout(64, 256, forward=False)
    assert (bwd.vcache, bwd.cached) == (True, True)
    big = k.units_layout(256, 1024, forward=True)  # 8 units x 256 rows: mirror 40960, weights 32768
    assert (big.units, big.blocks, big.vcache, big.cached) == (8, 128, False, False)
    mid = k.units_layout(64, 1536, forward=True)  # 12 units: mirror 15360 no; weights 12 x 1536 x 4 = 73728 no
    assert (mid.vcache, mid.cached) == (False, False)
    k.units_per_block = 1
    assert k.units_geometry(256) == (1, 132, False)  # 256 groups over 132 blocks: each walks two
    lay = k.units_layout(64, 256, forward=True)
    assert (lay.vcache, lay.cached) == (False, False)  # nothing of one group's in shared memory
    k.units_per_block = None
    k.value_cache = False
    assert k.units_layout(64, 256, forward=True).vcache is False
    for bad in (
        {"schedule": "columns"},
        {"barrier": "spin"},
        {"units_per_block": 0},
        {"gemm_split": 0},
        {"dot_unroll": 6},
        {"warp_rows": 3},
        {"warp_loads": 2},
        {"warp_rows": 2, "warp_loads": 16},
    ):
        with pytest.raises(ShapeError):
            kmod.CudaKernel(zoo.get("lstm"), **bad)
    with pytest.raises(ShapeError, match="rows schedule"):
        CudaPopulation([zoo.get("lstm")], schedule="units")


@needs_cuda
@pytest.mark.parametrize("ta", [False, True])
@pytest.mark.parametrize("tb", [False, True])
@pytest.mark.parametrize("split", [1, 3])
def test_gemm_at_the_gpu_tile_size(ta, tb, split):
    """The GEMM kernel with the tiling a GPU uses (64x64 tiles, 16-deep), on shapes that cross tile
    edges, transposed operands, bias and accumulation; whole, and split-K in three slices (16, 16
    and 8 deep) whose partial products are added after."""
    from numba import cuda

    from cellsearch.backends.cuda.kernel import GPU_TILE

    kern = compile(zoo.get("rnn"), "cuda", np.float64, gemm_tile=GPU_TILE)

    rng = np.random.default_rng(0)
    M, N, K = 67, 5, 40
    a = rng.normal(size=(K, M) if ta else (M, K))
    b = rng.normal(size=(N, K) if tb else (K, N))
    bias = rng.normal(size=N)
    c0 = rng.normal(size=(M, N))
    C = cuda.to_device(c0.copy())
    kern.gemm(cuda.to_device(a), cuda.to_device(b), C, ta=ta, tb=tb, bias=cuda.to_device(bias), accumulate=True, split=split)
    want = (a.T if ta else a) @ (b.T if tb else b) + bias + c0
    np.testing.assert_allclose(C.copy_to_host(), want, rtol=1e-12, atol=1e-12)
    if split > 1:
        assert (3, M, N) in kern._parts


@needs_cuda
@DTYPES
def test_units_mirror_without_the_input_projection(monkeypatch, dtype):
    """The units schedule's mirror where the step's values fit in shared memory and the input projection's blocks do
    not (as at a large H with a small batch): the mirror stays, and LOADP reads the projection from global memory."""
    import cellsearch.backends.cuda.kernel as kmod
    from cellsearch.lowering import lower

    cell = zoo.get("lstm")
    p = lower(cell)
    T, B, I, H = 3, 2, 3, 3
    E = B * (H if SIMULATED else 1)  # (one unit a block on a GPU)
    room = (2 * p.n_taped + p.n_scratch) * E + E  # one element short of 2 of the 4 projection blocks
    monkeypatch.setattr(kmod, "shared_elements", lambda dt: room)
    options = {"schedule": "units"} if SIMULATED else {"schedule": "units", "units_per_block": 1}
    lay = kmod.CudaKernel(cell, dtype, **options).units_layout(B, H, forward=True)
    assert lay.vcache and not lay.pmirror
    check(cell, "cuda", dtype, seed=5, T=T, B=B, I=I, H=H, **options)


#: one cell whose step program holds every elementwise opcode (X needs I == H), copied states (a's old value),
#: taped and scratch values
EVERY_OP = """state(c, h, a, b)
a_old = a
z = sigmoid(linear(x))
r = sigmoid(linear(x, h))
n = tanh(linear(x) + r * linear(h))
i = sigmoid(linear(x, h) + peep(c))
c = tanh(linear(r * h) + tanh(x)) * i + c * (1 - i)
a = relu(linear(x) + peep(a))
h = blend(h, n, z) - 0.5 * a * b
b = a_old
return h
"""
#: and in the simulator (where no cell costs a compilation) more: zoo cells, edge cells and random cells
FUSED_CELLS = ["lstm", "cifg", "gru", "indrnn", "mut1"]
FUSED_EDGE_CELLS = ["shared_update", "input_state"]


def _units_step(cell, seed, T, B, I, H, **options):
    """One forward and backward of ``cell`` in the units schedule (float32): outputs, final states, every gradient."""
    rng = np.random.default_rng(seed)
    p = init_params(cell, I, H, rng, dtype=np.float32)
    x = rng.normal(size=(T, B, I)).astype(np.float32)
    s0 = {s: rng.normal(scale=0.5, size=(B, H)).astype(np.float32) for s in cell.states}
    d_out = rng.normal(size=(T, B, H)).astype(np.float32)
    d_state = {s: rng.normal(size=(B, H)).astype(np.float32) for s in cell.states}
    kern = compile(cell, "cuda", np.float32, schedule="units", **options)
    f = kern.forward(p, x, s0)
    g = kern.backward(p, f.tape, d_out, d_state)
    got = {"outputs": f.outputs.copy(), "dx": g.x, **{f"state {k}": v for k, v in f.states.items()}}
    got.update({f"d{k}": v for k, v in g.params.items()})
    got.update({f"d{k}0": v for k, v in g.state0.items()})
    return kern, got


@needs_cuda
def test_fused_segments_give_the_interpreters_bits():
    """``fuse_ops``: the cell's elementwise segments as generated code give the interpreter's results bit for bit
    (the same arithmetic, op for op, on each element), forward and backward, for cells whose programs hold every
    elementwise opcode, copied states, taped and scratch values, and random cells; and they did run: the mirror held
    the block's values in both directions."""
    from cellsearch.backends.cuda import fused

    T, B, H = 4, 2, 3
    cells = [parse(EVERY_OP, name="every_op"), parse(EVERY_OP, name="every_op")]
    if SIMULATED:  # (on a GPU each cell's kernels compile for ~30 s: every_op, and lstm, which the benchmarks time)
        cells += [zoo.get(n) for n in FUSED_CELLS] + [parse(EDGE_CELLS[n], name=n) for n in FUSED_EDGE_CELLS]
        cells += [random_cell(np.random.default_rng(300 + s), name=f"random{s}") for s in range(2)]
    else:
        cells.append(zoo.get("lstm"))
    seen = set()
    for i, cell in enumerate(cells):
        # every_op a second time, and the last two cells, with 5 threads for 6 elements: a thread steps to its next element
        options = {"threads_per_block": 5, "warp_dots": False} if i == 1 or i >= len(cells) - 2 else {}
        _, ref = _units_step(cell, i, T, B, H, H, **options)
        kern, got = _units_step(cell, i, T, B, H, H, fuse_ops=True, **options)
        assert kern.units_layout(B, H, forward=True).vcache and kern.units_layout(B, H, forward=False).vcache
        prog, _ = kern._ws[(T, B, H, H)].extra["fused"]
        for op in (op for seg in prog for op in seg):
            seen.add(op.code)
            seen.add(
                "copied state"
                if op.code == fused.STATE and op.flag == 1
                else "taped"
                if op.taped
                else "scratch"
                if op.scratch
                else None
            )
        assert set(got) == set(ref)
        for name in ref:
            if ref[name] is None:
                assert got[name] is None
                continue
            np.testing.assert_array_equal(got[name], ref[name], err_msg=f"{cell.name} {name}")
    elementwise = set(range(14)) - {fused.GEMM}
    assert elementwise | {"copied state", "taped", "scratch"} <= seen, sorted(map(str, seen))


@needs_cuda
def test_fused_segments_without_the_input_projection_mirrored(monkeypatch):
    """``fuse_ops`` where the step's values fit in shared memory and the input projection's blocks do not: the
    generated code reads LOADP from global memory, as the interpreter does."""
    import cellsearch.backends.cuda.kernel as kmod
    from cellsearch.lowering import lower

    cell = zoo.get("lstm")
    p = lower(cell)
    T, B, I, H = 3, 2, 3, 3
    E = B * (H if SIMULATED else 1)
    monkeypatch.setattr(kmod, "shared_elements", lambda dt: (2 * p.n_taped + p.n_scratch) * E + E)
    options = (
        {"schedule": "units", "fuse_ops": True} if SIMULATED else {"schedule": "units", "fuse_ops": True, "units_per_block": 1}
    )
    kern = kmod.CudaKernel(cell, np.float64, **options)
    lay = kern.units_layout(B, H, forward=True)
    assert lay.vcache and not lay.pmirror
    check(cell, "cuda", np.float64, seed=5, T=T, B=B, I=I, H=H, **options)


def test_fused_source_is_straight_line_code():
    """The generated segments hold no table read but the tape's addresses, no opcode test, and one element loop a
    segment: lstm's step (two segments around its one GEMM stage) forward and backward."""
    pytest.importorskip("numba.cuda")
    from cellsearch.backends.cuda import fused
    from cellsearch.backends.cuda.ptx import fused_program

    prog, pmirror = fused_program("lstm")
    assert [len(seg) for seg in prog] == [6, 9]
    fwd = fused.forward_source(prog, pmirror)
    bwd = fused.backward_source(prog)
    assert fwd.count("while idx < Eb:") == 2 and bwd.count("while idx < Eb:") == 2
    assert fwd.count("ops[") == 2 * sum(op.taped or op.scratch for seg in prog for op in seg)  # the tape's addresses only
    assert "ops[" not in bwd and "code" not in fwd + bwd
    assert fwd.count("math.tanh(") == 5  # three sigmoids, two tanh: once each per element
    # every gradient the backward accumulates is loaded once and stored once per element
    body = bwd.split("while idx < Eb:")[2]
    stores = [line.split("]")[0] for line in body.splitlines() if line.strip().startswith("SH[")]
    assert len(stores) == len(set(stores)) > 0


@needs_cuda
@pytest.mark.skipif(SIMULATED, reason="GPU-sized shapes: too slow for the simulator's Python threads")
@pytest.mark.parametrize(
    "options",
    [
        {"schedule": "rows"},
        {"schedule": "units"},
        {"schedule": "units", "warp_dots": False},
        {"schedule": "units", "warp_rows": 2, "warp_loads": 8},
    ],
    ids=["rows", "units", "units-thread", "units-warp2-8"],
)
def test_lstm_at_a_gpu_size(options):
    """LSTM at a size where the GEMMs split their inner dimension (T*B = 320: five slices) and the
    units schedule spreads H = 48 over 48 blocks (warp dots: the backward's 192-long dots in two
    passes of 128 with 4 loads a lane), against the reference."""
    assert check(zoo.get("lstm"), "cuda", np.float64, seed=6, T=40, B=8, I=16, H=48, **options)


@needs_cuda
def test_warp_dots_over_several_passes():
    """Warp dot products whose inner dimension needs several passes of 32 lanes x 4 loads (the
    backward's 4H = 132), a partial last pass, and more output columns than a warp's 8 (forward 4H
    of one group): the same answers as the reference, on the simulator too."""
    assert check(
        zoo.get("lstm"), "cuda", np.float64, seed=8, T=2, B=3, I=2, H=33, schedule="units", warp_loads=4, threads_per_block=32
    )  # one warp: the simulator runs a Python thread per thread


@needs_cuda
def test_population_matches_each_cell_alone():
    """Cells on their own streams, enqueued together, give what each gives alone, and the same one
    by one (concurrent=False); the outputs and gradients match the reference."""
    from cellsearch.backends import compile_many

    cells = [zoo.get("lstm"), zoo.get("gru"), random_cell(np.random.default_rng(5), name="r5"), zoo.get("mut2")]
    rng = np.random.default_rng(0)
    T, B, I, H = 3, 2, 3, 3
    params = [init_params(c, I, H, rng) for c in cells]
    x = rng.normal(size=(T, B, I))
    d_out = [rng.normal(size=(T, B, H)) for _ in cells]
    pop = compile_many(cells, "cuda", np.float64)
    assert all(k.gemm_split == 1 and k.schedule == "rows" for k in pop.kernels)  # the cells' GEMMs fill the GPU together
    together = pop.step(params, x, d_out, grad_x=True)
    again = pop.step(params, x, d_out, grad_x=True, concurrent=False)
    for cell, p, d, r, r2 in zip(cells, params, d_out, together, again, strict=True):
        ref = compile(cell, "reference")
        f = ref.forward(p, x)
        g = ref.backward(p, f.tape, d)
        np.testing.assert_allclose(r.outputs, f.outputs, rtol=1e-10, atol=1e-12)
        np.testing.assert_array_equal(r.outputs, r2.outputs)
        np.testing.assert_allclose(r.gradients.x, g.x, rtol=1e-10, atol=1e-12)
        for name in g.params:
            np.testing.assert_allclose(r.gradients.params[name], g.params[name], rtol=1e-10, atol=1e-12, err_msg=name)
            np.testing.assert_array_equal(r.gradients.params[name], r2.gradients.params[name])
        alone = compile(cell, "cuda", np.float64, schedule="rows")  # the population's schedule: the same sums in the same order
        fa = alone.forward(p, x)
        ga = alone.backward(p, fa.tape, d)
        np.testing.assert_array_equal(fa.outputs, r.outputs)
        for name in g.params:
            np.testing.assert_array_equal(ga.params[name], r.gradients.params[name])


@needs_cuda
def test_population_default_loss_is_the_sum_of_outputs():
    from cellsearch.backends import compile_many

    cell = zoo.get("gru")
    rng = np.random.default_rng(1)
    p = init_params(cell, 2, 3, rng)
    x = rng.normal(size=(3, 2, 2)).astype(np.float32)
    (r,) = compile_many([cell], "cuda").step([p], x)
    ref = compile(cell, "reference")
    g = ref.backward(p, ref.forward(p, x).tape, np.ones((3, 2, 3)))
    for name in g.params:
        np.testing.assert_allclose(r.gradients.params[name], g.params[name], rtol=2e-4, atol=2e-5)


@needs_cuda
@DTYPES
def test_nan_propagates(dtype):
    """A NaN weight reaches the outputs and the gradients (divergence detection depends on it)."""
    cell = zoo.get("lstm")
    rng = np.random.default_rng(0)
    p = {k: v.astype(dtype) for k, v in init_params(cell, 3, 3, rng).items()}
    p["i.W_h"][0, 0] = np.nan
    kern = compile(cell, "cuda", dtype)
    f = kern.forward(p, rng.normal(size=(3, 2, 3)).astype(dtype))
    assert np.isnan(f.outputs[-1]).any()
    g = kern.backward(p, f.tape, np.ones((3, 2, 3), dtype=dtype))
    assert np.isnan(g.params["i.W_h"]).any()


@needs_cuda
def test_input_gradient_skip_and_stale_tape():
    from cellsearch import ShapeError

    cell = zoo.get("mut1")  # x used elementwise and through linears
    rng = np.random.default_rng(0)
    params = init_params(cell, 3, 3, rng)
    x = rng.normal(size=(3, 2, 3))
    kern = compile(cell, "cuda", np.float64)
    full = kern.backward(params, kern.forward(params, x).tape, np.ones((3, 2, 3)))
    part = kern.backward(params, kern.forward(params, x).tape, np.ones((3, 2, 3)), grad_x=False)
    assert part.x is None and full.x is not None
    for name in full.params:
        np.testing.assert_allclose(part.params[name], full.params[name], rtol=1e-12)
    old = kern.forward(params, x).tape
    kern.forward(params, x)
    with pytest.raises(ShapeError, match="stale"):
        kern.backward(params, old, None)


@needs_cuda
def test_a_model_trains_on_cuda_as_on_cpu():
    """Training through Model (host arrays in and out) gives the cpu backend's numbers."""
    from cellsearch.train import evaluate, make_hp

    hp = {"steps": 3, "batch": 2, "hidden": 3, "eval_every": 3, "eval_size": 2, "dtype": "float64"}
    a = evaluate(zoo.get("gru"), "parity", {"length": 3}, make_hp(**hp, backend="cuda"), seed=0)
    b = evaluate(zoo.get("gru"), "parity", {"length": 3}, make_hp(**hp, backend="cpu"), seed=0)
    assert a["status"] == b["status"] == "ok", (a["reason"], b["reason"])
    assert a["valid_loss"] == pytest.approx(b["valid_loss"], rel=1e-9)
    assert a["test"] == pytest.approx(b["test"], rel=1e-9)


def test_without_cuda_compile_says_so_in_one_line(tmp_path):
    """No numba-cuda, or no GPU and no simulator: a one-line ConfigError, from compile and the CLI."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    code = (
        "import sys\n"
        "if sys.argv[1] == 'missing': sys.modules['numba.cuda'] = None\n"
        "from cellsearch import compile, zoo, ConfigError\n"
        "try:\n    compile(zoo.get('lstm'), 'cuda')\nexcept ConfigError as e:\n    print('ConfigError:', e)\n"
        "else:\n    print('compiled')\n"
    )
    out = subprocess.run([sys.executable, "-c", code, "missing"], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "ConfigError: the cuda backend needs numba-cuda: pip install 'cellsearch[cuda]'"
    out = subprocess.run([sys.executable, "-c", code, "present"], env=env, capture_output=True, text=True, check=True).stdout
    if out.strip() == "compiled":
        pytest.skip("this machine has a GPU")
    assert out.startswith("ConfigError: the cuda backend found no usable NVIDIA GPU") and out.count("\n") == 1
    cli = subprocess.run(
        [sys.executable, "-m", "cellsearch", "eval", "lstm", "--task", "parity", "--hp", "steps=1", "--backend", "cuda"],
        env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert cli.returncode == 2, cli.stderr
    assert "no usable NVIDIA GPU" in cli.stderr and cli.stderr.strip().count("\n") == 0, cli.stderr
    for args in (["run", "--generations", "0"], ["reproduce", "greff2016"]):  # refused before the database is touched
        db = tmp_path / f"{args[0]}.db"
        cli = subprocess.run([sys.executable, "-m", "cellsearch", *args, "--db", str(db), "--backend", "cuda"],
                             env=env, capture_output=True, text=True)  # fmt: skip
        assert cli.returncode == 2 and "no usable NVIDIA GPU" in cli.stderr, cli.stderr
        assert not db.exists()


def test_kernels_compile_to_ptx():
    """Every kernel, both dtypes, a few rows-per-block, both barriers of the units schedule, compiles for sm_90 (typing and code generation
    checked without a GPU; needs NVVM, e.g. pip install 'cuda-toolkit[nvrtc,nvvm]'). No float64
    instruction in the float32 kernels, and no local memory (the accumulators stay in registers); the
    units schedule's warp GEMM keeps its integer work down (``ptx.counts``: shuffles, and
    instructions around each fused multiply-add). The kernels compile side by side in a process pool
    (NVVM is single-threaded; one after the other they took ~190 s here)."""
    if SIMULATED:
        pytest.skip("the simulator does not compile")
    pytest.importorskip("numba.cuda")
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from numba import cuda

    from cellsearch.backends.cuda.ptx import compile_counts, signatures

    coop = (False, True) if cuda.is_available() else (False,)  # grid sync's typing asks the driver for the device
    try:
        compile_counts("float32", "fill")  # the smallest kernel, here: NVVM present?
    except Exception as e:  # NVVM/NVRTC not installed: nothing to check here
        if "nvvm" in str(e).lower() or "nvrtc" in str(e).lower() or "NotFound" in type(e).__name__:
            pytest.skip(f"NVVM is not installed: {str(e).splitlines()[0]}")
        raise
    jobs = [
        (np.dtype(dt).name, label, c) for dt in (np.float32, np.float64) for c in coop for label, _, _ in signatures(dt, (c,))
    ]
    jobs.sort(key=lambda j: "_units" not in j[1])  # the long ones first: the pool ends together
    assert len(jobs) >= 34
    workers = max(1, min(len(os.sched_getaffinity(0)), 4))
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = dict(zip(jobs, pool.map(compile_counts, *zip(*jobs, strict=True)), strict=True))
    for (dt, label, _), c in results.items():
        assert c["local"] == 0 and c["local_text"] == 0, f"{label} uses local memory"
        if dt == "float32":
            assert c["f64"] == 0, f"{label} computes in float64"
        if dt == "float32" and label.startswith(("forward_units warp 4x4", "backward_units warp 4x4")):
            # session 10's build: 160 shuffles (a butterfly per sum), 3.4 / 3.9 instructions per fma in the blocks that
            # hold one; now 31 and ~2.1 / 2.3
            assert c["warp"] < 40 and c["per_fma"] < 3.0, (label, c)
        if dt == "float32" and label.startswith(("forward_loop rows8", "backward_loop rows8")):
            assert c["per_fma"] < 6.0, (label, c)  # signed indices: 9.2 / 10.2; unsigned, the rows' offsets found once: ~4.5


@needs_cuda
def test_the_gpu_benchmark_and_its_script_run(tmp_path):
    """The GPU benchmark's timing functions and gpu/run_checks.py, on tiny shapes (in the simulator
    here): so they are known to work when a GPU arrives."""
    import json
    from pathlib import Path

    script = Path(__file__).resolve().parents[2] / "gpu" / "run_checks.py"
    cmd = [sys.executable, str(script), "--skip", "tests", "--configs", "2,3,2,3", "--rounds", "1", "--population", "2",
           "--population-config", "1,2,2,2", "--out", str(tmp_path),
           "--variants", '[{}, {"schedule": "units", "fuse_ops": true}]']  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    kernels = json.loads((tmp_path / "kernels.json").read_text())
    # one config (the simulator is slow), each cell with the defaults (rows, here) and fused in the units schedule
    got = [(r["cell"], r["batch"], r["schedule"], r["fuse_ops"]) for r in kernels["rows"]]
    assert got == [("lstm", 2, "rows", None), ("lstm", 2, "units", True), ("gru", 2, "rows", None), ("gru", 2, "units", True)]
    assert len(json.loads((tmp_path / "rows_per_block.json").read_text())["rows"]) == 4
    sched = json.loads((tmp_path / "schedules.json").read_text())["rows"]
    assert len(sched) == 12 and not any("error" in r for r in sched)  # twelve variants
    got = [(r["schedule"], r["barrier"], r["warp_dots"], r["warp_rows"], r["warp_loads"], r["units_per_block"], r["value_cache"],
            r["dot_unroll"], r["split_dot"]) for r in sched]  # fmt: skip
    assert got == [
        ("rows", None, None, None, None, None, None, 4, False),
        ("units", "grid", True, 4, 4, 3, True, 4, False),  # the simulator's units schedule: one block of all H = 3
        ("units", "atomic", True, 4, 4, 3, True, 4, False),
        ("units", "grid", False, None, None, 3, True, 4, False),
        ("units", "grid", True, 2, 8, 3, True, 4, False),
        ("units", "grid", True, 1, 16, 3, True, 4, False),
        ("units", "grid", True, 4, 4, 3, True, 4, False),  # units_per_block=4 > H
        ("units", "grid", True, 4, 4, 3, False, 4, False),
        ("rows", None, None, None, None, None, None, 8, False),
        ("units", "grid", False, None, None, 3, True, 8, False),
        ("units", "grid", False, None, None, 3, True, 4, True),
        ("units", "grid", True, 4, 4, 3, True, 4, False),  # fuse_ops
    ]
    assert [r["fuse_ops"] for r in sched] == [None] + [False] * 7 + [None, False, False, True]
    assert json.loads((tmp_path / "population.json").read_text())["cells"] == 2


@needs_cuda
@pytest.mark.parametrize("cooperative", [False, True])
def test_barrier_probe_runs(cooperative):
    """The grid-barrier probe of gpu/breakdown.py (a kernel of barriers alone), on one block here."""
    from cellsearch.bench.gpu import barrier_cost

    row = barrier_cost(1, cooperative, n=3, threads=4, rounds=1)
    assert row["barrier"] == ("grid" if cooperative else "atomic") and row["barriers"] == 3
    assert isinstance(row["us_per_barrier"], float)


@needs_cuda
@pytest.mark.parametrize("schedule", ["rows", "units"])
def test_loop_attribution_runs(schedule):
    """gpu/breakdown.py --attribution: the loops on partial op tables (here in the simulator) give a
    time for each table, both directions."""
    from cellsearch.bench.gpu import loop_attribution

    row = loop_attribution("lstm", (2, 2, 2, 3), rounds=1, schedule=schedule)
    for direction in ("forward", "backward"):
        assert all(row[f"{direction}_{label}_ms"] > 0 for label in ("all", "no_elementwise", "no_gemm", "none"))
    assert row["schedule"] == schedule
