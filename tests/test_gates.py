"""Keep gates are found in the graph (not by name), and the chrono / forget-bias initialisation acts on them."""

import numpy as np
import pytest

import cellsearch as cs
from cellsearch import ConfigError, zoo
from cellsearch.ir.gates import keep_gates
from cellsearch.ir.params import gate_biases, init_params, param_names
from cellsearch.train import evaluate, make_hp


def roles(cell):
    """state -> (keep bias, sign, [(input bias, sign)]) by parameter name, for reading the tests."""
    names = param_names(cell)
    return {g.state: (names[g.linear].bias, g.sign, [(names[lin].bias, s) for lin, s in g.inputs]) for g in keep_gates(cell)}


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("lstm", {"c": ("f.b", 1, [("i.b", 1)])}),
        ("lstm_peephole", {"c": ("f.b", 1, [("i.b", 1)])}),  # peep(c) in the gate carries no bias
        ("fgr", {"c": ("f.b", 1, [("i.b", 1)])}),  # gf = f copies the gate, it does not keep gf
        ("nig", {"c": ("f.b", 1, [])}),  # c = z + c * f: no input gate
        ("gru", {"h": ("u.b", 1, [])}),  # blend(h, n, u): u keeps h, 1 - u lets n in (coupled)
        ("gru_jz", {"h": ("z.b", 1, [])}),
        ("mgu", {"h": ("f.b", -1, [])}),  # blend(n, h, f): h survives by 1 - f
        ("mut1", {"h": ("z.b", -1, [])}),
        ("cifg", {"c": ("i.b", -1, [])}),  # c * (1 - i) + z * i: one gate, coupled
        ("janet", {"h": ("s.b", 1, [])}),  # sigmoid(s) * h + (1 - sigmoid(s - 1)) * n
        ("sru", {"c": ("f.b", 1, [])}),
        ("rnn", {}),
        ("indrnn", {}),  # relu(linear(x) + peep(h)): no gate
        ("nfg", {}),  # c = c + i * z: the old value passes ungated
    ],
)
def test_keep_gates_of_the_zoo(name, expected):
    assert roles(zoo.get(name)) == expected


def test_found_by_structure_not_by_name():
    renamed = cs.parse(
        """
state(m, out)
keep = sigmoid(linear(x, out))
write = sigmoid(linear(x, out))
cand = tanh(linear(x, out))
show = sigmoid(linear(x, out))
m = cand * write + m * keep
out = show * tanh(m)
return out
"""
    )
    assert renamed.hash == zoo.get("lstm").hash
    assert roles(renamed) == {"m": ("keep.b", 1, [("write.b", 1)])}
    # a sigmoid called f that gates something else is no keep gate
    decoy = cs.parse(
        """
state(h)
f = sigmoid(linear(x, h))
h = tanh(linear(x, f * h))
return h
"""
    )
    assert keep_gates(decoy) == ()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # the bias enters negated: raising it closes the gate
        ("state(h)\ng = sigmoid(peep(h) - linear(x, h))\nh = g * h + tanh(linear(x))\nreturn h", {"h": ("g.b", -1, [])}),
        # two linears in the gate: which bias sets it is ambiguous
        ("state(h)\ng = sigmoid(linear(x) + linear(h))\nh = g * h + tanh(linear(x))\nreturn h", {}),
        # a subtracted term is no keep term
        ("state(h)\ng = sigmoid(linear(x, h))\nh = tanh(linear(x)) - g * h\nreturn h", {}),
        # the kept value must be the old state itself
        ("state(h)\ng = sigmoid(linear(x, h))\nh = g * tanh(h) + tanh(linear(x))\nreturn h", {}),
        # a linear without a bias is no handle on the gate (like a peep): no bias, no keep gate ...
        ("state(h)\ng = sigmoid(linear(x, h, bias=none))\nh = g * h + tanh(linear(x))\nreturn h", {}),
        # ... and beside a linear with a bias, that one sets the gate alone
        (
            "state(h)\ng = sigmoid(linear(x, bias=none) + linear(h))\nh = g * h + tanh(linear(x))\nreturn h",
            {"h": ("g.1.b", 1, [])},
        ),
        # an input gate without a bias is not mirrored; a keep gate without one is none
        (
            "state(c, h)\ni = sigmoid(linear(x, h, bias=none))\nf = sigmoid(linear(x, h))\n"
            "c = f * c + i * tanh(linear(x, h))\nh = tanh(c)\nreturn h",
            {"c": ("f.b", 1, [])},
        ),
        (
            "state(c, h)\ni = sigmoid(linear(x, h))\nf = sigmoid(linear(x, h, bias=none))\n"
            "c = f * c + i * tanh(linear(x, h))\nh = tanh(c)\nreturn h",
            {},
        ),
    ],
)
def test_edge_cases(text, expected):
    assert roles(cs.parse(text)) == expected


def test_chrono_sets_keep_and_input_biases_only():
    cell = zoo.get("lstm")
    default = init_params(cell, 3, 16, np.random.default_rng(0))
    chrono = init_params(cell, 3, 16, np.random.default_rng(0), gate_init="chrono", chrono_tmax=100)
    assert {k for k in default if not np.array_equal(default[k], chrono[k])} == {"f.b", "i.b"}
    f = chrono["f.b"]
    assert np.all(f >= 0) and np.all(f <= np.log(99)) and f.std() > 0.3
    np.testing.assert_array_equal(chrono["i.b"], -f)
    again = init_params(cell, 3, 16, np.random.default_rng(0), gate_init="chrono", chrono_tmax=100)
    assert all(np.array_equal(chrono[k], again[k]) for k in chrono)  # same generator state: same bits


def test_chrono_follows_the_gate_sign_and_keeps_hints():
    mgu = init_params(zoo.get("mgu"), 3, 16, np.random.default_rng(0), gate_init="chrono", chrono_tmax=50)
    assert np.all(mgu["f.b"] <= 0)  # h survives by 1 - f: a keeping start is a negative bias
    fb1 = init_params(zoo.get("lstm_fb1"), 3, 16, np.random.default_rng(0), gate_init="chrono", chrono_tmax=50)
    plain = init_params(zoo.get("lstm_fb1"), 3, 16, np.random.default_rng(0))
    assert all(np.array_equal(fb1[k], plain[k]) for k in plain)  # a bias=1 hint is the cell's own start


def test_forget_bias_adds_along_the_sign():
    base = init_params(zoo.get("gru"), 3, 8, np.random.default_rng(1))
    fb = init_params(zoo.get("gru"), 3, 8, np.random.default_rng(1), forget_bias=2.0)
    np.testing.assert_allclose(fb["u.b"] - base["u.b"], 2.0)
    mgu = init_params(zoo.get("mgu"), 3, 8, np.random.default_rng(1), forget_bias=2.0)
    np.testing.assert_allclose(mgu["f.b"] - init_params(zoo.get("mgu"), 3, 8, np.random.default_rng(1))["f.b"], -2.0)
    hinted = init_params(zoo.get("lstm_fb1"), 3, 8, np.random.default_rng(1), forget_bias=4.0)
    np.testing.assert_array_equal(hinted["f.b"], 5.0)


@pytest.mark.parametrize("name", ["rnn", "nfg", "indrnn", "slim2"])
def test_cells_without_keep_gates_are_unchanged(name):
    cell = zoo.get(name)
    assert gate_biases(cell).keep == ()
    plain = init_params(cell, 4, 4, np.random.default_rng(2))
    for options in ({"gate_init": "chrono", "chrono_tmax": 100}, {"forget_bias": 3.0}):
        other = init_params(cell, 4, 4, np.random.default_rng(2), **options)
        assert all(np.array_equal(plain[k], other[k]) for k in plain)


def test_hyperparameters_and_result():
    assert make_hp(gate_init="chrono", chrono_tmax="50", forget_bias="1").gate_init == "chrono"
    with pytest.raises(ConfigError, match="'gate_init' must be one of"):
        make_hp(gate_init="orthogonal")
    hp = make_hp(steps=20, hidden=8, eval_every=10, eval_size=32, gate_init="chrono")
    a = evaluate(zoo.get("lstm"), "delayed_recall", {"lag": 12}, hp, seed=5)
    b = evaluate(zoo.get("lstm"), "delayed_recall", {"lag": 12}, hp, seed=5)
    assert a["status"] == "ok" and a["history"] == b["history"] and a["test"] == b["test"]
    assert a["gates"] == {"keep": ["f.b"], "input": ["i.b"], "chrono_tmax": 13.0}  # the task's 13 steps
    r = evaluate(zoo.get("rnn"), "delayed_recall", {"lag": 12}, hp, seed=5)
    assert r["gates"] == {"keep": [], "input": [], "chrono_tmax": 13.0}
    plain = evaluate(
        zoo.get("rnn"), "delayed_recall", {"lag": 12}, make_hp(steps=20, hidden=8, eval_every=10, eval_size=32), seed=5
    )
    assert plain["history"] == r["history"]  # no keep gate: chrono changes nothing
