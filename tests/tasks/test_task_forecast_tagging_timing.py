"""mackey_glass, sunspots, tagging and timing: targets recomputed from the inputs, baselines recomputed here."""

import math

import numpy as np
import pytest

from cellsearch.errors import ConfigError
from cellsearch.tasks import make_task

NEW = ["mackey_glass", "sunspots", "tagging", "timing"]


def sample(name, seed=0, batch_size=64, **options):
    task = make_task(name, **options)
    return task, task.sample(np.random.default_rng(seed), batch_size)


def rms(diff, mask):
    d = np.asarray(diff, dtype=np.float64)
    return math.sqrt(float((mask * d * d).sum() / mask.sum()))


# ---- all four ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NEW)
def test_default_shapes_dtypes_and_determinism(name):
    task, a = sample(name, seed=3, batch_size=9)
    _, b = sample(name, seed=3, batch_size=9)
    _, c = sample(name, seed=4, batch_size=9)
    T = a.steps
    assert a.mask.shape == (T, 9) and a.mask.dtype == np.float32
    if task.input_kind == "symbols":
        assert a.x.dtype == np.int64 and a.x.shape == (T, 9)
        assert a.y.dtype == np.int64 and a.y.shape == (T, 9)
    else:
        assert a.x.dtype == np.float32 and a.x.shape == (T, 9, task.input_size)
        assert a.y.dtype == np.float32 and a.y.shape == (T, 9, task.output_size)
    for field in ("x", "y", "mask"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert not np.array_equal(a.x, c.x)
    base = task.baseline()
    scores = task.score(np.zeros((T, 9, task.output_size)), a)
    assert "loss" in base and task.metric in base and set(base) <= set(scores)


@pytest.mark.parametrize("name", NEW)
def test_evaluate_runs_and_reports_the_baseline(name):
    from cellsearch.train import evaluate, make_hp
    from cellsearch.zoo import get

    hp = make_hp(steps=3, hidden=4, batch=4, eval_every=3, eval_size=8)
    result = evaluate(get("lstm"), name, {}, hp, seed=0)
    assert result["status"] == "ok", result["reason"]
    test_split = {"split": "test"} if name == "sunspots" else {}
    expected = make_task(name, **test_split).baseline()
    assert result["baseline"] == expected[result["metric"]]
    assert result["metric"] == make_task(name).metric and math.isfinite(result["test"])


# ---- mackey_glass ------------------------------------------------------------------------------

BETA, GAMMA, POWER = 0.2, 0.1, 10


def naive_mackey_glass(c, units, tau, substeps):
    """Step-by-step RK4 of one solution from x = c on [-tau, 0], the delayed term averaged at half steps."""
    h, D = 1.0 / substeps, tau * substeps
    g = lambda v: BETA * v / (1 + v**POWER)
    xs = [c] * (D + 1)
    for _ in range(units * substeps):
        x, g0, g1 = xs[-1], g(xs[-1 - D]), g(xs[-D])
        gm = (g0 + g1) / 2
        k1 = g0 - GAMMA * x
        k2 = gm - GAMMA * (x + h / 2 * k1)
        k3 = gm - GAMMA * (x + h / 2 * k2)
        k4 = g1 - GAMMA * (x + h * k3)
        xs.append(x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4))
    return np.array(xs[D::substeps])


@pytest.mark.parametrize(("tau", "substeps"), [(17, 10), (10, 1), (60, 3)])
def test_mackey_glass_integrator_is_step_by_step_rk4(tau, substeps):
    from cellsearch.tasks.mackey_glass import mackey_glass

    histories = np.array([0.3, 0.75])
    fast = mackey_glass(histories, 250, tau, substeps)
    assert fast.shape == (251, 2)
    for b, c in enumerate(histories):
        np.testing.assert_allclose(fast[:, b], naive_mackey_glass(c, 250, tau, substeps), rtol=0, atol=1e-12)


def dde_residual(v, tau):
    """x(t+1) − x(t) minus the trapezoid rule's integral of the right-hand side, on unit samples."""
    f = lambda i: BETA * v[i - tau] / (1 + v[i - tau] ** POWER) - GAMMA * v[i]
    i = np.arange(tau, v.shape[0] - 1)
    return (v[i + 1] - v[i]) - 0.5 * (f(i) + f(i + 1))


def test_mackey_glass_series_satisfies_the_dde():
    task, batch = sample("mackey_glass", batch_size=32, length=150)
    v = batch.x[:, :, 0].astype(np.float64) * task.std + task.mean  # back to raw units
    assert 0.2 < v.min() and v.max() < 1.5
    steps = np.abs(np.diff(v, axis=0)).max()
    assert np.abs(dde_residual(v, 17)).max() < 0.02 * steps  # the trapezoid rule's error on unit steps
    assert np.abs(dde_residual(v, 16)).max() > 0.1 * steps  # and the check can tell another delay apart
    assert np.abs(dde_residual(v, 18)).max() > 0.1 * steps


@pytest.mark.parametrize("horizon", [1, 5])
def test_mackey_glass_target_is_the_input_shifted(horizon):
    _, batch = sample("mackey_glass", batch_size=16, length=40, warmup=7, horizon=horizon)
    assert batch.steps == 47
    np.testing.assert_array_equal(batch.y[: 47 - horizon], batch.x[horizon:])
    assert np.all(batch.mask[:7] == 0) and np.all(batch.mask[7:] == 1)
    # the horizon's last targets continue the series: integrate one more window and compare
    longer = make_task("mackey_glass", length=40 + horizon, warmup=7, horizon=horizon)
    more = longer.sample(np.random.default_rng(0), 16)
    np.testing.assert_array_equal(more.x, np.concatenate([batch.x, batch.y[-horizon:]]))


def test_mackey_glass_is_normalised_and_varied():
    task, batch = sample("mackey_glass", batch_size=256, length=200)
    vals = batch.x[:, :, 0]
    assert abs(vals.mean()) < 0.1 and abs(vals.std() - 1) < 0.1
    assert task.mean == pytest.approx(0.93, abs=0.01) and task.std == pytest.approx(0.226, abs=0.01)
    assert np.corrcoef(vals[:, 0], vals[:, 1])[0, 1] < 0.9  # histories differ, so do the sequences


def test_mackey_glass_baselines():
    task = make_task("mackey_glass")
    base = task.baseline()
    assert set(base) == {"loss", "nrmse", "persistence_nrmse"}
    # on the reference batch the baselines are exactly the scores of their predictors
    ref = task.reference()
    mean_pred = np.zeros(ref.y.shape)
    assert task.score(mean_pred, ref)["nrmse"] == pytest.approx(base["nrmse"], rel=1e-12)
    assert task.score(mean_pred, ref)["loss"] == pytest.approx(base["loss"], rel=1e-9)
    assert task.score(ref.x.astype(np.float64), ref)["nrmse"] == pytest.approx(base["persistence_nrmse"], rel=1e-12)
    # and an independent batch, scored here by hand, agrees with them
    _, batch = sample("mackey_glass", seed=99, batch_size=400)
    m = batch.mask.astype(np.float64)
    y = batch.y[:, :, 0]
    assert rms(y, m) == pytest.approx(base["nrmse"], abs=0.05)  # the mean predictor: nrmse ≈ 1
    assert rms(y, m) == pytest.approx(1.0, abs=0.05)
    assert rms(batch.x[:, :, 0] - y, m) == pytest.approx(base["persistence_nrmse"], rel=0.05)
    assert 0.1 < base["persistence_nrmse"] < 0.2 and abs(base["nrmse"] - 1) < 0.02
    assert make_task("mackey_glass", horizon=10).baseline()["persistence_nrmse"] > 1


def test_forecast_score_reports_persistence_on_the_batch(rng):
    task, batch = sample("mackey_glass", batch_size=8)
    m = batch.mask.astype(np.float64)
    pred = rng.normal(0, 1, batch.y.shape)
    scores = task.score(pred, batch)
    assert scores["nrmse"] == pytest.approx(rms(pred[:, :, 0] - batch.y[:, :, 0], m), rel=1e-12)
    assert scores["persistence_nrmse"] == pytest.approx(rms(batch.x[:, :, 0].astype(float) - batch.y[:, :, 0], m), rel=1e-12)
    assert scores["loss"] == pytest.approx(scores["nrmse"] ** 2, rel=1e-9)
    perfect = task.score(batch.y.astype(np.float64), batch)
    assert perfect["nrmse"] == 0.0 and perfect["loss"] == 0.0


# ---- sunspots ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sunspots():
    """Years and values straight from statsmodels, normalised here by the first 217 years (70%)."""
    from statsmodels.api import datasets

    data = datasets.sunspots.load_pandas().data
    years = data["YEAR"].to_numpy().astype(int)
    raw = data["SUNACTIVITY"].to_numpy().astype(float)
    assert len(raw) == 309 and years[0] == 1700 and years[-1] == 2008
    train = raw[:217]
    return years, (raw - train.mean()) / train.std()


SPLIT_YEARS = {"train": (1700, 1916), "valid": (1917, 1962), "test": (1963, 2008)}


def window_starts(batch, series):
    """The start index of each window, found by matching its inputs against the series."""
    T = batch.steps
    windows = np.lib.stride_tricks.sliding_window_view(series, T)  # [n − T + 1, T]
    hits = np.all(np.abs(batch.x[:, :, 0].T[:, None, :] - windows[None]) < 1e-5, axis=2)  # [B, n − T + 1]
    assert np.all(hits.sum(axis=1) == 1)
    return np.argmax(hits, axis=1)


@pytest.mark.parametrize("split", ["train", "valid", "test"])
@pytest.mark.parametrize(("length", "warmup", "horizon"), [(20, 10, 1), (46, 0, 3), (5, 2, 20)])
def test_sunspots_windows_come_from_the_series_and_stay_in_their_split(sunspots, split, length, warmup, horizon):
    years, series = sunspots
    task, batch = sample("sunspots", batch_size=200, split=split, length=length, warmup=warmup, horizon=horizon)
    T = warmup + length
    assert batch.steps == T and task.input_size == task.output_size == 1
    assert np.all(batch.mask[:warmup] == 0) and np.all(batch.mask[warmup:] == 1)
    starts = window_starts(batch, series)
    idx = starts[None, :] + np.arange(T)[:, None]
    np.testing.assert_allclose(batch.y[:, :, 0], series[idx + horizon], atol=1e-5)
    first, last = SPLIT_YEARS[split]
    target_years = years[idx[warmup:] + horizon]
    assert target_years.min() >= first and target_years.max() <= last  # counted targets inside the split
    assert years[idx + horizon].max() <= last  # nothing of a later split: no target, hence no input
    # every admissible window is drawn (uniform over a small set), and no other
    lo = max(0, list(years).index(first) - warmup - horizon)
    hi = list(years).index(last) - warmup - length - horizon + 1
    expected = np.arange(lo, hi + 1)
    np.testing.assert_array_equal(task.starts(), expected)
    assert set(starts) <= set(expected)
    if len(expected) <= 50:
        assert set(starts) == set(expected)


def test_sunspots_test_split_targets_are_the_last_years(sunspots):
    years, _ = sunspots
    task, batch = sample("sunspots", batch_size=300, split="test")
    series_years, _ = task.series()
    np.testing.assert_array_equal(series_years, years)
    starts = window_starts(batch, task.series()[1])
    counted = starts[None, :] + np.arange(task.warmup, task.steps)[:, None] + task.horizon
    assert set(years[counted].ravel()) == set(range(1963, 2009))  # the last 46 years, all of them


def test_sunspots_values_are_statsmodels_normalised_by_train(sunspots):
    _, series = sunspots
    task = make_task("sunspots", split="valid")
    np.testing.assert_allclose(task.series()[1], series, rtol=0, atol=1e-12)
    from statsmodels.api import datasets

    raw = datasets.sunspots.load_pandas().data["SUNACTIVITY"].to_numpy()
    assert task.train_mean == pytest.approx(raw[:217].mean()) and task.train_std == pytest.approx(raw[:217].std())


@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_sunspots_baselines_by_enumeration(sunspots, split):
    years, series = sunspots
    task = make_task("sunspots", split=split)
    first, last = SPLIT_YEARS[split]
    L, w, k = 20, 10, 1
    targets, persist = [], []
    for a in range(len(series) - w - L - k + 1):
        counted = np.arange(a + w, a + w + L)
        if years[counted + k].min() >= first and years[counted + k].max() <= last:
            targets.append(series[counted + k])
            persist.append(series[counted])
    targets, persist = np.array(targets), np.array(persist)
    assert len(targets) == (187 if split == "train" else 27)
    sigma = targets.std()
    base = task.baseline()
    assert task.target_std() == pytest.approx(sigma, rel=1e-6)
    assert base["nrmse"] == pytest.approx(np.sqrt(np.mean(targets**2)) / sigma, rel=1e-6)  # predicting the train mean, 0
    assert base["loss"] == pytest.approx(np.mean(targets**2), rel=1e-6)
    assert base["persistence_nrmse"] == pytest.approx(np.sqrt(np.mean((targets - persist) ** 2)) / sigma, rel=1e-6)
    if split == "train":
        assert base["nrmse"] == pytest.approx(1.0, abs=0.01)
    else:
        assert base["nrmse"] > 1.05  # the 20th century's cycles were stronger than the training mean


def test_sunspots_splits_come_from_the_evaluation():
    from cellsearch.train.loop import _split_tasks

    tasks = _split_tasks("sunspots", {"length": 12})
    assert [t.split for t in tasks] == ["train", "valid", "test"] and all(t.length == 12 for t in tasks)
    with pytest.raises(ConfigError, match="chosen by the evaluation"):
        _split_tasks("sunspots", {"split": "test"})


# ---- tagging -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("length", "symbols", "distance"), [(30, 4, 2), (1, 2, 1), (17, 7, 5)])
def test_tagging_label_needs_both_neighbours(length, symbols, distance):
    task, batch = sample("tagging", batch_size=500, length=length, symbols=symbols, distance=distance)
    T = length + 2 * distance
    assert batch.steps == T and task.input_size == symbols and task.output_size == 2 * symbols - 1
    assert batch.x.min() >= 0 and batch.x.max() < symbols
    for t in range(T):
        counted = distance <= t < distance + length
        assert np.all(batch.mask[t] == (1.0 if counted else 0.0))
        if counted:
            np.testing.assert_array_equal(batch.y[t], batch.x[t - distance] + batch.x[t + distance])
    labels = batch.y[batch.mask > 0]
    assert set(np.unique(labels)) == set(range(2 * symbols - 1))


def test_tagging_chance_and_causal_best():
    task, batch = sample("tagging", batch_size=3000)
    K, d = task.symbols, task.distance
    p = np.array([sum(a + b == s for a in range(K) for b in range(K)) for s in range(2 * K - 1)]) / K**2
    base = task.baseline()
    assert base["accuracy"] == 1 / K == p.max()
    assert base["loss"] == pytest.approx(-np.sum(p * np.log(p)), rel=1e-12)
    assert task.causal_best() == {"loss": math.log(K), "accuracy": 1 / K}
    # the best input-blind outputs score the baseline on a large batch
    blind = np.broadcast_to(np.log(p), (*batch.y.shape, 2 * K - 1))
    scores = task.score(blind, batch)
    assert scores["loss"] == pytest.approx(base["loss"], rel=0.01)
    assert scores["accuracy"] == pytest.approx(1 / K, abs=0.01)  # argmax is K − 1, the mode
    onehot = lambda ids: 30.0 * np.eye(2 * K - 1)[ids]
    # the best causal outputs: uniform over past + 0 … past + K − 1; loss ln K, accuracy 1/K whatever the guess
    past = np.zeros_like(batch.y)
    past[d:] = batch.x[:-d]
    causal = np.where((np.arange(2 * K - 1) >= past[..., None]) & (np.arange(2 * K - 1) < past[..., None] + K), 0.0, -1e4)
    assert task.score(causal, batch)["loss"] == pytest.approx(math.log(K), rel=1e-9)
    for shift in range(K):
        assert task.score(onehot(past + shift), batch)["accuracy"] == pytest.approx(1 / K, abs=0.02)
    # a model that also reads the future gets everything
    both = np.zeros_like(batch.y)
    both[d:-d] = batch.x[: -2 * d] + batch.x[2 * d :]
    assert task.score(onehot(both), batch)["accuracy"] == 1.0


# ---- timing ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("interval", "spread", "onset"), [(10, 10, 10), (1, 0, 0), (3, 5, 7)])
def test_timing_target_reproduces_the_interval(interval, spread, onset):
    _, batch = sample("timing", batch_size=600, interval=interval, spread=spread, onset=onset)
    T = onset + 2 * (interval + spread) + 1
    assert batch.steps == T and np.all(batch.mask == 1)
    assert set(np.unique(batch.x)) <= {0.0, 1.0} and set(np.unique(batch.y)) <= {0.0, 1.0}
    seen_n, seen_t0 = set(), set()
    for b in range(batch.batch_size):
        spikes = np.flatnonzero(batch.x[:, b, 0])
        assert len(spikes) == 2
        t0, n = spikes[0], spikes[1] - spikes[0]
        assert 0 <= t0 <= onset and interval <= n <= interval + spread
        np.testing.assert_array_equal(np.flatnonzero(batch.y[:, b, 0]), [t0 + 2 * n])
        seen_n.add(n)
        seen_t0.add(t0)
    assert seen_n == set(range(interval, interval + spread + 1)) and seen_t0 == set(range(onset + 1))


def test_timing_accuracy_is_exact_timing():
    task, batch = sample("timing", batch_size=10)
    logits = np.where(batch.y > 0.5, 5.0, -5.0)
    assert task.score(logits, batch)["timing_accuracy"] == 1.0
    early = logits.copy()
    early[:, 0] = np.roll(logits[:, 0], -1, axis=0)  # sequence 0 spikes one step early
    extra = logits.copy()
    extra[0, 1] = 5.0  # sequence 1 also spikes at step 0
    missing = logits.copy()
    missing[:, 2] = -5.0  # sequence 2 never spikes
    for spoiled in (early, extra, missing):
        assert task.score(spoiled, batch)["timing_accuracy"] == pytest.approx(0.9)
    silent = np.full(batch.y.shape, -5.0)
    scores = task.score(silent, batch)
    assert scores["timing_accuracy"] == 0.0 and scores["accuracy"] == pytest.approx(1 - 1 / batch.steps)


def test_timing_baseline_by_enumeration():
    task = make_task("timing")
    counts = np.zeros(task.steps)
    for t0 in range(11):
        for n in range(10, 21):
            counts[t0 + 2 * n] += 1
    p = counts / counts.sum()
    assert p.max() == 6 / 121
    base = task.baseline()
    assert base["timing_accuracy"] == pytest.approx(6 / 121, rel=1e-12)
    entropy = [0.0 if q in (0.0, 1.0) else -(q * math.log(q) + (1 - q) * math.log(1 - q)) for q in p]
    assert base["loss"] == pytest.approx(np.mean(entropy), rel=1e-12)
    assert base["accuracy"] == pytest.approx(1 - 1 / 51, rel=1e-12)
    # empirically: one spike at the likeliest step, and the probabilities themselves as outputs
    _, batch = sample("timing", batch_size=20_000, seed=5)
    mode = np.full(batch.y.shape, -5.0)
    mode[int(np.argmax(p))] = 5.0
    assert task.score(mode, batch)["timing_accuracy"] == pytest.approx(6 / 121, abs=0.006)
    logit = np.log(np.clip(p, 1e-12, 1)) - np.log(np.clip(1 - p, 1e-12, 1))
    probs = np.broadcast_to(logit[:, None, None], batch.y.shape)
    assert task.score(probs, batch)["loss"] == pytest.approx(base["loss"], rel=0.02)


def test_timing_input_blind_can_be_perfect_when_nothing_varies():
    base = make_task("timing", interval=4, spread=0, onset=0).baseline()
    assert base["timing_accuracy"] == 1.0 and base["accuracy"] == 1.0 and base["loss"] == 0.0


# ---- options -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("mackey_glass", {"tau": 9}, "option 'tau' must be an integer in [10, 100] (got 9)"),
        ("mackey_glass", {"horizon": 0}, "option 'horizon' must be an integer in [1, 100] (got 0)"),
        ("mackey_glass", {"substeps": 0.1}, "option 'substeps' must be an integer in [1, 100] (got 0.1)"),
        ("mackey_glass", {"warmup": -1}, "option 'warmup' must be an integer in [0, 1000] (got -1)"),
        ("sunspots", {"length": 47}, "option 'length' must be an integer in [1, 46] (got 47)"),
        ("sunspots", {"horizon": 21}, "option 'horizon' must be an integer in [1, 20] (got 21)"),
        ("sunspots", {"split": "dev"}, "option 'split' must be one of 'train', 'valid', 'test' (got 'dev')"),
        ("tagging", {"symbols": 1}, "option 'symbols' must be an integer in [2, 100] (got 1)"),
        ("tagging", {"distance": 0}, "option 'distance' must be an integer in [1, 100] (got 0)"),
        ("timing", {"interval": 0}, "option 'interval' must be an integer in [1, 1000] (got 0)"),
        ("timing", {"spread": -1}, "option 'spread' must be an integer in [0, 1000] (got -1)"),
        ("timing", {"onset": 2.0}, "option 'onset' must be an integer in [0, 1000] (got 2.0)"),
    ],
)
def test_bad_options(name, options, message):
    with pytest.raises(ConfigError) as err:
        make_task(name, **options)
    assert str(err.value) == f"task '{name}': {message}"


def test_extreme_options_still_sample():
    for name, opts in [
        ("mackey_glass", {"tau": 100, "length": 3, "warmup": 0, "horizon": 100, "washout": 0, "substeps": 1}),
        ("mackey_glass", {"tau": 10, "length": 1, "washout": 5, "substeps": 100}),
        ("sunspots", {"length": 46, "warmup": 100, "horizon": 20, "split": "test"}),
        ("sunspots", {"length": 46, "warmup": 100, "horizon": 20, "split": "train"}),
        ("tagging", {"length": 1, "symbols": 100, "distance": 100}),
        ("timing", {"interval": 1, "spread": 0, "onset": 0}),
    ]:
        task, batch = sample(name, batch_size=3, **opts)
        assert batch.mask.sum() > 0
        assert all(math.isfinite(v) for v in task.baseline().values())


def test_tagging_is_learnt_by_a_bidirectional_lstm_only():
    """The sum rule suits a one-layer bidirectional model with a linear head (the mod-K sum would not)."""
    from cellsearch.train import evaluate, make_hp
    from cellsearch.zoo import get

    opts = {"length": 10, "symbols": 2, "distance": 1}
    accuracy = {}
    for bi in (True, False):
        hp = make_hp(steps=300, hidden=16, batch=16, eval_every=100, eval_size=64, bidirectional=bi)
        result = evaluate(get("lstm"), "tagging", opts, hp, seed=0)
        assert result["status"] == "ok"
        accuracy[bi] = result["test"]
    assert accuracy[True] > 0.95 and accuracy[False] < 0.6
