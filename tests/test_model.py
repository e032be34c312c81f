"""The model around a cell (encoder, cell, head): its gradients against finite differences."""

import numpy as np
import pytest

from cellsearch import zoo
from cellsearch.model import Model
from cellsearch.tasks import make_task


@pytest.mark.parametrize(
    ("cell", "task", "options"),
    [
        ("lstm", "delayed_recall", {"lag": 3}),  # symbols: embedding, CE
        ("mut1", "adding", {"length": 6}),  # vector input projected to H (x used elementwise), MSE
        ("gru", "parity", {"length": 5, "running": True}),  # vector input fed directly, BCE
    ],
)
def test_model_gradients_match_finite_differences(cell, task, options):
    rng = np.random.default_rng(0)
    t = make_task(task, **options)
    model = Model(zoo.get(cell), t, hidden=4, backend="reference", dtype=np.float64)
    params = model.init(rng)
    batch = t.sample(rng, 3)
    _loss, grads = model.loss_and_grads(params, batch, t)
    assert set(grads) == set(params)
    for name, value in params.items():
        v = rng.normal(size=value.shape)

        def at(eps):
            return model.loss_and_grads({**params, name: value + eps * v}, batch, t)[0]

        fd = (at(1e-5) - at(-1e-5)) / 2e-5
        an = float(np.sum(grads[name] * v))
        assert abs(fd - an) <= 1e-6 * max(1.0, abs(fd)), f"{name}: analytic {an}, finite difference {fd}"


def test_cpu_and_reference_models_agree():
    rng = np.random.default_rng(1)
    t = make_task("delayed_recall", lag=4)
    ref = Model(zoo.get("gru"), t, hidden=6, backend="reference", dtype=np.float64)
    cpu = Model(zoo.get("gru"), t, hidden=6, backend="cpu", dtype=np.float64)
    params = ref.init(rng)
    batch = t.sample(rng, 5)
    l1, g1 = ref.loss_and_grads(params, batch, t)
    l2, g2 = cpu.loss_and_grads(params, batch, t)
    assert abs(l1 - l2) < 1e-12
    for k in g1:
        np.testing.assert_allclose(g2[k], g1[k], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(
    ("cell", "task", "options", "layers", "bidirectional"),
    [
        ("lstm", "delayed_recall", {"lag": 3}, 2, True),
        ("gru", "parity", {"length": 5, "running": True}, 2, False),
        ("mut1", "adding", {"length": 5}, 1, True),
    ],
)
def test_stacked_and_bidirectional_gradients(cell, task, options, layers, bidirectional):
    rng = np.random.default_rng(2)
    t = make_task(task, **options)
    model = Model(zoo.get(cell), t, hidden=3, backend="reference", dtype=np.float64, layers=layers, bidirectional=bidirectional)
    params = model.init(rng)
    per_run = len([k for k in params if k.startswith(model.runs[0].prefix)])
    assert sum(k.startswith("cell.") for k in params) == len(model.runs) * per_run
    batch = t.sample(rng, 2)
    _, grads = model.loss_and_grads(params, batch, t)
    assert set(grads) == set(params)
    for name, value in params.items():
        v = rng.normal(size=value.shape)
        fd = (
            model.loss_and_grads({**params, name: value + 1e-5 * v}, batch, t)[0]
            - model.loss_and_grads({**params, name: value - 1e-5 * v}, batch, t)[0]
        ) / 2e-5
        an = float(np.sum(grads[name] * v))
        assert abs(fd - an) <= 1e-6 * max(1.0, abs(fd)), f"{name}: analytic {an}, finite difference {fd}"
    cpu = Model(zoo.get(cell), t, hidden=3, backend="cpu", dtype=np.float64, layers=layers, bidirectional=bidirectional)
    l2, g2 = cpu.loss_and_grads(params, batch, t)
    assert abs(l2 - model.loss_and_grads(params, batch, t)[0]) < 1e-10
    for k in grads:
        np.testing.assert_allclose(g2[k], grads[k], rtol=1e-8, atol=1e-11)


def test_a_bidirectional_run_reads_the_future():
    """The backward-direction cell sees later inputs: changing the last input moves the first output."""
    rng = np.random.default_rng(0)
    t = make_task("parity", length=6, running=True)
    for bidi, moves in ((False, False), (True, True)):
        m = Model(zoo.get("gru"), t, hidden=4, backend="reference", dtype=np.float64, bidirectional=bidi)
        p = m.init(rng)
        x = t.sample(rng, 1).x.astype(np.float64)
        y1 = m.predict(p, x)
        x2 = x.copy()
        x2[-1] += 1.0
        assert (not np.allclose(m.predict(p, x2)[0], y1[0])) == moves
