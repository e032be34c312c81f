"""A population of different cells stepped together on one GPU.

A search evaluates a population, not one cell, and one small cell leaves most of a GPU idle: its
time-loop kernel has ceil(B / rows) blocks. ``CudaPopulation`` gives every cell its own kernel on its
own CUDA stream and enqueues every cell's whole step (uploads, input GEMM, time loop, reverse time
loop, weight-gradient GEMMs) before it waits for any of them, so the GPU runs the cells' kernels side
by side while Python is still enqueuing the next cell. ``concurrent=False`` runs them one by one
(each cell waited for before the next is enqueued): the same numbers, for comparison.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numba import cuda

from ...errors import ShapeError
from ...ir.cell import Cell
from ..reference import Gradients, infer_hidden
from .kernel import CudaKernel, DeviceWeights

Array = np.ndarray


@dataclass
class StepResult:
    outputs: Array  # [T, B, H]
    gradients: Gradients


class CudaPopulation:
    """Cells trained a step at a time side by side, one CUDA stream each. ``options`` go to every
    ``CudaKernel`` (``rows_per_block``, ``threads_per_block``). The time loops run in the rows
    schedule: the units schedule's blocks wait for each other at grid barriers, and kernels of
    different cells on concurrent streams could then hold each other's multiprocessors."""

    def __init__(self, cells: Sequence[Cell], dtype: type | np.dtype = np.float32, **options: Any) -> None:
        if "stream" in options:
            raise ShapeError("a population gives each cell its own stream")
        options.setdefault("gemm_split", 1)  # the cells' GEMMs fill the GPU side by side
        if options.setdefault("schedule", "rows") != "rows":
            raise ShapeError("a population runs the rows schedule (concurrent units-schedule kernels could deadlock)")
        self.cells = list(cells)
        self.kernels = [CudaKernel(c, dtype, stream=cuda.stream(), **options) for c in self.cells]
        self._weights: list[DeviceWeights | None] = [None] * len(self.cells)

    def __len__(self) -> int:
        return len(self.cells)

    def step(
        self,
        params: Sequence[Mapping[str, Array]],
        x: Array | Sequence[Array],
        d_out: Array | Sequence[Array] | None = None,
        grad_x: bool = False,
        concurrent: bool = True,
    ) -> list[StepResult]:
        """Forward and backward for every cell: ``params[i]`` are cell i's, ``x`` one input
        ``[T, B, I]`` for all or one per cell, ``d_out`` the outputs' gradients (one for all, one per
        cell, or None: ones, i.e. the loss is the sum of the outputs)."""
        n = len(self.kernels)
        if len(params) != n:
            raise ShapeError(f"{n} cells but {len(params)} parameter sets")
        xs = _per_cell(x, n, "x")
        douts = [None] * n if d_out is None else _per_cell(d_out, n, "d_out")
        pending = []
        for i, k in enumerate(self.kernels):
            pending.append(self._enqueue(i, k, params[i], xs[i], douts[i], grad_x))
            if not concurrent:
                k.stream.synchronize()
        results = []
        for k, (fwd, grads) in zip(self.kernels, pending, strict=True):
            outputs = fwd.outputs.copy_to_host(stream=k.stream)
            results.append(StepResult(outputs, grads.to_host()))
        return results

    def _enqueue(self, i: int, k: CudaKernel, params: Mapping[str, Array], x: Array, d_out: Array | None, grad_x: bool) -> Any:
        dt = k.dtype
        x = np.ascontiguousarray(x, dtype=dt)
        if x.ndim != 3:
            raise ShapeError(f"x must be [T, B, I]; got shape {x.shape}")
        T, B, I = x.shape
        H = infer_hidden(params, I)
        w = self._weights[i]
        if w is None or (w.input_size, w.hidden_size) != (I, H):
            w = None
        self._weights[i] = w = k.upload(params, I, H, w)
        ws = k._workspace(T, B, I, H)
        ws.X.copy_to_device(x, stream=k.stream)
        fwd = k.forward_device(w, ws.X)
        if d_out is None:
            k._fill(ws.dOut, 1.0)
        else:
            ws.dOut.copy_to_device(np.ascontiguousarray(d_out, dtype=dt), stream=k.stream)
        grads = k.backward_device(w, fwd.tape, ws.dOut, None, grad_x)
        return fwd, grads


def _per_cell(value: Array | Sequence[Array], n: int, what: str) -> list[Array]:
    if isinstance(value, np.ndarray):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ShapeError(f"{n} cells but {len(values)} values of {what}")
    return values
