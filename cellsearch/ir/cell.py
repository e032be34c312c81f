"""The immutable cell graph: frozen ``Node`` s in a tuple, in topological order, and a ``Cell``.

Sequential assignment in the DSL is resolved by the parser: the IR is a pure DAG whose leaves are
``INPUT``, ``STATE`` (the previous step's value) and ``CONST``. ``Cell.updates[k]`` is the node that
holds the new value of ``Cell.states[k]``; ``Cell.output`` is the node the cell returns.

Labels (the names a user gave to values) are kept for printing and for naming parameters, but they
are not part of a cell's structure: the hash ignores them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from .ops import LEAVES, NO_BIAS, OP_INFO, Op

Attrs = tuple[tuple[str, Any], ...]


@dataclass(frozen=True)
class Node:
    op: Op
    args: tuple[int, ...] = ()
    attrs: Attrs = ()
    label: str | None = None

    def attr(self, key: str, default: Any = None) -> Any:
        for k, v in self.attrs:
            if k == key:
                return v
        return default

    def replace(self, **changes: Any) -> Node:
        """A copy with ``changes``; ``self`` when nothing changes."""
        if all(getattr(self, k) == v for k, v in changes.items()):
            return self
        return dataclasses.replace(self, **changes)

    @property
    def is_leaf(self) -> bool:
        return self.op in LEAVES

    @property
    def has_bias(self) -> bool:
        """True for a ``linear`` with a bias vector (every one but ``linear(..., bias=none)``)."""
        return self.op is Op.LINEAR and self.attr("bias") != NO_BIAS

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.attrs)
        lab = f", label={self.label!r}" if self.label else ""
        return f"Node({self.op.name}, {self.args}{extra}{lab})"


def make_attrs(**kw: Any) -> Attrs:
    return tuple(sorted((k, v) for k, v in kw.items() if v is not None))


@dataclass(frozen=True)
class Cell:
    """A recurrent cell: a DAG of nodes, the states it updates and the value it returns.

    ``states`` are sorted by name; ``updates`` is aligned with ``states``. Build cells with
    :func:`cellsearch.parse` or :func:`cellsearch.ir.canonicalize`, which put the nodes in
    canonical order; two cells compare equal when they have the same nodes, labels, states and output
    (``name`` is not compared).
    """

    nodes: tuple[Node, ...]
    states: tuple[str, ...]
    updates: tuple[int, ...]
    output: int
    name: str = field(default="cell", compare=False)

    # ---- derived facts (cached: the cell is immutable) ----
    @cached_property
    def hash(self) -> str:
        """Structural hash (blake2b hex): equal for cells that compute the same graph."""
        from .canon import structural_hash

        return structural_hash(self)

    @property
    def short_hash(self) -> str:
        return self.hash[:12]

    @cached_property
    def text(self) -> str:
        """The canonical text (with the author's names); ``parse(cell.text) == cell``."""
        from .layout import format_cell

        return format_cell(self)

    @cached_property
    def uses(self) -> tuple[tuple[int, ...], ...]:
        """For each node, the nodes that read it (one entry per argument slot)."""
        out: list[list[int]] = [[] for _ in self.nodes]
        for k, node in enumerate(self.nodes):
            for a in node.args:
                out[a].append(k)
        return tuple(tuple(u) for u in out)

    @cached_property
    def state_nodes(self) -> dict[str, int]:
        """state name -> index of its STATE leaf (absent when the old value is never read)."""
        return {n.attr("name"): k for k, n in enumerate(self.nodes) if n.op is Op.STATE}

    @cached_property
    def x_elementwise(self) -> bool:
        """True when ``x`` feeds anything but a ``linear`` (or becomes a state): then I must equal H."""
        for node in self.nodes:
            if node.op is not Op.LINEAR:
                if any(self.nodes[a].op is Op.INPUT for a in node.args):
                    return True
        return any(self.nodes[u].op is Op.INPUT for u in self.updates)

    def update_of(self, state: str) -> int:
        return self.updates[self.states.index(state)]

    def with_name(self, name: str) -> Cell:
        return dataclasses.replace(self, name=name)

    def __repr__(self) -> str:
        return f"<Cell {self.name} {self.short_hash} states={','.join(self.states)} nodes={len(self.nodes)}>"


def arity_ok(op: Op, nargs: int) -> bool:
    arity = OP_INFO[op].arity
    return nargs >= 1 if arity is None else nargs == arity
