"""Parameters of a cell: names (from the layout), shapes (from I and H), count and initialisation.

Shapes: a ``linear`` weight that multiplies ``x`` is ``[I, H]``, one that multiplies an H-sized value
is ``[H, H]`` (``y = x @ W``, rows index the input); a bias is ``[H]`` (a ``linear(..., bias=none)``
has none); a peephole is ``[H]``.
Initialisation is uniform in ±1/sqrt(H) as in PyTorch, except a ``linear(..., bias=v)`` bias,
which starts at ``v``. Two options act on the gates found in the graph (:mod:`.gates`):
``gate_init="chrono"`` and ``forget_bias``; see :func:`init_params`.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import ShapeError
from .cell import Cell
from .gates import keep_gates
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
            if pn.bias is not None:  # a linear(..., bias=none) has none
                bias = node.attr("bias")
                specs.append(ParamSpec(pn.bias, (H,), k, "bias", init=None if bias is None else float(bias)))
        else:
            assert pn.peep is not None
            specs.append(ParamSpec(pn.peep, (H,), k, "peep"))
    return specs


def parameter_count(cell: Cell, input_size: int, hidden_size: int) -> int:
    return sum(int(np.prod(s.shape)) for s in param_specs(cell, input_size, hidden_size))


GATE_INITS = ("default", "chrono")


@dataclass(frozen=True)
class GateBiases:
    """The biases of ``cell``'s keep gates and of their separate input gates, by parameter name.

    ``keep`` maps a keep gate's bias to its sign (the kept fraction is ``sigmoid(sign * b + ...)``);
    ``input`` maps an input gate's bias to ``(sign, keep)``: its sign and the keep gate's bias it
    mirrors. Both are empty for a cell without keep gates. A gate whose only ``linear`` has no bias
    (``linear(..., bias=none)``) has nothing to set: :func:`~.gates.keep_gates` does not count it
    as a gate, so it is in neither.
    """

    keep: tuple[tuple[str, int], ...]
    input: tuple[tuple[str, int, str], ...]


@lru_cache(maxsize=4096)
def gate_biases(cell: Cell) -> GateBiases:
    names = param_names(cell)
    keep: dict[str, int] = {}
    inputs: dict[str, set[tuple[int, str]]] = {}
    for g in keep_gates(cell):
        bias = names[g.linear].bias
        if bias is None:  # keep_gates counts only linears with a bias; never here
            continue
        keep[bias] = g.sign
        for linear, sign in g.inputs:
            name = names[linear].bias
            if name is not None:
                inputs.setdefault(name, set()).add((sign, bias))
    # an input gate shared by keep gates is set only when they agree on what it mirrors
    chosen = tuple((name, *next(iter(v))) for name, v in sorted(inputs.items()) if len(v) == 1)
    return GateBiases(tuple(sorted(keep.items())), chosen)


def init_params(
    cell: Cell,
    input_size: int,
    hidden_size: int,
    rng: np.random.Generator,
    dtype: type | np.dtype = np.float64,
    scale: float = 1.0,
    *,
    gate_init: str = "default",
    chrono_tmax: float = 0.0,
    forget_bias: float = 0.0,
) -> dict[str, np.ndarray]:
    """Fresh parameters, drawn from ``rng`` in ``param_specs`` order: U(±scale/sqrt(H)) unless a hint says.

    ``gate_init="chrono"`` (Tallec & Ollivier 2018) starts each keep gate's bias (:func:`gate_biases`;
    a bias without a ``bias=`` hint) at ``sign * log(U[1, chrono_tmax - 1])`` per unit, so the gate
    starts keeping its state for ~1 to ``chrono_tmax`` steps, and the bias of that gate's separate
    input gate at minus the same value (the input gate starts closed as far as the keep gate starts
    open). The draw takes the place of the default one, from ``rng``, so every other parameter is
    bit-identical to ``gate_init="default"``'s. ``forget_bias`` is then added to every keep gate's bias
    (``sign * forget_bias``; hinted ones too). A cell without keep gates is initialised as by default.
    """
    if gate_init not in GATE_INITS:
        raise ValueError(f"gate_init must be one of {', '.join(GATE_INITS)} (got {gate_init!r})")
    bound = scale / np.sqrt(hidden_size)
    gates = gate_biases(cell) if gate_init != "default" or forget_bias != 0.0 else GateBiases((), ())
    keep = dict(gates.keep)
    chrono: dict[str, np.ndarray] = {}
    out: dict[str, np.ndarray] = {}
    specs = param_specs(cell, input_size, hidden_size)
    for spec in specs:
        if spec.init is not None:
            out[spec.name] = np.full(spec.shape, spec.init, dtype=dtype)
        elif gate_init == "chrono" and spec.name in keep:
            chrono[spec.name] = np.log(rng.uniform(1.0, max(chrono_tmax - 1.0, 1.0), size=spec.shape))
            out[spec.name] = (keep[spec.name] * chrono[spec.name]).astype(dtype)
        else:
            out[spec.name] = rng.uniform(-bound, bound, size=spec.shape).astype(dtype)
    hinted = {s.name for s in specs if s.init is not None}
    for name, sign, mirrors in gates.input:
        if mirrors in chrono and name not in hinted:
            out[name] = (-sign * chrono[mirrors]).astype(dtype)
    if forget_bias != 0.0:
        for name, sign in keep.items():
            out[name] = (out[name] + sign * forget_bias).astype(dtype)
    return out
