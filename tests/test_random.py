"""The random valid-cell generator: always valid, seeded, covering the grammar."""

import numpy as np
import pytest

from cellsearch import IRError, parse
from cellsearch.ir import Op, validate
from cellsearch.ir.random import random_cell


def test_always_valid_and_seeded():
    ops = set()
    for seed in range(300):
        cell = random_cell(np.random.default_rng(seed))
        validate(cell)
        assert parse(cell.text) == cell
        assert random_cell(np.random.default_rng(seed)) == cell
        assert any(n.op is Op.INPUT for n in cell.nodes)
        assert set(cell.state_nodes) == set(cell.states)  # every state is read
        ops |= {n.op for n in cell.nodes}
    assert ops >= {Op.LINEAR, Op.PEEP, Op.ADD, Op.SUB, Op.MUL, Op.BLEND, Op.TANH, Op.SIGMOID, Op.RELU, Op.CONST}


@pytest.mark.parametrize("n_states", [1, 2, 3])
def test_requested_state_count(n_states):
    for seed in range(20):
        cell = random_cell(np.random.default_rng(seed), n_states=n_states, n_nodes=8)
        assert len(cell.states) == n_states


def test_bad_request_is_an_error():
    with pytest.raises(IRError):
        random_cell(np.random.default_rng(0), n_states=4, n_nodes=2)
