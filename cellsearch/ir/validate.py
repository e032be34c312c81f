"""The validator: what makes a graph a cell. Used by the parser (which adds line and column) and by
code that builds cells (the search's operators), which gets an ``IRError``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..errors import IRError
from .cell import Cell, Node
from .ops import LEAVES, Op


@dataclass(frozen=True)
class Problem:
    message: str
    node: int | None = None  # where it is, when a node is to blame
    state: str | None = None  # or which state


def problems(nodes: Sequence[Node], states: Sequence[str], updates: Sequence[int], output: int) -> list[Problem]:
    """Everything wrong with a node list (args must already point backwards)."""
    out: list[Problem] = []
    n = len(nodes)
    reads_io = [False] * n  # depends on the input or on a state
    for k, node in enumerate(nodes):
        if node.op is Op.STATE and node.attr("name") not in states:
            out.append(Problem(f"'{node.attr('name')}' is not a declared state", node=k))
        if node.op in (Op.INPUT, Op.STATE):
            reads_io[k] = True
        else:
            reads_io[k] = any(reads_io[a] for a in node.args)
        if node.op in (Op.LINEAR, Op.PEEP):
            for a in node.args:
                if nodes[a].op is Op.CONST:
                    out.append(Problem(f"{node.op.value}() needs a vector argument, not a constant", node=k))
    live = [False] * n
    for r in (*updates, output):
        live[r] = True
    for k in range(n - 1, -1, -1):
        if live[k]:
            for a in nodes[k].args:
                live[a] = True
    read_states = {node.attr("name") for k, node in enumerate(nodes) if node.op is Op.STATE and live[k]}
    for s, u in zip(states, updates, strict=True):
        node = nodes[u]
        if node.op is Op.STATE and node.attr("name") == s:
            out.append(Problem(f"state '{s}' is never updated (it is assigned its own previous value)", state=s))
        elif not reads_io[u]:
            out.append(Problem(f"the update of state '{s}' reads neither the input x nor any state", node=u, state=s))
    if nodes[output].op in LEAVES:
        what = {Op.INPUT: "the input x", Op.STATE: "a state's previous value", Op.CONST: "a constant"}[nodes[output].op]
        out.append(Problem(f"the cell returns {what}; it must return a value computed in the step", node=output))
    if not any(live[k] for k, node in enumerate(nodes) if node.op is Op.INPUT):
        out.append(Problem("the cell never reads its input x"))
    for s in states:
        if s not in read_states:
            out.append(
                Problem(
                    f"state '{s}' is never read, so it carries nothing from one step to the next; make it a temporary",
                    state=s,
                )
            )
    return out


def validate(cell: Cell) -> Cell:
    """Raise ``IRError`` naming the first problem; return the cell when it is valid."""
    found = problems(cell.nodes, cell.states, cell.updates, cell.output)
    if found:
        raise IRError(f"invalid cell '{cell.name}': {found[0].message}")
    return cell
