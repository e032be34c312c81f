"""Canonical form and structural hash, checked as properties over random cells."""

import dataclasses
import re

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from cellsearch import canonicalize, format_cell, parse, zoo
from cellsearch.ir import OP_INFO, Node, Op
from cellsearch.ir.canon import recanonicalize, structural_hash
from cellsearch.ir.cell import make_attrs
from tests.strategies import cells

seeds = st.integers(0, 2**32 - 1)


def shuffled_topological(cell, rng):
    """The same graph with its nodes in a random topological order and commutative args swapped."""
    n = len(cell.nodes)
    placed, order = set(), []
    while len(order) < n:
        ready = [k for k in range(n) if k not in placed and all(a in placed for a in cell.nodes[k].args)]
        k = int(rng.choice(ready))
        placed.add(k)
        order.append(k)
    pos = {old: new for new, old in enumerate(order)}
    nodes = []
    for old in order:
        node = cell.nodes[old]
        args = [pos[a] for a in node.args]
        if OP_INFO[node.op].commutative:
            args = [args[i] for i in rng.permutation(len(args))]
        nodes.append(Node(node.op, tuple(args), node.attrs, node.label))
    return nodes, list(cell.states), [pos[u] for u in cell.updates], pos[cell.output]


@given(cells())
def test_print_parse_roundtrip(cell):
    assert parse(format_cell(cell)) == cell
    assert parse(cell.text).hash == cell.hash


@given(cells())
def test_canonicalize_is_idempotent(cell):
    assert recanonicalize(cell) == cell


@given(cells(), seeds)
def test_reordering_independent_lines_changes_nothing(cell, seed):
    text = format_cell(cell, rng=np.random.default_rng(seed))
    again = parse(text)
    assert again == cell, text
    assert again.text == cell.text


@given(cells(), seeds)
def test_node_order_and_operand_order_do_not_matter(cell, seed):
    nodes, states, updates, output = shuffled_topological(cell, np.random.default_rng(seed))
    assert canonicalize(nodes, states, updates, output) == cell


@given(cells(), seeds)
def test_renaming_temporaries_keeps_the_hash(cell, seed):
    rng = np.random.default_rng(seed)
    updates = set(cell.updates)
    nodes = [
        n if n.is_leaf or k in updates else dataclasses.replace(n, label=f"v{int(rng.integers(10**6))}_{k}")
        for k, n in enumerate(cell.nodes)
    ]
    renamed = dataclasses.replace(cell, nodes=tuple(nodes))
    reparsed = parse(format_cell(renamed))
    assert reparsed.hash == cell.hash
    assert format_cell(reparsed, anonymous=True) == format_cell(cell, anonymous=True)


@given(cells(), seeds)
def test_dead_code_keeps_the_hash(cell, seed):
    rng = np.random.default_rng(seed)
    nodes = list(cell.nodes)
    for _ in range(int(rng.integers(1, 5))):
        a = int(rng.integers(len(nodes)))
        op = [Op.TANH, Op.SIGMOID, Op.LINEAR][int(rng.integers(3))]
        nodes.append(Node(op, (a,)))
    assert canonicalize(nodes, cell.states, cell.updates, cell.output) == cell


@given(cells())
def test_anonymous_text_names_the_same_structure(cell):
    assert parse(format_cell(cell, anonymous=True)).hash == cell.hash


def test_text_level_equivalences():
    base = parse("state(h)\nh = tanh(linear(x, h) + peep(h))\nreturn h\n")
    same = [
        "state(h)\nh = tanh(peep(h) + linear(h, x))\nreturn h\n",
        "state(h)\na = linear(h, x)\nb = peep(h)\nh = tanh(b + a)\nreturn h\n",
        "state(h)\nb = peep(h)\na = linear(x, h)\nh = identity(tanh(a + b))\nreturn h\n",
    ]
    for text in same:
        assert parse(text).hash == base.hash, text
    lstm = zoo.get("lstm")
    reordered = "state(h, c)\no = sigmoid(linear(h, x))\ng = tanh(linear(x, h))\nf = sigmoid(linear(x, h))\ni = sigmoid(linear(x, h))\nc = g * i + f * c\nh = tanh(c) * o\nreturn h\n"
    assert parse(reordered).hash == lstm.hash
    renamed_gates = re.sub(
        r"\b([ofgi])\b", lambda m: {"o": "out_gate", "g": "cand", "i": "in_gate", "f": "forget"}[m[1]], reordered
    )
    assert "out_gate" in renamed_gates
    assert parse(renamed_gates).hash == lstm.hash


def test_structure_changes_the_hash():
    shared = parse("state(h)\na = linear(x, h)\nh = tanh(a * a)\nreturn h\n")
    separate = parse("state(h)\nh = tanh(linear(x, h) * linear(x, h))\nreturn h\n")
    assert shared.hash != separate.hash  # one weight set vs two
    assert (
        parse("state(h)\nh = tanh(1 - linear(x, h))\nreturn h\n").hash
        != parse("state(h)\nh = tanh(linear(x, h) - 1)\nreturn h\n").hash
    )
    assert zoo.get("lstm").hash != zoo.get("lstm_fb1").hash  # init hints are part of the identity
    assert zoo.get("lstm_peephole").hash != zoo.get("np").hash


def test_zoo_hashes_are_distinct_except_the_documented_twin():
    by_hash = {}
    for name, cell in zoo.CELLS.items():
        by_hash.setdefault(cell.hash, []).append(name)
    twins = [sorted(v) for v in by_hash.values() if len(v) > 1]
    assert twins == [["lstm", "np"]]  # Greff's NP is exactly the standard LSTM


def test_constants_fold_and_equal_subexpressions_merge():
    a = parse("state(h)\nh = tanh(linear(x, h)) * (2 * 3)\nreturn h\n")
    b = parse("state(h)\nh = tanh(linear(x, h)) * 6\nreturn h\n")
    assert a == b
    c = parse("state(h)\na = tanh(linear(x, h))\nh = sigmoid(a) * sigmoid(a)\nreturn h\n")
    assert sum(n.op is Op.SIGMOID for n in c.nodes) == 1


def test_state_needs_an_alias_when_old_and_new_values_cross():
    # b's update reads the old a after a has been updated: the printer copies a first
    cell = parse("state(a, b)\nold_a = a\na = tanh(linear(x, b))\nb = tanh(linear(old_a, a))\nreturn b\n")
    assert "a_prev = a" in cell.text
    assert parse(cell.text) == cell


def test_labels_that_clash_are_dropped_not_duplicated():
    x = Node(Op.INPUT)
    h = Node(Op.STATE, attrs=make_attrs(name="h"))
    lin = Node(Op.LINEAR, (0, 1), label="a")
    act = Node(Op.TANH, (2,), label="a")  # duplicate label
    cell = canonicalize([x, h, lin, act], ["h"], [3], 3)
    assert parse(cell.text) == cell
    assert structural_hash(cell) == cell.hash


@given(cells(), seeds)
def test_renaming_states_keeps_the_hash(cell, seed):
    rng = np.random.default_rng(seed)
    fresh = [f"s{int(v)}" for v in rng.choice(10**6, size=len(cell.states), replace=False)]
    mapping = dict(zip(cell.states, fresh))
    text = re.sub(r"\b(" + "|".join(cell.states) + r")(_prev\d*)?\b", lambda m: mapping[m[1]] + (m[2] or ""), cell.text)
    renamed = parse(text)
    assert renamed.hash == cell.hash, text
    assert set(renamed.states) == set(fresh)


def test_state_names_are_not_structure():
    lstm = zoo.get("lstm")
    text = re.sub(r"\bc\b", "memory", lstm.text)
    assert parse(text).hash == lstm.hash
    swapped = re.sub(r"\b(c|h)\b", lambda m: {"c": "h", "h": "c"}[m[1]], lstm.text)  # output is now `c`
    assert parse(swapped).hash == lstm.hash
    # but which state is returned is structure
    two = "state(a, b)\na = tanh(linear(x, a, b))\nb = sigmoid(linear(x, a, b))\nreturn {}\n"
    assert parse(two.format("a")).hash != parse(two.format("b")).hash


def test_updates_that_are_leaves_print_and_round_trip():
    texts = [
        "state(a, b)\na_old = a\na = tanh(linear(x, a, b))\nb = a_old\nreturn a\n",  # a delay line
        "state(h, m)\nh = tanh(linear(x, h, m))\nm = x\nreturn h\n",  # a state that takes the input
        "state(c, h)\nc = tanh(linear(x, h, c))\nh = c\nreturn h\n",  # two states, one update
    ]
    for text in texts:
        cell = parse(text)
        assert parse(cell.text) == cell, cell.text
    assert parse(texts[1]).x_elementwise  # m holds x, so I must equal H


def test_deep_chains_print_as_lines_the_parser_reads_back() -> None:
    """A 120-deep chain of single-use values would print as one expression nested 240 parentheses
    deep, which Python's parser (the DSL's) refuses: deep values get lines of their own."""
    from cellsearch import parse

    lines = ["state(h)", "t0 = tanh(linear(x, h))"]
    lines += [f"t{k} = tanh(linear(t{k - 1}, h))" for k in range(1, 120)]
    cell = parse("\n".join([*lines, "h = t119", "return h"]))
    again = parse(cell.text)
    assert again == cell and again.hash == cell.hash
    assert max(line.count("(") for line in cell.text.splitlines()) <= 2 * 8 + 2


def test_tie_breakers_are_skipped_only_where_they_cannot_change_the_order(monkeypatch):
    """canonicalize computes the state-name and label colours (its heap's tie-breakers) only where two
    nodes share a structural colour; computing them always gives the same cells for the zoo and 300
    random cells, among them cells with nodes alike (the other path)."""
    import cellsearch.ir.canon as canon
    from cellsearch.ir.random import random_cell

    inputs = [zoo.get(n) for n in zoo.names()] + [random_cell(np.random.default_rng(s)) for s in range(300)]
    alike = [c for c in inputs if len(set(canon.colours(c.nodes, c.states, c.updates, c.output))) < len(c.nodes)]
    assert alike, "no input took the tie-breaking path"
    fast = [recanonicalize(c) for c in inputs]
    monkeypatch.setattr(canon, "_SKIP_UNUSED_TIE_BREAKERS", False)
    slow = [recanonicalize(c) for c in inputs]
    assert [c.text for c in fast] == [c.text for c in slow]
    assert fast == slow and [c.hash for c in fast] == [c.hash for c in slow]
