"""Parameter names, shapes, counts and initialisation."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cellsearch import ShapeError, init_params, param_specs, parameter_count, parse, zoo
from cellsearch.cli import cli


def greff_count(variant, N, M):
    """STUDIES.md 1.3, by hand: vanilla 4N(M+N) + 7N; gate removals and NP/FGR as listed."""
    vanilla = 4 * N * (M + N) + 7 * N
    return {
        "lstm_peephole": vanilla,
        "niaf": vanilla,
        "noaf": vanilla,
        "nig": vanilla - (N * M + N * N + 2 * N),
        "nfg": vanilla - (N * M + N * N + 2 * N),
        "nog": vanilla - (N * M + N * N + 2 * N),
        "cifg": vanilla - (N * M + N * N + 2 * N),
        "np": vanilla - 3 * N,
        "fgr": vanilla + 9 * N * N,
    }[variant]


@pytest.mark.parametrize("variant", ["lstm_peephole", "niaf", "noaf", "nig", "nfg", "nog", "cifg", "np", "fgr"])
@pytest.mark.parametrize(("N", "M"), [(100, 10), (64, 88), (7, 3)])
def test_greff_parameter_counts(variant, N, M):
    assert parameter_count(zoo.get(variant), M, N) == greff_count(variant, N, M)


def test_studies_table_at_jsb_sizes():
    table = {
        "lstm_peephole": 39_360,
        "niaf": 39_360,
        "noaf": 39_360,
        "nig": 29_504,
        "nfg": 29_504,
        "nog": 29_504,
        "cifg": 29_504,
        "np": 39_168,
        "fgr": 76_224,
    }
    assert {v: parameter_count(zoo.get(v), 88, 64) for v in table} == table


def test_cli_show_reports_the_hand_count():
    result = CliRunner().invoke(cli, ["show", "lstm_peephole", "--hidden", "100", "--input", "10", "--format", "json"])
    assert result.exit_code == 0, result.output
    info = json.loads(result.output)
    assert info["parameter_count"] == 4 * 100 * (10 + 100) + 7 * 100 == 44_700
    assert sum(int(np.prod(s)) for s in info["parameters"].values()) == info["parameter_count"]


def test_torch_sized_counts():
    I, H = 10, 20
    assert parameter_count(zoo.get("lstm"), I, H) == 4 * H * (I + H) + 4 * H  # torch: + 8H (two biases)
    assert parameter_count(zoo.get("gru"), I, H) == 3 * H * (I + H) + 4 * H  # torch: + 6H


def test_names_follow_the_text():
    specs = {s.name: s.shape for s in param_specs(zoo.get("lstm_peephole"), 10, 100)}
    expected = {}
    for gate in "zifo":
        expected |= {f"{gate}.W_x": (10, 100), f"{gate}.W_h": (100, 100), f"{gate}.b": (100,)}
    expected |= {"i.p_c": (100,), "f.p_c": (100,), "o.p_c": (100,)}
    assert specs == expected
    gru = [s.name for s in param_specs(zoo.get("gru"), 3, 5)]
    assert sorted(gru) == sorted(["r.W_x", "r.W_h", "r.b", "u.W_x", "u.W_h", "u.b", "n.W_x", "n.b", "n.1.W_h", "n.1.b"])
    for gate in "ru":  # within a call: the weights in the order the text shows, then the bias
        assert gru[gru.index(f"{gate}.W_x") : gru.index(f"{gate}.W_x") + 3] == [f"{gate}.W_x", f"{gate}.W_h", f"{gate}.b"]
    assert gru.index("n.b") < gru.index("n.1.W_h")  # `linear(x) + r * linear(h)`: site 0, then site 1
    fgr = {s.name for s in param_specs(zoo.get("fgr"), 3, 5)}
    assert {"i.W_gi", "i.W_gf", "i.W_go", "o.p_c_new"} <= fgr


def test_names_survive_reordering_and_renaming_other_lines():
    a = parse("state(h)\nr = sigmoid(linear(x, h))\nn = tanh(linear(x, r * h))\nh = blend(h, n, r)\nreturn h\n")
    b = parse("state(h)\nreset = sigmoid(linear(h, x))\nn = tanh(linear(reset * h, x))\nh = blend(h, n, reset)\nreturn h\n")
    names_a = [s.name for s in param_specs(a, 3, 4)]
    names_b = [s.name for s in param_specs(b, 3, 4)]
    assert names_a == ["r.W_x", "r.W_h", "r.b", "n.W_x", "n.W_1", "n.b"]
    assert names_b == ["reset.W_x", "reset.W_h", "reset.b", "n.W_x", "n.W_1", "n.b"]


def test_init_is_seeded_and_follows_hints():
    cell = zoo.get("lstm_fb1")
    p1 = init_params(cell, 4, 8, np.random.default_rng(3))
    p2 = init_params(cell, 4, 8, np.random.default_rng(3))
    assert all(np.array_equal(p1[k], p2[k]) for k in p1)
    assert np.all(p1["f.b"] == 1.0)
    bound = 1 / np.sqrt(8)
    assert all(np.abs(v).max() <= bound for k, v in p1.items() if k != "f.b")


def test_x_elementwise_needs_input_equal_hidden():
    with pytest.raises(ShapeError, match="input size must equal the hidden size"):
        param_specs(zoo.get("mut1"), 10, 20)
    assert parameter_count(zoo.get("mut1"), 20, 20) > 0
