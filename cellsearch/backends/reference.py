"""The reference backend: a NumPy interpreter of the Cell itself, float64 by default.

It is the living definition of what a cell computes. ``forward`` runs the cell over a sequence and
keeps a tape (every node's value at every step); ``backward`` is one generic reverse walk over the
nodes applying the per-op rules in ``grad.rules.VJP``, carrying the states' gradients from step to
step. Clarity over speed: every compiled backend is tested against this one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..errors import ShapeError
from ..grad.rules import FORWARD, VJP, NodeParams
from ..ir.cell import Cell
from ..ir.ops import Op
from ..ir.params import ParamSpec, param_specs

Array = np.ndarray


@dataclass
class Tape:
    """What ``backward`` needs: the inputs and every node's value at every step."""

    x: Array  # [T, B, I]
    state0: dict[str, Array]
    values: list[list[Array | float]]  # values[t][node]
    input_size: int
    hidden_size: int


@dataclass
class Forward:
    outputs: Array  # [T, B, H]: the cell's output at every step
    states: dict[str, Array]  # the states after the last step, [B, H] each
    tape: Tape


@dataclass
class Gradients:
    params: dict[str, Array]
    x: Array | None  # [T, B, I]; None when not asked for (grad_x=False)
    state0: dict[str, Array]


def infer_hidden(params: Mapping[str, Array], input_size: int) -> int:
    """H from the parameters (every parameter's last axis is H); I for a cell without any."""
    for value in params.values():
        return int(np.shape(value)[-1])
    return input_size


def check_params(specs: list[ParamSpec], params: Mapping[str, Array]) -> None:
    if len(params) == len(specs) and all(getattr(params.get(s.name), "shape", None) == s.shape for s in specs):
        return  # (every call checks: the common case first)
    names = {s.name for s in specs}
    missing = [s.name for s in specs if s.name not in params]
    if missing:
        raise ShapeError(f"missing parameters: {', '.join(missing)}")
    extra = sorted(set(params) - names)
    if extra:
        raise ShapeError(f"unknown parameters: {', '.join(extra)} (expected: {', '.join(sorted(names))})")
    for s in specs:
        got = tuple(np.shape(params[s.name]))
        if got != s.shape:
            raise ShapeError(f"parameter '{s.name}' has shape {got}; expected {s.shape}")


def initial_states(
    states: tuple[str, ...], state0: Mapping[str, Array] | None, B: int, H: int, dtype: np.dtype
) -> dict[str, Array]:
    """Each state's initial value, ``[B, H]``: as given, else zeros. ``ShapeError`` for a wrong shape
    or a state the cell does not have."""
    given = dict(state0 or {})
    unknown = sorted(set(given) - set(states))
    if unknown:
        raise ShapeError(f"unknown states: {unknown} (the cell has {list(states)})")
    out = {}
    for s in states:
        if s in given:
            v = np.asarray(given[s], dtype=dtype)
            if v.shape != (B, H):
                raise ShapeError(f"initial state '{s}' has shape {v.shape}; expected {(B, H)}")
            out[s] = v
        else:
            out[s] = np.zeros((B, H), dtype=dtype)
    return out


class ReferenceKernel:
    """``forward(params, x, state0)`` and ``backward(params, tape, d_out, d_state_T)`` for one cell."""

    backend = "reference"

    def __init__(self, cell: Cell, dtype: type | np.dtype = np.float64) -> None:
        self.cell = cell
        self.dtype = np.dtype(dtype)

    def _node_params(self, params: Mapping[str, Array], specs: list[ParamSpec]) -> dict[int, NodeParams]:
        out: dict[int, NodeParams] = {}
        for s in specs:
            np_ = out.setdefault(s.node, NodeParams(weights=[None] * len(self.cell.nodes[s.node].args)))  # type: ignore[list-item]
            value = np.asarray(params[s.name], dtype=self.dtype)
            if s.role == "weight":
                assert isinstance(np_.weights, list) and s.arg is not None
                np_.weights[s.arg] = value
            elif s.role == "bias":
                np_.bias = value
            else:
                np_.peep = value
        return out

    def forward(self, params: Mapping[str, Array], x: Array, state0: Mapping[str, Array] | None = None) -> Forward:
        cell = self.cell
        x = np.asarray(x, dtype=self.dtype)
        if x.ndim != 3:
            raise ShapeError(f"x must be [T, B, I]; got shape {x.shape}")
        T, B, I = x.shape
        H = infer_hidden(params, I)
        specs = param_specs(cell, I, H)
        check_params(specs, params)
        nparams = self._node_params(params, specs)
        state = initial_states(cell.states, state0, B, H, self.dtype)
        state0_copy = {s: v.copy() for s, v in state.items()}
        outputs = np.empty((T, B, H), dtype=self.dtype)
        tape: list[list[Array | float]] = []
        for t in range(T):
            vals: list[Array | float] = []
            for k, node in enumerate(cell.nodes):
                if node.op is Op.INPUT:
                    v: Array | float = x[t]
                elif node.op is Op.STATE:
                    v = state[node.attr("name")]
                elif node.op is Op.CONST:
                    v = self.dtype.type(node.attr("value"))
                else:
                    v = FORWARD[node.op]([vals[a] for a in node.args], nparams.get(k, NodeParams()))  # type: ignore[misc]
                vals.append(v)
            outputs[t] = vals[cell.output]
            state = {s: np.asarray(vals[u]) for s, u in zip(cell.states, cell.updates, strict=True)}
            tape.append(vals)
        return Forward(outputs, state, Tape(x, state0_copy, tape, I, H))

    def backward(
        self,
        params: Mapping[str, Array],
        tape: Tape,
        d_out: Array | None,
        d_state_T: Mapping[str, Array] | None = None,
        grad_x: bool = True,
    ) -> Gradients:
        """Gradients of ``sum(d_out * outputs) + sum_s sum(d_state_T[s] * states[s])``; with
        ``grad_x=False`` the input's gradient is not returned (``Gradients.x`` is None)."""
        cell = self.cell
        T, B, _ = tape.x.shape
        H = tape.hidden_size
        specs = param_specs(cell, tape.input_size, H)
        nparams = self._node_params(params, specs)
        grads = {s.name: np.zeros(s.shape, dtype=self.dtype) for s in specs}
        names = {(s.node, s.role, s.arg): s.name for s in specs}
        dx = np.zeros_like(tape.x)
        carry = {s: np.zeros((B, H), dtype=self.dtype) for s in cell.states}
        if d_state_T is not None:
            for s, v in d_state_T.items():
                carry[s] = carry[s] + np.asarray(v, dtype=self.dtype)
        zero = np.zeros((B, H), dtype=self.dtype)
        for t in range(T - 1, -1, -1):
            vals = tape.values[t]
            g: list[Array | None] = [None] * len(cell.nodes)
            if d_out is not None:
                _accumulate(g, cell.output, np.asarray(d_out[t], dtype=self.dtype))
            for s, u in zip(cell.states, cell.updates, strict=True):
                _accumulate(g, u, carry[s])
            new_carry = {s: zero for s in cell.states}
            for k in range(len(cell.nodes) - 1, -1, -1):
                gk = g[k]
                node = cell.nodes[k]
                if gk is None:
                    continue
                if node.op is Op.INPUT:
                    dx[t] += gk
                    continue
                if node.op is Op.STATE:
                    new_carry[node.attr("name")] = gk
                    continue
                if node.op is Op.CONST:
                    continue
                p = nparams.get(k, NodeParams())
                local = VJP[node.op](gk, [vals[a] for a in node.args], vals[k], p)  # type: ignore[misc,arg-type]
                for a, ga in zip(node.args, local.args, strict=True):
                    if ga is not None and cell.nodes[a].op is not Op.CONST:
                        _accumulate(g, a, ga)
                for i, gw in enumerate(local.weights):
                    grads[names[(k, "weight", i)]] += gw
                if local.bias is not None:
                    grads[names[(k, "bias", None)]] += local.bias
                if local.peep is not None:
                    grads[names[(k, "peep", None)]] += local.peep
            carry = new_carry
        return Gradients(grads, dx if grad_x else None, {s: np.array(v) for s, v in carry.items()})


def _accumulate(g: list[Array | None], k: int, v: Array) -> None:
    prev = g[k]
    g[k] = v if prev is None else prev + v
