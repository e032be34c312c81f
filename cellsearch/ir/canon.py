"""Canonical form and structural hash.

``canonicalize`` turns any valid node list into the one ``Cell`` that every equivalent text maps to:
identities removed, constants folded, equal pure sub-expressions merged, dead code dropped, and the
nodes put in a canonical topological order. The order comes from colours found by iterated
refinement (Weisfeiler-Lehman style): a node's colour hashes its op and attributes, its arguments'
colours (sorted for commutative ops) and its consumers' colours. So renaming temporaries, swapping
operands of ``+``/``*``/``linear``, reordering independent lines and dead code all leave the
canonical form, and therefore the hash, unchanged. Two ``linear`` nodes with the same arguments
stay distinct: each owns its own weights.
"""

from __future__ import annotations

import hashlib
import heapq
import math
import re
from collections.abc import Callable, Sequence

from ..errors import IRError
from .cell import Cell, Node, arity_ok, make_attrs
from .ops import LEAVES, OP_INFO, PURE, Op

ANONYMOUS = re.compile(r"t\d+$")
RESERVED = frozenset({"x", "state", "return"}) | {info.dsl for info in OP_INFO.values() if info.dsl and info.dsl.isidentifier()}


#: ``canonicalize`` computes the tie-breaking colours only where two nodes share a colour (tests turn
#: this off to check that the order is the same either way)
_SKIP_UNUSED_TIE_BREAKERS = True


def _h(*parts: object) -> bytes:
    return hashlib.blake2b(repr(parts).encode(), digest_size=16).digest()


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v)) if v >= 0 else math.exp(v) / (1.0 + math.exp(v))


_FOLD: dict[Op, Callable[..., float]] = {
    Op.ADD: lambda a, b: a + b,
    Op.SUB: lambda a, b: a - b,
    Op.MUL: lambda a, b: a * b,
    Op.BLEND: lambda a, b, g: g * a + (1.0 - g) * b,
    Op.SIGMOID: _sigmoid,
    Op.TANH: math.tanh,
    Op.RELU: lambda a: max(a, 0.0),
}


def check_topological(nodes: Sequence[Node]) -> None:
    for k, node in enumerate(nodes):
        if not arity_ok(node.op, len(node.args)):
            raise IRError(f"node {k} ({node.op.name}) has {len(node.args)} arguments; expected {OP_INFO[node.op].arity}")
        for a in node.args:
            if not 0 <= a < k:
                raise IRError(
                    f"node {k} ({node.op.name}) reads node {a}: arguments must come earlier (a cycle or a forward reference)"
                )


def _simplify(nodes: Sequence[Node], roots: list[int]) -> tuple[list[Node], list[int]]:
    """Remove identities, fold constants, merge equal pure nodes. Returns new nodes and root map."""
    out: list[Node] = []
    where: list[int] = []  # old index -> new index
    seen: dict[tuple[object, ...], int] = {}
    for node in nodes:
        args = tuple(where[a] for a in node.args)
        if node.op is Op.IDENTITY:
            target = args[0]
            if node.label and out[target].label is None and not out[target].is_leaf:
                out[target] = out[target].replace(label=node.label)
            where.append(target)
            continue
        if node.op in _FOLD and all(out[a].op is Op.CONST for a in args):
            value = float(_FOLD[node.op](*(out[a].attr("value") for a in args)))
            node = Node(Op.CONST, (), make_attrs(value=value))
            args = ()
        if OP_INFO[node.op].commutative:
            args = tuple(sorted(args))
        node = node.replace(args=args)
        if node.op in PURE or node.op in LEAVES:
            key = (node.op, args, node.attrs)
            if key in seen:
                k = seen[key]
                if out[k].label is None and node.label and not node.is_leaf:
                    out[k] = out[k].replace(label=node.label)
                where.append(k)
                continue
            seen[key] = len(out)
        out.append(node)
        where.append(len(out) - 1)
    return out, [where[r] for r in roots]


def _live(nodes: Sequence[Node], roots: Sequence[int]) -> list[bool]:
    live = [False] * len(nodes)
    for r in roots:
        live[r] = True
    for k in range(len(nodes) - 1, -1, -1):
        if live[k]:
            for a in nodes[k].args:
                live[a] = True
    return live


def colours(nodes: Sequence[Node], states: Sequence[str], updates: Sequence[int], output: int, names: str = "") -> list[bytes]:
    """Refined structural colour of each node. Labels and state names are ignored: a state is
    known by its place in the graph, its previous value (a STATE leaf) linked to its update.
    ``names="states"`` counts state names, ``names="all"`` labels too (both used only to order
    nodes that are structurally alike)."""
    n = len(nodes)
    uses: list[list[tuple[int, str]]] = [[] for _ in range(n)]
    for k, node in enumerate(nodes):
        comm = OP_INFO[node.op].commutative
        for pos, a in enumerate(node.args):
            uses[a].append((k, "*" if comm else str(pos)))
    leaf = {node.attr("name"): k for k, node in enumerate(nodes) if node.op is Op.STATE}
    links: list[list[tuple[str, int]]] = [[] for _ in range(n)]  # (kind, node) pairs that tie a state together
    for s, u in zip(states, updates, strict=True):
        links[u].append(("update", leaf.get(s, -1)))
        if s in leaf:
            links[leaf[s]].append(("read", u))
    tags: list[list[str]] = [[] for _ in range(n)]
    tags[output].append("output")
    colour = [_h("state") if node.op is Op.STATE else _h(node.op.value, node.attrs) for node in nodes]
    if names:
        colour = [_h(c, node.label if names == "all" else None, node.attr("name")) for c, node in zip(colour, nodes, strict=True)]
    distinct = len(set(colour))
    for _ in range(n + 2):
        linked = [sorted(_h(kind, colour[j] if j >= 0 else b"") for kind, j in links[k]) for k in range(n)]
        up: list[bytes] = []
        for k, node in enumerate(nodes):
            args = [up[a] for a in node.args]
            if OP_INFO[node.op].commutative:
                args.sort()
            up.append(_h(colour[k], args, linked[k]))
        down: list[bytes] = [b""] * n
        for k in range(n - 1, -1, -1):
            ctx = sorted(_h(down[c], up[c], pos) for c, pos in uses[k])
            down[k] = _h(tags[k], ctx)
        colour = [_h(u, d) for u, d in zip(up, down, strict=True)]
        now = len(set(colour))
        if now == distinct:
            break
        distinct = now
    return colour


def _normalise_labels(nodes: list[Node], states: Sequence[str], updates: Sequence[int]) -> list[Node]:
    """Labels: none on leaves, none anonymous (t0, t1, ...), unique, and a state name only on that
    state's update; an unlabelled update takes its state's name."""
    owner: dict[str, int] = {}
    for s, u in zip(states, updates, strict=True):
        owner.setdefault(s, u)
    taken: set[str] = set()
    out = []
    for k, node in enumerate(nodes):
        label = node.label
        if label is not None and (
            node.is_leaf
            or ANONYMOUS.match(label)
            or label in RESERVED
            or not label.isidentifier()
            or label in taken
            or (label in owner and owner[label] != k)
        ):
            label = None
        if label is None and not node.is_leaf:
            label = next((s for s in states if owner.get(s) == k and s not in taken), None)
        if label is not None:
            taken.add(label)
        out.append(node.replace(label=label))
    return out


def canonicalize(
    nodes: Sequence[Node],
    states: Sequence[str],
    updates: Sequence[int],
    output: int,
    name: str = "cell",
) -> Cell:
    """The canonical ``Cell`` for a node list (any topological order). Raises ``IRError``."""
    if len(states) != len(updates):
        raise IRError(f"{len(states)} states but {len(updates)} updates")
    if len(set(states)) != len(states):
        raise IRError(f"a state is declared twice: {list(states)}")
    check_topological(nodes)
    for r in (*updates, output):
        if not 0 <= r < len(nodes):
            raise IRError(f"root {r} is not a node (the cell has {len(nodes)})")
    order_states = sorted(range(len(states)), key=lambda i: states[i])
    states = [states[i] for i in order_states]
    updates = [updates[i] for i in order_states]
    simple, roots = _simplify(nodes, [*updates, output])
    updates, output = roots[:-1], roots[-1]
    live = _live(simple, roots)
    keep = [k for k in range(len(simple)) if live[k]]
    remap = {old: new for new, old in enumerate(keep)}
    pruned = [simple[k].replace(args=tuple(remap[a] for a in simple[k].args)) for k in keep]
    updates = [remap[u] for u in updates]
    output = remap[output]
    pruned = _normalise_labels(pruned, states, updates)

    colour = colours(pruned, states, updates, output)
    if _SKIP_UNUSED_TIE_BREAKERS and len(set(colour)) == len(colour):
        # every node's colour is its own, so the heap's keys differ in their first element and the
        # tie-breakers below are never compared: not computed (two thirds of the work, the same order)
        by_state = by_label = [b""] * len(pruned)
    else:
        by_state = colours(pruned, states, updates, output, names="states")
        by_label = colours(pruned, states, updates, output, names="all")
    # Kahn's algorithm. Ties are broken by colour, then by where the arguments were placed (so
    # equal branches are laid out consistently), then by the state names and then the labels around
    # a node, then by position.
    waiting = [len(set(node.args)) for node in pruned]
    readers: list[set[int]] = [set() for _ in pruned]
    for k, node in enumerate(pruned):
        for a in node.args:
            readers[a].add(k)
    placed: dict[int, int] = {}

    def key(k: int) -> tuple[bytes, tuple[int, ...], bytes, bytes, int]:
        args = [placed[a] for a in pruned[k].args]
        if OP_INFO[pruned[k].op].commutative:
            args.sort()
        return (colour[k], tuple(args), by_state[k], by_label[k], k)

    heap = [key(k) for k in range(len(pruned)) if waiting[k] == 0]
    heapq.heapify(heap)
    order: list[int] = []
    while heap:
        k = heapq.heappop(heap)[-1]
        placed[k] = len(order)
        order.append(k)
        for r in readers[k]:
            waiting[r] -= 1
            if waiting[r] == 0:
                heapq.heappush(heap, key(r))
    pos = {old: new for new, old in enumerate(order)}
    final = []
    for old in order:
        node = pruned[old]
        args = tuple(pos[a] for a in node.args)
        if OP_INFO[node.op].commutative:
            args = tuple(sorted(args))
        final.append(node.replace(args=args))
    new_updates = tuple(pos[u] for u in updates)
    return Cell(tuple(final), tuple(states), new_updates, pos[output], name=name)


def recanonicalize(cell: Cell) -> Cell:
    return canonicalize(cell.nodes, cell.states, cell.updates, cell.output, cell.name)


def serialise(cell: Cell) -> tuple[object, ...]:
    """The structure of a canonical cell without names (labels, state names), the input of the hash.

    States are numbered by the canonical positions of their update and of their previous value."""
    leaf = cell.state_nodes
    order = sorted(range(len(cell.states)), key=lambda i: (cell.updates[i], leaf.get(cell.states[i], -1), cell.states[i]))
    number = {cell.states[i]: j for j, i in enumerate(order)}
    body = tuple((n.op.value, (("state", number[n.attr("name")]),) if n.op is Op.STATE else n.attrs, n.args) for n in cell.nodes)
    return (body, tuple(cell.updates[i] for i in order), cell.output)


def structural_hash(cell: Cell) -> str:
    canon = recanonicalize(cell)
    return hashlib.blake2b(repr(serialise(canon)).encode(), digest_size=16).hexdigest()
