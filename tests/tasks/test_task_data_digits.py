"""The digits task: scikit-learn's 8×8 digits as rows or pixels, seeded stratified splits, the prior baseline."""

import math
import os
import random
import sys

import numpy as np
import pytest

from cellsearch.errors import ConfigError
from cellsearch.tasks import TASKS, make_task
from cellsearch.tasks.digits import PERMUTATION_SEED, SPLIT_SEED, DigitsTask, pixel_permutation
from cellsearch.tasks.losses import cross_entropy

if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
    import sklearn.datasets as skd  # a missing dependency is a failure in CI
else:
    skd = pytest.importorskip("sklearn.datasets")

SPLITS = ("train", "valid", "test")


@pytest.fixture(scope="module")
def digits():
    bunch = skd.load_digits()
    return bunch.data.astype(np.float64), bunch.target.astype(np.int64)


def draw(seed=0, batch_size=32, **opts):
    task = make_task("digits", **opts)
    return task, task.sample(np.random.default_rng(seed), batch_size)


def matches(images, pixels):
    """sklearn indices whose image (0–16) is exactly ``pixels`` (already scaled to [0, 1])."""
    return np.flatnonzero(np.all(images == pixels * 16, axis=1))


def test_registered():
    assert TASKS["digits"] is DigitsTask
    task = make_task("digits")
    assert task.options == {"mode": "rows", "permute": False, "split": "train"}
    assert (task.loss, task.metric, task.higher_is_better, task.input_kind) == ("ce", "accuracy", True, "vector")


@pytest.mark.parametrize(("mode", "T", "width"), [("rows", 8, 8), ("pixels", 64, 1)])
@pytest.mark.parametrize("permute", [False, True])
def test_shapes_and_dtypes(mode, T, width, permute):
    task, batch = draw(batch_size=17, mode=mode, permute=permute)
    assert (task.input_size, task.output_size, task.steps) == (width, 10, T)
    assert batch.x.dtype == np.float32 and batch.x.shape == (T, 17, width)
    assert batch.x.min() >= 0.0 and batch.x.max() <= 1.0 and batch.x.max() == 1.0
    assert batch.y.dtype == np.int64 and batch.y.shape == (T, 17)
    assert batch.mask.dtype == np.float32 and batch.mask.shape == (T, 17)
    np.testing.assert_array_equal(batch.mask[-1], 1.0)
    assert batch.mask[:-1].sum() == 0 and batch.y[:-1].sum() == 0
    assert batch.y[-1].min() >= 0 and batch.y[-1].max() <= 9


@pytest.mark.parametrize("opts", [{}, {"mode": "pixels", "permute": True, "split": "test"}])
def test_determinism(opts):
    _, a = draw(seed=3, **opts)
    _, b = draw(seed=3, **opts)
    _, c = draw(seed=4, **opts)
    for field in ("x", "y", "mask"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x, c.x)


def test_global_random_state_is_untouched():
    np.random.seed(3)
    random.seed(3)
    before_np, before_py = np.random.get_state()[1].copy(), random.getstate()
    draw(mode="pixels", permute=True)
    np.testing.assert_array_equal(np.random.get_state()[1], before_np)
    assert random.getstate() == before_py


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("mode", ["rows", "pixels"])
def test_inputs_are_sklearn_images_and_labels_match(digits, split, mode):
    images, labels = digits
    task, batch = draw(seed=11, batch_size=64, mode=mode, split=split)
    allowed = set(task.indices.tolist())
    for b in range(64):
        pixels = batch.x[:, b, :].reshape(64)  # row-major: row t is x[t] (rows), pixel t is x[t] (pixels)
        found = matches(images, pixels.astype(np.float64))
        assert len(found) >= 1
        assert batch.y[-1, b] in labels[found]
        assert allowed & set(found.tolist()), "every example comes from the task's split"


def test_permutation_is_fixed_and_applied(digits):
    perm = pixel_permutation()
    np.testing.assert_array_equal(perm, np.random.default_rng(PERMUTATION_SEED).permutation(64))
    np.testing.assert_array_equal(np.sort(perm), np.arange(64))
    assert not np.array_equal(perm, np.arange(64))
    _, plain = draw(seed=5, mode="pixels")
    _, shuffled = draw(seed=5, mode="pixels", permute=True)
    np.testing.assert_array_equal(shuffled.x[:, :, 0], plain.x[perm, :, 0])
    np.testing.assert_array_equal(shuffled.y, plain.y)
    _, rows = draw(seed=5, mode="rows", permute=True)  # rows mode reads the same permuted order 8 at a time
    np.testing.assert_array_equal(rows.x.transpose(1, 0, 2).reshape(32, 64), shuffled.x[:, :, 0].T)


def test_splits_are_disjoint_stratified_and_pinned(digits):
    _, labels = digits
    parts = {s: DigitsTask(split=s).indices for s in SPLITS}
    assert [len(p) for p in parts.values()] == [1079, 359, 359]
    np.testing.assert_array_equal(np.sort(np.concatenate(list(parts.values()))), np.arange(1797))
    for digit in range(10):
        n = int(np.sum(labels == digit))
        held = int(0.2 * n + 0.5)
        assert [int(np.sum(labels[p] == digit)) for p in parts.values()] == [n - 2 * held, held, held]
    # pinned, so that a change of seed or method shows up here
    assert SPLIT_SEED == 20240
    assert parts["valid"][:8].tolist() == [1, 14, 23, 25, 27, 31, 32, 35]
    assert parts["test"][:8].tolist() == [4, 5, 13, 18, 20, 24, 28, 34]
    np.testing.assert_array_equal(DigitsTask(split="valid", mode="pixels").indices, parts["valid"])


def test_indices_are_read_only():
    with pytest.raises(ValueError):
        DigitsTask().indices[0] = 3


@pytest.mark.parametrize("split", SPLITS)
def test_baseline_is_the_training_prior(digits, split):
    _, labels = digits
    train = DigitsTask(split="train").indices
    prior = np.bincount(labels[train], minlength=10) / len(train)
    scored = labels[DigitsTask(split=split).indices]
    loss = -sum(math.log(prior[c]) for c in scored) / len(scored)
    acc = float(np.mean(scored == np.argmax(prior)))
    base = make_task("digits", split=split, mode="pixels").baseline()
    assert base == {"loss": pytest.approx(loss, rel=1e-12), "accuracy": pytest.approx(acc, rel=1e-12)}
    assert base["loss"] == pytest.approx(math.log(10), abs=2e-4)
    assert base["accuracy"] == pytest.approx(0.1, abs=0.003)


def test_baseline_matches_a_constant_prior_predictor(digits):
    task = DigitsTask(split="valid")
    batch = task.sample(np.random.default_rng(0), 20000)
    _, labels = digits
    train = DigitsTask().indices
    prior = np.bincount(labels[train], minlength=10) / len(train)
    pred = np.broadcast_to(np.log(prior), (*batch.y.shape, 10)).copy()
    scores = task.score(pred, batch)
    assert scores["loss"] == pytest.approx(task.baseline()["loss"], abs=2e-3)
    assert scores["accuracy"] == pytest.approx(task.baseline()["accuracy"], abs=0.01)


def test_score():
    task, batch = draw(batch_size=40)
    perfect = 30.0 * np.eye(10)[batch.y]
    scores = task.score(perfect, batch)
    assert scores["accuracy"] == 1.0 and scores["loss"] < 1e-9
    pred = np.random.default_rng(1).normal(size=(*batch.y.shape, 10))
    assert task.score(pred, batch)["loss"] == cross_entropy(pred, batch.y, batch.mask)[0]
    spoiled = perfect.copy()
    spoiled[:-1] = -spoiled[:-1]  # steps before the last do not count
    assert task.score(spoiled, batch) == scores


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"mode": "cols"}, "task 'digits': option 'mode' must be one of 'rows', 'pixels' (got 'cols')"),
        ({"permute": 1}, "task 'digits': option 'permute' must be True or False (got 1)"),
        ({"split": "dev"}, "task 'digits': option 'split' must be one of 'train', 'valid', 'test' (got 'dev')"),
        ({"split": None}, "task 'digits': option 'split' must be one of 'train', 'valid', 'test' (got None)"),
        ({"sklearn": True}, "task 'digits': unknown option 'sklearn' (known: mode, permute, split)"),
    ],
)
def test_bad_options(opts, message):
    with pytest.raises(ConfigError) as err:
        make_task("digits", **opts)
    assert str(err.value) == message


def test_missing_sklearn_fails_at_construction(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    with pytest.raises(ConfigError) as err:
        make_task("digits")
    assert str(err.value) == "task 'digits': needs the 'scikit-learn' package, which is not installed (pip install scikit-learn)"
