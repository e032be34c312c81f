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
    """The Plan's arrays, with addresses, and the work buffers for one (T, B, H)."""

    ops: Array
    stage_info: Array
    stage_src: Array
    stage_dst: Array
    state_g: Array
    update_g: Array
    init_at: list[int]  # where each state's initial value goes in A (-1: copied at t == 0 instead)
    output_at: tuple[int, int]  # (const, tmul) of the output's value
    A: Array
    K: Array
    DZ: Array
    TMP: Array
    G: Array


def _workspace(plan: Plan, T: int, B: int, H: int, dtype: np.dtype) -> _Workspace:
    BH = B * H
    NT = plan.n_taped
    scratch0 = (T + 1) * NT * BH
    tmul = NT * BH
    leaf_of = {s: k for s, k in zip(plan.states, plan.state_slots, strict=True)}
    update_of = dict(zip(plan.states, plan.update_slots, strict=True))
    state_name = {k: s for s, k in leaf_of.items() if k >= 0}

    def at(k: int) -> tuple[int, int, int]:
        """(gradient offset, const, tmul) of node k; its value at step t is A[const + t * tmul]."""
        if k < 0:
            return (0, 0, 0)
        if plan.aliased[k]:  # the update's slot, one tape step back
            return (k * BH, plan.tape_index[update_of[state_name[k]]] * BH, tmul)
        if plan.tape_index[k] >= 0:
            return (k * BH, (NT + plan.tape_index[k]) * BH, tmul)
        if plan.scratch_index[k] >= 0:
            return (k * BH, scratch0 + plan.scratch_index[k] * BH, 0)
        return (k * BH, 0, 0)

    rows = []
    for ins in plan.program:
        d, a, b, c = at(ins.dst), at(ins.a), at(ins.b), at(ins.c)
        if ins.code == Code.STATE:  # a copied state reads its update's slot one tape step back
            u = update_of[plan.states[ins.aux]]
            a = (0, plan.tape_index[u] * BH, tmul)
            b = (int(not plan.aliased[ins.dst]), 0, 0)
        rows.append((int(ins.code), ins.aux, *d, *a, *b, *c))
    ops = np.array(rows, dtype=np.int64).reshape(-1, 14)
    n = max(len(plan.stages), 1)
    info = np.zeros((n, 6), dtype=np.int64)
    src = np.zeros((n, max([len(s.srcs) for s in plan.stages] + [1]), 3), dtype=np.int64)
    dst = np.zeros((n, max([len(s.dsts) for s in plan.stages] + [1]), 3), dtype=np.int64)
    w = k = z = tmp = 0
    for g, st in enumerate(plan.stages):
        ns, nk = len(st.srcs), len(st.dsts)
        info[g] = (ns, nk, w, k, z, 0)
        src[g, :ns] = [at(v) for v in st.srcs]
        dst[g, :nk] = [at(v) for v in st.dsts]
        w += ns * H * nk * H
        k += T * B * ns * H
        z += T * B * nk * H
        tmp = max(tmp, B * ns * H, B * nk * H)
    init_at = [
        plan.tape_index[update_of[s]] * BH if leaf >= 0 and plan.aliased[leaf] else -1
        for s, leaf in zip(plan.states, plan.state_slots, strict=True)
    ]
    _, out_c, out_m = at(plan.output_slot)
    return _Workspace(
        ops,
        info,
        src,
        dst,
        state_g=np.array([v * BH if v >= 0 else -1 for v in plan.state_slots], dtype=np.int64),
        update_g=np.array([u * BH for u in plan.update_slots], dtype=np.int64),
        init_at=init_at,
        output_at=(out_c, out_m),
        A=np.empty(scratch0 + plan.n_scratch * BH, dtype=dtype),
        K=np.empty(max(k, 1), dtype=dtype),
        DZ=np.empty(max(z, 1), dtype=dtype),
        TMP=np.empty(max(tmp, 1), dtype=dtype),
        G=np.empty(plan.n_slots * BH, dtype=dtype),
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

    # ---- parameters -> the Plan's arrays ----
    def _weights(self, params: Mapping[str, Array], I: int, H: int, transposed: bool) -> tuple[Array, Array, Array, Array, Array]:
        """The Plan's arrays from named parameters: Wx, bx, biases, peeps, and the recurrent stages'
        weights flattened one after another, each transposed when ``transposed`` (the backward's)."""
        p = self.plan
        dt = self.dtype

        def get(name: str) -> Array:
            return np.asarray(params[name], dtype=dt)

        Wx = np.zeros((I, len(p.xblocks) * H), dtype=dt)
        bx = np.zeros(len(p.xblocks) * H, dtype=dt)
        for i, blk in enumerate(p.xblocks):
            for name in blk.weights:
                Wx[:, i * H : (i + 1) * H] += get(name)
            bx[i * H : (i + 1) * H] = get(blk.bias)
        biases = np.stack([get(n) for n in p.biases]) if p.biases else np.zeros((0, H), dtype=dt)
        peeps = np.stack([get(n) for n in p.peeps]) if p.peeps else np.zeros((0, H), dtype=dt)
        Ws = []
        for st in p.stages:
            W = np.zeros((len(st.srcs) * H, len(st.dsts) * H), dtype=dt)
            for k, row in enumerate(st.terms):
                for i, names in enumerate(row):
                    for name in names:
                        W[i * H : (i + 1) * H, k * H : (k + 1) * H] += get(name)
            Ws.append((np.ascontiguousarray(W.T) if transposed else W).ravel())
        stages = np.concatenate(Ws) if Ws else np.zeros(1, dtype=dt)
        return Wx, bx, biases, peeps, stages

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
        for i, off in enumerate(ws.init_at):
            if off >= 0:
                ws.A[off : off + BH] = S0[i]
        chunks = self._chunks(B)
        args = (ws.ops, ws.stage_info, ws.stage_src, ws.stage_dst, T, B, H, ws.A, P, x, S0, consts, biases, peeps, W, ws.K,
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
        bargs = (ws.ops, ws.stage_info, ws.stage_src, ws.stage_dst, T, B, H, tape.A, ws.state_g, ws.update_g,
                 p.output_slot * B * H, dOut, dS, peeps, WT, ws.DZ, ws.TMP, ws.G, dP, dX)  # fmt: skip
        if chunks == 1:
            interp.backward_kernel(*bargs, dBc[0], dPeepc[0], self._R)
        else:
            with BLAS.single(True):
                interp.backward_kernel_split(*bargs, dBc, dPeepc, self._R, chunks)
        dB = dBc.sum(axis=0)
        dPeep = dPeepc.sum(axis=0)
        grads: dict[str, Array] = {}

        def add(name: str, value: Array) -> None:
            grads[name] = grads[name] + value if name in grads else value

        # deferred weight gradients: one GEMM for the input projection, one per recurrent stage
        dP2 = dP.reshape(T * B, -1)
        dWx = np.empty((I, dP2.shape[1]), dtype=dt)
        dbx = np.empty(dP2.shape[1], dtype=dt)
        if p.xblocks:
            interp.gemm(x.reshape(T * B, I).T, dP2, dWx)
            interp.column_sums(dP2, dbx)
        for i, blk in enumerate(p.xblocks):
            for name in blk.weights:
                add(name, dWx[:, i * H : (i + 1) * H])
            add(blk.bias, dbx[i * H : (i + 1) * H])
        for g, st in enumerate(p.stages):
            ns, nk = len(st.srcs), len(st.dsts)
            koff, zoff = int(ws.stage_info[g, 3]), int(ws.stage_info[g, 4])
            src = tape.K[koff : koff + T * B * ns * H].reshape(T * B, ns * H)
            dz = ws.DZ[zoff : zoff + T * B * nk * H].reshape(T * B, nk * H)
            dW = np.empty((ns * H, nk * H), dtype=dt)
            interp.gemm(src.T, dz, dW)
            for k, row in enumerate(st.terms):
                for i, names in enumerate(row):
                    for name in names:
                        add(name, dW[i * H : (i + 1) * H, k * H : (k + 1) * H])
        for i, name in enumerate(p.biases):
            add(name, dB[i])
        for i, name in enumerate(p.peeps):
            add(name, dPeep[i])
        if p.xblocks and grad_x:  # x also feeds the input GEMM
            dXp = np.empty((T * B, I), dtype=dt)
            interp.gemm(dP2, Wx.T, dXp)
            dX += dXp.reshape(T, B, I)
        state0 = {s: dS[i].reshape(B, H).copy() for i, s in enumerate(p.states)}
        return Gradients({k: np.ascontiguousarray(v) for k, v in grads.items()}, dX if grad_x else None, state0)
