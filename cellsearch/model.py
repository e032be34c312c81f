"""The model around a cell: input encoder -> the cell over time (stacked, optionally
bidirectional) -> a linear head.

- Symbol inputs (``[T, B]`` ids) go through an embedding ``in.E [V, E]``; vector inputs
  (``[T, B, I]``) feed the first layer directly, or through a projection ``in.W [I, H]``, ``in.b``
  when the cell uses ``x`` elementwise (then its input size must equal H).
- ``layers`` layers of the cell, each reading the layer below; with ``bidirectional`` each layer has
  a forward and a backward (time-reversed) copy whose outputs are concatenated (width 2H).
- The head ``out.W [W, K]``, ``out.b [K]`` maps every step's top output to the task's K outputs
  (logits or values); the task's mask decides which steps count.

Parameters are one flat dict of arrays by name: the cell's are ``cell.<name>`` for a single
unidirectional layer, else ``cell.<layer>.<fwd|bwd>.<name>``. ``loss_and_grads`` returns the loss
and a gradient for each of them.
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
    cell_input: int  # the width the first layer sees
    hidden: int
    output_size: int
    project: bool  # vector input projected to H (the cell uses x elementwise)
    layers: int = 1
    bidirectional: bool = False

    @property
    def width(self) -> int:
        """Width of each layer's output (2H when bidirectional)."""
        return 2 * self.hidden if self.bidirectional else self.hidden


@dataclass
class _Run:
    """One cell over time: layer ``layer``, direction ``reverse``, its kernel and parameter prefix."""

    layer: int
    reverse: bool
    prefix: str
    kernel: Any
    input_width: int


class Model:
    def __init__(
        self,
        cell: Cell,
        task: Task,
        hidden: int,
        embed: int | None = None,
        backend: str = "cpu",
        dtype: type | np.dtype = np.float32,
        layers: int = 1,
        bidirectional: bool = False,
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
            shape = ModelShape("symbols", task.input_size, width, hidden, task.output_size, False, layers, bidirectional)
        else:
            project = cell.x_elementwise and task.input_size != hidden
            width = hidden if project else task.input_size
            shape = ModelShape("vector", task.input_size, width, hidden, task.output_size, project, layers, bidirectional)
        if cell.x_elementwise and bidirectional and layers > 1:
            raise ConfigError(
                f"cell '{cell.name}' uses x elementwise, so a layer's input must be H wide; stacked bidirectional "
                f"layers feed it 2H (use layers=1, or no bidirectional, or a cell without elementwise x)"
            )
        self.shape = shape
        single = layers == 1 and not bidirectional
        self.runs: list[_Run] = []
        for layer in range(layers):
            for reverse in (False, True) if bidirectional else (False,):
                prefix = "cell." if single else f"cell.{layer}.{'bwd' if reverse else 'fwd'}."
                in_width = shape.cell_input if layer == 0 else shape.width
                self.runs.append(_Run(layer, reverse, prefix, compile(cell, backend, self.dtype), in_width))
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
        T, B, W = h.shape
        return (self._mm(h.reshape(T * B, W), params["out.W"]) + params["out.b"]).reshape(T, B, -1)

    def init(
        self,
        rng: np.random.Generator,
        scale: float = 1.0,
        gate_init: str = "default",
        chrono_tmax: float = 0.0,
        forget_bias: float = 0.0,
    ) -> dict[str, Array]:
        """Fresh parameters from ``rng``: each cell's (U(±scale/sqrt(H)) unless hinted; the gate
        options as in ``init_params``), then the encoder's and the head's (U(±1/sqrt(fan_in)))."""
        s = self.shape
        params: dict[str, Array] = {}
        for run in self.runs:
            cell_params = init_params(
                self.cell, run.input_width, s.hidden, rng, self.dtype, scale,
                gate_init=gate_init, chrono_tmax=chrono_tmax, forget_bias=forget_bias,
            )  # fmt: skip
            for k, v in cell_params.items():
                params[run.prefix + k] = v

        def uniform(shape: tuple[int, ...], fan_in: int) -> Array:
            b = 1.0 / np.sqrt(fan_in)
            return rng.uniform(-b, b, size=shape).astype(self.dtype)

        if s.input_kind == "symbols":
            params["in.E"] = rng.normal(0.0, 1.0, size=(s.input_size, s.cell_input)).astype(self.dtype)
        elif s.project:
            params["in.W"] = uniform((s.input_size, s.hidden), s.input_size)
            params["in.b"] = np.zeros(s.hidden, dtype=self.dtype)
        params["out.W"] = uniform((s.width, s.output_size), s.width)
        params["out.b"] = np.zeros(s.output_size, dtype=self.dtype)
        return params

    def encode(self, params: dict[str, Array], x: Array) -> Array:
        s = self.shape
        if s.input_kind == "symbols":
            return params["in.E"][x]
        x = np.asarray(x, dtype=self.dtype)
        if s.project:
            T, B, I = x.shape
            return (self._mm(x.reshape(T * B, I), params["in.W"]) + params["in.b"]).reshape(T, B, -1)
        return x

    def _forward(self, params: dict[str, Array], xin: Array) -> tuple[Array, list[Any]]:
        """Top outputs [T, B, W] and each run's forward result, layer by layer."""
        fwds: list[Any] = []
        h = xin
        for layer in range(self.shape.layers):
            outs = []
            for run in (r for r in self.runs if r.layer == layer):
                inp = np.ascontiguousarray(h[::-1]) if run.reverse else h
                f = run.kernel.forward(self._params_of(params, run), inp)
                fwds.append(f)
                outs.append(f.outputs[::-1] if run.reverse else f.outputs)
            h = np.ascontiguousarray(np.concatenate(outs, axis=2)) if len(outs) > 1 else outs[0]
        return h, fwds

    def _params_of(self, params: dict[str, Array], run: _Run) -> dict[str, Array]:
        n = len(run.prefix)
        if run.prefix == "cell.":
            return {k[n:]: v for k, v in params.items() if k.startswith("cell.")}
        return {k[n:]: v for k, v in params.items() if k.startswith(run.prefix)}

    def predict(self, params: dict[str, Array], x: Array) -> Array:
        """Outputs ``[T, B, K]`` for a batch's inputs."""
        h, _ = self._forward(params, self.encode(params, x))
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
        Gaussian noise of that std to the first layer's inputs (Greff's input noise), from ``rng``."""
        s = self.shape
        xin = self.encode(params, batch.x)
        if noise > 0.0:
            assert rng is not None
            xin = xin + rng.normal(0.0, noise, size=xin.shape).astype(self.dtype)
        h, fwds = self._forward(params, xin)
        pred = self._head(params, h)
        loss, dpred = task.loss_and_grad(pred, batch)
        dpred = np.asarray(dpred, dtype=self.dtype)
        T, B, K = dpred.shape
        d2 = dpred.reshape(T * B, K)
        grads = {
            "out.W": self._mm(h.reshape(T * B, s.width).T, d2),
            "out.b": d2.sum(axis=0),
        }
        dh = self._mm(d2, params["out.W"].T).reshape(T, B, s.width)
        need_x = s.input_kind == "symbols" or s.project
        for layer in range(s.layers - 1, -1, -1):
            runs = [(i, r) for i, r in enumerate(self.runs) if r.layer == layer]
            d_in: Array | None = None
            for j, (i, run) in enumerate(runs):
                part = dh[:, :, j * s.hidden : (j + 1) * s.hidden] if len(runs) > 1 else dh
                if run.reverse:
                    part = part[::-1]
                want_x = layer > 0 or need_x
                g = run.kernel.backward(self._params_of(params, run), fwds[i].tape, np.ascontiguousarray(part), grad_x=want_x)
                grads.update({run.prefix + k: v for k, v in g.params.items()})
                if want_x:
                    gx = g.x[::-1] if run.reverse else g.x
                    d_in = gx if d_in is None else d_in + gx
            if layer > 0:
                assert d_in is not None
                dh = np.ascontiguousarray(d_in)
            elif need_x:
                assert d_in is not None
                self._encoder_grads(params, batch, np.ascontiguousarray(d_in), grads)
        return float(loss), grads

    def _encoder_grads(self, params: dict[str, Array], batch: Batch, gx: Array, grads: dict[str, Array]) -> None:
        T, B = gx.shape[:2]
        if self.shape.input_kind == "symbols":
            dE = np.zeros_like(params["in.E"])
            ids = np.ascontiguousarray(batch.x, dtype=np.int64).reshape(-1)
            rows = np.ascontiguousarray(gx.reshape(T * B, -1), dtype=dE.dtype)
            if self._scatter is not None:
                self._scatter(dE, ids, rows)
            else:
                np.add.at(dE, ids, rows)
            grads["in.E"] = dE
        else:
            x2 = np.asarray(batch.x, dtype=self.dtype).reshape(T * B, -1)
            g2 = gx.reshape(T * B, -1)
            grads["in.W"] = self._mm(x2.T, g2)
            grads["in.b"] = g2.sum(axis=0)
