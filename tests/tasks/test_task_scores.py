"""Scores and baselines: the stated chance levels, exactly and empirically, and score's consistency."""

import math

import numpy as np
import pytest

from cellsearch.errors import ShapeError
from cellsearch.tasks import TASKS, make_task
from cellsearch.tasks.losses import binary_cross_entropy, cross_entropy, mean_squared_error

SMALL = {
    "copy": {"length": 12, "symbols": 5, "n": 4},
    "adding": {"length": 20},
    "temporal_order": {},
    "delayed_recall": {"lag": 5},
    "associative_recall": {},
    "parity": {"length": 10},
    "arithmetic": {},
    "xml": {"max_steps": 10},
    "mackey_glass": {"length": 30, "warmup": 5, "washout": 100},
    "sunspots": {"length": 10},
    "tagging": {"length": 12, "symbols": 3},
    "timing": {"interval": 3, "spread": 4, "onset": 3},
}


def draw(name, batch_size=64, seed=0, **opts):
    task = make_task(name, **(opts or SMALL[name]))
    return task, task.sample(np.random.default_rng(seed), batch_size)


def perfect(task, batch):
    """Outputs that are right on every counted step."""
    if task.loss == "ce":
        return 30.0 * np.eye(task.output_size)[batch.y]
    if task.loss == "bce":
        return np.where(batch.y > 0.5, 30.0, -30.0)
    return batch.y.astype(np.float64)


# ---- exact baselines ---------------------------------------------------------------------------


@pytest.mark.parametrize(("T", "quoted"), [(100, 0.173), (200, 0.0945), (500, 0.040), (1000, 0.0204)])
def test_copy_baseline_is_the_studies_formula(T, quoted):
    base = make_task("copy", length=T).baseline()
    assert base["loss"] == 10 * math.log(8) / (T + 20)
    assert base["loss"] == pytest.approx(quoted, abs=6e-4)  # STUDIES.md rounds to 3 figures
    assert base["accuracy"] == 1 / 8


def test_copy_baseline_generalises():
    base = make_task("copy", length=30, symbols=5, n=3).baseline()
    assert base["loss"] == 3 * math.log(5) / 36


@pytest.mark.parametrize(
    ("name", "opts", "expected"),
    [
        ("adding", {}, {"loss": 1 / 6, "mse": 1 / 6}),
        ("temporal_order", {"variant": "a"}, {"loss": math.log(4), "accuracy": 0.25}),
        ("temporal_order", {"variant": "b"}, {"loss": math.log(8), "accuracy": 0.125}),
        ("delayed_recall", {"symbols": 12}, {"loss": math.log(12), "accuracy": 1 / 12}),
        ("associative_recall", {"pairs": 7}, {"loss": math.log(10), "accuracy": 0.1}),
        ("parity", {}, {"loss": math.log(2), "accuracy": 0.5}),
        ("parity", {"running": True}, {"loss": math.log(2), "accuracy": 0.5}),
        ("arithmetic", {}, {"loss": math.log(12), "accuracy": 1 / 12}),
        ("xml", {}, {"loss": math.log(30), "accuracy": 1 / 30}),
    ],
)
def test_baseline_values(name, opts, expected):
    assert make_task(name, **opts).baseline() == expected


@pytest.mark.parametrize("name", list(SMALL))
def test_baseline_uses_score_keys(name):
    task, batch = draw(name)
    base = task.baseline()
    scores = task.score(perfect(task, batch), batch)
    assert "loss" in base and task.metric in base
    assert set(base) <= set(scores)


# ---- empirical chance levels -------------------------------------------------------------------


def test_adding_predicting_one_gives_one_sixth():
    task, batch = draw("adding", batch_size=20_000, length=100)
    assert np.mean((batch.y[-1, :, 0].astype(np.float64) - 1) ** 2) == pytest.approx(1 / 6, abs=0.01)
    scores = task.score(np.ones(batch.y.shape), batch)
    assert scores["mse"] == pytest.approx(task.baseline()["mse"], abs=0.01)
    assert scores["loss"] == scores["mse"]


def test_copy_memoryless_predictor_scores_the_baseline():
    """Blank for sure on the first T+n steps, uniform over the symbols on the last n."""
    task, batch = draw("copy", batch_size=32, length=40, symbols=8, n=10)
    logits = np.full((*batch.y.shape, task.output_size), -1e4)
    logits[: -task.n, :, 0] = 0.0
    logits[-task.n :, :, 1:] = 0.0
    scores = task.score(logits, batch)
    assert scores["loss"] == pytest.approx(task.baseline()["loss"], rel=1e-12)
    assert scores["loss"] == pytest.approx(10 * math.log(8) / 60, rel=1e-12)
    # the metric only counts recall steps: all-blank guesses score 0 although they are right on T+n steps
    blank = np.zeros_like(logits)
    blank[:, :, 0] = 1.0
    assert task.score(blank, batch)["accuracy"] == 0.0


@pytest.mark.parametrize(
    ("name", "opts"), [("temporal_order", {"variant": "b"}), ("delayed_recall", {}), ("associative_recall", {})]
)
def test_uniform_and_constant_guesses_score_chance(name, opts):
    task, batch = draw(name, batch_size=4000, **opts)
    uniform = np.zeros((*batch.y.shape, task.output_size))
    assert task.score(uniform, batch)["loss"] == pytest.approx(task.baseline()["loss"], rel=1e-12)
    constant = uniform.copy()
    constant[:, :, 0] = 1.0  # always class 0
    assert task.score(constant, batch)["accuracy"] == pytest.approx(task.baseline()["accuracy"], abs=0.02)


@pytest.mark.parametrize("running", [False, True])
def test_parity_chance(running):
    task, batch = draw("parity", batch_size=4000, length=10, running=running)
    zeros = np.zeros(batch.y.shape)
    assert task.score(zeros, batch)["loss"] == pytest.approx(math.log(2), rel=1e-12)
    always_one = np.ones(batch.y.shape)
    assert task.score(always_one, batch)["accuracy"] == pytest.approx(0.5, abs=0.02)


def test_arithmetic_uniform_answer_guess_scores_the_baseline():
    from cellsearch.tasks.arithmetic import INDEX

    task, batch = draw("arithmetic", batch_size=64)
    logits = np.full((*batch.y.shape, task.output_size), -1e4)
    for ch in "0123456789-.":
        logits[:, :, INDEX[ch]] = 0.0
    assert task.score(logits, batch)["loss"] == pytest.approx(task.baseline()["loss"], rel=1e-12)


def test_xml_uniform_guess_scores_the_baseline():
    task, batch = draw("xml")
    scores = task.score(np.zeros((*batch.y.shape, task.output_size)), batch)
    assert scores["loss"] == pytest.approx(task.baseline()["loss"], rel=1e-12)


# ---- score -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SMALL))
def test_perfect_outputs_score_perfectly(name):
    task, batch = draw(name)
    scores = task.score(perfect(task, batch), batch)
    if task.loss == "mse":
        assert scores["loss"] == 0.0 and scores[task.metric] == 0.0
    else:
        assert scores["accuracy"] == 1.0 and scores["loss"] < 1e-9
    assert all(isinstance(v, float) for v in scores.values())


@pytest.mark.parametrize("name", list(SMALL))
def test_score_loss_is_the_masked_loss(name, rng):
    task, batch = draw(name)
    pred = rng.normal(0, 1, (*batch.mask.shape, task.output_size))
    fn = {"ce": cross_entropy, "bce": binary_cross_entropy, "mse": mean_squared_error}[task.loss]
    expected, grad = fn(pred, batch.y, batch.mask)
    assert task.score(pred, batch)["loss"] == expected
    loss, grad2 = task.loss_and_grad(pred, batch)
    assert loss == expected
    np.testing.assert_array_equal(grad, grad2)


@pytest.mark.parametrize("name", list(SMALL))
def test_metric_ignores_uncounted_steps(name, rng):
    """Wrong outputs on steps the metric does not count change nothing."""
    task, batch = draw(name)
    pred = perfect(task, batch)
    off = task.metric_mask(batch) == 0
    if not off.any():
        pytest.skip("every step counts")
    spoiled = pred.copy()
    spoiled[off] = -spoiled[off] + rng.normal(0, 5, spoiled[off].shape)
    assert task.score(spoiled, batch)[task.metric] == task.score(pred, batch)[task.metric]


def test_one_wrong_step_costs_its_share(rng):
    task, batch = draw("parity", batch_size=4, length=5, running=True)
    pred = perfect(task, batch)
    pred[4, 2] = -pred[4, 2]
    assert task.score(pred, batch)["accuracy"] == pytest.approx(1 - 1 / 20)


def test_arithmetic_sequence_accuracy():
    task, batch = draw("arithmetic", batch_size=10)
    pred = perfect(task, batch)
    pred[batch.mask == 0] = np.roll(pred[batch.mask == 0], 1, axis=-1)  # uncounted steps are all wrong
    counted = np.flatnonzero(batch.mask[:, 3])
    pred[counted[-1], 3] = np.roll(pred[counted[-1], 3], 1)  # the end symbol of sample 3 is wrong
    scores = task.score(pred, batch)
    assert scores["sequence_accuracy"] == pytest.approx(0.9)
    assert scores["accuracy"] == pytest.approx(1 - 1 / batch.mask.sum())


def test_score_checks_the_prediction_shape():
    task, batch = draw("copy")
    with pytest.raises(ShapeError) as err:
        task.score(np.zeros((*batch.y.shape, task.output_size + 1)), batch)
    assert "task 'copy'" in str(err.value)


def test_every_task_is_scored_here():
    assert set(SMALL) == set(TASKS) - {"digits", "chorales", "text"}  # those have test_task_data_*.py
