"""``linear(..., bias=none)``: a linear without a bias, through every layer.

The DSL spelling and its errors (``tests/test_dsl_errors.py`` has the error cases), the IR (canonical
text and hash: a bias-free linear is another cell; ``bias=0`` stays an initialisation hint), the
parameters (no ``.b``: H fewer), the keep gates (a bias-free linear sets no gate), the reference
backward against finite differences, the lowering (``CONST`` 0 instead of ``BIAS``; an input-GEMM
block whose bias is None) and the search's operators on such cells. The cpu backend against the
reference runs on these cells in ``tests/backends/test_conformance.py`` (``EDGE_CELLS``).
"""

import numpy as np
import pytest

from cellsearch import compile, init_params, parse, zoo
from cellsearch.ir import Op, validate
from cellsearch.ir.ops import NO_BIAS
from cellsearch.ir.params import gate_biases, param_specs, parameter_count
from cellsearch.lowering import Code, lower
from cellsearch.search import operators
from cellsearch.search.operators import MUTATIONS, crossover, mutate
from tests.test_reference_grad import directional_fd, elementwise_fd, retry_on_kinks

RNN = "state(h)\nh = tanh(linear(x, h{}))\nreturn h\n"
#: bias-free linears on h only, on x and h, on x only, and mid-step (on a product), beside biased ones
CELLS = {
    "gates_on_h": zoo.get("slim2").text,
    "x_and_h": "state(h)\nh = tanh(linear(x, h, bias=none))\nreturn h\n",
    "mixed": (
        "state(c, h)\n"
        "i = sigmoid(linear(x, h, bias=none))\n"
        "f = sigmoid(linear(h, bias=none) + linear(x))\n"
        "r = sigmoid(linear(x, bias=none))\n"
        "c = f * c + i * tanh(linear(x, bias=none) + linear(r * h, bias=none))\n"
        "h = tanh(c) * sigmoid(linear(x, h, c, bias=-0.5))\n"
        "return h\n"
    ),
}


def linears(cell):
    return [n for n in cell.nodes if n.op is Op.LINEAR]


def test_the_attribute_and_the_text():
    cell = parse(RNN.format(", bias=none"))
    (node,) = linears(cell)
    assert node.attrs == (("bias", NO_BIAS),) and not node.has_bias
    assert "linear(x, h, bias=none)" in cell.text
    assert all(n.has_bias for n in linears(parse(RNN.format(""))))
    assert all(n.has_bias for n in linears(parse(RNN.format(", bias=0"))))


@pytest.mark.parametrize("name", list(CELLS))
def test_print_parse_round_trip(name):
    cell = parse(CELLS[name])
    assert parse(cell.text) == cell and parse(cell.text).hash == cell.hash
    assert cell.text.count("bias=none") == CELLS[name].count("bias=none")


def test_the_hash_tells_the_three_apart():
    """No bias, a bias, a bias hinted to start at 0: three different cells (the hint is part of a
    cell's identity, as before)."""
    hashes = {parse(RNN.format(k)).hash for k in ("", ", bias=none", ", bias=0", ", bias=1")}
    assert len(hashes) == 4
    # the attribute counts wherever the linear is, and commutes like any other argument order
    a = parse("state(h)\nh = tanh(linear(h, x, bias=none))\nreturn h\n")
    assert a.hash == parse(RNN.format(", bias=none")).hash
    assert zoo.name_of(parse(CELLS["gates_on_h"])) == "slim2" != zoo.name_of(parse(zoo.get("slim1").text))


def test_no_bias_parameter():
    I, H = 3, 7
    with_bias = parse(RNN.format(""))
    without = parse(RNN.format(", bias=none"))
    assert [s.name for s in param_specs(without, I, H)] == ["h.W_x", "h.W_h"]
    assert parameter_count(without, I, H) == parameter_count(with_bias, I, H) - H
    mixed = parse(CELLS["mixed"])
    biases = sorted(s.name for s in param_specs(mixed, I, H) if s.role == "bias")
    assert biases == ["f.1.b", "h.b"]  # f's second linear (the one on x) and h's output gate
    assert {s.init for s in param_specs(mixed, I, H) if s.name == "h.b"} == {-0.5}


def test_chrono_and_forget_bias_act_only_on_gates_with_a_bias():
    """``mixed``: f's bias-free recurrent linear is no handle; its ``linear(x)``'s bias sets f alone.
    i (bias-free) is not mirrored; everything else is drawn as by default."""
    cell = parse(CELLS["mixed"])
    assert gate_biases(cell).keep == (("f.1.b", 1),) and gate_biases(cell).input == ()
    plain = init_params(cell, 3, 8, np.random.default_rng(5))
    chrono = init_params(cell, 3, 8, np.random.default_rng(5), gate_init="chrono", chrono_tmax=40, forget_bias=1.0)
    assert plain.keys() == chrono.keys()
    assert {k for k in plain if not np.array_equal(plain[k], chrono[k])} == {"f.1.b"}
    assert np.all(chrono["f.1.b"] >= 1.0)


@pytest.mark.parametrize("name", list(CELLS))
def test_reference_gradients_match_finite_differences(name):
    cell = parse(CELLS[name], name=name)
    retry_on_kinks(elementwise_fd, cell, np.random.default_rng(21))
    retry_on_kinks(directional_fd, cell, np.random.default_rng(22))


def test_reference_forward_has_no_bias_term():
    """``h = tanh(x W_x + h W_h)``: with x = 0 and h0 = 0 it stays exactly 0 (a bias would move it)."""
    cell = parse(RNN.format(", bias=none"))
    params = init_params(cell, 2, 3, np.random.default_rng(0))
    run = compile(cell, "reference").forward(params, np.zeros((4, 2, 2)))
    assert np.array_equal(run.outputs, np.zeros((4, 2, 3)))
    x = np.random.default_rng(1).normal(size=(3, 2, 2))
    h, outs = np.zeros((2, 3)), []
    for x_t in x:
        h = np.tanh(x_t @ params["h.W_x"] + h @ params["h.W_h"])
        outs.append(h)
    np.testing.assert_allclose(compile(cell, "reference").forward(params, x).outputs, np.stack(outs), rtol=0, atol=1e-15)


def test_lowering():
    """A bias-free linear without an x term starts from a CONST 0; with one, its input-GEMM block
    has no bias (None); biased linears are as before."""
    plan = lower(zoo.get("slim2"))
    gate_linears = [k for k, n in enumerate(zoo.get("slim2").nodes) if n.op is Op.LINEAR and not n.has_bias]
    assert len(gate_linears) == 3
    starts = {ins.dst: ins for ins in plan.program if ins.dst in gate_linears}
    assert all(ins.code is Code.CONST and plan.consts[ins.aux] == 0.0 for ins in starts.values())
    assert plan.biases == () and [b.bias for b in plan.xblocks] == ["g.b"]
    mixed = lower(parse(CELLS["mixed"]))
    assert sorted((b.bias or "-") for b in mixed.xblocks) == ["-", "-", "-", "f.1.b", "h.b"]
    assert mixed.biases == ()
    assert sum(ins.code is Code.CONST for ins in mixed.program) == 2  # f's linear(h) and linear(r * h)
    plain = lower(zoo.get("slim1"))
    assert sorted(plain.biases) == ["f.b", "i.b", "o.b"] and not any(ins.code is Code.CONST for ins in plain.program)


@pytest.mark.parametrize("name", list(CELLS))
def test_operators_cope(name):
    """Every mutation and crossover on a cell with bias-free linears gives valid children that print
    and parse back and run; bias-free linears carried over keep their attribute."""
    cell = parse(CELLS[name], name=name)
    rng = np.random.default_rng(3)
    kept = made = 0
    for op in MUTATIONS.values():
        for seed in range(6):
            child = op(cell, np.random.default_rng(seed))
            if child is None:  # nothing to apply it to (no + - * in x_and_h, ...)
                continue
            _check_child(child, rng)
            made += 1
            kept += any(not n.has_bias for n in linears(child))
    assert made >= 24  # most operators apply, even to the one-linear x_and_h
    for seed in range(20):
        child, _ = mutate(cell, np.random.default_rng(seed))
        _check_child(child, rng)
        for other in (zoo.get("lstm"), zoo.get("gru"), cell):
            got = crossover(cell, other, np.random.default_rng(seed))
            if got is not None:
                _check_child(got[0], rng)
            got = crossover(other, cell, np.random.default_rng(seed))
            if got is not None:
                _check_child(got[0], rng)
    assert kept > 0


def _check_child(child, rng):
    validate(child)
    assert parse(child.text) == child, child.text
    assert operators.inner_count(child) <= operators.MAX_NODES
    compile(child, "cpu")  # lowering works
    I, H = (4, 4) if child.x_elementwise else (3, 4)
    params = init_params(child, I, H, rng)
    kernel = compile(child, "reference")
    fwd = kernel.forward(params, rng.normal(size=(3, 2, I)))
    grads = kernel.backward(params, fwd.tape, np.ones_like(fwd.outputs))
    assert set(grads.params) == set(params)
    assert np.all(np.isfinite(fwd.outputs))
