"""How a cell is written down: the canonical printer, and the parameter names that follow from it.

A node gets a line of its own when it has a label, is a state's update, is the output, or is read
more than once; everything else is written inline. Lines follow the sequential semantics of the DSL:
a line that reads a state's previous value comes before the line that assigns the state; where no
order allows that, the previous value is first copied to ``<state>_prev``.

Parameter names come from this layout: a parameterised node is named after its line and its site
in that line (``i.W_x``, ``i.W_h``, ``i.b``, ``i.p_c``; a second ``linear`` in line ``n`` is
``n.1``, so ``n.1.W_h``), and a weight after the argument it multiplies (``x``, a state, a named
value, or its position when the argument is an inline expression). A ``linear(..., bias=none)`` has
weights and no ``.b``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .cell import Cell
from .ops import NO_BIAS, Op

_PREC = {Op.ADD: 1, Op.SUB: 1, Op.MUL: 2}
_SYMBOL = {Op.ADD: "+", Op.SUB: "-", Op.MUL: "*"}
_RANK = {Op.INPUT: 0, Op.STATE: 1, Op.LINEAR: 2, Op.CONST: 4}


def format_number(v: float) -> str:
    if float(v).is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(float(v))


@dataclass(frozen=True)
class ParamNames:
    """Names of one parameterised node's parameters. ``weights[i]`` multiplies ``node.args[i]``."""

    weights: tuple[str, ...] = ()
    bias: str | None = None  # None for a peephole and for a linear(..., bias=none)
    peep: str | None = None
    printed: tuple[int, ...] = ()  # argument indices in the order the text shows them


@dataclass
class _Item:
    name: str
    node: int | None  # the node this line computes (None for a copy `s = name`)
    rhs: str = ""
    deps: set[int] = field(default_factory=set)  # indices of items that must come first
    reads_old: set[str] = field(default_factory=set)
    writes: str | None = None
    sites: list[int] = field(default_factory=list)  # parameterised nodes in printed order
    priority: float = 0.0


@dataclass
class Layout:
    lines: list[tuple[str, str]]  # (name, right-hand side), in order
    names: dict[int, str]  # materialised node -> its name
    aliases: dict[str, str]  # state -> name of the copy of its previous value
    output: str
    params: dict[int, ParamNames]

    def text(self, states: tuple[str, ...]) -> str:
        body = [f"state({', '.join(states)})"]
        body += [f"{name} = {rhs}" for name, rhs in self.lines]
        body.append(f"return {self.output}")
        return "\n".join(body) + "\n"


#: a value nested deeper than this inside one line gets a line of its own (Python's parser, which
#: reads the DSL, refuses deeply nested expressions, and people can't read them either)
MAX_INLINE_DEPTH = 8


def _materialised(cell: Cell, anonymous: bool) -> list[int]:
    updates = set(cell.updates)
    out: list[int] = []
    depth = [0] * len(cell.nodes)  # nesting depth of a node's inline expression
    for k, n in enumerate(cell.nodes):
        if n.is_leaf:
            continue
        depth[k] = 1 + max((depth[a] for a in n.args), default=0)
        if (
            k in updates
            or k == cell.output
            or len(cell.uses[k]) >= 2
            or (n.label and not anonymous)
            or depth[k] > MAX_INLINE_DEPTH
        ):
            out.append(k)
            depth[k] = 0
    return out


def layout(cell: Cell, *, anonymous: bool = False, rng: np.random.Generator | None = None) -> Layout:
    """Lay ``cell`` out as lines. ``anonymous`` ignores labels (temporaries become t0, t1, ...);
    ``rng`` picks a random valid line order instead of the canonical one (used by tests)."""
    nodes = cell.nodes
    mat = _materialised(cell, anonymous)
    first_state: dict[int, str] = {}
    for s, u in zip(cell.states, cell.updates, strict=True):
        first_state.setdefault(u, s)
    names: dict[int, str] = {}
    for k in mat:
        label = None if anonymous else nodes[k].label
        name = label or first_state.get(k)
        if name:
            names[k] = name
    taken = set(names.values()) | set(cell.states)
    unnamed = [k for k in mat if k not in names]
    for j, k in enumerate(unnamed):
        names[k] = f"t{j}"
    aliases: dict[str, str] = {}
    while True:
        result = _order(cell, mat, names, aliases, rng)
        if isinstance(result, str):  # stuck: copy this state's previous value first
            alias = f"{result}_prev"
            j = 2
            while alias in taken:
                alias, j = f"{result}_prev{j}", j + 1
            taken.add(alias)
            aliases[result] = alias
            continue
        items = result
        break
    for s in sorted(aliases):  # keep only the copies that are needed
        fewer = {k: v for k, v in aliases.items() if k != s}
        result = _order(cell, mat, names, fewer, rng)
        if not isinstance(result, str):
            aliases, items = fewer, result
    lines = [(aliases[s], s) for s in sorted(aliases)] + [(it.name, it.rhs) for it in items]
    params = _param_names(cell, items, names, aliases)
    return Layout(lines, names, aliases, names[cell.output], params)


def _render(cell: Cell, root: int, names: dict[int, str], aliases: dict[str, str], item: _Item) -> str:
    nodes = cell.nodes

    def leaf_or_name(k: int) -> str | None:
        node = nodes[k]
        if node.op is Op.INPUT:
            return "x"
        if node.op is Op.STATE:
            s = node.attr("name")
            if s not in aliases:
                item.reads_old.add(s)
            return aliases.get(s, s)
        if node.op is Op.CONST:
            return format_number(node.attr("value"))
        if k != root and k in names:
            item.deps.add(k)
            return names[k]
        return None

    def ordered(args: tuple[int, ...]) -> list[int]:
        return sorted(args, key=lambda a: (_RANK.get(nodes[a].op, 3), a))

    def go(k: int) -> tuple[str, int]:
        atom = leaf_or_name(k)
        if atom is not None:
            return atom, 3
        node = nodes[k]
        if node.op in (Op.LINEAR, Op.PEEP):
            item.sites.append(k)
        if node.op in _PREC:
            p = _PREC[node.op]
            a, b = ordered(node.args) if node.op is not Op.SUB else node.args
            ta, pa = go(a)
            tb, pb = go(b)
            if pa < p:
                ta = f"({ta})"
            if pb <= p:
                tb = f"({tb})"
            return f"{ta} {_SYMBOL[node.op]} {tb}", p
        args = ordered(node.args) if node.op is Op.LINEAR else list(node.args)
        inner = ", ".join(go(a)[0] for a in args)
        if node.op is Op.LINEAR and node.attr("bias") is not None:
            inner += f", bias={format_number(node.attr('bias')) if node.has_bias else NO_BIAS}"
        return f"{node.op.value}({inner})", 3

    return go(root)[0]


def _order(
    cell: Cell,
    mat: list[int],
    names: dict[int, str],
    aliases: dict[str, str],
    rng: np.random.Generator | None,
) -> list[_Item] | str:
    items: list[_Item] = []
    item_of: dict[int, int] = {}
    for k in mat:
        it = _Item(names[k], k, priority=float(k))
        it.rhs = _render(cell, k, names, aliases, it)
        if it.name in cell.states and cell.update_of(it.name) == k:
            it.writes = it.name
        item_of[k] = len(items)
        items.append(it)
    for s, u in zip(cell.states, cell.updates, strict=True):
        if u not in names:  # the update is a leaf: `b = a` (a's previous value) or `m = x`
            it = _Item(s, None, writes=s, priority=u + 0.5)
            it.rhs = _render(cell, u, names, aliases, it)
            items.append(it)
        elif names[u] != s:  # a copy line: `s = name`
            items.append(_Item(s, None, names[u], {u}, writes=s, priority=u + 0.5))
    writer = {it.writes: i for i, it in enumerate(items) if it.writes}
    before: list[set[int]] = [{item_of[d] for d in it.deps} for it in items]
    for i, it in enumerate(items):
        for s in it.reads_old:
            w = writer[s]
            if w != i:
                before[w].add(i)
    done: list[int] = []
    placed = [False] * len(items)
    while len(done) < len(items):
        ready = [i for i in range(len(items)) if not placed[i] and all(placed[j] for j in before[i])]
        if not ready:
            stuck = sorted(
                s for s, w in writer.items() if not placed[w] and any(not placed[j] for j in before[w] if s in items[j].reads_old)
            )
            return stuck[0]
        i = int(rng.choice(ready)) if rng is not None else min(ready, key=lambda i: items[i].priority)
        placed[i] = True
        done.append(i)
    return [items[i] for i in done]


def _param_names(cell: Cell, items: list[_Item], names: dict[int, str], aliases: dict[str, str]) -> dict[int, ParamNames]:
    nodes = cell.nodes
    out: dict[int, ParamNames] = {}

    def term(a: int, pos: int) -> str:
        node = nodes[a]
        if node.op is Op.INPUT:
            return "x"
        if node.op is Op.STATE:
            s = node.attr("name")
            return str(aliases.get(s, s))
        return names.get(a, str(pos))

    for it in items:
        counts = {Op.LINEAR: 0, Op.PEEP: 0}
        for k in it.sites:
            node = nodes[k]
            site = counts[node.op]
            counts[node.op] += 1
            prefix = it.name if site == 0 else f"{it.name}.{site}"
            if node.op is Op.LINEAR:
                printed = sorted(range(len(node.args)), key=lambda i: (_RANK.get(nodes[node.args[i]].op, 3), node.args[i]))
                weights = [""] * len(node.args)
                used: dict[str, int] = {}
                for pos, i in enumerate(printed):
                    t = term(node.args[i], pos)
                    n = used.get(t, 0)
                    used[t] = n + 1
                    weights[i] = f"{prefix}.W_{t}" + (f"_{n}" if n else "")
                out[k] = ParamNames(tuple(weights), bias=f"{prefix}.b" if node.has_bias else None, printed=tuple(printed))
            else:
                out[k] = ParamNames(peep=f"{prefix}.p_{term(node.args[0], 0)}")
    return out


def format_cell(cell: Cell, *, anonymous: bool = False, rng: np.random.Generator | None = None) -> str:
    """The cell as DSL text: canonical, unless ``rng`` shuffles the order of independent lines."""
    return layout(cell, anonymous=anonymous, rng=rng).text(cell.states)
