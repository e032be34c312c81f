"""The reference backward pass against central finite differences, in float64."""

import numpy as np
import pytest

from cellsearch import init_params, zoo
from cellsearch.backends import compile
from cellsearch.ir.ops import Op
from cellsearch.ir.random import random_cell

EPS = 1e-4
TOL = 1e-6
# relative error; below FLOOR the difference is compared at TOL * FLOOR absolute, since a central
# difference of a loss of size L carries ~1e-16 * L / EPS of rounding noise
FLOOR = 1e-3


def make_problem(cell, rng, I=3, H=3, T=4, B=2):
    if cell.x_elementwise:
        I = H
    params = init_params(cell, I, H, rng, scale=2.0)
    x = rng.normal(size=(T, B, I))
    s0 = {s: rng.normal(scale=0.5, size=(B, H)) for s in cell.states}
    R = rng.normal(size=(T, B, H))
    S = {s: rng.normal(size=(B, H)) for s in cell.states}
    kernel = compile(cell, "reference")

    relus = [k for k, n in enumerate(cell.nodes) if n.op is Op.RELU]

    def loss(p, x, s0):
        f = kernel.forward(p, x, s0)
        # a finite difference across a ReLU kink is meaningless: remember which side each input is on
        sides = tuple(bytes(np.asarray(step[cell.nodes[k].args[0]]) > 0) for step in f.tape.values for k in relus)
        kinks.add(sides)
        return float((f.outputs * R).sum() + sum((f.states[s] * S[s]).sum() for s in cell.states))

    kinks: set = set()

    f = kernel.forward(params, x, s0)
    grads = kernel.backward(params, f.tape, R, S)
    return params, x, s0, loss, grads, kinks


class CrossedKink(Exception):
    pass


def retry_on_kinks(check, cell, rng, tries=10):
    """Run ``check``; draw a new problem when a finite difference crossed a ReLU kink."""
    for _ in range(tries):
        try:
            return check(cell, rng)
        except CrossedKink:
            continue
    raise AssertionError(f"{cell.name}: every draw crossed a ReLU kink")


def central(f, eps=EPS):
    """d/dt f(t) at 0 by central differences with one Richardson step (error O(eps^4))."""
    d1 = (f(eps) - f(-eps)) / (2 * eps)
    d2 = (f(eps / 2) - f(-eps / 2)) / eps
    return (4 * d2 - d1) / 3


def checked(fd, kinks):
    if len(kinks) > 1:
        raise CrossedKink
    return fd


def rel_err(a, b):
    return abs(a - b) / max(abs(a), abs(b), FLOOR)


def elementwise_fd(cell, rng):
    """Every element of every gradient (params, x, initial states) against central differences."""
    params, x, s0, loss, grads, kinks = make_problem(cell, rng)
    worst = 0.0
    targets = [("param", n, params[n], grads.params[n]) for n in params]
    targets += [("x", "x", x, grads.x)] + [("state0", s, s0[s], grads.state0[s]) for s in s0]
    for kind, name, value, grad in targets:
        for idx in np.ndindex(value.shape):
            old = value[idx]

            def at(t):
                value[idx] = old + t
                out = loss(params, x, s0)
                value[idx] = old
                return out

            fd = checked(central(at), kinks)
            err = rel_err(fd, grad[idx])
            assert err < TOL, f"{cell.name}: d/d{kind} {name}{list(idx)}: analytic {grad[idx]!r}, finite difference {fd!r}"
            worst = max(worst, err)
    return worst


def directional_fd(cell, rng, directions=2):
    """Each gradient tensor projected on random directions against central differences."""
    params, x, s0, loss, grads, kinks = make_problem(cell, rng)
    worst = 0.0
    for _ in range(directions):
        for name in params:
            v = rng.normal(size=params[name].shape)
            fd = checked(central(lambda t: loss({**params, name: params[name] + t * v}, x, s0)), kinks)
            err = rel_err(fd, float((grads.params[name] * v).sum()))
            assert err < TOL, f"{cell.name}: d/d{name} off by {err:.2e}\n{cell.text}"
            worst = max(worst, err)
        v = rng.normal(size=x.shape)
        fd = checked(central(lambda t: loss(params, x + t * v, s0)), kinks)
        err = rel_err(fd, float((grads.x * v).sum()))
        assert err < TOL, f"{cell.name}: d/dx off by {err:.2e}\n{cell.text}"
        for s in s0:
            v = rng.normal(size=s0[s].shape)
            fd = checked(central(lambda t: loss(params, x, {**s0, s: s0[s] + t * v})), kinks)
            err = rel_err(fd, float((grads.state0[s] * v).sum()))
            assert err < TOL, f"{cell.name}: d/d{s}0 off by {err:.2e}\n{cell.text}"
    return worst


@pytest.mark.parametrize("name", zoo.names())
def test_zoo_gradients_match_finite_differences(name):
    retry_on_kinks(elementwise_fd, zoo.get(name), np.random.default_rng(7))


@pytest.mark.parametrize("chunk", range(4))
def test_200_random_cells_match_finite_differences(chunk):
    for seed in range(chunk * 50, chunk * 50 + 50):
        cell = random_cell(np.random.default_rng(seed), name=f"random{seed}")
        retry_on_kinks(directional_fd, cell, np.random.default_rng(10_000 + seed))


def test_a_wrong_rule_would_be_caught(monkeypatch):
    """The check has teeth: a tanh rule off by 1% fails it."""
    from cellsearch.grad import rules
    from cellsearch.ir.ops import Op

    good = rules.VJP[Op.TANH]
    monkeypatch.setitem(rules.VJP, Op.TANH, lambda g, a, y, p: rules.LocalGrad([good(g, a, y, p).args[0] * 1.01]))
    with pytest.raises(AssertionError):
        directional_fd(zoo.get("rnn"), np.random.default_rng(0))
