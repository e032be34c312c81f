"""The model around a cell: input encoder -> the cell over time -> a linear head.

- Symbol inputs (``[T, B]`` ids) go through an embedding ``in.E [V, E]``; vector inputs
  (``[T, B, I]``) feed the cell directly, or through a projection ``in.W [I, H]``, ``in.b`` when the
  cell uses ``x`` elementwise (then its input size must equal H).
- The cell runs on any backend; its parameters are ``cell.<name>`` (see ``cellsearch show``).
- The head ``out.W [H, K]``, ``out.b [K]`` maps every step's output to the task's K outputs
  (logits or values); the task's mask decides which steps count.

Parameters are one flat dict of arrays by name; ``loss_and_grads`` returns the loss and a gradient
for each of them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .backends import compile
from .errors import ConfigError
from .ir.cell import Cell
from .ir.params import init_params
from .tasks.base import Batch, Task

Array = np.ndarray


@dataclass(frozen=True)
class ModelShape:
    input_kind: str  # "symbols" | "vector"
    input_size: int  # vocabulary size or vector width
    cell_input: int  # the width the cell sees
    hidden: int
    output_size: int
    project: bool  # vector input projected to H (the cell uses x elementwise)


class Model:
    def __init__(
        self,
        cell: Cell,
        task: Task,
        hidden: int,
        embed: int | None = None,
        backend: str = "cpu",
        dtype: type | np.dtype = np.float32,
    ) -> None:
        self.cell = cell
        self.dtype = np.dtype(dtype)
        if task.input_kind == "symbols":
            if cell.x_elementwise and embed not in (None, hidden):
                raise ConfigError(
                    f"cell '{cell.name}' uses x elementwise, so its input must be H wide: "
                    f"embed must equal hidden (got embed={embed}, hidden={hidden})"
                )
            width = hidden if cell.x_elementwise else (embed or hidden)
            shape = ModelShape("symbols", task.input_size, width, hidden, task.output_size, False)
        else:
            project = cell.x_elementwise and task.input_size != hidden
            width = hidden if project else task.input_size
            shape = ModelShape("vector", task.input_size, width, hidden, task.output_size, project)
        self.shape = shape
        self.kernel: Any = compile(cell, backend, self.dtype)
        self._gemm: Any = None
        self._scatter: Any = None
        if backend == "cpu":  # one BLAS for the whole step: NumPy's own beside Numba's fights it for the cores
            from .backends.cpu.interp import gemm, scatter_add_rows

            self._gemm = gemm
            self._scatter = scatter_add_rows

    def _mm(self, a: Array, b: Array) -> Array:
        """a @ b for 2-D arrays, through the kernel's BLAS on the cpu backend."""
        if self._gemm is None:
            return a @ b
        out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
        self._gemm(a, b, out)
        return out

    def _head(self, params: dict[str, Array], h: Array) -> Array:
        T, B, H = h.shape
        return (self._mm(h.reshape(T * B, H), params["out.W"]) + params["out.b"]).reshape(T, B, -1)

    def init(self, rng: np.random.Generator, scale: float = 1.0) -> dict[str, Array]:
        """Fresh parameters from ``rng``: the cell's (U(±scale/sqrt(H)) unless hinted), then the
        encoder's and the head's (U(±1/sqrt(fan_in)))."""
        s = self.shape
        params = {f"cell.{k}": v for k, v in init_params(self.cell, s.cell_input, s.hidden, rng, self.dtype, scale).items()}

        def uniform(shape: tuple[int, ...], fan_in: int) -> Array:
            b = 1.0 / np.sqrt(fan_in)
            return rng.uniform(-b, b, size=shape).astype(self.dtype)

        if s.input_kind == "symbols":
            params["in.E"] = rng.normal(0.0, 1.0, size=(s.input_size, s.cell_input)).astype(self.dtype)
        elif s.project:
            params["in.W"] = uniform((s.input_size, s.hidden), s.input_size)
            params["in.b"] = np.zeros(s.hidden, dtype=self.dtype)
        params["out.W"] = uniform((s.hidden, s.output_size), s.hidden)
        params["out.b"] = np.zeros(s.output_size, dtype=self.dtype)
        return params

    def _cell_params(self, params: dict[str, Array]) -> dict[str, Array]:
        return {k[5:]: v for k, v in params.items() if k.startswith("cell.")}

    def encode(self, params: dict[str, Array], x: Array) -> Array:
        s = self.shape
        if s.input_kind == "symbols":
            return params["in.E"][x]
        x = np.asarray(x, dtype=self.dtype)
        if s.project:
            T, B, I = x.shape
            return (self._mm(x.reshape(T * B, I), params["in.W"]) + params["in.b"]).reshape(T, B, -1)
        return x

    def predict(self, params: dict[str, Array], x: Array) -> Array:
        """Outputs ``[T, B, K]`` for a batch's inputs."""
        h = self.kernel.forward(self._cell_params(params), self.encode(params, x)).outputs
        return self._head(params, h)

    def loss_and_grads(
        self,
        params: dict[str, Array],
        batch: Batch,
        task: Task,
        noise: float = 0.0,
        rng: np.random.Generator | None = None,
    ) -> tuple[float, dict[str, Array]]:
        """The task's loss on ``batch`` and its gradient for every parameter. ``noise`` adds
        Gaussian noise of that std to the cell's inputs (Greff's input noise), drawn from ``rng``."""
        s = self.shape
        xin = self.encode(params, batch.x)
        if noise > 0.0:
            assert rng is not None
            xin = xin + rng.normal(0.0, noise, size=xin.shape).astype(self.dtype)
        cell_params = self._cell_params(params)
        fwd = self.kernel.forward(cell_params, xin)
        h = fwd.outputs
        pred = self._head(params, h)
        loss, dpred = task.loss_and_grad(pred, batch)
        dpred = np.asarray(dpred, dtype=self.dtype)
        T, B, K = dpred.shape
        d2 = dpred.reshape(T * B, K)
        grads = {
            "out.W": self._mm(h.reshape(T * B, s.hidden).T, d2),
            "out.b": d2.sum(axis=0),
        }
        dh = self._mm(d2, params["out.W"].T).reshape(T, B, s.hidden)
        need_x = s.input_kind == "symbols" or s.project
        g = self.kernel.backward(cell_params, fwd.tape, dh, grad_x=need_x)
        grads.update({f"cell.{k}": v for k, v in g.params.items()})
        if s.input_kind == "symbols":
            dE = np.zeros_like(params["in.E"])
            ids = np.ascontiguousarray(batch.x, dtype=np.int64).reshape(-1)
            rows = np.ascontiguousarray(g.x.reshape(T * B, -1), dtype=dE.dtype)
            if self._scatter is not None:
                self._scatter(dE, ids, rows)
            else:
                np.add.at(dE, ids, rows)
            grads["in.E"] = dE
        elif s.project:
            x2 = np.asarray(batch.x, dtype=self.dtype).reshape(T * B, -1)
            gx = g.x.reshape(T * B, -1)
            grads["in.W"] = self._mm(x2.T, gx)
            grads["in.b"] = gx.sum(axis=0)
        return float(loss), grads
