"""Hypothesis strategies that wrap cellsearch's own random-cell generator."""

import numpy as np
from hypothesis import strategies as st

from cellsearch.ir.random import random_cell


@st.composite
def cells(draw, n_states=None, n_nodes=None):
    seed = draw(st.integers(0, 2**32 - 1))
    return random_cell(np.random.default_rng(seed), n_states=n_states, n_nodes=n_nodes)
