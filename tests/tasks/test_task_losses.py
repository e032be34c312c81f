"""The masked losses: values against naive formulas, gradients against central differences, masking."""

import math

import numpy as np
import pytest

from cellsearch.errors import ShapeError
from cellsearch.tasks.losses import binary_cross_entropy, cross_entropy, mean_squared_error

T, B, K = 4, 3, 5


def make_case(rng, loss):
    pred = rng.normal(0, 2, (T, B, K))
    mask = (rng.random((T, B)) < 0.6).astype(np.float64)
    mask[0, 0] = 1.0
    mask[1, 0] = 0.5  # a fractional weight is a weighted mean, not a count
    mask[2, 1] = 0.0
    if loss is cross_entropy:
        target = rng.integers(0, K, (T, B))
    elif loss is binary_cross_entropy:
        target = (rng.random((T, B, K)) < 0.5).astype(np.float64)
    else:
        target = rng.normal(0, 1, (T, B, K))
    return pred, target, mask


def naive(loss, pred, target, mask):
    """The per-step losses written out term by term, then the weighted mean."""
    total, weight = 0.0, 0.0
    for t in range(pred.shape[0]):
        for b in range(pred.shape[1]):
            if mask[t, b] == 0:
                continue
            z = pred[t, b]
            if loss is cross_entropy:
                step = -math.log(math.exp(z[target[t, b]]) / sum(math.exp(v) for v in z))
            elif loss is binary_cross_entropy:
                p = [1 / (1 + math.exp(-v)) for v in z]
                step = -sum(tk * math.log(pk) + (1 - tk) * math.log(1 - pk) for tk, pk in zip(target[t, b], p))
            else:
                step = sum((v - tk) ** 2 for v, tk in zip(z, target[t, b]))
            total += mask[t, b] * step
            weight += mask[t, b]
    return total / weight


LOSSES = [cross_entropy, binary_cross_entropy, mean_squared_error]


@pytest.mark.parametrize("loss", LOSSES, ids=lambda f: f.__name__)
def test_value_matches_naive_formula(loss, rng):
    pred, target, mask = make_case(rng, loss)
    value, _ = loss(pred, target, mask)
    assert isinstance(value, float)
    assert value == pytest.approx(naive(loss, pred, target, mask), rel=1e-12)


@pytest.mark.parametrize("loss", LOSSES, ids=lambda f: f.__name__)
def test_gradient_matches_central_differences(loss, rng):
    pred, target, mask = make_case(rng, loss)
    _, grad = loss(pred, target, mask)
    assert grad.shape == pred.shape and grad.dtype == np.float64
    h = 1e-6
    numeric = np.zeros_like(pred)
    for idx in np.ndindex(pred.shape):
        up, down = pred.copy(), pred.copy()
        up[idx] += h
        down[idx] -= h
        numeric[idx] = (loss(up, target, mask)[0] - loss(down, target, mask)[0]) / (2 * h)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("loss", LOSSES, ids=lambda f: f.__name__)
def test_masked_steps_are_never_read(loss, rng):
    pred, target, mask = make_case(rng, loss)
    value, grad = loss(pred, target, mask)
    off = mask == 0
    assert off.any() and (~off).any()
    junk_pred = pred.copy()
    junk_pred[off] = np.nan
    junk_target = target.copy()
    if loss is cross_entropy:
        junk_target[off] = 10 * K  # out of range, but not counted
    else:
        junk_target[off] = np.inf
    value2, grad2 = loss(junk_pred, junk_target, mask)
    assert value2 == value
    np.testing.assert_array_equal(grad2, grad)
    assert np.all(grad[off] == 0)
    assert np.all(np.any(grad[~off] != 0, axis=-1))


@pytest.mark.parametrize("loss", LOSSES, ids=lambda f: f.__name__)
def test_mean_is_over_counted_steps(loss, rng):
    """Doubling every weight or adding uncounted steps leaves the mean alone."""
    pred, target, mask = make_case(rng, loss)
    value, grad = loss(pred, target, mask)
    value2, grad2 = loss(pred, target, 2 * mask)
    assert value2 == pytest.approx(value, rel=1e-14)
    np.testing.assert_allclose(grad2, grad, rtol=1e-14)
    one_step = np.zeros_like(mask)
    one_step[0, 0] = 1.0
    single, _ = loss(pred, target, one_step)
    assert single == pytest.approx(naive(loss, pred[:1, :1], target[:1, :1], one_step[:1, :1]), rel=1e-12)


def test_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[[1e4, 0.0, -1e4]]])
    y = np.array([[1]])
    mask = np.ones((1, 1))
    value, grad = cross_entropy(logits, y, mask)
    assert value == pytest.approx(1e4)
    np.testing.assert_allclose(grad, [[[1.0, -1.0, 0.0]]], atol=1e-300)
    value, grad = cross_entropy(logits, np.array([[0]]), mask)
    assert value == 0.0 and np.all(np.isfinite(grad))


def test_binary_cross_entropy_is_stable_for_huge_logits():
    logits = np.array([[[1e3, -1e3, 1e3, -1e3]]])
    targets = np.array([[[0.0, 1.0, 1.0, 0.0]]])
    value, grad = binary_cross_entropy(logits, targets, np.ones((1, 1)))
    assert value == pytest.approx(2e3)
    np.testing.assert_allclose(grad, [[[1.0, -1.0, 0.0, 0.0]]])


def test_binary_cross_entropy_sums_over_outputs():
    """K independent coin flips at logit 0 cost K·ln 2 per step (nats per frame, as JSB reports)."""
    logits = np.zeros((3, 2, 88))
    targets = (np.arange(88) % 2 * np.ones((3, 2, 1))).astype(float)
    value, _ = binary_cross_entropy(logits, targets, np.ones((3, 2)))
    assert value == pytest.approx(88 * math.log(2), rel=1e-14)


def test_gradient_dtype_follows_predictions(rng):
    pred, target, mask = make_case(rng, cross_entropy)
    _, grad = cross_entropy(pred.astype(np.float32), target, mask.astype(np.float32))
    assert grad.dtype == np.float32


@pytest.mark.parametrize(
    ("call", "words"),
    [
        (lambda: cross_entropy(np.zeros((2, 3, 4)), np.zeros((2, 2), dtype=int), np.ones((2, 3))), "targets must be [T, B]"),
        (lambda: cross_entropy(np.zeros((2, 3, 4)), np.zeros((2, 3)), np.ones((2, 3))), "integer class ids"),
        (lambda: cross_entropy(np.zeros((2, 3, 4)), np.full((2, 3), 4), np.ones((2, 3))), "class ids in [0, 3]"),
        (lambda: cross_entropy(np.zeros((2, 3, 4)), np.zeros((2, 3), dtype=int), np.zeros((2, 3))), "counts no step"),
        (lambda: cross_entropy(np.zeros((2, 3)), np.zeros((2, 3), dtype=int), np.ones((2, 3))), "must be [T, B, K]"),
        (lambda: mean_squared_error(np.zeros((2, 3, 1)), np.zeros((2, 3, 1)), np.ones((3, 2))), "mask must be [T, B]"),
        (lambda: mean_squared_error(np.zeros((2, 3, 1)), np.zeros((2, 3, 1)), -np.ones((2, 3))), "non-negative"),
        (lambda: mean_squared_error(np.zeros((2, 3, 1)), np.zeros((2, 3, 1)), np.full((2, 3), np.nan)), "finite"),
        (lambda: mean_squared_error(np.zeros((2, 3, 1)), np.zeros((2, 3, 1)), np.full((2, 3), np.inf)), "finite"),
        (lambda: cross_entropy(np.zeros((2, 3, 4)), np.full((2, 3), -1), np.ones((2, 3))), "class ids in [0, 3]"),
        (lambda: cross_entropy(np.zeros((2, 3, 0)), np.zeros((2, 3), dtype=int), np.ones((2, 3))), "class ids in [0, -1]"),
        (lambda: binary_cross_entropy(np.zeros((2, 3, 2)), np.zeros((2, 3, 1)), np.ones((2, 3))), "targets must have"),
    ],
)
def test_bad_arguments_raise_shape_error(call, words):
    with pytest.raises(ShapeError) as err:
        call()
    assert words in str(err.value)


def _cross_entropy_as_numpy(logits, y, mask):
    """cross_entropy as it was written with NumPy's reductions (the compiled one-pass version must agree
    to rounding: it sums in another order and its exp is not NumPy's)."""
    w = np.asarray(mask, dtype=np.float64)
    counted = w > 0
    total = float(w.sum())
    ids = np.where(counted, y, 0).astype(np.int64)
    z = np.where(counted[..., None], np.asarray(logits, dtype=np.float64), 0.0)
    top = z.max(axis=2, keepdims=True)
    e = np.exp(z - top)
    s = e.sum(axis=2, keepdims=True)
    lse = (top + np.log(s))[..., 0]
    picked = np.take_along_axis(z, ids[..., None], axis=2)[..., 0]
    loss = float(np.sum(w * (lse - picked)) / total)
    d = e / s
    np.put_along_axis(d, ids[..., None], np.take_along_axis(d, ids[..., None], axis=2) - 1.0, axis=2)
    d *= (w / total)[..., None]
    return loss, d


@pytest.mark.parametrize("K", [1, 2, 9, 16, 17, 40])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_agrees_with_numpys_reductions(K, dtype, rng):
    T, B = 7, 5
    logits = (rng.normal(size=(T, B, K)) * 10.0 ** rng.integers(-2, 3, size=(T, B, 1))).astype(dtype)
    y = rng.integers(0, K, size=(T, B))
    mask = rng.choice([0.0, 1.0, 0.25, 2.0], size=(T, B)).astype(np.float32)
    mask[0, 0] = 1.0
    logits[mask == 0] = np.nan  # padding: never read
    y[mask == 0] = -3
    loss, d = cross_entropy(logits, y, mask)
    want_loss, want_d = _cross_entropy_as_numpy(logits, y, mask)
    assert loss == pytest.approx(want_loss, rel=1e-13)
    assert d.dtype == (np.float64 if dtype == np.float64 else np.float32)
    assert np.all(d[mask == 0] == 0)
    # (the target's p - 1 cancels where p is near 1: its rounding error is absolute, ~1e-16 of a weight)
    if dtype == np.float64:
        np.testing.assert_allclose(d, want_d, rtol=1e-12, atol=1e-15)
    else:  # the float64 gradient rounded once: at most a unit in the last place apart
        np.testing.assert_allclose(d, want_d.astype(np.float32), rtol=1.2e-7, atol=1e-15)


def test_cross_entropy_passes_nan_on(rng):
    """A NaN logit on a counted step (a diverged model) makes the loss NaN, wherever it sits in the
    step, so the training loop sees the divergence; on a step of weight 0 it is never read."""
    for k in range(4):
        logits = rng.normal(size=(2, 3, 4))
        logits[1, 2, k] = np.nan
        loss, _ = cross_entropy(logits, np.zeros((2, 3), dtype=int), np.ones((2, 3)))
        assert math.isnan(loss)
        mask = np.ones((2, 3))
        mask[1, 2] = 0.0
        loss, d = cross_entropy(logits, np.zeros((2, 3), dtype=int), mask)
        assert math.isfinite(loss) and np.all(np.isfinite(d))
