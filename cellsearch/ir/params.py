"""Parameters of a cell: names (from the layout), shapes (from I and H), count and initialisation.

Shapes: a ``linear`` weight that multiplies ``x`` is ``[I, H]``, one that multiplies an H-sized value
is ``[H, H]`` (``y = x @ W``, rows index the input); a bias is ``[H]``; a peephole is ``[H]``.
Initialisation is uniform in ±1/sqrt(H) as in PyTorch, except a ``linear(..., bias=v)`` bias,
which starts at ``v``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import ShapeError
from .cell import Cell
from .layout import ParamNames, layout
from .ops import Op


@dataclass(frozen=True)
class ParamSpec:
    name: str
    shape: tuple[int, ...]
    node: int  # the node that owns it
    role: str  # "weight" | "bias" | "peep"
    arg: int | None = None  # for weights: which argument of the node it multiplies
    init: float | None = None  # a constant start value, else uniform ±1/sqrt(H)


@lru_cache(maxsize=4096)
def param_names(cell: Cell) -> dict[int, ParamNames]:
    """node index -> names of its parameters, in the order the canonical text shows them."""
    return layout(cell).params


def check_sizes(cell: Cell, input_size: int, hidden_size: int) -> None:
    if input_size < 1 or hidden_size < 1:
        raise ShapeError(f"sizes must be positive (got input={input_size}, hidden={hidden_size})")
    if cell.x_elementwise and input_size != hidden_size:
        raise ShapeError(
            f"cell '{cell.name}' uses x elementwise, so the input size must equal the hidden size "
            f"(got input={input_size}, hidden={hidden_size}); project the input to {hidden_size} first"
        )


def param_specs(cell: Cell, input_size: int, hidden_size: int) -> list[ParamSpec]:
    """Every parameter of ``cell`` in the order its text shows them, with shapes for these sizes."""
    check_sizes(cell, input_size, hidden_size)
    H = hidden_size
    specs: list[ParamSpec] = []
    for k, pn in param_names(cell).items():
        node = cell.nodes[k]
        if node.op is Op.LINEAR:
            for i in pn.printed:
                rows = input_size if cell.nodes[node.args[i]].op is Op.INPUT else H
                specs.append(ParamSpec(pn.weights[i], (rows, H), k, "weight", arg=i))
            bias = node.attr("bias")
            assert pn.bias is not None
            specs.append(ParamSpec(pn.bias, (H,), k, "bias", init=None if bias is None else float(bias)))
        else:
            assert pn.peep is not None
            specs.append(ParamSpec(pn.peep, (H,), k, "peep"))
    return specs


def parameter_count(cell: Cell, input_size: int, hidden_size: int) -> int:
    return sum(int(np.prod(s.shape)) for s in param_specs(cell, input_size, hidden_size))


def init_params(
    cell: Cell,
    input_size: int,
    hidden_size: int,
    rng: np.random.Generator,
    dtype: type | np.dtype = np.float64,
    scale: float = 1.0,
) -> dict[str, np.ndarray]:
    """Fresh parameters, drawn from ``rng`` in ``param_specs`` order: U(±scale/sqrt(H)) unless a hint says."""
    bound = scale / np.sqrt(hidden_size)
    out: dict[str, np.ndarray] = {}
    for spec in param_specs(cell, input_size, hidden_size):
        if spec.init is not None:
            out[spec.name] = np.full(spec.shape, spec.init, dtype=dtype)
        else:
            out[spec.name] = rng.uniform(-bound, bound, size=spec.shape).astype(dtype)
    return out
