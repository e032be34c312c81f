"""The SLIM LSTMs of Lu & Salem 2017 and Akandeh & Salem 2017 (zoo ``slim1`` to ``slim5``).

Each cell is checked against its paper's equations written out here by hand: the parameter count
as a formula in N (input) and H (hidden), and the forward pass as plain NumPy. The reference
backend's gradients against finite differences and the cpu backend against the reference run on
every zoo cell already (``tests/test_reference_grad.py``, ``tests/backends/test_conformance.py``);
here the finite differences run once more on a different draw, with the helpers imported from there.
LSTM2's gates ``sigmoid(U h)`` have no bias: ``linear(h, bias=none)``.
"""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cellsearch import compile, init_params, zoo
from cellsearch.cli import cli
from cellsearch.ir.params import parameter_count
from tests.test_gates import roles
from tests.test_reference_grad import directional_fd, retry_on_kinks

SLIM = ["slim1", "slim2", "slim3", "slim4", "slim5"]


def block_input(N, H):
    """g = tanh(W x + U h + b): kept whole by every SLIM variant."""
    return N * H + H * H + H


#: parameters as the papers count them: the block input plus three gates
COUNTS = {
    "lstm": lambda N, H: 4 * (N * H + H * H + H),
    "slim1": lambda N, H: block_input(N, H) + 3 * (H * H + H),  # gate = sigmoid(U h + b)
    "slim2": lambda N, H: block_input(N, H) + 3 * H * H,  # gate = sigmoid(U h): N H + 4 H^2 + H in all
    "slim3": lambda N, H: block_input(N, H) + 3 * H,  # gate = sigmoid(b)
    "slim4": lambda N, H: block_input(N, H) + 3 * H,  # gate = sigmoid(u * h)
    "slim5": lambda N, H: block_input(N, H) + 3 * (H + H),  # gate = sigmoid(u * h + b)
}


def sigmoid(v):
    return 1.0 / (1.0 + np.exp(-v))


def gates(name, p, h):
    """(i, f, o) from the previous h, as each paper writes them (``y = x @ W``: rows index the input)."""
    if name == "slim1":
        return tuple(sigmoid(h @ p[f"{k}.W_h"] + p[f"{k}.b"]) for k in "ifo")
    if name == "slim2":
        return tuple(sigmoid(h @ p[f"{k}.W_h"]) for k in "ifo")
    if name == "slim3":
        return tuple(sigmoid(p[f"{k}.p_ones"]) for k in "ifo")
    if name == "slim4":
        return tuple(sigmoid(p[f"{k}.p_h"] * h) for k in "ifo")
    if name == "slim5":
        return tuple(sigmoid(p[f"{k}.p_h"] * h + p[f"{k}.1.p_ones"]) for k in "ifo")
    raise AssertionError(name)


def by_hand(name, p, x, c, h):
    """The whole sequence by the paper's equations: c = f*c + i*tanh(W x + U h + b), h = o*tanh(c)."""
    outputs = []
    for x_t in x:
        i, f, o = gates(name, p, h)
        g = np.tanh(x_t @ p["g.W_x"] + h @ p["g.W_h"] + p["g.b"])
        c = f * c + i * g
        h = o * np.tanh(c)
        outputs.append(h)
    return np.stack(outputs), c, h


@pytest.mark.parametrize("name", SLIM)
@pytest.mark.parametrize(("N", "H"), [(8, 64), (5, 3)])
def test_parameter_count_is_the_papers(name, N, H):
    cell = zoo.get(name)
    assert parameter_count(cell, N, H) == COUNTS[name](N, H)
    assert parameter_count(cell, N, H) < parameter_count(zoo.get("lstm"), N, H) == COUNTS["lstm"](N, H)


def test_counts_at_n8_h64():
    got = {name: parameter_count(zoo.get(name), 8, 64) for name in ["lstm", *SLIM]}
    assert got == {"lstm": 18_688, "slim1": 17_152, "slim2": 16_960, "slim3": 4_864, "slim4": 4_864, "slim5": 5_056}


@pytest.mark.parametrize("name", SLIM)
def test_reference_forward_is_the_papers_equations(name):
    cell = zoo.get(name)
    rng = np.random.default_rng(3)
    N, H, T, B = 4, 5, 7, 2
    params = init_params(cell, N, H, rng, scale=2.0)
    x = rng.normal(size=(T, B, N))
    c0, h0 = rng.normal(scale=0.5, size=(2, B, H))
    run = compile(cell, "reference").forward(params, x, {"c": c0, "h": h0})
    outputs, c, h = by_hand(name, params, x, c0, h0)
    np.testing.assert_allclose(run.outputs, outputs, rtol=0, atol=1e-13)
    np.testing.assert_allclose(run.states["c"], c, rtol=0, atol=1e-13)
    np.testing.assert_allclose(run.states["h"], h, rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", SLIM)
def test_reference_gradients_match_finite_differences(name):
    retry_on_kinks(directional_fd, zoo.get(name), np.random.default_rng(11))


@pytest.mark.parametrize("name", SLIM)
def test_each_is_its_own_zoo_cell(name):
    assert zoo.name_of(zoo.get(name)) == name  # no other zoo cell has the same structure


def test_keep_gates_as_the_readme_says():
    """Only slim1's forget gate has a ``linear`` with a bias that gate_init / forget_bias can set; slim2's
    ``linear(h, bias=none)`` has none, so chrono and forget_bias leave every parameter as it was."""
    assert roles(zoo.get("slim1")) == {"c": ("f.b", 1, [("i.b", 1)])}
    for name in ["slim2", "slim3", "slim4", "slim5"]:
        assert roles(zoo.get(name)) == {}
    slim2 = zoo.get("slim2")
    plain = init_params(slim2, 3, 8, np.random.default_rng(4))
    for options in ({"gate_init": "chrono", "chrono_tmax": 50}, {"forget_bias": 1.0}):
        other = init_params(slim2, 3, 8, np.random.default_rng(4), **options)
        assert other.keys() == plain.keys() and all(np.array_equal(plain[k], other[k]) for k in plain)


def test_slim2_has_one_bias_and_three_bias_free_gates():
    cell = zoo.get("slim2")
    assert sorted(init_params(cell, 3, 4, np.random.default_rng(0))) == [
        "f.W_h", "g.W_h", "g.W_x", "g.b", "i.W_h", "o.W_h"
    ]  # fmt: skip
    assert cell.text.count("linear(h, bias=none)") == 3
    assert parameter_count(cell, 8, 64) == parameter_count(zoo.get("slim1"), 8, 64) - 3 * 64


def test_cells_lists_them():
    result = CliRunner().invoke(cli, ["cells", "--format", "json"])
    assert result.exit_code == 0
    rows = {r["name"]: r for r in json.loads(result.output)}
    assert set(SLIM) <= set(rows)
    for name in SLIM:
        assert "Salem 2017" in rows[name]["description"]
