"""The CPU backend: a cell's Plan run by the compile-once Numba executor (``interp.py``).

Same API as the reference: ``forward(params, x, state0) -> Forward`` and
``backward(params, tape, d_out, d_state_T) -> Gradients``. Everything runs inside the two njit
calls: the input projection step by step, the recurrent GEMMs, the elementwise ops, and the weight
gradients block by block as the reverse walk goes (``blas.Jobs``); around them, one call each moves
the parameters into the buffers the kernels read and sums the chunks' gradients into the named ones
(``moves``, over tables built once per shape).

The kernel keeps its work buffers between calls of the same shape (a training loop calls it with
the same shapes again and again): a tape is valid until the kernel's next ``forward``; ``backward``
on an older tape raises.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ...errors import ShapeError
from ...ir.cell import Cell
from ...ir.params import ParamSpec, param_specs
from ...lowering import Code, Plan, lower
from ..reference import Forward, Gradients, check_params, infer_hidden, initial_states
from ..tables import Tables, tables, unpack_recipe
from . import ahead, interp, moves
from .blas import J_A, Jobs, warm
from .microkernel import NR, address, gemm_scratch, padded, panels_size
from .rare import RARE, rare_name

Array = np.ndarray


@dataclass
class CpuTape:
    x: Array  # [T, B, I]
    A: Array  # the arena: tape [T+1, NT, B, H] then scratch slots
    K: Array  # packed GEMM sources [T, B, ns*H] per stage, flat
    input_size: int
    hidden_size: int
    generation: int


@dataclass
class _CpuTables:
    """What the cpu executor adds to the shared tables (``interp.C_FOLD``, ``interp.C_DPB``).

    Forward: every linear a GEMM stage writes is seeded while the stage unpacks its product
    (``A = P + out``, ``bias + out``), not by its own op first and then ``+=``. Backward: the gradient
    of an input-projection block that is itself a stage's destination (``linear(x, h)``) is already
    in that stage's DZ, so its LOADP writes no dP and its input weights' gradient is ``x^T @ DZ``'s
    columns; the other blocks go to a compact dP (``dp_blocks``). Float32 GEMMs per step read the weights as panels packed once
    per call (``microkernel``), found through two columns appended to the stage info table."""

    ops: Array  # [n_ops, 16] int64: the shared table, then C_FOLD, C_DPB
    stage_info: Array  # [n_stages, 9] int64: the shared table, then C_PF, C_PB (offsets in W, WT; -1: BLAS), C_ZR
    panels: tuple[int, int]  # sizes of all stages' panels, forward (W) and backward (WT)
    seed: Array  # [n_stages, max dsts, 2] int64: (SEED_* kind, index) of each stage destination
    dz_stages: list[tuple[int, list[int]]]  # (stage, x block of each destination or -1) whose DZ holds dP blocks
    dp_blocks: list[int]  # x blocks whose gradient goes to the compact dP, in its column order
    # the gradient offsets in G remapped to shared slots (``gradient_slots``): the stage tables with
    # their S_G columns remapped, each state's leaf and update, the output, and G's size in slots
    stage_src: Array
    stage_dst: Array
    state_g: Array
    update_g: Array
    output_g: int
    g_slots: int


#: elements of each value a row tile holds (``tile_rows``)
TILE_ELEMENTS = 1024


def tile_rows(B: int, H: int) -> int:
    """Rows per tile of the ops between GEMMs: ~TILE_ELEMENTS elements of each value (4 KiB in float32)."""
    return max(1, min(B, TILE_ELEMENTS // max(H, 1)))


def _runs(plan: Plan, ops: Array, tile: int) -> None:
    """The runs of ops between GEMMs and their row tiles, in the columns ``interp.C_NEXT`` .. ``C_TILE``."""
    n = len(plan.program)
    gemms = [r for r, ins in enumerate(plan.program) if ins.code == Code.GEMM]
    if 0 in gemms:  # (lowering reads the states first: a GEMM's sources come before it)
        raise ValueError("a plan's first op is a GEMM: the backward's runs would drop its scatter")
    starts = sorted({0, *gemms})
    for i, r in enumerate(starts):  # forward: op 0 and each GEMM up to the next GEMM
        ops[r, interp.C_NEXT] = starts[i + 1] if i + 1 < len(starts) else n
    tops = sorted({n - 1, *(g - 1 for g in gemms if g > 0)}, reverse=True)
    for r in tops:  # backward, walking down: from the last op or the op below a GEMM, down to a GEMM or op 0
        ops[r, interp.C_PREV] = max([g for g in gemms if g <= r], default=0)
        ops[r, interp.C_SCAT] = r + 1 if r + 1 < n and plan.program[r + 1].code == Code.GEMM else -1
    ops[:, interp.C_TILE] = tile


def _cpu_tables(plan: Plan, tb: Tables, B: int, H: int, SB: int, panels: bool) -> _CpuTables:
    info = np.full((tb.stage_info.shape[0], 9), -1, dtype=np.int64)
    info[:, :6] = tb.stage_info
    ring = 0  # each stage's ring of output gradients in DZ: SB steps of B rows
    for g, st in enumerate(plan.stages):
        info[g, interp.C_ZR] = ring
        ring += SB * B * len(st.dsts) * H
    sizes = [0, 0]
    if panels:  # (then W and WT hold the panels alone)
        for g, st in enumerate(plan.stages):
            ns, nk = len(st.srcs), len(st.dsts)
            info[g, interp.C_PF], info[g, interp.C_PB] = sizes[0], sizes[1]
            sizes[0] += panels_size(ns * H, nk * H)
            sizes[1] += panels_size(nk * H, ns * H)
    ops = np.full((tb.ops.shape[0], interp.N_OPS_COLS), -1, dtype=np.int64)
    ops[:, :14] = tb.ops
    ops[:, interp.C_FOLD] = 0
    _runs(plan, ops, tile_rows(B, H))
    seed = np.zeros((*tb.stage_dst.shape[:2], 2), dtype=np.int64)
    seeding = {ins.dst: r for r, ins in enumerate(plan.program) if ins.code in (Code.LOADP, Code.BIAS, Code.CONST)}
    kinds = {Code.LOADP: interp.SEED_P, Code.BIAS: interp.SEED_BIAS, Code.CONST: interp.SEED_CONST}
    block_of = {b.node: i for i, b in enumerate(plan.xblocks)}
    dz_stages = []
    for g, st in enumerate(plan.stages):
        for k, node in enumerate(st.dsts):
            r = seeding.get(node, -1)
            if r >= 0:
                ins = plan.program[r]
                seed[g, k] = (kinds[ins.code], ins.aux)
                ops[r, interp.C_FOLD] = 1
        if any(node in block_of for node in st.dsts):
            dz_stages.append((g, [block_of.get(node, -1) for node in st.dsts]))
    in_dz = {i for _, blocks in dz_stages for i in blocks if i >= 0}
    dp_blocks = [i for i in range(len(plan.xblocks)) if i not in in_dz]
    for r, ins in enumerate(plan.program):
        if ins.code == Code.LOADP and ins.aux not in in_dz:
            ops[r, interp.C_DPB] = dp_blocks.index(ins.aux)
    # every gradient offset (node * B*H in the shared tables) to its slot's
    slot, n_slots = gradient_slots(plan)
    BH = B * H

    def gof(node: int) -> int:
        return slot[node] * BH

    stage_src, stage_dst = tb.stage_src.copy(), tb.stage_dst.copy()
    for r, ins in enumerate(plan.program):
        cols = {interp.C_DG: ins.dst, interp.C_AG: ins.a, interp.C_CG: ins.c}
        if ins.code != Code.STATE:  # a STATE's b column holds its copy flag
            cols[interp.C_BG] = ins.b
        for col, node in cols.items():
            if node >= 0:
                ops[r, col] = gof(node)
    for gi, st in enumerate(plan.stages):
        stage_src[gi, : len(st.srcs), interp.S_G] = [gof(v) for v in st.srcs]
        stage_dst[gi, : len(st.dsts), interp.S_G] = [gof(v) for v in st.dsts]
    state_g = np.array([gof(v) if v >= 0 else -1 for v in plan.state_slots], dtype=np.int64)
    update_g = np.array([gof(u) for u in plan.update_slots], dtype=np.int64)
    return _CpuTables(ops, info, (sizes[0], sizes[1]), seed, dz_stages, dp_blocks, stage_src, stage_dst, state_g, update_g,
                      gof(plan.output_slot), n_slots)  # fmt: skip


_WRITES = {Code.ADD: "ab", Code.SUB: "ab", Code.MUL: "ab", Code.BLEND: "abc", Code.SIGMOID: "a", Code.TANH: "a",
           Code.RELU: "a", Code.PEEP: "a"}  # fmt: skip


def gradient_slots(plan: Plan) -> tuple[list[int], int]:
    """A slot of G for each node's gradient, shared by nodes whose gradients are never live at once in
    the reverse walk, and the number of slots. A gradient is live from the first write to it (the
    step's seeding of the output and the updates, then the ops after its node's, walked in reverse)
    to the last op that reads it (every op reads its destination's and zeroes it; a GEMM stage reads
    its destinations' without zeroing and writes its sources'); outside that, its slot holds zeros.
    Fewer slots keep G (one [B, H] block each) in cache beside the weights (GRU: 12 -> 6)."""
    n_nodes = 1 + max([0, *(v for ins in plan.program for v in (ins.dst, ins.a, ins.b, ins.c))])
    first = [np.inf] * n_nodes
    last = [-1.0] * n_nodes
    for v in (plan.output_slot, *plan.update_slots):
        first[v] = 0
    n_ops = len(plan.program)
    for r, ins in enumerate(plan.program):
        pos = n_ops - r  # the reverse walk's order: position 1 is the last op
        reads = [*plan.stages[ins.aux].dsts] if ins.code == Code.GEMM else [ins.dst]
        writes = [*plan.stages[ins.aux].srcs] if ins.code == Code.GEMM else [getattr(ins, o) for o in _WRITES.get(ins.code, "")]
        for v in reads:
            last[v] = max(last[v], pos)
        for v in writes:
            if v >= 0:
                first[v] = min(first[v], pos)
    slot = [-1] * n_nodes
    ends: list[float] = []  # per slot, the last position its current node reads it
    for v in sorted(range(n_nodes), key=lambda v: (min(first[v], last[v]), v)):
        if last[v] < 0:
            continue  # not a node of the program
        start = min(first[v], last[v])  # a node never written is read as zeros: any slot free then
        free = [k for k, e in enumerate(ends) if e < start]
        k = free[0] if free else len(ends)
        if k == len(ends):
            ends.append(0)
        ends[k] = last[v]
        slot[v] = k
    return slot, max(len(ends), 1)


class _Packed:
    """Parameters as a kernel reads them: named arrays moved into one buffer (``views``: its parts)
    by one ``moves.pack`` over a table built once per workspace. Each move's source is a parameter,
    whose address the table takes at each call, unless the call passes the very arrays of the last
    one (a training loop updates its parameters in place): then the table is as it was. (Held, those
    arrays cannot be freed and their addresses reused.) Where the regions' moves leave an element
    alone (a term of no parameter, the panels' padding), it stays the zero it was made with."""

    def __init__(self, dtype: np.dtype, size: int, regions: dict[str, tuple[int, tuple[int, ...]]]) -> None:
        self.dtype = dtype
        self.buf = aligned(size, dtype, zero=True)
        self.views = {name: self.buf[o : o + math.prod(shape)].reshape(shape) for name, (o, shape) in regions.items()}
        self.names: list[str] = []  # the sources, in the order of their first move
        self.shapes: list[tuple[int, ...]] = []  # and their shapes
        self.rows: list[list[int]] = []
        self.sources: list[int] = []  # each move's source: an index into names
        self.table = np.zeros((0, moves.WIDTH), dtype=np.int64)
        self.src = np.zeros(0, dtype=np.int64)
        self.held: list[Array] = []  # the arrays the table's addresses point into (the last call's, or copies)

    def add(self, name: str, shape: tuple[int, ...], dst: int, kind: int, a: int, b: int, K: int = 0, add: bool = False) -> None:
        """A move of parameter ``name`` (row-major ``shape``) to ``dst`` (``moves``' doc)."""
        if name not in self.names:
            self.names.append(name)
            self.shapes.append(shape)
        R, C = (1, shape[0]) if len(shape) == 1 else shape
        self.rows.append(moves.row(0, R, C, C, 1, dst, kind, a, b, K=K, add=add))
        self.sources.append(self.names.index(name))

    def done(self) -> _Packed:
        self.table = np.array(self.rows, dtype=np.int64).reshape(-1, moves.WIDTH)
        self.src = np.array(self.sources, dtype=np.int64)
        return self

    def fill(self, params: Mapping[str, Array]) -> dict[str, Array]:
        """The buffer's views, holding ``params`` (every name the moves read; shapes checked here when
        the arrays are not the last call's)."""
        given = [params[n] for n in self.names]
        if len(given) != len(self.held) or not all(map(operator.is_, given, self.held)):
            dt = self.dtype
            held = []
            for name, a, shape in zip(self.names, given, self.shapes, strict=True):
                a = np.asarray(a)
                if a.shape != shape:  # (the moves would read past its end)
                    raise ShapeError(f"parameter {name!r} has shape {a.shape}; this kernel's call expects {shape}")
                held.append(a if a.dtype == dt and a.flags.c_contiguous else np.ascontiguousarray(a, dtype=dt))
            self.held = held  # (an array converted here is new: the next call converts again)
            if len(self.src):
                addrs = np.array([a.ctypes.data for a in held], dtype=np.int64)
                self.table[:, moves.M_SRC] = addrs[self.src]
        if len(self.table):
            moves.pack(self.table, self.buf)
        return self.views


def _regions(parts: list[tuple[str, tuple[int, ...], int]]) -> tuple[dict[str, tuple[int, tuple[int, ...]]], int]:
    """Regions of one buffer, each on a cache line: (name, shape, elements) -> ({name: (offset, shape)}, size)."""
    out, at = {}, 0
    for name, shape, n in parts:
        out[name] = (at, shape)
        at += _lines(max(n, 1))
    return out, at


@dataclass
class _Backward:
    """A workspace's buffers for the backward's gradients (zeroed by each call) and the table of the
    weight-gradient GEMMs over them (``blas.Jobs``), built once: its addresses stay valid as long as
    these buffers and the workspace live."""

    dWt: list[Array]  # per stage [C, nk*H, ns*H]: its weights' gradient, transposed, per chunk
    dWxo: Array  # [C, I, NX*H]: the input weights' gradient, its H-column blocks in the order ``order``
    order: list[int]  # the x blocks in dWxo's column order
    WxTo: Array  # [NX*H, I]: Wx^T in that order, copied in by each call (for x's gradient; else empty)
    dX: Array  # [C, T, Bp, I] (x's gradient; else [C, 0, 0, 0])
    dB: Array  # [C, n_biases, H]
    dPeep: Array  # [C, n_peeps, H]
    dBx: Array  # [C, NX*H]
    PK: Array  # the packed GEMM's scratch, per chunk
    jobs: Array  # the job table (``Jobs.table``)
    x_rows: list[int]  # its rows whose A is x (one chunk: x is the tape's own, its address set by each call)
    keep: Jobs  # the Jobs that holds the views the table points into
    weights: _Packed  # the backward's weights (WT, peeps; WxTo with x's gradient) from the parameters
    grads: Array  # the moves (``moves``) of the chunks' gradients, summed, into the named ones' buffer
    grad_views: list[tuple[str, int, int, tuple[int, ...]]]  # each named gradient: (name, start, end, shape) there
    grad_size: int

    def zero(self) -> None:
        for a in (*self.dWt, self.dWxo, self.dX, self.dB, self.dPeep, self.dBx):
            a.fill(0)


@dataclass
class _Workspace:
    """The Plan's arrays (``tables.Tables``) and the work buffers for one (T, B, I, H) and chunk count C.

    Chunk c runs batch rows ``rows[c]..rows[c+1]`` in buffers of its own (the leading axis of every
    array here), laid out for ``Bp = ceil(B / C)`` rows; the rows a short chunk leaves unused stay zero,
    so the GEMMs over whole chunk buffers add nothing from them. One chunk (C = 1) is the whole batch."""

    tables: Tables  # for (T, Bp, H)
    cpu: _CpuTables
    rows: Array  # [C + 1] batch row bounds
    Bp: int
    SB: int  # steps per block of the backward's weight gradients (its rings hold SB steps)
    X: Array  # [C, T, Bp, I] the chunks' copies of x (C > 1; else empty: x itself is the one chunk)
    P: Array  # one step's input projection [C, Bp, NX*H padded to whole panels]
    dP: Array  # a ring of its gradient's blocks that no stage's DZ holds [C, SB*Bp, len(dp_blocks)*H]
    A: Array  # [C, arena]
    K: Array  # [C, k_size] each stage's GEMM sources, [T, Bp, ns*H], for the weight gradients
    DZ: Array  # [C, ...] a ring of each stage's output gradient, [SB, Bp, nk*H] at stage_info[g, C_ZR]
    TMP: Array  # [C, tmp_size]
    G: Array  # [C, g_size]
    # made at first use, then kept (a training loop calls with the same shapes again and again, and at
    # small sizes the allocations and the job table cost as much as the kernel): the forward's weights
    # as it reads them (``_Packed``) and the backward's gradient buffers and job table, with and
    # without x's gradient (``_Backward``)
    forward: _Packed | None = None
    zero_states: Array | None = None  # [C, nS, Bp*H] zeros: the initial states when none are given
    backward: dict[bool, _Backward] = field(default_factory=dict)

    @property
    def chunks(self) -> int:
        return int(self.rows.shape[0] - 1)

    def counts(self) -> list[int]:
        return [int(b) for b in np.diff(self.rows)]


#: the backward sums the weight gradients over blocks of at least this many batch rows (steps x rows):
#: each block's DZ and dP are still in cache, and the GEMMs are not too short
BLOCK_ROWS = 128


def _lines(n: int) -> int:
    """n elements rounded up to a multiple of 16: whole 64-byte cache lines in float32 and float64, so
    the rows of a [C, n] buffer (one per chunk) never share a line."""
    return max(16, -(-n // 16) * 16)


def aligned(shape: int | tuple[int, ...], dtype: Any, zero: bool = False) -> Array:
    """An array whose data starts on a 64-byte boundary (a cache line; NumPy's large arrays start 16
    bytes past one): the GEMMs' and the elementwise ops' 64-byte vectors then never straddle two lines
    where the offsets inside are whole lines (``_lines``, panel sizes)."""
    dt = np.dtype(dtype)
    n = math.prod(shape) if isinstance(shape, tuple) else int(shape)
    raw = (np.zeros if zero else np.empty)(n * dt.itemsize + 64, dtype=np.uint8)
    skip = -raw.ctypes.data % 64
    return raw[skip : skip + n * dt.itemsize].view(dt).reshape(shape)


def _workspace(plan: Plan, T: int, B: int, I: int, H: int, C: int, dtype: np.dtype) -> _Workspace:
    Bp = -(-B // C)
    tb = tables(plan, T, Bp, H)
    SB = max(1, min(T, -(-BLOCK_ROWS // Bp)))
    cpu = _cpu_tables(plan, tb, Bp, H, SB, panels=dtype == np.float32)
    widest = max([padded(max(len(st.srcs), len(st.dsts)) * H) for st in plan.stages] + [NR])
    rows = np.array([c * B // C for c in range(C + 1)], dtype=np.int64)
    ring = SB * Bp * sum(len(st.dsts) for st in plan.stages) * H

    def z(shape: tuple[int, ...], dtype: Any) -> Array:  # the unused rows of K, DZ, dP and X must read as 0
        return aligned(shape, dtype, zero=True)

    return _Workspace(
        tb,
        cpu,
        rows,
        Bp,
        SB,
        X=z((C, T, Bp, I) if C > 1 else (0, T, Bp, I), dtype=dtype),
        P=aligned((C, Bp, max(padded(len(plan.xblocks) * H), 1)), dtype=dtype),
        dP=z((C, SB * Bp, len(cpu.dp_blocks) * H), dtype=dtype),
        A=aligned((C, _lines(tb.arena)), dtype=dtype),
        K=z((C, _lines(tb.k_size)), dtype=dtype),
        DZ=z((C, _lines(ring)), dtype=dtype),
        TMP=aligned((C, Bp * widest), dtype=dtype),  # [Bp, widest]: a GEMM's rows (room for panel padding)
        G=aligned((C, _lines(cpu.g_slots * Bp * H)), dtype=dtype),
    )


def _to_chunks(ws: _Workspace, a: Array, axis: int, out: Array) -> Array:
    """Batch axis ``axis`` of ``a`` cut into the workspace's chunks: out[c] gets rows rows[c].. (the
    rest of out[c] is left as it is: zero)."""
    for c, (r0, r1) in enumerate(zip(ws.rows[:-1], ws.rows[1:], strict=True)):
        idx = (slice(None),) * axis
        out[c][(*idx, slice(0, r1 - r0))] = a[(*idx, slice(r0, r1))]
    return out


def _from_chunks(ws: _Workspace, a: Array, axis: int) -> Array:
    """The inverse of ``_to_chunks``: the chunks' used rows of a[c] joined along ``axis``."""
    idx = (slice(None),) * axis
    return np.concatenate([a[c][(*idx, slice(0, n))] for c, n in enumerate(ws.counts())], axis=axis)


class _Blas:
    """The BLAS library behind Numba's ``np.dot`` (SciPy's OpenBLAS): its thread count is set to 1
    while the batch is split over threads, so that the two pools never compete for the cores."""

    def __init__(self) -> None:
        self._lib: Any = None
        self._found = False

    def lib(self) -> Any:
        if not self._found:
            self._found = True
            try:
                from threadpoolctl import ThreadpoolController

                a = np.ones((2, 2))
                interp.gemm(a, a, np.empty((2, 2)))  # load the library first
                libs = [
                    c
                    for c in ThreadpoolController().lib_controllers
                    if c.internal_api == "openblas" and "scipy.libs" in c.filepath.replace("\\", "/")
                ]  # SciPy's own copy (numpy.libs holds NumPy's, also named libscipy_openblas64_)
                self._lib = libs[0] if libs else None
            except ImportError:
                self._lib = None
        return self._lib

    @contextmanager
    def single(self, active: bool) -> Iterator[None]:
        lib = self.lib() if active else None
        if lib is None:
            yield
            return
        before = lib.get_num_threads()
        lib.set_num_threads(1)
        try:
            yield
        finally:
            lib.set_num_threads(before)


BLAS = _Blas()


@contextmanager
def _chunk_threads(dtype: np.dtype) -> Iterator[None]:
    """Around a kernel call with C > 1 chunks on Numba's threads: BLAS's first call made on this
    thread (``blas.warm``; a backward may come first, as in ahead.py's child) and BLAS at one thread."""
    warm(dtype)
    with BLAS.single(True):
        yield


def _spans(blocks: list[int]) -> Iterator[tuple[int, int]]:
    """(position, length) of each run of entries >= 0 in ``blocks`` (-1: no block there)."""
    k = 0
    while k < len(blocks):
        if blocks[k] < 0:
            k += 1
            continue
        n = 1
        while k + n < len(blocks) and blocks[k + n] >= 0:
            n += 1
        yield k, n
        k += n


class CpuKernel:
    """A cell on the CPU. ``threads``: how many threads split the batch, each running the whole time
    loop for its chunk of rows in buffers of its own, with BLAS at 1 thread and the GEMMs around the
    loop split over the same threads (``blas.pgemm``); with one thread (the default), the loop runs on
    this thread and BLAS uses its own threads. A given ``threads`` gives the same numbers run after run,
    but not the same last bits as another (the GEMMs sum in another order), so evaluations that must
    match wherever they run (the search's) keep the default; a single long training can ask for more."""

    backend = "cpu"

    def __init__(self, cell: Cell, dtype: type | np.dtype = np.float32, threads: int | None = None) -> None:
        self.cell = cell
        self.threads = threads
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ShapeError(f"the cpu backend runs float32 or float64, not {self.dtype}")
        self.plan = lower(cell)
        self._x_op = any(ins.code == Code.X for ins in self.plan.program)  # x used elementwise (backward writes dX)
        self._rare_ops = any(int(ins.code) in RARE for ins in self.plan.program)  # the cell needs rare.py's functions
        self._R = interp.constants(self.dtype)
        self._consts = np.array((*self.plan.consts, 0.0), dtype=self.dtype)  # the cell's constants (read only)
        ahead.start(self.dtype, split=(threads or 1) > 1)  # first use on a machine: see ahead.py
        self._ws: dict[tuple[int, int, int, int, int], _Workspace] = {}
        self._generation = 0
        self._specs: dict[tuple[int, int], list[ParamSpec]] = {}
        self._fns: dict[str, tuple[np.uint64, ...]] = {}

    def _chunks(self, B: int) -> int:
        return max(1, min(self.threads or 1, B))

    def _get_workspace(self, T: int, B: int, I: int, H: int) -> _Workspace:
        key = (T, B, I, H, self._chunks(B))
        if key not in self._ws:
            if len(self._ws) > 4:
                self._ws.clear()
            self._ws[key] = _workspace(self.plan, T, B, I, H, key[-1], self.dtype)
        return self._ws[key]

    def _stage_moves(self, pk: _Packed, ws: _Workspace, H: int, at: int, forward: bool) -> None:
        """Moves of the stages' weights into ``pk``'s buffer from element ``at``: float32, as panels
        of W (forward, at C_PF) or of W^T (backward, at C_PB); float64, W [ns*H, nk*H] itself or its
        transpose. Weights summed from several parameters come in ``pack_weights``' order."""
        info = ws.cpu.stage_info
        panels = self.dtype == np.float32
        for g, st in enumerate(self.plan.stages):
            ns, nk = len(st.srcs), len(st.dsts)
            woff = int(info[g, 2])
            for kk, row in enumerate(st.terms):
                for i, names in enumerate(row):
                    if panels and forward:  # W[i*H + r, kk*H + c]
                        move = (at + int(info[g, interp.C_PF]), moves.PANEL, i * H, kk * H, ns * H)
                    elif panels:  # W^T[kk*H + c, i*H + r]
                        move = (at + int(info[g, interp.C_PB]), moves.PANEL_T, kk * H, i * H, nk * H)
                    elif forward:
                        move = (at + woff + (i * nk * H + kk) * H, moves.AFFINE, nk * H, 1, 0)
                    else:
                        move = (at + woff + (kk * ns * H + i) * H, moves.AFFINE, 1, ns * H, 0)
                    for j, name in enumerate(names):
                        pk.add(name, (H, H), *move, add=j > 0)

    def _stage_size(self, ws: _Workspace, H: int, forward: bool) -> int:
        """Elements of the stages' weights as ``_stage_moves`` writes them: float32, the panels alone
        (at C_PF, C_PB); float64, the plain matrices."""
        if self.dtype == np.float32:
            return int(ws.cpu.panels[0 if forward else 1])
        return sum(len(st.srcs) * len(st.dsts) * H * H for st in self.plan.stages)

    @staticmethod
    def _vector_moves(pk: _Packed, names: tuple[str, ...], at: int, H: int) -> None:  # vectors [H], one after another
        for j, name in enumerate(names):
            pk.add(name, (H,), at + j * H, moves.AFFINE, 0, 1)

    def _forward_weights(self, ws: _Workspace, I: int, H: int) -> _Packed:
        """The forward's weights (``_Packed``): "W" the stages' (``_stage_moves``), "WX" the input
        projection's (float32: panels; else [I, NX*H]), "bx" its biases [NX*H], "biases" [n_biases, H],
        "peeps" [n_peeps, H]."""
        p, dt = self.plan, self.dtype
        NX = len(p.xblocks)
        panels = dt == np.float32 and NX > 0
        wx = panels_size(I, NX * H) if panels else I * NX * H
        w = self._stage_size(ws, H, True)
        regions, size = _regions([("W", (w,), w), ("WX", (wx,), wx), ("bx", (NX * H,), NX * H),
                                  ("biases", (len(p.biases), H), len(p.biases) * H),
                                  ("peeps", (len(p.peeps), H), len(p.peeps) * H)])  # fmt: skip
        pk = _Packed(dt, size, regions)
        self._stage_moves(pk, ws, H, regions["W"][0], True)
        wxo = regions["WX"][0]
        for i, blk in enumerate(p.xblocks):
            for j, name in enumerate(blk.weights):
                if panels:
                    pk.add(name, (I, H), wxo, moves.PANEL, 0, i * H, K=I, add=j > 0)
                else:
                    pk.add(name, (I, H), wxo + i * H, moves.AFFINE, NX * H, 1, add=j > 0)
        bxo = regions["bx"][0]
        for i, blk in enumerate(p.xblocks):
            if blk.bias is not None:
                pk.add(blk.bias, (H,), bxo + i * H, moves.AFFINE, 0, 1)
        self._vector_moves(pk, p.biases, regions["biases"][0], H)
        self._vector_moves(pk, p.peeps, regions["peeps"][0], H)
        return pk.done()

    def _backward_weights(self, ws: _Workspace, I: int, H: int, order: list[int], grad_x: bool) -> _Packed:
        """The backward's weights (``_Packed``): "WT" the stages' transposed (``_stage_moves``),
        "peeps" [n_peeps, H], and with ``grad_x`` "WxTo" [NX*H, I]: Wx^T, its H-row blocks in the
        order ``order`` (where the weight-gradient jobs read it)."""
        p, dt = self.plan, self.dtype
        NX = len(p.xblocks) if grad_x else 0
        wt = self._stage_size(ws, H, False)
        regions, size = _regions([("WT", (wt,), wt), ("peeps", (len(p.peeps), H), len(p.peeps) * H),
                                  ("WxTo", (NX * H, I), NX * H * I)])  # fmt: skip
        pk = _Packed(dt, size, regions)
        self._stage_moves(pk, ws, H, regions["WT"][0], False)
        self._vector_moves(pk, p.peeps, regions["peeps"][0], H)
        wxo = regions["WxTo"][0]
        for pos, i in enumerate(order if grad_x else []):  # WxTo[pos*H + c, r] = Wx_i[r, c]
            for j, name in enumerate(p.xblocks[i].weights):
                pk.add(name, (I, H), wxo + pos * H * I, moves.AFFINE, 1, I, add=j > 0)
        return pk.done()

    def _gemm(self, which: str) -> np.uint64:
        """The address of the float32 GEMM ``which`` (``microkernel.address``; 0 for float64, which
        never calls it)."""
        return np.uint64(address(which) if self.dtype == np.float32 else 0)

    def _functions(self, which: str) -> tuple[np.uint64, ...]:
        """The addresses of the C functions a ``which`` ("forward", "backward") kernel calls, each
        compiled (or loaded) at its first use."""
        fns = self._fns.get(which)
        if fns is None:
            if which == "forward":
                fns = (self._gemm("panels"), self._rare("forward"))
            else:
                fns = (self._gemm("panels"), self._gemm("packed"), np.uint64(address("jobs")), self._rare("backward"))
            self._fns[which] = fns
        return fns

    def _rare(self, direction: str) -> np.uint64:
        """The address of the rare ops' C function for ``direction`` (``rare.py``); 0 when the cell
        has none (it is never called then, nor compiled)."""
        return np.uint64(address(rare_name(direction, self.dtype)) if self._rare_ops else 0)

    def forward(self, params: Mapping[str, Array], x: Array, state0: Mapping[str, Array] | None = None) -> Forward:
        p = self.plan
        dt = self.dtype
        x = np.ascontiguousarray(x, dtype=dt)
        if x.ndim != 3:
            raise ShapeError(f"x must be [T, B, I]; got shape {x.shape}")
        T, B, I = x.shape
        H = infer_hidden(params, I)
        if (I, H) not in self._specs:
            self._specs = {(I, H): param_specs(self.cell, I, H)}
        check_params(self._specs[(I, H)], params)
        ws = self._get_workspace(T, B, I, H)
        if ws.forward is None:
            ws.forward = self._forward_weights(ws, I, H)
        w = ws.forward.fill(params)
        W, WX, bx, biases, peeps = w["W"], w["WX"], w["bx"], w["biases"], w["peeps"]
        wx_panels = dt == np.float32 and WX.size > 0  # the input projection's weights as panels (float32's microkernel)
        C, Bp, tb = ws.chunks, ws.Bp, ws.tables
        nS = len(p.states)
        if state0:
            given = initial_states(p.states, state0, B, H, dt)
            S0 = np.stack([given[s] for s in p.states])  # [nS, B, H]
            S0 = S0.reshape(1, nS, B * H) if C == 1 else _to_chunks(ws, S0, 1, np.zeros((C, nS, Bp, H), dt))
            S0 = S0.reshape(C, nS, Bp * H)
        else:  # zeros (the kernel only reads them)
            if ws.zero_states is None:
                ws.zero_states = np.zeros((C, nS, Bp * H), dtype=dt)
            S0 = ws.zero_states
        for i, off in enumerate(tb.init_at):
            if off >= 0:
                ws.A[:, off : off + Bp * H] = S0[:, i]
        consts = self._consts
        head = (ws.cpu.ops, ws.cpu.stage_info, tb.stage_src, tb.stage_dst, ws.cpu.seed, T, Bp, H)
        out = np.empty((T, B, H), dtype=dt)  # the output's values, copied from the tape by the kernel's threads
        o_at, o_step = self._tape_at(ws, p.output_slot, H)
        fns = self._functions("forward")
        with _chunk_threads(dt) if C > 1 else nullcontext(), interp.compiling("forward" if C == 1 else "forward_split", dt):
            if C == 1:
                interp.forward_rows(*head, ws.A[0], ws.P[0], bx, x, WX, wx_panels, S0[0], consts, biases, peeps, W,
                                    ws.K[0], ws.TMP[0], self._R, 0, B, out, o_at, o_step, 0, *fns)  # fmt: skip
            else:
                interp.forward_kernel_split(*head, ws.A, ws.P, bx, x, ws.X, WX, wx_panels, S0, consts, biases, peeps, W, ws.K,
                                            ws.TMP, self._R, ws.rows, out, o_at, o_step, *fns)  # fmt: skip
        self._generation += 1
        self._functions("backward")  # (a first use: the backward's C functions compile here, ahead.py's child compiles it)
        moves.first_use(dt)  # (and the gradients' moves)
        states = {s: self._last(ws, u, T, H) for s, u in zip(p.states, p.update_slots, strict=True)}
        tape = CpuTape(x, ws.A, ws.K, I, H, self._generation)
        return Forward(out, states, tape)  # type: ignore[arg-type]

    def _tape_at(self, ws: _Workspace, node: int, H: int) -> tuple[int, int]:
        """Where node ``node``'s values sit in a chunk's arena: (offset at tape step 0, step stride)."""
        p = self.plan
        if p.tape_index[node] < 0:
            raise ShapeError(f"node {node} is not on the tape")  # lowering tapes updates and the output
        return int(p.tape_index[node]) * ws.Bp * H, p.n_taped * ws.Bp * H

    def _last(self, ws: _Workspace, node: int, T: int, H: int) -> Array:
        """Node ``node``'s values at the last step, [B, H] (a copy; the node must be taped)."""
        at, step = self._tape_at(ws, node, H)
        o = at + T * step
        V = ws.A[:, o : o + ws.Bp * H].reshape(ws.chunks, ws.Bp, H)
        return V[0].copy() if ws.chunks == 1 else _from_chunks(ws, V, 0)

    def _backward_buffers(self, ws: _Workspace, T: int, I: int, H: int, grad_x: bool) -> _Backward:
        """The gradient buffers and weight-gradient jobs of ``backward`` for this workspace (built
        once per workspace and ``grad_x``). The weight gradients are summed by each chunk's thread as
        its reverse walk goes, a block of SB steps at a time (then over the chunks): per recurrent
        stage dW^T += DZ^T @ K; the input projection's dWx += x^T @ (its gradient: the columns of a
        stage's DZ that hold it, else dP); with ``grad_x``, dX += that gradient @ Wx^T."""
        p, dt, C, Bp, tb, cpu = self.plan, self.dtype, ws.chunks, ws.Bp, ws.tables, ws.cpu
        NX = len(p.xblocks)
        X = np.zeros((1, T, Bp, I), dtype=dt) if C == 1 else ws.X  # (one chunk: x's address comes with each call)
        dX = np.zeros((C, T, Bp, I) if grad_x or self._x_op else (C, 0, 0, 0), dtype=dt)  # (an elementwise x's: the walk)
        SB, TB, RB = ws.SB, T * Bp, ws.SB * Bp
        jobs = Jobs(dt)
        dWt = []
        rings: list[list[Array]] = []
        for g, st in enumerate(p.stages):
            ns, nk = len(st.srcs), len(st.dsts)
            koff, zr = int(tb.stage_info[g, 3]), int(cpu.stage_info[g, interp.C_ZR])
            dWt.append(aligned((C, nk * H, ns * H), dt, zero=True))
            rings.append([ws.DZ[c, zr : zr + RB * nk * H].reshape(RB, nk * H) for c in range(C)])
            for c in range(C):
                src = ws.K[c, koff : koff + TB * ns * H].reshape(TB, ns * H)
                jobs.add(c, rings[g][c], src, dWt[g][c], m=(nk * H, 0), steps=SB, k=(0, Bp),
                         strides=(0, Bp * ns * H, 0), transposed=True)  # fmt: skip
        # (the gradient of the projection's output in each chunk [SB*Bp, n*H], its x blocks)
        groups = [(rings[g], blocks) for g, blocks in cpu.dz_stages]
        if cpu.dp_blocks:
            groups.append(([ws.dP[c] for c in range(C)], cpu.dp_blocks))
        # dWx's H-column blocks in the order the gradients' columns hold them (one GEMM per span of
        # columns, whichever blocks they are)
        order = [i for _, blocks in groups for i in blocks if i >= 0]
        dWxo = aligned((C, I, NX * H), dt, zero=True)
        weights = self._backward_weights(ws, I, H, order, grad_x)
        WxTo = weights.views["WxTo"]
        x_rows: list[int] = []
        r0 = 0
        for ms, blocks in groups:
            for k, n in _spans(blocks):  # m's columns k*H.. hold blocks blocks[k..k+n-1]
                for c, m in enumerate(ms):
                    mk = m[:, k * H : (k + n) * H]
                    before = len(jobs.rows)
                    jobs.add(c, X[c].reshape(TB, I), mk, dWxo[c, :, r0 : r0 + n * H], m=(I, 0), steps=SB, k=(0, Bp),
                             strides=(Bp * I, 0, 0), transposed=True)  # fmt: skip
                    x_rows += range(before, len(jobs.rows))
                    if grad_x:  # x also feeds the input GEMM: dX += gradient @ Wx^T
                        jobs.add(c, mk, WxTo[r0 : r0 + n * H], dX[c].reshape(TB, I), m=(0, Bp), steps=SB,
                                 k=(n * H, 0), strides=(0, 0, Bp * I), transposed=False)  # fmt: skip
                r0 += n * H
        PK = aligned((C, _lines(gemm_scratch(*jobs.widest)) if dt == np.float32 else 1), np.float32)
        dB = np.zeros((C, len(p.biases), H), dtype=dt)
        dPeep = np.zeros((C, len(p.peeps), H), dtype=dt)
        dBx = np.zeros((C, NX * H), dtype=dt)
        grads, views, size = self._gradient_moves(H, I, dWt, dWxo, order, dBx, dB, dPeep)
        return _Backward(
            dWt=dWt,
            dWxo=dWxo,
            order=order,
            WxTo=WxTo,
            dX=dX,
            dB=dB,
            dPeep=dPeep,
            dBx=dBx,
            PK=PK,
            jobs=jobs.table(),
            x_rows=x_rows if C == 1 else [],
            keep=jobs,
            weights=weights,
            grads=grads,
            grad_views=views,
            grad_size=size,
        )

    def _gradient_moves(
        self, H: int, I: int, dWt: list[Array], dWxo: Array, order: list[int], dBx: Array, dB: Array, dPeep: Array
    ) -> tuple[Array, list[tuple[str, int, int, tuple[int, ...]]], int]:
        """The moves (``moves``) that sum the chunks' gradients into each named parameter's, one after
        another in one buffer: the table, each gradient's (name, start, end, shape) and the size. The
        sums are ``unpack_gradients``' over the chunks' sums, in its order (``unpack_recipe``): the
        same bytes as NumPy's ``sum(axis=0)`` and then ``unpack_gradients``."""
        C = dWxo.shape[0]
        rows: list[list[int]] = []
        views: list[tuple[str, int, int, tuple[int, ...]]] = []
        at = 0
        pos = {i: n for n, i in enumerate(order)}  # x block -> its column block in dWxo
        shapes = {s.name: s.shape for s in param_specs(self.cell, I, H)}
        for name, parts in unpack_recipe(self.plan, H):
            shape = shapes[name]
            R, Cn = (1, shape[0]) if len(shape) == 1 else shape
            for j, (which, index, rs, cs) in enumerate(parts):
                if which == 0:  # dWx[:, block's columns]: [I, H] of dWxo [C, I, NX*H], at its column block
                    src, strides, cstride = dWxo[0, :, pos[cs.start // H] * H :], (dWxo.shape[2], 1), dWxo[0].size
                elif which == 1:  # its bias, dbx[block's columns]: [H] of dBx [C, NX*H]
                    src, strides, cstride = dBx[0, cs.start :], (0, 1), dBx[0].size
                elif which == 2:  # dWs[g][rs, cs] = dWt[g]'s sum over chunks, transposed: [cs, rs] of [C, nk*H, ns*H]
                    d = dWt[index]
                    src, strides, cstride = d[0, cs.start :, rs.start :], (1, d.shape[2]), d[0].size
                else:  # dB[index] or dPeep[index]: [H] of [C, n, H]
                    d = dB if which == 3 else dPeep
                    src, strides, cstride = d[0, index], (0, 1), d[0].size
                rows.append(moves.row(src.ctypes.data, R, Cn, *strides, at, moves.AFFINE, Cn, 1, add=j > 0, n=C, ns=cstride))
            views.append((name, at, at + R * Cn, shape))
            at += R * Cn
        return np.array(rows, dtype=np.int64).reshape(-1, moves.WIDTH), views, at

    def backward(
        self,
        params: Mapping[str, Array],
        tape: CpuTape,
        d_out: Array | None,
        d_state_T: Mapping[str, Array] | None = None,
        grad_x: bool = True,
    ) -> Gradients:
        """Gradients of ``sum(d_out * outputs) + sum_s sum(d_state_T[s] * states[s])``; with
        ``grad_x=False`` the input's gradient is skipped (``Gradients.x`` is None)."""
        if tape.generation != self._generation:
            raise ShapeError("this tape is stale: the kernel ran forward again since (backward needs the latest tape)")
        p = self.plan
        dt = self.dtype
        x = tape.x
        T, B, I = x.shape
        H = tape.hidden_size
        ws = self._get_workspace(T, B, I, H)
        C, Bp, cpu = ws.chunks, ws.Bp, ws.cpu
        nS = len(p.states)
        dOut = np.zeros((T, B, H), dtype=dt) if d_out is None else np.ascontiguousarray(d_out, dtype=dt)
        dS = np.zeros((nS, B, H), dtype=dt)
        if d_state_T is not None:
            for i, s in enumerate(p.states):
                if s in d_state_T:
                    dS[i] = np.asarray(d_state_T[s], dtype=dt).reshape(B, H)
        if C == 1:
            dS = dS.reshape(1, nS, B * H)
        else:
            dS = _to_chunks(ws, dS, 1, np.zeros((C, nS, Bp, H), dtype=dt)).reshape(C, nS, Bp * H)
        bw = ws.backward.get(grad_x)
        if bw is None:
            bw = ws.backward[grad_x] = self._backward_buffers(ws, T, I, H, grad_x)
        bw.zero()
        w = bw.weights.fill(params)  # (with grad_x: Wx^T in dWxo's block order, where the jobs read it)
        WT, peeps = w["WT"], w["peeps"]
        if C == 1:  # the one chunk's x is the tape's own (the forward read it in place)
            xa = x.ctypes.data
            for r in bw.x_rows:
                bw.jobs[r, J_A] = xa
        dX, dB, dPeep, dBx = bw.dX, bw.dB, bw.dPeep, bw.dBx
        PK, SB = bw.PK, ws.SB
        head = (cpu.ops, cpu.stage_info, cpu.stage_src, cpu.stage_dst, T, Bp, H)
        tail = (cpu.state_g, cpu.update_g, cpu.output_g)
        ahead.wait(dt, C > 1)  # (a first use: ahead.py's child compiles the backward and the job runner)
        fns = self._functions("backward")
        with _chunk_threads(dt) if C > 1 else nullcontext(), interp.compiling("backward" if C == 1 else "backward_split", dt):
            if C == 1:
                interp.backward_rows(*head, ws.A[0], *tail, dOut, dS[0], peeps, WT, ws.DZ[0], ws.TMP[0], ws.G[0], ws.dP[0],
                                     dX[0], dB[0], dPeep[0], dBx[0], self._R, 0, B, 0, bw.jobs, 0, SB, PK[0],
                                     *fns)  # fmt: skip
            else:
                interp.backward_kernel_split(*head, ws.A, *tail, dOut, dS, peeps, WT, ws.DZ, ws.TMP, ws.G, ws.dP, dX, dB, dPeep,
                                             dBx, self._R, bw.jobs, ws.rows, SB, PK, *fns)  # fmt: skip
        flat = np.empty(bw.grad_size, dtype=dt)  # the named gradients, summed over the chunks (new arrays)
        moves.sums(bw.grads, flat)
        grads = {name: flat[o:e].reshape(shape) for name, o, e, shape in bw.grad_views}
        if C == 1:
            dx, dS = dX[0].copy() if grad_x else dX, dS[0].reshape(nS, B, H)  # (dX is the workspace's)
        else:
            dx, dS = _from_chunks(ws, dX, 1) if grad_x else dX, _from_chunks(ws, dS.reshape(C, nS, Bp, H), 1)
        state0 = {s: dS[i].copy() for i, s in enumerate(p.states)}
        return Gradients(grads, dx if grad_x else None, state0)
