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
from ...lowering import Plan, lower
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
class _Workspace:
    """The Plan's arrays (``tables.Tables``) and the work buffers for one (T, B, H)."""

    tables: Tables
    A: Array
    K: Array
    DZ: Array
    TMP: Array
    G: Array


def _workspace(plan: Plan, T: int, B: int, H: int, dtype: np.dtype) -> _Workspace:
    tb = tables(plan, T, B, H)
    return _Workspace(
        tb,
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
        P = np.empty((T, B, len(p.xblocks) * H), dtype=dt)
        P2 = P.reshape(T * B, -1)
        if p.xblocks:
            interp.gemm(x.reshape(T * B, I), Wx, P2)
            P2 += bx
        given = initial_states(p.states, state0, B, H, dt)
        S0 = np.stack([given[s].ravel() for s in p.states])
        ws = self._get_workspace(T, B, H)
        consts = np.array((*p.consts, 0.0), dtype=dt)
        BH = B * H
        tb = ws.tables
        for i, off in enumerate(tb.init_at):
            if off >= 0:
                ws.A[off : off + BH] = S0[i]
        chunks = self._chunks(B)
        args = (tb.ops, tb.stage_info, tb.stage_src, tb.stage_dst, T, B, H, ws.A, P, x, S0, consts, biases, peeps, W, ws.K,
                ws.TMP, self._R, self._fast)  # fmt: skip
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
        dP = np.empty((T, B, len(p.xblocks) * H), dtype=dt)
        dX = np.zeros((T, B, I), dtype=dt)
        chunks = self._chunks(B)
        dBc = np.zeros((chunks, *biases.shape), dtype=dt)
        dPeepc = np.zeros((chunks, *peeps.shape), dtype=dt)
        tb = ws.tables
        bargs = (tb.ops, tb.stage_info, tb.stage_src, tb.stage_dst, T, B, H, tape.A, tb.state_g, tb.update_g,
                 p.output_slot * B * H, dOut, dS, peeps, WT, ws.DZ, ws.TMP, ws.G, dP, dX)  # fmt: skip
        if chunks == 1:
            interp.backward_kernel(*bargs, dBc[0], dPeepc[0], self._R)
        else:
            with BLAS.single(True):
                interp.backward_kernel_split(*bargs, dBc, dPeepc, self._R, chunks)
        dB = dBc.sum(axis=0)
        dPeep = dPeepc.sum(axis=0)
        # deferred weight gradients: one GEMM for the input projection, one per recurrent stage
        dP2 = dP.reshape(T * B, -1)
        dWx = np.empty((I, dP2.shape[1]), dtype=dt)
        dbx = np.empty(dP2.shape[1], dtype=dt)
        if p.xblocks:
            interp.gemm(x.reshape(T * B, I).T, dP2, dWx)
            interp.column_sums(dP2, dbx)
        dWs = []
        for g, st in enumerate(p.stages):
            ns, nk = len(st.srcs), len(st.dsts)
            koff, zoff = int(tb.stage_info[g, 3]), int(tb.stage_info[g, 4])
            src = tape.K[koff : koff + T * B * ns * H].reshape(T * B, ns * H)
            dz = ws.DZ[zoff : zoff + T * B * nk * H].reshape(T * B, nk * H)
            dW = np.empty((ns * H, nk * H), dtype=dt)
            interp.gemm(src.T, dz, dW)
            dWs.append(dW)
        grads = unpack_gradients(p, H, dWx, dbx, dWs, dB, dPeep)
        if p.xblocks and grad_x:  # x also feeds the input GEMM
            dXp = np.empty((T * B, I), dtype=dt)
            interp.gemm(dP2, Wx.T, dXp)
            dX += dXp.reshape(T, B, I)
        state0 = {s: dS[i].reshape(B, H).copy() for i, s in enumerate(p.states)}
        return Gradients(grads, dX if grad_x else None, state0)
