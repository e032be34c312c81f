"""The CUDA backend: a cell's Plan run by the compile-once CUDA executor (``kernels.py``).

Same API as the reference and cpu backends, with host NumPy arrays in and out:
``forward(params, x, state0) -> Forward`` and ``backward(params, tape, d_out, d_state_T) -> Gradients``,
so a ``Model`` trains on it unchanged. Under them, a device-array path for callers that keep their
data on the GPU: ``upload(params, I, H) -> DeviceWeights``, ``forward_device(weights, x, s0)`` and
``backward_device(weights, tape, d_out, d_state) -> DeviceGradients`` (``.to_host()`` names them).
Every launch and copy goes to the kernel's own ``stream``, and the work buffers of a shape are
allocated once and reused (an allocation may synchronise the device), so kernels on different
streams overlap: ``population.CudaPopulation`` runs many cells that way.

A step is: one GEMM for the input projection of the whole sequence, one launch for the time loop,
then backward one launch for the reverse time loop and one GEMM per weight gradient (deferred to
after the loop), plus column sums for the biases. Like the cpu backend's, a tape is valid until the
kernel's next ``forward``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numba import config as numba_config
from numba import cuda

from ...errors import ShapeError
from ...ir.cell import Cell
from ...ir.params import param_specs
from ...lowering import lower
from ..reference import Forward, Gradients, check_params, infer_hidden, initial_states
from ..tables import (
    C_AC,
    C_AG,
    C_AM,
    C_AUX,
    C_BC,
    C_BG,
    C_BM,
    C_CC,
    C_CG,
    C_CM,
    C_CODE,
    C_DC,
    C_DG,
    C_DM,
    I_K,
    I_Z,
    S_C,
    S_G,
    S_M,
    pack_weights,
    tables,
    unpack_gradients,
)  # fmt: skip
from . import fused
from .kernels import (
    M_STATE,
    M_STRIDE,
    OP_LOADP,
    ROWS,
    WARP_INFLIGHT,
    WARP_LOADS,
    WARP_ROWS,
    gemm_kernel,
    kernels,
    shared_elements,
    unit_kernels,
)

Array = np.ndarray
DeviceArray = Any  # numba.cuda's DeviceNDArray (untyped)

#: the GEMM kernel's tiling (TX, TY, RM, RN, BK): 64x64 tiles of 16x16 threads on a GPU; small tiles
#: in the simulator, where every thread is a Python thread
GPU_TILE = (16, 16, 4, 4, 16)
SIM_TILE = (4, 4, 2, 2, 4)
GEMM_BK = 16  # split-K slices are a multiple of this (the GPU tile's depth)
#: threads per block of the time-loop kernels: elementwise ops split H units, GEMM stages their
#: columns, over at most this many (ptxas for sm_90 gives the kernels 87-168 registers a thread:
#: 256 threads always fit a multiprocessor's 64K)
MAX_THREADS = 256
#: the time loop's two schedules (``kernels.py``): a block per batch row(s), or a block per group of
#: hidden units with a grid-wide barrier per GEMM stage
SCHEDULES = ("rows", "units")
UNITS_MIN_H = 192  # the default schedule is units from this many hidden units (and at most half as many rows as SMs)
BARRIERS = ("grid", "atomic")
#: multiprocessors the units schedule spreads its blocks over in Numba's CUDA simulator: 1, as the
#: simulator runs a launch's blocks one after another (a block waiting at a grid barrier would wait
#: for ever); ``simgrid.concurrent_blocks(n)`` runs them at once and sets it to n for its duration
SIMULATED_SMS = 1


def simulated() -> bool:
    return bool(getattr(numba_config, "ENABLE_CUDASIM", 0))


@dataclass
class DeviceWeights:
    """A cell's parameters on the device, as the Plan's matrices."""

    Wx: DeviceArray  # [I, NX*H]
    bx: DeviceArray  # [NX*H] (at least 1 element)
    biases: DeviceArray  # [n_biases, H]
    peeps: DeviceArray  # [n_peeps, H]
    W: DeviceArray  # the stages' weights, flat
    WT: DeviceArray  # the same, each stage transposed (the backward's)
    input_size: int
    hidden_size: int


@dataclass
class CudaTape:
    x: DeviceArray  # [T, B, I]
    A: DeviceArray  # the arena: tape [T+1, NT, B, H] then scratch slots
    K: DeviceArray  # packed GEMM sources, [T, B, ns*H] per stage
    input_size: int
    hidden_size: int
    generation: int


@dataclass
class DeviceForward:
    outputs: DeviceArray  # [T, B, H]
    states: DeviceArray  # [n_states, B, H], the states after the last step
    tape: CudaTape


@dataclass
class DeviceGradients:
    """Packed gradients on the device; ``to_host`` names them as ``Gradients``."""

    kernel: CudaKernel
    dWx: DeviceArray  # [I, NX*H]
    dbx: DeviceArray  # [NX*H]
    dWs: list[DeviceArray]  # per stage [ns*H, nk*H]
    dB: DeviceArray  # [n_biases*H]
    dPeep: DeviceArray  # [n_peeps*H]
    dX: DeviceArray | None  # [T, B, I]
    dS: DeviceArray  # [n_states, B*H]
    hidden_size: int
    batch: int

    def to_host(self) -> Gradients:
        p = self.kernel.plan
        H, B = self.hidden_size, self.batch
        s = self.kernel.stream
        dWx = self.dWx.copy_to_host(stream=s)
        dbx = self.dbx.copy_to_host(stream=s)
        dWs = [w.copy_to_host(stream=s) for w in self.dWs]
        dB = self.dB.copy_to_host(stream=s)[: len(p.biases) * H].reshape(len(p.biases), H)
        dPeep = self.dPeep.copy_to_host(stream=s)[: len(p.peeps) * H].reshape(len(p.peeps), H)
        dX = None if self.dX is None else self.dX.copy_to_host(stream=s)
        dS = self.dS.copy_to_host(stream=s)
        s.synchronize()
        grads = unpack_gradients(p, H, dWx, dbx[: len(p.xblocks) * H], dWs, dB, dPeep)
        state0 = {name: dS[i].reshape(B, H).copy() for i, name in enumerate(p.states)}
        return Gradients(grads, dX, state0)


@dataclass
class _Workspace:
    """The Plan's tables and every work buffer for one (T, B, I, H), on the device."""

    T: int
    B: int
    I: int
    H: int
    ops: DeviceArray
    info: DeviceArray
    stage_src: DeviceArray
    stage_dst: DeviceArray
    init_at: DeviceArray
    out_at: DeviceArray
    update_at: DeviceArray
    state_g: DeviceArray
    update_g: DeviceArray
    stage_offsets: list[tuple[int, int, int, int]]  # per stage: K offset, DZ offset, ns, nk
    mirror: tuple[DeviceArray, ...]  # the units schedule's mirror slots: mops, msrc, mdst, mmisc
    scratch0: int  # where the scratch slots start in A
    A: DeviceArray
    K: DeviceArray
    DZ: DeviceArray
    G: DeviceArray
    P: DeviceArray  # [T*B, NX*H] the input projection
    dP: DeviceArray
    Y: DeviceArray  # [T, B, H]
    ST: DeviceArray  # [n_states, B, H]
    S0: DeviceArray  # [n_states, B*H]
    dS: DeviceArray  # [n_states, B*H]
    dOut: DeviceArray  # [T, B, H]
    dX: DeviceArray  # [T, B, I]
    dBr: DeviceArray  # [B, n_biases*H]
    dPeepr: DeviceArray  # [B, n_peeps*H]
    dWx: DeviceArray
    dbx: DeviceArray
    dWs: list[DeviceArray]
    dB: DeviceArray
    dPeep: DeviceArray
    X: DeviceArray  # [T, B, I] host inputs land here
    weights: DeviceWeights | None = None  # host parameters land here
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class UnitsLayout:
    """A units-schedule launch: units per block, blocks, and what its shared memory holds."""

    units: int
    blocks: int
    cached: bool  # the block's weight columns (w_n elements)
    w_n: int
    vcache: bool  # the mirror of the block's values of the step
    pmirror: bool = False  # (forward) and of the step's input projection, after them


def mirror_tables(plan: Any, tb: Any, B: int, H: int, U: int, pmirror: bool) -> tuple[Array, Array, Array, Array]:
    """Every operand's place in the units schedule's mirror (``kernels.unit_kernels``), in elements
    from the mirror's start (a value's slot times E = B*U, the mirror's stride between values), both
    parities of the step resolved here so that the kernels do no slot arithmetic: an arena address
    ``const + t * tmul`` of a taped value (tmul != 0) is tape slot ``s`` of tape step ``t + par``,
    mirrored at slot ``s + ((t + par) % 2) * NT``; a scratch value at slot 2 NT + its scratch slot;
    a gradient offset ``k * B * H`` in the gradients' part at slot k. With ``pmirror``, a LOADP op's
    operand a is its block of the step's input projection, which the forward then mirrors after
    the scratch values (``mmisc[M_NX]``: the blocks mirrored, 0 without).
    ``mops`` [n_ops, 12]: d, a, b, c at an even step, the same at an odd step, then the gradients
    of d, a, b, c; ``msrc``/``mdst`` [n_stages, n, 3]: (even step, odd step, gradient); ``mmisc``:
    see ``kernels.M_OUT``. Unsigned: the kernels index with them as they are (no negative-index
    tests)."""
    BH = B * H
    E = B * U
    NT = plan.n_taped
    tmul = NT * BH

    def vm(const: int, mul: int) -> tuple[int, int]:  # (even, odd) step's slot times E
        if mul != 0:
            s, par = (const % tmul) // BH, const // tmul
            return (s + (par % 2) * NT) * E, (s + ((1 + par) % 2) * NT) * E
        if const >= tb.scratch0 and plan.n_scratch:
            s = 2 * NT + (const - tb.scratch0) // BH
            return s * E, s * E
        return 0, 0

    ops = tb.ops
    mops = np.zeros((max(len(ops), 1), 12), dtype=np.uint64)
    for r, row in enumerate(ops):
        for q, (c, m) in enumerate(((C_DC, C_DM), (C_AC, C_AM), (C_BC, C_BM), (C_CC, C_CM))):
            mops[r, q], mops[r, 4 + q] = vm(int(row[c]), int(row[m]))
        mops[r, 8:] = [int(row[g]) // BH * E for g in (C_DG, C_AG, C_BG, C_CG)]
        if pmirror and int(row[C_CODE]) == OP_LOADP:
            mops[r, 1] = mops[r, 5] = (2 * NT + plan.n_scratch + int(row[C_AUX])) * E

    def stage(t: Array) -> Array:
        out = np.zeros((*t.shape[:2], 3), dtype=np.uint64)
        for g in range(t.shape[0]):
            for i in range(t.shape[1]):
                out[g, i] = (*vm(int(t[g, i, S_C]), int(t[g, i, S_M])), int(t[g, i, S_G]) // BH * E)
        return out

    misc = [*vm(*tb.output_at), plan.output_slot * E, len(plan.xblocks) if pmirror else 0]
    for s in range(len(plan.states)):
        init = int(tb.init_at[s])
        misc += [*vm(*map(int, tb.update_at[s])), init // BH * E if init >= 0 else 0,
                 int(tb.state_g[s]) // BH * E if tb.state_g[s] >= 0 else 0, int(tb.update_g[s]) // BH * E]  # fmt: skip
    assert len(misc) == M_STATE + M_STRIDE * len(plan.states)
    return mops, stage(tb.stage_src), stage(tb.stage_dst), np.array(misc or [0], dtype=np.uint64)


class CudaKernel:
    """A cell on an NVIDIA GPU (or Numba's CUDA simulator). Options:

    - ``schedule``: ``"rows"`` (a block owns batch rows for the whole sequence; blocks never wait
      for each other) or ``"units"`` (a block owns a group of hidden units of every row, and the
      blocks meet at a grid-wide barrier per GEMM stage: a small batch spread over every
      multiprocessor, weights and values in shared memory). Default: units on a GPU from H = 192
      when the batch has at most half as many rows as the GPU has multiprocessors (where it was
      measured faster), rows otherwise and in the simulator. The units
      schedule needs all its blocks resident at once (at most one per multiprocessor): don't run
      several units-schedule kernels on concurrent streams (``CudaPopulation`` uses rows), nor, with
      the atomic barrier, from several processes sharing the GPU through MPS;
    - ``rows_per_block`` (rows: 1, 2, 4 or 8; default: as many as keep one block per multiprocessor
      busy); ``units_per_block`` (units: default ceil(H / multiprocessors), the whole H in the
      simulator, whose blocks run one after another); ``barrier`` (units: ``"grid"``, cooperative
      groups' grid sync, which needs libcudadevrt; ``"atomic"``, a counter in global memory;
      default grid where libcudadevrt is found); ``weight_cache``, ``value_cache`` (units: keep a
      block's weight columns and its elements of the step's values in shared memory where they fit;
      default True each); ``gemm_split`` (the GEMMs outside the time loop: blocks a tile's inner
      dimension is split over; default enough to give every multiprocessor two blocks, 1 in a
      ``CudaPopulation``, whose cells' kernels fill the GPU side by side); ``dot_unroll`` (4 or 8
      terms of a time-loop GEMM stage's dot products in flight; default 4, the measured one);
      ``split_dot`` (units: a GEMM stage with fewer outputs than half the block's threads splits
      each dot product over 2-32 threads, partial sums added in a fixed order; default off);
      ``warp_dots`` (units: a warp computes a GEMM stage's outputs for ``warp_rows`` rows at a time
      (1, 2 or 4), its lanes splitting the inner dimension with ``warp_loads`` (4, 8 or 16) loads in
      flight per row (rows x loads at most 16: more leaves the loads in local memory), the partial
      sums added across the lanes in a fixed order; default on, 4 rows, 4 loads, the fastest measured
      (gpu/README.md); the block's threads are then rounded up to a multiple of 32); ``fuse_ops``
      (units: the cell's elementwise ops between two GEMM stages run as generated straight-line code,
      ``fused.py``, where the block mirrors its values — no table read or opcode dispatch per op and
      element, operands in registers; the same bits as the interpreter; costs a compilation per cell,
      so default off: for long trainings of one cell, not a search's population);
    - ``threads_per_block`` (default min(4H, 256): a GEMM stage gives each thread one output column
      of its 4H, as LSTM's), ``stream`` (a ``numba.cuda`` stream; default a new one)."""

    backend = "cuda"

    def __init__(
        self,
        cell: Cell,
        dtype: type | np.dtype = np.float32,
        rows_per_block: int | None = None,
        threads_per_block: int | None = None,
        stream: Any = None,
        gemm_tile: tuple[int, int, int, int, int] | None = None,
        schedule: str | None = None,
        units_per_block: int | None = None,
        barrier: str | None = None,
        weight_cache: bool = True,
        value_cache: bool = True,
        gemm_split: int | None = None,
        dot_unroll: int = 4,
        split_dot: bool = False,
        warp_dots: bool = True,
        warp_rows: int = 4,
        warp_loads: int = 4,
        fuse_ops: bool = False,
    ) -> None:
        self.cell = cell
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ShapeError(f"the cuda backend runs float32 or float64, not {self.dtype}")
        if rows_per_block is not None and rows_per_block not in ROWS:
            raise ShapeError(f"rows_per_block must be one of {', '.join(map(str, ROWS))} (got {rows_per_block})")
        if threads_per_block is not None and not 1 <= threads_per_block <= MAX_THREADS:
            raise ShapeError(f"threads_per_block must be in [1, {MAX_THREADS}] (got {threads_per_block})")
        if schedule is not None and schedule not in SCHEDULES:
            raise ShapeError(f"schedule must be one of {', '.join(SCHEDULES)} (got {schedule!r})")
        if barrier is not None and barrier not in BARRIERS:
            raise ShapeError(f"barrier must be one of {', '.join(BARRIERS)} (got {barrier!r})")
        if dot_unroll not in (4, 8):
            raise ShapeError(f"dot_unroll must be 4 or 8 (got {dot_unroll})")
        if warp_rows not in WARP_ROWS:
            raise ShapeError(f"warp_rows must be one of {', '.join(map(str, WARP_ROWS))} (got {warp_rows})")
        if warp_loads not in WARP_LOADS:
            raise ShapeError(f"warp_loads must be one of {', '.join(map(str, WARP_LOADS))} (got {warp_loads})")
        if warp_rows * warp_loads > WARP_INFLIGHT:
            raise ShapeError(f"warp_rows x warp_loads must be at most {WARP_INFLIGHT} (got {warp_rows} x {warp_loads})")
        if gemm_split is not None and gemm_split < 1:
            raise ShapeError(f"gemm_split must be at least 1 (got {gemm_split})")
        if units_per_block is not None and units_per_block < 1:
            raise ShapeError(f"units_per_block must be at least 1 (got {units_per_block})")
        self.plan = lower(cell)
        self.schedule = schedule
        self.units_per_block = units_per_block
        self.barrier = barrier
        self.weight_cache = weight_cache
        self.value_cache = value_cache
        self.gemm_split = gemm_split
        self.dot_unroll = dot_unroll
        self.split_dot = split_dot
        self.warp_dots = warp_dots
        self.warp_rows = warp_rows
        self.warp_loads = warp_loads
        self.fuse_ops = fuse_ops
        self.rows_per_block = rows_per_block
        self.threads_per_block = threads_per_block
        self.stream = stream if stream is not None else cuda.stream()
        self._gemm = gemm_kernel(self.dtype, *(gemm_tile or (SIM_TILE if simulated() else GPU_TILE)))
        self._ws: dict[tuple[int, int, int, int], _Workspace] = {}
        self._parts: dict[tuple[int, int, int], DeviceArray] = {}  # split-K GEMMs' partial products
        self._generation = 0

    # ---- launch geometry ----
    def _rows(self, B: int) -> int:
        if self.rows_per_block is not None:
            return self.rows_per_block
        sms = _multiprocessors()
        rows = 1
        for r in ROWS:  # the most rows per block that still gives every multiprocessor a block
            if math.ceil(B / r) >= sms:
                rows = r
        return rows

    def _threads(self, H: int) -> int:
        return self.threads_per_block or min(4 * H, MAX_THREADS)

    def _units_threads(self, H: int) -> int:
        """Threads of a units-schedule block: with warp dot products, whole warps."""
        n = self._threads(H)
        return min(MAX_THREADS, 32 * math.ceil(n / 32)) if self.warp_dots else n

    def _unit_kernels(self, ws: _Workspace | None = None) -> Any:
        warp = (self.warp_rows, self.warp_loads) if self.warp_dots else (4, 4)  # (unused without warp dots: one build)
        fused = ws.extra.get("fused") if ws is not None else None
        return unit_kernels(self.dtype, self._cooperative(), self.dot_unroll, self.warp_dots, *warp, fused)

    def schedule_for(self, B: int, H: int) -> str:
        """The time loop's schedule at batch size B and H units: units where it was measured faster
        (H200, gpu/README.md: lstm at B=64, H=256 12.4-12.7 vs 19.9 ms a step (session 10); at H <= 128, or once the
        batch fills more than half the multiprocessors, rows was as fast or faster)."""
        if self.schedule is not None:
            return self.schedule
        return "units" if not simulated() and H >= UNITS_MIN_H and 2 * B <= _multiprocessors() else "rows"

    def units_geometry(self, H: int) -> tuple[int, int, bool]:
        """The units schedule's (units per block, blocks, whether each block has one group)."""
        sms = SIMULATED_SMS if simulated() else _multiprocessors()
        U = min(self.units_per_block or math.ceil(H / sms), H)
        groups = math.ceil(H / U)
        blocks = min(groups, sms)  # every block resident at once: one per multiprocessor at most
        return U, blocks, blocks == groups

    def units_layout(self, B: int, H: int, forward: bool) -> UnitsLayout:
        """What a units-schedule block keeps in its shared memory, in order of worth: its elements'
        values of the step (the mirror), then its weight columns."""
        U, blocks, one_group = self.units_geometry(H)
        p = self.plan
        room = shared_elements(self.dtype)
        E = B * U
        vneed = (2 * p.n_taped + p.n_scratch + (0 if forward else p.n_slots)) * E
        vcache = self.value_cache and one_group and vneed <= room
        pneed = len(p.xblocks) * E if forward else 0  # the step's input projection: mirrored where it fits too
        pmirror = vcache and 0 < pneed <= room - vneed
        room -= vneed + (pneed if pmirror else 0) if vcache else 0
        wneed = U * H * sum(len(st.srcs) * len(st.dsts) for st in p.stages)
        cached = self.weight_cache and one_group and 0 < wneed <= room
        return UnitsLayout(U, blocks, cached, wneed if cached else 0, vcache, pmirror)

    def _cooperative(self) -> bool:
        if self.barrier is not None:
            return self.barrier == "grid"
        return not simulated() and _cudadevrt()

    def _barrier_counter(self, ws: _Workspace) -> DeviceArray:
        """The atomic barrier's counter, zeroed on this kernel's stream (the grid sync has none: the
        array is only an argument then, and no launch zeroes it)."""
        bar = ws.extra.get("bar")
        if bar is None:
            bar = ws.extra["bar"] = cuda.device_array(1, dtype=np.int32, stream=self.stream)
        if not self._cooperative():
            kernels(self.dtype, 1).fill[1, 1, self.stream](bar, np.int32(0))
        return bar

    # ---- buffers ----
    def _workspace(self, T: int, B: int, I: int, H: int) -> _Workspace:
        key = (T, B, I, H)
        ws = self._ws.get(key)
        if ws is not None:
            return ws
        if len(self._ws) > 4:
            self._ws.clear()
        p = self.plan
        tb = tables(p, T, B, H)
        dt = self.dtype
        s = self.stream

        def dev(a: Array) -> DeviceArray:
            return cuda.to_device(np.ascontiguousarray(a), stream=s)

        def empty(*shape: int) -> DeviceArray:  # the last axis at least 1 wide: no empty device arrays
            return cuda.device_array((*shape[:-1], max(shape[-1], 1)), dtype=dt, stream=s)

        nS = len(p.states)
        NX = len(p.xblocks)
        U = self.units_geometry(H)[0]
        pmirror = self.units_layout(B, H, forward=True).pmirror
        mirror = mirror_tables(p, tb, B, H, U, pmirror)
        offsets = []
        dWs = []
        for g, st in enumerate(p.stages):
            ns, nk = len(st.srcs), len(st.dsts)
            offsets.append((int(tb.stage_info[g, I_K]), int(tb.stage_info[g, I_Z]), ns, nk))
            dWs.append(empty(ns * H, nk * H))
        ws = _Workspace(
            T, B, I, H,
            ops=dev(tb.ops), info=dev(tb.stage_info), stage_src=dev(tb.stage_src), stage_dst=dev(tb.stage_dst),
            init_at=dev(tb.init_at), out_at=dev(np.array(tb.output_at, dtype=np.int64)),
            update_at=dev(tb.update_at), state_g=dev(tb.state_g), update_g=dev(tb.update_g),
            stage_offsets=offsets, mirror=tuple(dev(m) for m in mirror),
            scratch0=tb.scratch0,
            A=empty(tb.arena), K=empty(tb.k_size), DZ=empty(tb.dz_size), G=empty(tb.g_size),
            P=empty(T * B, NX * H), dP=empty(T * B, NX * H), Y=empty(T, B, H), ST=empty(nS, B, H),
            S0=empty(nS, B * H), dS=empty(nS, B * H), dOut=empty(T, B, H), dX=empty(T, B, I),
            dBr=empty(B, len(p.biases) * H), dPeepr=empty(B, len(p.peeps) * H),
            dWx=empty(I, NX * H), dbx=empty(NX * H), dWs=dWs,
            dB=empty(len(p.biases) * H), dPeep=empty(len(p.peeps) * H), X=empty(T, B, I),
        )  # fmt: skip
        if self.fuse_ops:  # the cell's elementwise segments as its own code (the units schedule's mirror paths)
            ws.extra["fused"] = (fused.program(tb, mirror[0], B * U), pmirror)
        self._ws[key] = ws
        return ws

    def upload(self, params: Mapping[str, Array], I: int, H: int, out: DeviceWeights | None = None) -> DeviceWeights:
        """The parameters on the device (into ``out``'s buffers when given), on this kernel's stream."""
        check_params(param_specs(self.cell, I, H), params)
        fw = pack_weights(self.plan, params, I, H, self.dtype, transposed=False)
        bw = pack_weights(self.plan, params, I, H, self.dtype, transposed=True)
        host = {
            "Wx": fw.Wx if fw.Wx.size else np.zeros((I, 1), dtype=self.dtype),
            "bx": fw.bx if fw.bx.size else np.zeros(1, dtype=self.dtype),
            "biases": fw.biases if fw.biases.size else np.zeros((1, H), dtype=self.dtype),
            "peeps": fw.peeps if fw.peeps.size else np.zeros((1, H), dtype=self.dtype),
            "W": fw.stages,
            "WT": bw.stages,
        }
        s = self.stream
        if out is None:
            return DeviceWeights(**{k: cuda.to_device(np.ascontiguousarray(v), stream=s) for k, v in host.items()},
                                 input_size=I, hidden_size=H)  # fmt: skip
        for k, v in host.items():
            getattr(out, k).copy_to_device(np.ascontiguousarray(v), stream=s)
        return out

    def _host_weights(self, ws: _Workspace, params: Mapping[str, Array]) -> DeviceWeights:
        ws.weights = self.upload(params, ws.I, ws.H, ws.weights)
        return ws.weights

    # ---- helpers ----
    def _fill(self, arr: DeviceArray, value: float = 0.0) -> None:
        flat = arr.reshape(arr.size)
        k = kernels(self.dtype, 1).fill
        k[math.ceil(arr.size / 256), 256, self.stream](flat, self.dtype.type(value))

    def _column_sums(self, M: DeviceArray, out: DeviceArray) -> None:
        if M.shape[1] == 0:
            return
        k = kernels(self.dtype, 1).column_sums
        k[math.ceil(M.shape[1] / 128), 128, self.stream](M, out)

    def gemm(self, A: DeviceArray, B: DeviceArray, C: DeviceArray, ta: bool = False, tb: bool = False,
             bias: DeviceArray | None = None, accumulate: bool = False, split: int | None = None) -> None:  # fmt: skip
        """C = op(A) @ op(B) (+ bias) (+ C) on this kernel's stream. A long inner dimension with few
        tiles of C (the weight gradients: [H, T*B] @ [T*B, 4H]) is split over ``split`` blocks per
        tile (default: enough to give every multiprocessor two blocks), whose partial products a
        second kernel adds in a fixed order."""
        M, N = C.shape
        if M == 0 or N == 0:
            return
        g = self._gemm
        BM, BN = g.tile
        Kd = A.shape[0] if ta else A.shape[1]
        tiles = math.ceil(N / BN) * math.ceil(M / BM)
        BK = GEMM_BK
        if split is None:
            split = self.gemm_split or max(1, min((2 * _multiprocessors()) // tiles, Kd // (4 * BK)))
        kchunk = max(BK, math.ceil(math.ceil(Kd / max(split, 1)) / BK) * BK)
        S = max(1, math.ceil(Kd / kchunk))
        flat_bias = C.reshape(C.size) if bias is None else bias
        if S == 1:
            g[(math.ceil(N / BN), math.ceil(M / BM), 1), g.threads, self.stream](
                A, B, C.reshape(1, M, N), flat_bias, ta, tb, bias is not None, accumulate, max(Kd, 1)
            )
            return
        parts = self._parts.get((S, M, N))
        if parts is None:
            parts = self._parts[(S, M, N)] = cuda.device_array((S, M, N), dtype=self.dtype, stream=self.stream)
        g[(math.ceil(N / BN), math.ceil(M / BM), S), g.threads, self.stream](A, B, parts, flat_bias, ta, tb, False, False, kchunk)
        g.sum_parts[(math.ceil(N / 16), math.ceil(M / 16)), (16, 16), self.stream](
            parts, C, flat_bias, bias is not None, accumulate
        )

    # ---- the device path ----
    def forward_device(self, weights: DeviceWeights, x: DeviceArray, state0: DeviceArray | None = None) -> DeviceForward:
        """The forward over ``x [T, B, I]`` (a device array) from ``state0 [n_states, B*H]`` (device;
        None: zeros). The outputs and states returned are the kernel's buffers: valid until the next
        forward."""
        p = self.plan
        T, B, I = x.shape
        H = weights.hidden_size
        if I != weights.input_size:
            raise ShapeError(f"x has {I} inputs; the weights were uploaded for {weights.input_size}")
        ws = self._workspace(T, B, I, H)
        if state0 is None:
            state0 = ws.S0
            self._fill(state0)
        NX = len(p.xblocks)
        if NX:
            self.gemm(x.reshape(T * B, I), weights.Wx, ws.P, bias=weights.bx)
        consts = ws.extra.get("consts")
        if consts is None:
            consts = ws.extra["consts"] = cuda.to_device(np.array((*p.consts, 0.0), dtype=self.dtype), stream=self.stream)
        if self.schedule_for(B, H) == "units":
            lay = self.units_layout(B, H, forward=True)
            bar = self._barrier_counter(ws)
            ku = self._unit_kernels(ws).forward_units
            ku[lay.blocks, self._units_threads(H), self.stream](
                ws.ops, ws.info, ws.stage_src, ws.stage_dst, *ws.mirror, T, B, H, lay.units, p.n_taped, lay.cached, lay.w_n,
                lay.vcache, self.split_dot, ws.scratch0, ws.init_at, ws.out_at, ws.update_at, ws.A, ws.P, x, state0, consts,
                weights.biases, weights.peeps, weights.W, ws.K, ws.Y, ws.ST, bar,
            )  # fmt: skip
        else:
            rows = self._rows(B)
            k = kernels(self.dtype, rows, self.dot_unroll).forward_loop
            args = (ws.ops, ws.info, ws.stage_src, ws.stage_dst, T, B, H, ws.init_at, ws.out_at, ws.update_at, ws.A, ws.P, x,
                    state0, consts, weights.biases, weights.peeps, weights.W, ws.K, ws.Y, ws.ST)  # fmt: skip
            k[math.ceil(B / rows), self._threads(H), self.stream](*args)
        self._generation += 1
        return DeviceForward(ws.Y, ws.ST, CudaTape(x, ws.A, ws.K, I, H, self._generation))

    def backward_device(
        self,
        weights: DeviceWeights,
        tape: CudaTape,
        d_out: DeviceArray | None,
        d_state: DeviceArray | None = None,
        grad_x: bool = True,
    ) -> DeviceGradients:
        """Gradients of ``sum(d_out * outputs) + sum(d_state * final states)`` (device arrays ``[T, B,
        H]`` and ``[n_states, B*H]``; None: zeros). The returned arrays are the kernel's buffers:
        valid until the next backward."""
        if tape.generation != self._generation:
            raise ShapeError("this tape is stale: the kernel ran forward again since (backward needs the latest tape)")
        p = self.plan
        x = tape.x
        T, B, I = x.shape
        H = tape.hidden_size
        ws = self._workspace(T, B, I, H)
        if d_out is None:
            d_out = ws.dOut
            self._fill(d_out)
        if d_state is None:
            self._fill(ws.dS)
        elif d_state is not ws.dS:
            ws.dS.copy_to_device(d_state, stream=self.stream)
        if self.schedule_for(B, H) == "units":
            lay = self.units_layout(B, H, forward=False)
            bar = self._barrier_counter(ws)
            self._fill(ws.dX)
            ku = self._unit_kernels(ws).backward_units
            ku[lay.blocks, self._units_threads(H), self.stream](
                ws.ops, ws.info, ws.stage_src, ws.stage_dst, *ws.mirror, T, B, H, lay.units, p.n_taped, lay.cached, lay.w_n,
                lay.vcache, self.split_dot, ws.scratch0, tape.A, ws.state_g, ws.update_g, p.output_slot * B * H, d_out, ws.dS,
                weights.peeps, weights.WT, ws.DZ, ws.G, ws.dP, ws.dX, ws.dBr, ws.dPeepr, bar,
            )  # fmt: skip
        else:
            rows = self._rows(B)
            k = kernels(self.dtype, rows, self.dot_unroll).backward_loop
            args = (ws.ops, ws.info, ws.stage_src, ws.stage_dst, T, B, H, tape.A, ws.state_g, ws.update_g, p.output_slot * B * H,
                    d_out, ws.dS, weights.peeps, weights.WT, ws.DZ, ws.G, ws.dP, ws.dX, ws.dBr, ws.dPeepr)  # fmt: skip
            k[math.ceil(B / rows), self._threads(H), self.stream](*args)
        # deferred weight gradients: one GEMM for the input projection, one per recurrent stage
        x2 = x.reshape(T * B, I)
        if p.xblocks:
            self.gemm(x2, ws.dP, ws.dWx, ta=True)
            self._column_sums(ws.dP, ws.dbx)
        for (koff, zoff, ns, nk), dW in zip(ws.stage_offsets, ws.dWs, strict=True):
            src = tape.K[koff : koff + T * B * ns * H].reshape(T * B, ns * H)
            dz = ws.DZ[zoff : zoff + T * B * nk * H].reshape(T * B, nk * H)
            self.gemm(src, dz, dW, ta=True)
        if p.biases:
            self._column_sums(ws.dBr, ws.dB)
        if p.peeps:
            self._column_sums(ws.dPeepr, ws.dPeep)
        if p.xblocks and grad_x:  # x also feeds the input GEMM
            self.gemm(ws.dP, weights.Wx, ws.dX.reshape(T * B, I), tb=True, accumulate=True)
        return DeviceGradients(self, ws.dWx, ws.dbx, ws.dWs, ws.dB, ws.dPeep, ws.dX if grad_x else None, ws.dS, H, B)

    # ---- the host API ----
    def forward(self, params: Mapping[str, Array], x: Array, state0: Mapping[str, Array] | None = None) -> Forward:
        dev = self.forward_async(params, x, state0)
        p = self.plan
        outputs = dev.outputs.copy_to_host(stream=self.stream)
        ST = dev.states.copy_to_host(stream=self.stream)
        self.stream.synchronize()
        states = {s: ST[i] for i, s in enumerate(p.states)}
        return Forward(outputs, states, dev.tape)  # type: ignore[arg-type]

    def forward_async(self, params: Mapping[str, Array], x: Array, state0: Mapping[str, Array] | None = None) -> DeviceForward:
        """``forward`` without waiting: host arrays in, results left on the device."""
        p = self.plan
        dt = self.dtype
        x = np.ascontiguousarray(x, dtype=dt)
        if x.ndim != 3:
            raise ShapeError(f"x must be [T, B, I]; got shape {x.shape}")
        T, B, I = x.shape
        H = infer_hidden(params, I)
        check_params(param_specs(self.cell, I, H), params)
        given = initial_states(p.states, state0, B, H, dt)
        ws = self._workspace(T, B, I, H)
        weights = self._host_weights(ws, params)
        ws.X.copy_to_device(x, stream=self.stream)
        ws.S0.copy_to_device(np.stack([given[s].ravel() for s in p.states]), stream=self.stream)
        return self.forward_device(weights, ws.X, ws.S0)

    def backward(
        self,
        params: Mapping[str, Array],
        tape: CudaTape,
        d_out: Array | None,
        d_state_T: Mapping[str, Array] | None = None,
        grad_x: bool = True,
    ) -> Gradients:
        """Gradients of ``sum(d_out * outputs) + sum_s sum(d_state_T[s] * states[s])``; with
        ``grad_x=False`` the input's gradient is skipped (``Gradients.x`` is None)."""
        return self.backward_async(params, tape, d_out, d_state_T, grad_x).to_host()

    def backward_async(
        self,
        params: Mapping[str, Array],
        tape: CudaTape,
        d_out: Array | None,
        d_state_T: Mapping[str, Array] | None = None,
        grad_x: bool = True,
    ) -> DeviceGradients:
        """``backward`` without waiting: host arrays in, packed gradients left on the device."""
        if tape.generation != self._generation:
            raise ShapeError("this tape is stale: the kernel ran forward again since (backward needs the latest tape)")
        p = self.plan
        dt = self.dtype
        T, B, I = tape.x.shape
        H = tape.hidden_size
        ws = self._workspace(T, B, I, H)
        weights = self._host_weights(ws, params)
        dOut = None
        if d_out is not None:
            ws.dOut.copy_to_device(np.ascontiguousarray(d_out, dtype=dt), stream=self.stream)
            dOut = ws.dOut
        dS = None
        if d_state_T is not None:
            host = np.zeros((len(p.states), B * H), dtype=dt)
            for i, s in enumerate(p.states):
                if s in d_state_T:
                    host[i] = np.asarray(d_state_T[s], dtype=dt).ravel()
            ws.dS.copy_to_device(host, stream=self.stream)
            dS = ws.dS
        return self.backward_device(weights, tape, dOut, dS, grad_x)


_SMS: list[int] = []
_DEVRT: list[bool] = []


def _cudadevrt() -> bool:
    """Whether numba-cuda finds libcudadevrt (cooperative groups' grid sync links it)."""
    if not _DEVRT:
        try:
            from numba.cuda.cudadrv import libs

            _DEVRT.append(os.path.exists(libs.get_cudalib("cudadevrt", static=True)))
        except Exception:
            _DEVRT.append(False)
    return _DEVRT[0]


def _multiprocessors() -> int:
    if not _SMS:
        try:
            _SMS.append(int(cuda.get_current_device().MULTIPROCESSOR_COUNT))
        except Exception:  # the simulator's fake device may not say
            _SMS.append(1)
    return _SMS[0]
