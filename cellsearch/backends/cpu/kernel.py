"""The CPU backend: a cell's Plan run by the compile-once Numba executor (``interp.py``).

Same API as the reference: ``forward(params, x, state0) -> Forward`` and
``backward(params, tape, d_out, d_state_T) -> Gradients``. The input GEMM and the deferred weight
GEMMs run in NumPy (BLAS) around the two njit calls; everything per time step runs inside them.

The kernel keeps its work buffers between calls of the same shape (a training loop calls it with
the same shapes again and again): a tape is valid until the kernel's next ``forward``; ``backward``
on an older tape raises.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...errors import ShapeError
from ...ir.cell import Cell
from ...ir.params import param_specs
from ...lowering import Code, Plan, lower
from ..reference import Forward, Gradients, check_params, infer_hidden, initial_states
from ..tables import Tables, pack_weights, tables, unpack_gradients
from . import interp

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
    of a stage whose destinations all have an input-projection block is already in that stage's DZ,
    so their LOADPs write no dP and their input weights' gradient is ``x^T @ DZ``; the other blocks
    go to a compact dP (``dp_blocks``)."""

    ops: Array  # [n_ops, 16] int64: the shared table, then C_FOLD, C_DPB
    seed: Array  # [n_stages, max dsts, 2] int64: (SEED_* kind, index) of each stage destination
    dz_stages: list[tuple[int, list[int]]]  # (stage, x block of each destination) whose DZ is dP
    dp_blocks: list[int]  # x blocks whose gradient goes to the compact dP, in its column order


def _cpu_tables(plan: Plan, tb: Tables) -> _CpuTables:
    ops = np.full((tb.ops.shape[0], 16), -1, dtype=np.int64)
    ops[:, :14] = tb.ops
    ops[:, interp.C_FOLD] = 0
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
        if all(node in block_of for node in st.dsts):
            dz_stages.append((g, [block_of[node] for node in st.dsts]))
    in_dz = {i for _, blocks in dz_stages for i in blocks}
    dp_blocks = [i for i in range(len(plan.xblocks)) if i not in in_dz]
    for r, ins in enumerate(plan.program):
        if ins.code == Code.LOADP and ins.aux not in in_dz:
            ops[r, interp.C_DPB] = dp_blocks.index(ins.aux)
    return _CpuTables(ops, seed, dz_stages, dp_blocks)


@dataclass
class _Workspace:
    """The Plan's arrays (``tables.Tables``) and the work buffers for one (T, B, H)."""

    tables: Tables
    cpu: _CpuTables
    P: Array  # the input projection [T, B, NX*H] (kept: a fresh one per call pays its page faults)
    dP: Array  # its gradient's blocks that no stage's DZ holds [T, B, len(dp_blocks)*H]
    A: Array
    K: Array
    DZ: Array
    TMP: Array
    G: Array


def _workspace(plan: Plan, T: int, B: int, H: int, dtype: np.dtype) -> _Workspace:
    tb = tables(plan, T, B, H)
    cpu = _cpu_tables(plan, tb)
    return _Workspace(
        tb,
        cpu,
        P=np.empty((T, B, len(plan.xblocks) * H), dtype=dtype),
        dP=np.empty((T, B, len(cpu.dp_blocks) * H), dtype=dtype),
        A=np.empty(tb.arena, dtype=dtype),
        K=np.empty(tb.k_size, dtype=dtype),
        DZ=np.empty(tb.dz_size, dtype=dtype),
        TMP=np.empty(tb.tmp_size, dtype=dtype),
        G=np.empty(tb.g_size, dtype=dtype),
    )


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
                    c for c in ThreadpoolController().lib_controllers if c.internal_api == "openblas" and "scipy" in c.filepath
                ]
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


class CpuKernel:
    """A cell on the CPU. ``threads``: how many threads split the batch, each running the whole time
    loop for its rows with BLAS at 1 thread. Default 1 (the loop on this thread, BLAS threaded):
    on the 2-vCPU machines here the split measured 1.15-1.5x slower (benchmarks/README.md)."""

    backend = "cpu"

    def __init__(self, cell: Cell, dtype: type | np.dtype = np.float32, threads: int | None = None) -> None:
        self.cell = cell
        self.threads = threads
        self.dtype = np.dtype(dtype)
        if self.dtype not in (np.float32, np.float64):
            raise ShapeError(f"the cpu backend runs float32 or float64, not {self.dtype}")
        self.plan = lower(cell)
        # rational-tanh coefficients, then 0, 1/2, 1, the smallest normal: every constant the kernels use
        tiny = float(np.finfo(self.dtype).tiny)
        self._R = np.array((*interp.RATIONAL_TANH, 0.0, 0.5, 1.0, tiny), dtype=self.dtype)
        self._fast = self.dtype == np.float32
        self._ws: dict[tuple[int, int, int], _Workspace] = {}
        self._generation = 0

    def _chunks(self, B: int) -> int:
        return max(1, min(self.threads or 1, B))

    def _get_workspace(self, T: int, B: int, H: int) -> _Workspace:
        key = (T, B, H)
        if key not in self._ws:
            if len(self._ws) > 4:
                self._ws.clear()
            self._ws[key] = _workspace(self.plan, T, B, H, self.dtype)
        return self._ws[key]

    def _weights(self, params: Mapping[str, Array], I: int, H: int, transposed: bool) -> tuple[Array, Array, Array, Array, Array]:
        w = pack_weights(self.plan, params, I, H, self.dtype, transposed)
        return w.Wx, w.bx, w.biases, w.peeps, w.stages

    def forward(self, params: Mapping[str, Array], x: Array, state0: Mapping[str, Array] | None = None) -> Forward:
        p = self.plan
        dt = self.dtype
        x = np.ascontiguousarray(x, dtype=dt)
        if x.ndim != 3:
            raise ShapeError(f"x must be [T, B, I]; got shape {x.shape}")
        T, B, I = x.shape
        H = infer_hidden(params, I)
        check_params(param_specs(self.cell, I, H), params)
        Wx, bx, biases, peeps, W = self._weights(params, I, H, transposed=False)
        ws = self._get_workspace(T, B, H)
        P = ws.P  # x @ Wx; the kernel adds the bias bx as it reads P
        if p.xblocks:
            interp.gemm(x.reshape(T * B, I), Wx, P.reshape(T * B, -1))
        given = initial_states(p.states, state0, B, H, dt)
        S0 = np.stack([given[s].ravel() for s in p.states])
        consts = np.array((*p.consts, 0.0), dtype=dt)
        BH = B * H
        tb = ws.tables
        for i, off in enumerate(tb.init_at):
            if off >= 0:
                ws.A[off : off + BH] = S0[i]
        chunks = self._chunks(B)
        args = (ws.cpu.ops, tb.stage_info, tb.stage_src, tb.stage_dst, ws.cpu.seed, T, B, H, ws.A, P, bx, x, S0, consts, biases,
                peeps, W, ws.K, ws.TMP, self._R, self._fast)  # fmt: skip
        if chunks == 1:
            interp.forward_kernel(*args)
        else:
            with BLAS.single(True):
                interp.forward_kernel_split(*args, chunks)
        self._generation += 1
        outputs = self._values(ws, p.output_slot, T, B, H)
        states = {s: self._values(ws, u, T, B, H)[T - 1].copy() for s, u in zip(p.states, p.update_slots, strict=True)}
        return Forward(outputs.copy(), states, CpuTape(x, ws.A, ws.K, I, H, self._generation))  # type: ignore[arg-type]

    def _values(self, ws: _Workspace, node: int, T: int, B: int, H: int) -> Array:
        """Node ``node``'s values over time, [T, B, H] (a view; the node must be taped)."""
        p = self.plan
        if p.tape_index[node] < 0:
            raise ShapeError(f"node {node} is not on the tape")  # lowering tapes updates and the output
        V = ws.A[: (T + 1) * p.n_taped * B * H].reshape(T + 1, p.n_taped, B, H)
        return V[1:, p.tape_index[node]]

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
        Wx, _, biases, peeps, WT = self._weights(params, I, H, transposed=True)
        ws = self._get_workspace(T, B, H)
        dOut = np.zeros((T, B, H), dtype=dt) if d_out is None else np.ascontiguousarray(d_out, dtype=dt)
        dS = np.zeros((len(p.states), B * H), dtype=dt)
        if d_state_T is not None:
            for i, s in enumerate(p.states):
                if s in d_state_T:
                    dS[i] = np.asarray(d_state_T[s], dtype=dt).ravel()
        cpu = ws.cpu
        NX = len(p.xblocks)
        dP = ws.dP  # the blocks no stage's DZ holds
        dX = np.zeros((T, B, I), dtype=dt)
        chunks = self._chunks(B)
        dBc = np.zeros((chunks, *biases.shape), dtype=dt)
        dPeepc = np.zeros((chunks, *peeps.shape), dtype=dt)
        dBxc = np.zeros((chunks, NX * H), dtype=dt)
        tb = ws.tables
        bargs = (cpu.ops, tb.stage_info, tb.stage_src, tb.stage_dst, T, B, H, tape.A, tb.state_g, tb.update_g,
                 p.output_slot * B * H, dOut, dS, peeps, WT, ws.DZ, ws.TMP, ws.G, dP, dX)  # fmt: skip
        if chunks == 1:
            interp.backward_kernel(*bargs, dBc[0], dPeepc[0], dBxc[0], self._R)
        else:
            with BLAS.single(True):
                interp.backward_kernel_split(*bargs, dBc, dPeepc, dBxc, self._R, chunks)
        dB = dBc.sum(axis=0)
        dPeep = dPeepc.sum(axis=0)
        dbx = dBxc.sum(axis=0)
        # deferred weight gradients: one GEMM per recurrent stage; the input projection's from the
        # stages' DZ where it holds the projection's gradient, else from the compact dP
        dzs = []
        dWs = []
        for g, st in enumerate(p.stages):
            ns, nk = len(st.srcs), len(st.dsts)
            koff, zoff = int(tb.stage_info[g, 3]), int(tb.stage_info[g, 4])
            src = tape.K[koff : koff + T * B * ns * H].reshape(T * B, ns * H)
            dz = ws.DZ[zoff : zoff + T * B * nk * H].reshape(T * B, nk * H)
            dzs.append(dz)
            dWt = np.empty((nk * H, ns * H), dtype=dt)
            interp.gemm(dz.T, src, dWt)  # as (dz^T @ src)^T: OpenBLAS runs this orientation faster
            dWs.append(dWt.T)
        # (gradient of the projection's output [T*B, n*H], its x blocks)
        groups = [(dzs[g], blocks) for g, blocks in cpu.dz_stages]
        if cpu.dp_blocks:
            groups.append((dP.reshape(T * B, -1), cpu.dp_blocks))
        x2 = x.reshape(T * B, I)
        dWxt = np.empty((NX * H, I), dtype=dt)  # dWx^T: m^T @ x runs 1.1-1.6x faster than x^T @ m (small I)
        for m, blocks in groups:
            if blocks == list(range(NX)):
                interp.gemm(m.T, x2, dWxt)
            else:
                part = np.empty((m.shape[1], I), dtype=dt)
                interp.gemm(m.T, x2, part)
                for k, i in enumerate(blocks):
                    dWxt[i * H : (i + 1) * H] = part[k * H : (k + 1) * H]
        dWx = dWxt.T
        grads = unpack_gradients(p, H, dWx, dbx, dWs, dB, dPeep)
        if p.xblocks and grad_x:  # x also feeds the input GEMM
            dXp = np.empty((T * B, I), dtype=dt)
            for n, (m, blocks) in enumerate(groups):
                cols = np.concatenate([np.arange(i * H, (i + 1) * H) for i in blocks])
                WxT = np.ascontiguousarray(Wx[:, cols].T)
                if n == 0:
                    interp.gemm(m, WxT, dXp)
                else:
                    part = np.empty((T * B, I), dtype=dt)
                    interp.gemm(m, WxT, part)
                    dXp += part
            dX += dXp.reshape(T, B, I)
        state0 = {s: dS[i].reshape(B, H).copy() for i, s in enumerate(p.states)}
        return Gradients(grads, dX if grad_x else None, state0)
