"""The search's variation operators: each makes the change it names, always returns a valid canonical
cell (or None), is deterministic given its generator, and a long random walk of mutations and
crossovers only ever produces cells that validate, print and parse back, compile and run."""

import collections

import numpy as np
import pytest

from cellsearch import compile, init_params, parse, zoo
from cellsearch.ir import Op, validate
from cellsearch.ir.ops import ACTIVATIONS, BINARY
from cellsearch.ir.random import random_cell
from cellsearch.search import operators
from cellsearch.search.operators import MUTATIONS, crossover, graft, inner_count, mutate

LSTM = zoo.get("lstm")
GRU = zoo.get("gru")


def op_counts(cell):
    return collections.Counter(n.op for n in cell.nodes if not n.is_leaf)


def non_activations(counts):
    return {op: n for op, n in counts.items() if op not in ACTIVATIONS}


def linear_args(cell):
    return sum(len(n.args) for n in cell.nodes if n.op is Op.LINEAR)


def children(op, cell, seeds=range(12)):
    out = [op(cell, np.random.default_rng(seed)) for seed in seeds]
    assert all(c is not None for c in out)
    for c in out:
        validate(c)
        assert c.hash != cell.hash
        assert c.name == "mutant"
    return out


@pytest.mark.parametrize("parent", ["lstm", "gru", "lstm_peephole"])
def test_swap_activation_changes_one_activation_kind(parent):
    cell = zoo.get(parent)
    before = op_counts(cell)
    for child in children(operators.swap_activation, cell):
        after = op_counts(child)
        assert inner_count(child) == inner_count(cell)
        diff = {op: after[op] - before[op] for op in ACTIVATIONS if after[op] != before[op]}
        assert sorted(diff.values()) == [-1, 1], diff
        assert non_activations(after) == non_activations(before)


def test_swap_arith_changes_one_arithmetic_op():
    before = op_counts(LSTM)
    for child in children(operators.swap_arith, LSTM):
        after = op_counts(child)
        diff = {op: after[op] - before[op] for op in BINARY if after[op] != before[op]}
        assert sorted(diff.values()) == [-1, 1], diff
        assert sum(after[op] for op in BINARY) == sum(before[op] for op in BINARY)


def test_insert_activation_adds_one_activation():
    before = op_counts(LSTM)
    added = 0
    for child in children(operators.insert_activation, LSTM):
        after = op_counts(child)
        grown = sum(after[op] for op in ACTIVATIONS) - sum(before[op] for op in ACTIVATIONS)
        assert grown in (0, 1)
        assert inner_count(child) == inner_count(LSTM) + grown
        assert non_activations(after) == non_activations(before)
        # grown == 0: the new activation equals one already there and merged with it, e.g. the
        # update of c became tanh(c), which h already computed
        added += grown
    assert added >= 8


@pytest.mark.parametrize("parent", ["lstm", "gru", "rnn"])
def test_insert_gate_adds_a_sigmoid_gate(parent):
    cell = zoo.get(parent)
    before = op_counts(cell)
    kinds = set()
    for child in children(operators.insert_gate, cell, range(20)):
        after = op_counts(child)
        assert after[Op.LINEAR] == before[Op.LINEAR] + 1
        assert after[Op.SIGMOID] == before[Op.SIGMOID] + 1
        gained = [op for op in (Op.MUL, Op.BLEND) if after[op] == before[op] + 1]
        assert len(gained) == 1
        kinds |= set(gained)
        assert inner_count(child) == inner_count(cell) + 3
    assert kinds == {Op.MUL, Op.BLEND}


@pytest.mark.parametrize("parent", ["lstm", "gru", "fgr"])
def test_remove_node_shrinks(parent):
    cell = zoo.get(parent)
    for child in children(operators.remove_node, cell):
        assert inner_count(child) < inner_count(cell)


def test_linear_inputs():
    for child in children(operators.add_linear_input, LSTM):
        assert linear_args(child) == linear_args(LSTM) + 1
        assert op_counts(child) == op_counts(LSTM)
    for child in children(operators.remove_linear_input, LSTM):
        assert linear_args(child) == linear_args(LSTM) - 1
        assert all(len(n.args) >= 1 for n in child.nodes if n.op is Op.LINEAR)
    rnn_small = parse("state(h)\nh = tanh(linear(h) + linear(x))\nreturn h\n")
    assert operators.remove_linear_input(rnn_small, np.random.default_rng(0)) is None  # nothing to remove


@pytest.mark.parametrize("parent", ["lstm", "gru", "rnn"])
def test_add_state(parent):
    cell = zoo.get(parent)
    for child in children(operators.add_state, cell):
        assert len(child.states) == len(cell.states) + 1
        (new,) = set(child.states) - set(cell.states)
        assert new in child.state_nodes  # its previous value is read
    assert operators.add_state(zoo.get("fgr"), np.random.default_rng(0)) is None  # already MAX_STATES states


@pytest.mark.parametrize("parent", ["lstm", "fgr"])
def test_drop_state(parent):
    cell = zoo.get(parent)
    for child in children(operators.drop_state, cell):
        assert len(child.states) == len(cell.states) - 1
        assert set(child.states) < set(cell.states)
    assert operators.drop_state(GRU, np.random.default_rng(0)) is None  # a cell keeps one state


def test_crossover_takes_a_subgraph_from_b():
    rnn = zoo.get("rnn")  # only linear and tanh
    gained = 0
    for seed in range(10):
        child, name = crossover(rnn, LSTM, np.random.default_rng(seed))
        assert name == "crossover"
        assert child.name == "offspring"
        validate(child)
        assert child.hash not in (rnn.hash, LSTM.hash)
        assert child.states == rnn.states
        ops = set(op_counts(child))
        assert ops <= set(op_counts(rnn)) | set(op_counts(LSTM))
        gained += bool(ops - set(op_counts(rnn)))  # a sigmoid or a product of the LSTM's
    assert gained >= 5  # (the others graft a bare linear of the LSTM's in place of the tanh)


def test_crossover_grafts_a_state_update(monkeypatch):
    monkeypatch.setattr(operators, "STATE_GRAFT", 1.0)
    # the GRU with its update of h replaced by the LSTM's, the LSTM's c mapped onto the GRU's h
    expected = parse(
        """
        state(h)
        i = sigmoid(linear(x, h))
        f = sigmoid(linear(x, h))
        g = tanh(linear(x, h))
        o = sigmoid(linear(x, h))
        c = f * h + i * g
        h = o * tanh(c)
        return h
        """.replace("\n        ", "\n").strip()
        + "\n"
    )
    got = [graft(GRU, LSTM, np.random.default_rng(seed)) for seed in range(10)]
    assert expected.hash in {c.hash for c in got if c is not None}
    # the LSTM's update of h grafted onto an LSTM whose o gate is a tanh, reading that cell's own new
    # c (linked, not copied), gives the LSTM back
    other = parse(LSTM.text.replace("o = sigmoid", "o = tanh"))
    assert other.hash != LSTM.hash
    got = [graft(other, LSTM, np.random.default_rng(seed)) for seed in range(20)]
    assert all(c is not None and c.states == ("c", "h") for c in got)
    assert LSTM.hash in {c.hash for c in got}


def test_crossover_of_a_cell_with_itself_can_still_vary():
    child, _ = crossover(LSTM, LSTM, np.random.default_rng(0))
    assert child.hash != LSTM.hash


@pytest.mark.parametrize("name", sorted(MUTATIONS))
def test_operators_are_deterministic(name):
    op = MUTATIONS[name]
    for parent in (LSTM, GRU, zoo.get("fgr"), random_cell(np.random.default_rng(3))):
        a = op(parent, np.random.default_rng(7))
        b = op(parent, np.random.default_rng(7))
        assert (a is None and b is None) or (a is not None and b is not None and a.hash == b.hash and a == b)


def test_mutate_and_crossover_are_deterministic():
    def walk(seed):
        rng = np.random.default_rng(seed)
        cells, names = [LSTM, GRU], []
        for _ in range(30):
            child, name = mutate(cells[-1], rng)
            got = crossover(child, cells[int(rng.integers(len(cells)))], rng)
            if got is not None:
                child, name = got
            cells.append(child)
            names.append(name)
        return [c.hash for c in cells], names

    assert walk(5) == walk(5)
    assert walk(5) != walk(6)


def test_mutate_returns_identity_only_when_nothing_applies():
    child, name = mutate(LSTM, np.random.default_rng(0))
    assert name in MUTATIONS and child.hash != LSTM.hash
    stuck = parse("state(h)\nh = tanh(linear(x, h))\nreturn h\n")
    with pytest.MonkeyPatch.context() as mp:
        for key in list(MUTATIONS):
            mp.setitem(MUTATIONS, key, lambda cell, rng: None)
        assert mutate(stuck, np.random.default_rng(0)) == (stuck, "identity")


def test_size_bounds(monkeypatch):
    monkeypatch.setattr(operators, "MAX_NODES", inner_count(LSTM))
    rng = np.random.default_rng(0)
    assert operators.insert_activation(LSTM, rng) is None
    assert operators.insert_gate(LSTM, rng) is None
    assert operators.remove_node(LSTM, rng) is not None
    for _ in range(50):
        child, _name = mutate(LSTM, rng)
        assert inner_count(child) <= inner_count(LSTM)


def test_x_stays_inside_linears_unless_allowed(monkeypatch):
    rng = np.random.default_rng(0)
    for parent in (LSTM, GRU, random_cell(np.random.default_rng(1))):
        for _ in range(60):
            child, _ = mutate(parent, rng)
            assert not child.x_elementwise
    monkeypatch.setattr(operators, "NEW_X_ELEMENTWISE", True)
    seen = 0
    for _ in range(300):
        child, _ = mutate(GRU, rng)
        seen += child.x_elementwise
        if child.x_elementwise:
            run_reference(child, rng)
    assert seen > 0


def run_reference(cell, rng, T=4, B=2, I=3, H=4):
    """Forward and backward through time with the reference backend: everything finite."""
    if cell.x_elementwise:
        I = H
    params = init_params(cell, I, H, rng)
    x = rng.normal(size=(T, B, I))
    kernel = compile(cell, "reference")
    fwd = kernel.forward(params, x)
    grads = kernel.backward(params, fwd.tape, d_out=np.ones_like(fwd.outputs))
    assert np.all(np.isfinite(fwd.outputs))
    assert all(np.all(np.isfinite(g)) for g in grads.params.values())
    assert np.all(np.isfinite(grads.x))


def test_ten_thousand_random_applications():
    """10,000 children of a steady-state population walk (mutations and crossovers), restarted from
    LSTM, GRU, one more zoo cell and random cells every EPOCH children so that it explores small and
    large cells alike. Every child validates, round-trips through the printer and the parser and
    compiles on the cpu backend; every 50th runs forward and backward on the reference backend."""
    N, EPOCH, POOL = 10_000, 250, 16
    rng = np.random.default_rng(2024)
    zoo_names = zoo.names()
    counts: collections.Counter[str] = collections.Counter()
    sizes = []
    pool = []
    for i in range(N):
        if i % EPOCH == 0:
            e = i // EPOCH
            extra = zoo.get(zoo_names[e % len(zoo_names)])
            pool = [LSTM, GRU, extra] + [random_cell(np.random.default_rng([e, s])) for s in range(4)]
        a = pool[int(rng.integers(len(pool)))]
        if rng.random() < 0.25:
            got = crossover(a, pool[int(rng.integers(len(pool)))], rng)
            child, name = got if got is not None else (a, "none")
        else:
            child, name = mutate(a, rng)
        counts[name] += 1
        validate(child)
        back = parse(child.text)
        assert back == child, child.text
        if i % 10 == 0:
            assert back.hash == child.hash  # implied by back == child; checked on a sample (a hash costs a canonicalization)
        compile(child, "cpu")
        if i % 50 == 0:
            run_reference(child, rng)
        assert inner_count(child) <= operators.MAX_NODES
        assert len(child.states) <= operators.MAX_STATES
        sizes.append(inner_count(child))
        if len(pool) < POOL:
            pool.append(child)
        else:
            pool[int(rng.integers(POOL))] = child
    assert sum(counts.values()) == N
    assert set(counts) >= {*MUTATIONS, "crossover"}, counts
    assert counts["identity"] + counts["none"] < N // 100, counts
    assert counts["crossover"] > N // 5
    assert max(sizes) > 30  # the walk reached large cells too
