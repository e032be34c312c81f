"""Variation operators of the search: a genome is a :class:`~cellsearch.ir.Cell`.

Every operator takes an explicit ``numpy.random.Generator`` and returns a valid, canonical cell or
``None``. It edits a mutable copy of the parent's graph (:class:`Draft`: nodes may be appended and
rewired freely), which :meth:`Draft.finish` sorts topologically (a cycle rejects the draw), checks
with the validator, canonicalizes and checks again. A draw that fails, or gives back the parent's
structure, is redrawn with new random choices, up to ``DRAWS`` times.

- ``swap_activation``: one of tanh/sigmoid/relu becomes another of the three.
- ``swap_arith``: one ``+ - *`` becomes another of the three.
- ``insert_activation``: ``v`` read by one reader (or as an update or the output) becomes ``act(v)``.
- ``insert_gate``: such a ``v`` becomes ``v * g`` or ``blend(v, w, g)`` with a new gate
  ``g = sigmoid(linear(...))`` over ``x``, states or earlier values and ``w`` a state or an earlier value.
- ``remove_node``: every reader of a node reads one of its arguments instead (bypass).
- ``add_linear_input`` / ``remove_linear_input``: one argument more or less for a ``linear``.
- ``add_state``: a new state, updated to an existing value, read by a ``linear`` or combined (``+``/``*``)
  into a value; ``drop_state``: a state goes, its previous value read as another state's or its own update.
- ``graft`` (crossover): one state's update subgraph of parent ``b`` replaces the update of a state of
  parent ``a`` (or, half the time, any value's subgraph of ``b`` replaces any value of ``a``), its
  leaves mapped onto ``a``'s (``x`` to ``x``, states by name, other states to one of ``a``'s).

Children use ``x`` only inside ``linear`` s (so input size may differ from hidden size) unless a
parent already uses it elementwise or ``NEW_X_ELEMENTWISE`` is set. Sizes are bounded: a child with
more than ``MAX_NODES`` non-leaf nodes (and more than its parent) or more than ``MAX_STATES`` states
is rejected. All choices come from the generator, over sorted lists, so the same seed gives the
same children. Mutants are named ``"mutant"``, crossover children ``"offspring"`` (a name is not
part of the hash).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..errors import IRError
from ..ir.canon import canonicalize
from ..ir.cell import Cell, Node, make_attrs
from ..ir.ops import BINARY, Op
from ..ir.random import STATE_NAMES
from ..ir.validate import problems

#: most non-leaf nodes a child may have (unless its parent already had more)
MAX_NODES = 48
#: most states a child may have
MAX_STATES = len(STATE_NAMES)
#: random draws an operator makes before it gives up and returns None
DRAWS = 8
#: whether a child may use ``x`` outside a ``linear`` (which needs input size == hidden size) when
#: no parent does; off by default, so the search keeps the input projection unless a parent dropped it
NEW_X_ELEMENTWISE = False
#: how often a crossover draw exchanges a state's whole update (else any value for any value)
STATE_GRAFT = 0.5
#: the activations an activation may be swapped to or inserted (identity is what removing one does)
ACTIVATION_KINDS = (Op.TANH, Op.SIGMOID, Op.RELU)
ARITH_KINDS = (Op.ADD, Op.SUB, Op.MUL)
MUTANT = "mutant"
OFFSPRING = "offspring"

#: where a value is used: ("arg", reader, slot), ("update", state position, 0) or ("output", 0, 0)
Use = tuple[str, int, int]


class Draft:
    """A mutable copy of a cell's graph. Arguments may point anywhere while it is edited."""

    def __init__(self, cell: Cell, x_elementwise: bool = False) -> None:
        self.parent = cell
        self.x_elementwise = x_elementwise or cell.x_elementwise  # may the child use x elementwise?
        self.nodes: list[Node] = list(cell.nodes)
        self.states: list[str] = list(cell.states)
        self.updates: list[int] = list(cell.updates)
        self.output = cell.output

    def add(self, op: Op, args: Sequence[int] = (), **attrs: Any) -> int:
        self.nodes.append(Node(op, tuple(args), make_attrs(**attrs)))
        return len(self.nodes) - 1

    def input(self) -> int:
        for k, node in enumerate(self.nodes):
            if node.op is Op.INPUT:
                return k
        return self.add(Op.INPUT)

    def leaf(self, state: str) -> int:
        """The node of ``state``'s previous value (made when missing)."""
        for k, node in enumerate(self.nodes):
            if node.op is Op.STATE and node.attr("name") == state:
                return k
        return self.add(Op.STATE, name=state)

    def uses(self, k: int) -> list[Use]:
        out: list[Use] = [("arg", r, slot) for r, node in enumerate(self.nodes) for slot, a in enumerate(node.args) if a == k]
        out += [("update", i, 0) for i, u in enumerate(self.updates) if u == k]
        if self.output == k:
            out.append(("output", 0, 0))
        return out

    def redirect(self, use: Use, new: int) -> None:
        kind, where, slot = use
        if kind == "arg":
            node = self.nodes[where]
            args = list(node.args)
            args[slot] = new
            self.nodes[where] = node.replace(args=tuple(args))
        elif kind == "update":
            self.updates[where] = new
        else:
            self.output = new

    def replace_all(self, old: int, new: int) -> None:
        for use in self.uses(old):
            self.redirect(use, new)

    def finish(self, name: str = MUTANT) -> Cell | None:
        """The canonical cell, or None when the graph has a cycle, is invalid or is too big."""
        roots = [*self.updates, self.output]
        ordered = _toposort(self.nodes, roots)
        if ordered is None:
            return None
        nodes, new_roots = ordered
        updates, output = new_roots[:-1], new_roots[-1]
        limit = max(MAX_NODES, inner_count(self.parent))
        if len(self.states) > MAX_STATES or sum(not n.is_leaf for n in nodes) > limit:
            return None  # (counted before equal nodes merge: a child at the limit may be refused)
        if problems(nodes, self.states, updates, output):
            return None
        try:
            cell = canonicalize(nodes, self.states, updates, output, name=name)
        except IRError:
            return None
        if problems(cell.nodes, cell.states, cell.updates, cell.output):
            return None
        if cell.x_elementwise and not (self.x_elementwise or NEW_X_ELEMENTWISE):
            return None
        return cell


def inner_count(cell: Cell) -> int:
    """The number of non-leaf nodes (the size bounded by ``MAX_NODES``)."""
    return sum(not n.is_leaf for n in cell.nodes)


def _toposort(nodes: Sequence[Node], roots: Sequence[int]) -> tuple[list[Node], list[int]] | None:
    """The nodes that the roots need, arguments first (ties by index); None on a cycle."""
    live = [False] * len(nodes)
    stack = list(roots)
    while stack:
        k = stack.pop()
        if not live[k]:
            live[k] = True
            stack.extend(nodes[k].args)
    ids = [k for k in range(len(nodes)) if live[k]]
    waiting = {k: len(set(nodes[k].args)) for k in ids}
    readers: dict[int, list[int]] = {k: [] for k in ids}
    for k in ids:
        for a in sorted(set(nodes[k].args)):
            readers[a].append(k)
    heap = [k for k in ids if waiting[k] == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        k = heapq.heappop(heap)
        order.append(k)
        for r in readers[k]:
            waiting[r] -= 1
            if waiting[r] == 0:
                heapq.heappush(heap, r)
    if len(order) < len(ids):
        return None
    pos = {old: new for new, old in enumerate(order)}
    return [nodes[k].replace(args=tuple(pos[a] for a in nodes[k].args)) for k in order], [pos[r] for r in roots]


# ---- small helpers over a (canonical, topologically ordered) cell ----


def _pick(rng: np.random.Generator, items: Sequence[Any]) -> Any:
    return items[int(rng.integers(len(items)))]


def _vector_nodes(cell: Cell) -> list[int]:
    """Every node but constants."""
    return [k for k, n in enumerate(cell.nodes) if n.op is not Op.CONST]


def _leaves(cell: Cell) -> list[int]:
    """``x`` and the states' previous values."""
    return [k for k, n in enumerate(cell.nodes) if n.op in (Op.INPUT, Op.STATE)]


def _earlier(cell: Cell, before: int | None) -> list[int]:
    """Non-leaf, non-constant nodes that cannot depend on node ``before`` (all of them when None)."""
    end = len(cell.nodes) if before is None else before
    return [k for k in range(end) if not cell.nodes[k].is_leaf]


def _reader(use: Use) -> int | None:
    """The node that a use sits in (None for an update or the output: any value may go there)."""
    return use[1] if use[0] == "arg" else None


def _source(rng: np.random.Generator, leaves: list[int], inner: list[int], exclude: Sequence[int] = ()) -> int | None:
    """A leaf (half the time, when there is one) or an inner node, never one of ``exclude``."""
    leaves = [k for k in leaves if k not in exclude]
    inner = [k for k in inner if k not in exclude]
    if leaves and (not inner or rng.random() < 0.5):
        return int(_pick(rng, leaves))
    if inner:
        return int(_pick(rng, inner))
    return None


def _x_in_linear_only(cell: Cell) -> bool:
    """True when edits must not put ``x`` anywhere but in a ``linear`` (see ``NEW_X_ELEMENTWISE``)."""
    return not (cell.x_elementwise or NEW_X_ELEMENTWISE)


def _value_use(rng: np.random.Generator, cell: Cell, draft: Draft) -> tuple[int, Use] | None:
    """A non-constant value and one of its uses (not ``x`` while it must stay in ``linear`` s)."""
    values = _vector_nodes(cell)
    if _x_in_linear_only(cell):
        values = [k for k in values if cell.nodes[k].op is not Op.INPUT]
    v = int(_pick(rng, values))
    uses = draft.uses(v)
    if not uses:
        return None
    return v, _pick(rng, uses)


def _draws(cell: Cell, rng: np.random.Generator, draw: Callable[[Draft, np.random.Generator], bool]) -> Cell | None:
    """Up to ``DRAWS`` edits of fresh drafts; the first valid child whose hash differs from the parent's."""
    for _ in range(DRAWS):
        draft = Draft(cell)
        if not draw(draft, rng):
            continue
        child = draft.finish()
        if child is not None and child.hash != cell.hash:
            return child
    return None


# ---- the mutations ----


def swap_activation(cell: Cell, rng: np.random.Generator) -> Cell | None:
    """One activation (tanh, sigmoid, relu) becomes another of them."""
    sites = [k for k, n in enumerate(cell.nodes) if n.op in ACTIVATION_KINDS]
    if not sites:
        return None

    def draw(d: Draft, rng: np.random.Generator) -> bool:
        k = int(_pick(rng, sites))
        op = _pick(rng, [a for a in ACTIVATION_KINDS if a is not d.nodes[k].op])
        d.nodes[k] = d.nodes[k].replace(op=op)
        return True

    return _draws(cell, rng, draw)


def swap_arith(cell: Cell, rng: np.random.Generator) -> Cell | None:
    """One ``+``, ``-`` or ``*`` becomes another of them (never ``a - a``)."""
    sites = [k for k, n in enumerate(cell.nodes) if n.op in BINARY]
    if not sites:
        return None

    def draw(d: Draft, rng: np.random.Generator) -> bool:
        k = int(_pick(rng, sites))
        node = d.nodes[k]
        kinds = [a for a in ARITH_KINDS if a is not node.op and not (a is Op.SUB and node.args[0] == node.args[1])]
        op = _pick(rng, kinds)
        args = node.args
        if op is Op.SUB and rng.random() < 0.5:
            args = args[::-1]
        d.nodes[k] = node.replace(op=op, args=args)
        return True

    return _draws(cell, rng, draw)


def insert_activation(cell: Cell, rng: np.random.Generator) -> Cell | None:
    """A value ``v`` becomes ``act(v)`` for one of its readers (or as an update, or as the output)."""

    def draw(d: Draft, rng: np.random.Generator) -> bool:
        picked = _value_use(rng, cell, d)
        if picked is None:
            return False
        v, use = picked
        op = _pick(rng, [a for a in ACTIVATION_KINDS if a is not d.nodes[v].op])
        d.redirect(use, d.add(op, (v,)))
        return True

    return _draws(cell, rng, draw)


def insert_gate(cell: Cell, rng: np.random.Generator) -> Cell | None:
    """A value ``v`` becomes ``v * g`` or ``blend(v, w, g)`` for one of its readers, with a new gate
    ``g = sigmoid(linear(s1[, s2]))`` over ``x``, states or values computed before that reader."""
    leaves = _leaves(cell)

    def draw(d: Draft, rng: np.random.Generator) -> bool:
        picked = _value_use(rng, cell, d)
        if picked is None:
            return False
        v, use = picked
        inner = _earlier(cell, _reader(use))
        sources: list[int] = []
        for _ in range(1 if rng.random() < 0.5 else 2):
            s = _source(rng, leaves, [*inner, v] if v not in leaves else inner, exclude=sources)
            if s is not None:
                sources.append(s)
        if not sources:
            return False
        gate = d.add(Op.SIGMOID, (d.add(Op.LINEAR, sources),))
        if rng.random() < 0.5:
            new = d.add(Op.MUL, (v, gate))
        else:
            states = [k for k in leaves if cell.nodes[k].op is Op.STATE]
            w = _source(rng, states, inner, exclude=[v])
            if w is None:
                return False
            new = d.add(Op.BLEND, (v, w, gate))
        d.redirect(use, new)
        return True

    return _draws(cell, rng, draw)


def remove_node(cell: Cell, rng: np.random.Generator) -> Cell | None:
    """Bypass a node: everything that reads it reads one of its arguments instead."""
    sites = [k for k, n in enumerate(cell.nodes) if not n.is_leaf]
    if not sites:
        return None

    def draw(d: Draft, rng: np.random.Generator) -> bool:
        k = int(_pick(rng, sites))
        args = sorted(set(d.nodes[k].args))
        if _x_in_linear_only(cell):
            args = [a for a in args if d.nodes[a].op is not Op.INPUT]
        if not args:
            return False
        d.replace_all(k, int(_pick(rng, args)))
        return True

    return _draws(cell, rng, draw)


def add_linear_input(cell: Cell, rng: np.random.Generator) -> Cell | None:
    """One more argument for a ``linear``: ``x``, a state or a value computed before it."""
    sites = [k for k, n in enumerate(cell.nodes) if n.op is Op.LINEAR]
    if not sites:
        return None
    leaves = _leaves(cell)

    def draw(d: Draft, rng: np.random.Generator) -> bool:
        k = int(_pick(rng, sites))
        node = d.nodes[k]
        s = _source(rng, leaves, _earlier(cell, k), exclude=node.args)
        if s is None:
            return False
        d.nodes[k] = node.replace(args=(*node.args, s))
        return True

    return _draws(cell, rng, draw)


def remove_linear_input(cell: Cell, rng: np.random.Generator) -> Cell | None:
    """One argument fewer for a ``linear`` that has two or more."""
    sites = [k for k, n in enumerate(cell.nodes) if n.op is Op.LINEAR and len(n.args) >= 2]
    if not sites:
        return None

    def draw(d: Draft, rng: np.random.Generator) -> bool:
        k = int(_pick(rng, sites))
        node = d.nodes[k]
        drop = int(rng.integers(len(node.args)))
        d.nodes[k] = node.replace(args=node.args[:drop] + node.args[drop + 1 :])
        return True

    return _draws(cell, rng, draw)


def add_state(cell: Cell, rng: np.random.Generator) -> Cell | None:
    """A new state (the first free name of ``STATE_NAMES``) updated to an existing value and read
    either as a new argument of a ``linear`` or combined into a value (``v + s``, ``v * s``)."""
    if len(cell.states) >= MAX_STATES:
        return None
    name = next(s for s in STATE_NAMES if s not in cell.states)
    inner = _earlier(cell, None)
    fresh = [k for k in inner if k not in cell.updates]
    linears = [k for k, n in enumerate(cell.nodes) if n.op is Op.LINEAR]
    if not inner:
        return None

    def draw(d: Draft, rng: np.random.Generator) -> bool:
        update = int(_pick(rng, fresh if fresh and rng.random() < 0.8 else inner))
        leaf = d.add(Op.STATE, name=name)
        if linears and rng.random() < 0.5:
            k = int(_pick(rng, linears))
            d.nodes[k] = d.nodes[k].replace(args=(*d.nodes[k].args, leaf))
        else:
            picked = _value_use(rng, cell, d)
            if picked is None:
                return False
            v, use = picked
            d.redirect(use, d.add(Op.ADD if rng.random() < 0.5 else Op.MUL, (v, leaf)))
        d.states.append(name)
        d.updates.append(update)
        return True

    return _draws(cell, rng, draw)


def drop_state(cell: Cell, rng: np.random.Generator) -> Cell | None:
    """A state goes; what read its previous value reads another state's previous value, or the
    dropped state's own update (where that makes no cycle)."""
    if len(cell.states) < 2:
        return None

    def draw(d: Draft, rng: np.random.Generator) -> bool:
        i = int(rng.integers(len(d.states)))
        s = d.states[i]
        update = d.updates[i]
        others = [d.leaf(t) for t in d.states if t != s]
        replacement = int(_pick(rng, [*others, update]))
        if replacement == d.leaf(s):
            return False
        d.replace_all(d.leaf(s), replacement)
        del d.states[i], d.updates[i]
        return True

    return _draws(cell, rng, draw)


MUTATIONS: dict[str, Callable[[Cell, np.random.Generator], Cell | None]] = {
    "swap_activation": swap_activation,
    "swap_arith": swap_arith,
    "insert_activation": insert_activation,
    "insert_gate": insert_gate,
    "remove_node": remove_node,
    "add_linear_input": add_linear_input,
    "remove_linear_input": remove_linear_input,
    "add_state": add_state,
    "drop_state": drop_state,
}


def mutate(cell: Cell, rng: np.random.Generator, tries: int = 20) -> tuple[Cell, str]:
    """Apply a random mutation (uniform over ``MUTATIONS``) whose child is valid and has a hash
    different from the parent's; retry up to ``tries`` times; ``(child, operator name)``, or
    ``(cell, "identity")`` when every try failed."""
    names = sorted(MUTATIONS)
    for _ in range(tries):
        name = names[int(rng.integers(len(names)))]
        child = MUTATIONS[name](cell, rng)
        if child is not None and child.hash != cell.hash:
            return child, name
    return cell, "identity"


# ---- crossover ----


def _ancestors(cell: Cell, root: int) -> list[int]:
    """``root`` and every node it depends on, in the cell's (topological) order."""
    need = [False] * len(cell.nodes)
    need[root] = True
    for k in range(root, -1, -1):
        if need[k]:
            for a in cell.nodes[k].args:
                need[a] = True
    return [k for k in range(len(cell.nodes)) if need[k]]


def graft(a: Cell, b: Cell, rng: np.random.Generator) -> Cell | None:
    """One crossover draw: a copy of a subgraph of parent ``b`` replaces a value of parent ``a``
    (and every read of it). With probability ``STATE_GRAFT`` the subgraph is the one computing a
    state's update in ``b`` and it replaces the update of a state of ``a`` (usually the same state
    when ``a`` has it); otherwise any computed value of ``b`` replaces any computed value of ``a``.

    The copy's leaves are mapped onto ``a``: ``x`` to ``x``, a state to ``a``'s state of the same
    name, a state ``a`` lacks to one of ``a``'s states (drawn). Half the time, a value in the copy
    that ``b`` assigns to another state that ``a`` also has is taken from ``a`` instead (``a``'s
    new value of that state) rather than copied. The child is valid or None (not checked to differ
    from the parents)."""
    alias = {t: (t if t in a.states else str(_pick(rng, a.states))) for t in b.states}
    link = rng.random() < 0.5
    d = Draft(a, x_elementwise=b.x_elementwise)
    target: int | None = None  # the position of the state of ``a`` whose update is replaced
    if rng.random() < STATE_GRAFT:
        sb = str(_pick(rng, b.states))
        sa = sb if sb in a.states and rng.random() < 0.75 else str(_pick(rng, a.states))
        target = a.states.index(sa)
        root_b, old = b.update_of(sb), a.updates[target]
    else:
        root_b, old = int(_pick(rng, _earlier(b, None))), int(_pick(rng, _earlier(a, None)))
    b_updates = {u: t for t, u in sorted(zip(b.states, b.updates, strict=True), reverse=True)}
    where: dict[int, int] = {}
    for k in _ancestors(b, root_b):
        node = b.nodes[k]
        if node.op is Op.INPUT:
            where[k] = d.input()
        elif node.op is Op.STATE:
            where[k] = d.leaf(alias[node.attr("name")])
        elif link and k != root_b and k in b_updates and b_updates[k] in a.states:
            where[k] = a.update_of(b_updates[k])
        else:
            label = None if k == root_b or node.label in b.states else node.label
            d.nodes.append(Node(node.op, tuple(where[x] for x in node.args), node.attrs, label))
            where[k] = len(d.nodes) - 1
    new = where[root_b]
    if target is not None and a.nodes[old].is_leaf:  # updated to x or to another state's previous value
        d.updates[target] = new
    else:
        d.replace_all(old, new)
    return d.finish(name=OFFSPRING)


def crossover(a: Cell, b: Cell, rng: np.random.Generator, tries: int = 20) -> tuple[Cell, str] | None:
    """A valid child of ``a`` and ``b`` (see :func:`graft`) whose hash differs from both parents',
    as ``(child, "crossover")``; None when ``tries`` draws found none."""
    for _ in range(tries):
        child = graft(a, b, rng)
        if child is not None and child.hash not in (a.hash, b.hash):
            return child, "crossover"
    return None


__all__ = [
    "DRAWS",
    "MAX_NODES",
    "MAX_STATES",
    "MUTATIONS",
    "Draft",
    "add_linear_input",
    "add_state",
    "crossover",
    "drop_state",
    "graft",
    "inner_count",
    "insert_activation",
    "insert_gate",
    "mutate",
    "remove_linear_input",
    "remove_node",
    "swap_activation",
    "swap_arith",
]
