"""Per-op semantics in NumPy: the forward function and the local vector-Jacobian product (VJP).

One entry per op in each table; every backend's backward is derived from ``VJP`` (the reference
walks it directly; compiled backends lower it). Parameterised ops receive their parameters as a
``NodeParams``. Shapes: values are ``[B, H]`` (``x`` is ``[B, I]``), constants are 0-d.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..ir.ops import Op

Array = np.ndarray


@dataclass
class NodeParams:
    weights: Sequence[Array] = ()  # LINEAR: one [rows, H] matrix per argument
    bias: Array | None = None  # LINEAR: [H]; None for a linear(..., bias=none)
    peep: Array | None = None  # PEEP: [H]


@dataclass
class LocalGrad:
    args: list[Array | None]  # gradient for each argument (None: nothing flows there)
    weights: list[Array] = field(default_factory=list)
    bias: Array | None = None
    peep: Array | None = None


def sigmoid(a: Array) -> Array:
    return 0.5 * (np.tanh(0.5 * a) + 1.0)


def _linear(args: Sequence[Array], p: NodeParams) -> Array:
    out = args[0] @ p.weights[0]
    if p.bias is not None:  # a linear(..., bias=none) has none
        out = p.bias + out
    for a, w in zip(args[1:], p.weights[1:], strict=True):
        out = out + a @ w
    return out


FORWARD: dict[Op, Callable[[Sequence[Array], NodeParams], Array]] = {
    Op.LINEAR: _linear,
    Op.PEEP: lambda a, p: p.peep * a[0],
    Op.ADD: lambda a, p: a[0] + a[1],
    Op.SUB: lambda a, p: a[0] - a[1],
    Op.MUL: lambda a, p: a[0] * a[1],
    Op.BLEND: lambda a, p: a[2] * a[0] + (1.0 - a[2]) * a[1],
    Op.SIGMOID: lambda a, p: sigmoid(a[0]),
    Op.TANH: lambda a, p: np.tanh(a[0]),
    Op.RELU: lambda a, p: np.maximum(a[0], 0.0),
    Op.IDENTITY: lambda a, p: a[0],
}


def _vjp_linear(g: Array, a: Sequence[Array], y: Array, p: NodeParams) -> LocalGrad:
    return LocalGrad(
        args=[g @ w.T for w in p.weights],
        weights=[ai.T @ g for ai in a],
        bias=None if p.bias is None else g.sum(axis=0),
    )


#: op -> (upstream gradient g, argument values, output value, params) -> local gradients
VJP: dict[Op, Callable[[Array, Sequence[Array], Array, NodeParams], LocalGrad]] = {
    Op.LINEAR: _vjp_linear,
    Op.PEEP: lambda g, a, y, p: LocalGrad([g * p.peep], peep=(g * a[0]).sum(axis=0)),
    Op.ADD: lambda g, a, y, p: LocalGrad([g, g]),
    Op.SUB: lambda g, a, y, p: LocalGrad([g, -g]),
    Op.MUL: lambda g, a, y, p: LocalGrad([g * a[1], g * a[0]]),
    Op.BLEND: lambda g, a, y, p: LocalGrad([g * a[2], g * (1.0 - a[2]), g * (a[0] - a[1])]),
    Op.SIGMOID: lambda g, a, y, p: LocalGrad([g * y * (1.0 - y)]),
    Op.TANH: lambda g, a, y, p: LocalGrad([g * (1.0 - y * y)]),
    Op.RELU: lambda g, a, y, p: LocalGrad([g * (a[0] > 0.0)]),
    Op.IDENTITY: lambda g, a, y, p: LocalGrad([g]),
}
