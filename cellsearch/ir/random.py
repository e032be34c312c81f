"""Random valid cells, in the manner of NAS-Bench-NLP's generator.

``K`` intermediate nodes are drawn one at a time: a ``linear`` over 2 (p=0.8) or 3 arguments taken
from ``x``, the states and earlier nodes, always followed by an activation; or an elementwise
``blend``/``*``/``+`` (and, beyond NAS-Bench-NLP, ``-``, ``1 - a`` and ``peep``) over the states and
earlier nodes. Then ``n_states`` nodes, the last one among them, become the new states; the first
state (``h``) is the output. Work that reaches no state is dropped. Draws that break a rule (``x``
unread, a state unread, ...) are redrawn, so the result is always valid.
"""

from __future__ import annotations

import numpy as np

from ..errors import IRError
from .canon import canonicalize
from .cell import Cell, Node, make_attrs
from .ops import Op
from .validate import problems

STATE_NAMES = ("h", "c", "m", "n", "s")
#: relative weights of the node kinds (NAS-Bench-NLP: linear 3, blend 1, prod 1, sum 1)
DEFAULT_WEIGHTS: dict[str, float] = {
    "linear": 3.0,
    "blend": 1.0,
    "mul": 1.0,
    "add": 1.0,
    "sub": 0.5,
    "one_minus": 0.5,
    "peep": 0.5,
}
ACTIVATION_CHOICES = (Op.TANH, Op.SIGMOID, Op.RELU)


def random_cell(
    rng: np.random.Generator,
    n_states: int | None = None,
    n_nodes: int | None = None,
    weights: dict[str, float] | None = None,
    name: str = "random",
    max_tries: int = 1000,
) -> Cell:
    """A random valid cell. ``n_states`` defaults to 1-3 and ``n_nodes`` to 4-12, drawn from ``rng``."""
    weights = DEFAULT_WEIGHTS if weights is None else weights
    kinds = list(weights)
    probs = np.array([weights[k] for k in kinds], dtype=float)
    probs /= probs.sum()
    for _ in range(max_tries):
        S = int(rng.integers(1, 4)) if n_states is None else n_states
        K = int(rng.integers(4, 13)) if n_nodes is None else n_nodes
        if not 1 <= S <= len(STATE_NAMES) or K < S:
            raise IRError(f"need 1 <= n_states <= {len(STATE_NAMES)} and n_nodes >= n_states (got {S}, {K})")
        states = list(STATE_NAMES[:S])
        nodes: list[Node] = [Node(Op.INPUT)] + [Node(Op.STATE, attrs=make_attrs(name=s)) for s in states]
        one = None
        inner: list[int] = []
        usable = list(range(len(nodes)))  # x, the states, then each new node's value
        for _k in range(K):
            kind = kinds[int(rng.choice(len(kinds), p=probs))]
            vectors = usable[1:]  # everything but x
            if kind == "linear":
                n_args = 2 if rng.random() < 0.8 else 3
                pool = usable
                args = tuple(int(a) for a in rng.choice(pool, size=min(n_args, len(pool)), replace=False))
                nodes.append(Node(Op.LINEAR, args))
                act = ACTIVATION_CHOICES[int(rng.integers(len(ACTIVATION_CHOICES)))]
                nodes.append(Node(act, (len(nodes) - 1,)))
            elif kind in ("mul", "add", "sub"):
                a, b = (int(v) for v in rng.choice(vectors, size=2, replace=len(vectors) < 2))
                nodes.append(Node({"mul": Op.MUL, "add": Op.ADD, "sub": Op.SUB}[kind], (a, b)))
            elif kind == "blend":
                args = tuple(int(v) for v in rng.choice(vectors, size=3, replace=len(vectors) < 3))
                nodes.append(Node(Op.BLEND, args))
            elif kind == "one_minus":
                if one is None:
                    nodes.append(Node(Op.CONST, attrs=make_attrs(value=1.0)))
                    one = len(nodes) - 1
                nodes.append(Node(Op.SUB, (one, int(rng.choice(vectors)))))
            elif kind == "peep":
                nodes.append(Node(Op.PEEP, (int(rng.choice(vectors)),)))
            else:
                raise IRError(f"unknown node kind '{kind}' (known: {', '.join(DEFAULT_WEIGHTS)})")
            inner.append(len(nodes) - 1)
            usable.append(len(nodes) - 1)
        last = inner[-1]
        others = inner[:-1]
        picks = (
            [last] + [int(v) for v in rng.choice(others, size=S - 1, replace=False)]
            if S > 1 and len(others) >= S - 1
            else [last] * S
        )
        if len(set(picks)) < S:
            continue
        order = rng.permutation(S)
        updates = [picks[int(i)] for i in order]
        if problems(nodes, states, updates, updates[0]):
            continue
        cell = canonicalize(nodes, states, updates, updates[0], name=name)
        if not problems(cell.nodes, cell.states, cell.updates, cell.output):
            return cell
    raise IRError(f"no valid cell after {max_tries} draws (n_states={n_states}, n_nodes={n_nodes})")
