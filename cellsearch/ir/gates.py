"""Keep (forget) gates and their input gates, found in a cell's graph — never by parameter name.

A state's update is read as a signed sum of terms (through ``+``, ``-`` and ``blend(a, b, g)`` =
``g * a + (1 - g) * b``), each term a product of factors (through ``*``). A **keep gate** of state
``s`` is a term that is exactly ``gate * s_prev`` with a plus sign, where ``s_prev`` is the state's
previous value itself and ``gate`` is ``sigmoid(u)`` or ``1 - sigmoid(u)``: the gate decides how much
of the old value survives the step (an LSTM's ``f * c``, a GRU's ``blend(h, n, u)``, MGU's and MUT's
``blend(n, h, f)`` through ``1 - f``, JANET's ``sigmoid(s) * h``).

The gate is set by the bias of the one ``linear`` found in ``u`` through ``+`` and ``-`` (a ``peep``,
a constant, a raw ``x`` or a ``linear(..., bias=none)`` there carry no bias; a gate whose ``u`` holds
no ``linear`` with a bias, or more than one, is left out: it has no bias to set, or an ambiguous one
— SLIM LSTM2's ``sigmoid(linear(h, bias=none))`` is no keep gate). ``sign`` says which way that bias
moves the gate: the fraction kept is ``sigmoid(sign * b + ...)``.

The **input gate** of a keep gate is a sigmoid gate (again ``sigmoid(u)`` or ``1 - sigmoid(u)``)
that multiplies the candidate in another term of the same update (an LSTM's ``i * g``), when its
``linear`` differs from the keep gate's. Where both roles use one ``linear`` — a GRU's
``(1 - u) * n``, CIFG's ``i * z`` with ``c * (1 - i)``, SRU's and JANET's — the input is coupled to
the keep gate and there is no separate input gate.

A ``linear`` claimed by two keep gates with opposite signs, or by a keep gate and another one's
input gate, is left out. Cells without a keep gate (``rnn``, ``indrnn``, ``nfg``'s ``c = c + i * z``
whose old value passes ungated) get an empty tuple.

:func:`gate_biases` uses these to start the biases the chrono way (Tallec & Ollivier 2018) or to add
a forget bias; see ``init_params``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from .cell import Cell
from .ops import Op

__all__ = ["KeepGate", "keep_gates"]

Factor = tuple[int, bool]  # (node, complemented: the factor is 1 - node)


@dataclass(frozen=True)
class KeepGate:
    """A gate on how much of ``state``'s old value survives a step.

    ``gate`` is the SIGMOID node, ``linear`` the LINEAR node whose bias sets it and ``sign`` the
    direction (kept fraction ``sigmoid(sign * bias + ...)``). ``inputs`` are the separate input gates
    of the same update as ``(linear, sign)`` pairs, with sign defined the same way for the fraction
    of the candidate let in.
    """

    state: str
    gate: int
    linear: int
    sign: int
    inputs: tuple[tuple[int, int], ...] = ()


def _terms(cell: Cell, k: int, sign: int, out: list[tuple[int, list[Factor]]]) -> None:
    """The signed product terms of node ``k``'s additive expansion."""
    node = cell.nodes[k]
    if node.op is Op.ADD:
        _terms(cell, node.args[0], sign, out)
        _terms(cell, node.args[1], sign, out)
    elif node.op is Op.SUB and not _is_one(cell, node.args[0]):
        _terms(cell, node.args[0], sign, out)
        _terms(cell, node.args[1], -sign, out)
    elif node.op is Op.BLEND:
        a, b, g = node.args
        out.append((sign, [(g, False), *_factors(cell, a)]))
        out.append((sign, [(g, True), *_factors(cell, b)]))
    else:
        out.append((sign, _factors(cell, k)))


def _factors(cell: Cell, k: int) -> list[Factor]:
    node = cell.nodes[k]
    if node.op is Op.MUL:
        return _factors(cell, node.args[0]) + _factors(cell, node.args[1])
    if node.op is Op.SUB and _is_one(cell, node.args[0]):
        return [(node.args[1], True)]
    return [(k, False)]


def _is_one(cell: Cell, k: int) -> bool:
    node = cell.nodes[k]
    return node.op is Op.CONST and node.attr("value") == 1.0


def _gate(cell: Cell, factor: Factor) -> tuple[int, int, int] | None:
    """``(sigmoid node, linear, sign)`` when the factor is a sigmoid gate set by one linear's bias
    (linears without a bias do not count)."""
    k, complemented = factor
    node = cell.nodes[k]
    if node.op is not Op.SIGMOID:
        return None
    found: list[tuple[int, int]] = []

    def walk(j: int, s: int) -> None:
        n = cell.nodes[j]
        if n.has_bias:  # a linear without a bias is no handle on the gate, like a peep
            found.append((j, s))
        elif n.op is Op.ADD:
            walk(n.args[0], s)
            walk(n.args[1], s)
        elif n.op is Op.SUB:
            walk(n.args[0], s)
            walk(n.args[1], -s)

    walk(node.args[0], 1)
    if len(found) != 1:
        return None
    linear, s = found[0]
    return k, linear, -s if complemented else s


@lru_cache(maxsize=4096)
def keep_gates(cell: Cell) -> tuple[KeepGate, ...]:
    """The keep gates of ``cell``, by state name then node; empty when it has none."""
    found: list[KeepGate] = []
    for state, update in zip(cell.states, cell.updates, strict=True):
        prev = cell.state_nodes.get(state)
        if prev is None:
            continue
        terms: list[tuple[int, list[Factor]]] = []
        _terms(cell, update, 1, terms)
        keeps: list[tuple[int, int, int]] = []
        others: list[tuple[int, int, int]] = []
        for sign, factors in terms:
            rest = [f for f in factors if f != (prev, False)]
            if len(factors) == 2 and len(rest) == 1 and sign == 1:
                found_gate = _gate(cell, rest[0])
                if found_gate is not None:
                    keeps.append(found_gate)
                continue
            if any(f[0] == prev for f in factors):
                continue
            gates = [g for g in (_gate(cell, f) for f in factors) if g is not None]
            if len(gates) == 1 and len(factors) >= 2:  # one gate times a candidate
                others.append(gates[0])
        for gate, linear, sign in keeps:
            inputs = tuple(sorted({(lin, s) for _, lin, s in others if lin != linear}))
            found.append(KeepGate(state, gate, linear, sign, inputs))
    # a linear must play one role with one sign
    keep_sign: dict[int, set[int]] = {}
    for g in found:
        keep_sign.setdefault(g.linear, set()).add(g.sign)
    input_of = {lin for g in found for lin, _ in g.inputs}
    clean = []
    for g in found:
        if len(keep_sign[g.linear]) > 1 or g.linear in input_of:
            continue
        inputs = tuple((lin, s) for lin, s in g.inputs if lin not in keep_sign)
        clean.append(KeepGate(g.state, g.gate, g.linear, g.sign, inputs))
    return tuple(sorted(clean, key=lambda g: (g.state, g.gate)))
