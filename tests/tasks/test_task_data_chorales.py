"""The chorales task: piano rolls from music21's Bach chorales, next-step targets, the cache, the baseline.

Everything here builds at most 12 chorales (about a second); the full corpus is checked only by the
test marked slow, which runs when asked for with ``pytest -m slow``.
"""

import math
import os
import random
import sys
from fractions import Fraction

import numpy as np
import pytest

from cellsearch.errors import ConfigError
from cellsearch.tasks import TASKS, make_task
from cellsearch.tasks.cache import CACHE_ENV, load_npz, seeded_split
from cellsearch.tasks.chorales import CACHE_VERSION, SPLIT_SEED, ChoralesTask, bernoulli_nll, piano_roll
from cellsearch.tasks.losses import binary_cross_entropy

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
SPLITS = ("train", "valid", "test")
N = 12


def need_music21():
    if CI:
        import music21  # a missing dependency is a failure in CI

        return music21
    return pytest.importorskip("music21")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A cache folder where the first 12 chorales are already built (once for the module)."""
    need_music21()
    folder = tmp_path_factory.mktemp("chorale-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(CACHE_ENV, str(folder))
        task = ChoralesTask(max_chorales=N)
        task.chorales()
        assert task.loaded_from_cache is False
    return folder


@pytest.fixture
def cache(built, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(built))
    return built


def draw(seed=0, batch_size=16, **opts):
    task = make_task("chorales", **{"max_chorales": N, **opts})
    return task, task.sample(np.random.default_rng(seed), batch_size)


# ---- the piano roll (no music21 needed) --------------------------------------------------------


def test_piano_roll_samples_each_quarter_beat():
    roll = piano_roll(
        [
            (0.0, 1.0, [60]),  # a quarter: step 0
            (1.0, 2.0, [62, 65]),  # a half-note chord: steps 1 and 2
            (0.0, 1.5, [48]),  # a dotted quarter: steps 0 and 1
            (1.5, 0.5, [49]),  # an eighth off the beat: no step
            (3.5, 1.0, [50]),  # a quarter off the beat: sounds at instant 4
            (2.0, 0.0, [51]),  # a grace note: no step
            (0.0, 1.0, [20, 109]),  # outside the 88 keys: skipped
        ]
    )
    assert roll.dtype == np.uint8 and roll.shape == (5, 88)
    on = {(int(t), int(k) + 21) for t, k in zip(*np.nonzero(roll), strict=True)}
    assert on == {(0, 60), (1, 62), (1, 65), (2, 62), (2, 65), (0, 48), (1, 48), (4, 50)}


def test_piano_roll_triplets_and_empty():
    third = 1 / 3
    roll = piano_roll([(0.0, third, [60]), (third, third, [61]), (2 * third, third, [62]), (1.0, 1.0, [63])])
    assert [np.flatnonzero(r).tolist() for r in roll] == [[60 - 21], [63 - 21]]
    assert piano_roll([]).shape == (0, 88)


# ---- construction, options, registry -----------------------------------------------------------


def test_registered(cache):
    assert TASKS["chorales"] is ChoralesTask
    task = make_task("chorales", max_chorales=N)
    assert task.options == {"max_chorales": N, "split": "train"}
    assert (task.loss, task.metric, task.higher_is_better, task.input_kind) == ("bce", "nll", False, "vector")
    assert task.input_size == task.output_size == 88
    assert make_task("chorales").options == {"max_chorales": 0, "split": "train"}  # lazy: parses nothing


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"split": "dev"}, "task 'chorales': option 'split' must be one of 'train', 'valid', 'test' (got 'dev')"),
        ({"max_chorales": -1}, "task 'chorales': option 'max_chorales' must be an integer in [0, 100000] (got -1)"),
        ({"max_chorales": 2}, "task 'chorales': option 'max_chorales' must be 0 (all) or an integer ≥ 3 (got 2)"),
        ({"max_chorales": 1.5}, "task 'chorales': option 'max_chorales' must be an integer in [0, 100000] (got 1.5)"),
        ({"keys": 88}, "task 'chorales': unknown option 'keys' (known: max_chorales, split)"),
    ],
)
def test_bad_options(opts, message, monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    with pytest.raises(ConfigError) as err:
        make_task("chorales", **opts)
    assert str(err.value) == message


# ---- batches ------------------------------------------------------------------------------------


def test_shapes_dtypes_and_padding(cache):
    _, batch = draw(batch_size=24)
    T, B, K = batch.x.shape
    assert B == 24 and K == 88
    assert batch.x.dtype == batch.y.dtype == batch.mask.dtype == np.float32
    assert batch.y.shape == batch.x.shape and batch.mask.shape == (T, B)
    assert set(np.unique(batch.x)) <= {0.0, 1.0} and set(np.unique(batch.y)) <= {0.0, 1.0}
    lengths = batch.mask.sum(axis=0).astype(int)
    assert lengths.max() == T, "padding stops at the longest sequence"
    for b, n in enumerate(lengths):
        np.testing.assert_array_equal(batch.mask[:n, b], 1.0)  # real steps first, then padding
        assert not batch.mask[n:, b].any() and not batch.x[n:, b].any() and not batch.y[n:, b].any()
    assert batch.x.sum(axis=2).max() <= 4, "four voices sound at most four keys"


def test_targets_are_the_next_input_and_sequences_are_whole_chorales(cache):
    task, batch = draw(seed=2, batch_size=24, split="train")
    rolls = task.chorales()
    lengths = batch.mask.sum(axis=0).astype(int)
    for b, n in enumerate(lengths):
        np.testing.assert_array_equal(batch.y[: n - 1, b], batch.x[1:n, b])  # y[t] == x[t + 1] where both count
        seq = np.concatenate([batch.x[:n, b], batch.y[n - 1 : n, b]])  # the roll the pair came from
        assert any(len(r) == n + 1 and np.array_equal(r, seq) for r in rolls), "a whole chorale of the split"


@pytest.mark.parametrize("split", SPLITS)
def test_samples_come_from_their_split_only(cache, split):
    task, batch = draw(seed=4, batch_size=40, split=split)
    mine = {r.tobytes() for r in task.chorales()}
    others = {r.tobytes() for s in SPLITS if s != split for r in task.chorales(s)}
    lengths = batch.mask.sum(axis=0).astype(int)
    for b, n in enumerate(lengths):
        seq = np.concatenate([batch.x[:n, b], batch.y[n - 1 : n, b]]).astype(np.uint8)
        assert seq.tobytes() in mine and seq.tobytes() not in others


def test_rolls_are_read_only_and_splits_checked(cache):
    task = ChoralesTask(max_chorales=N)
    with pytest.raises(ValueError):
        task.chorales()[0][0, 0] = 1
    with pytest.raises(ConfigError) as err:
        task.chorales("dev")
    assert str(err.value) == "task 'chorales': split must be one of 'train', 'valid', 'test' (got 'dev')"


def test_determinism(cache):
    _, a = draw(seed=9)
    _, b = draw(seed=9)
    _, c = draw(seed=10)
    for field in ("x", "y", "mask"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.x.shape != c.x.shape or not np.array_equal(a.x, c.x)


def test_global_random_state_is_untouched(cache):
    np.random.seed(3)
    random.seed(3)
    before_np, before_py = np.random.get_state()[1].copy(), random.getstate()
    draw()
    np.testing.assert_array_equal(np.random.get_state()[1], before_np)
    assert random.getstate() == before_py


def test_splits_are_disjoint_seeded_and_deterministic(cache):
    task = ChoralesTask(max_chorales=N)
    names = {s: task.split_names(s) for s in SPLITS}
    assert [len(v) for v in names.values()] == [8, 2, 2]
    flat = [n for v in names.values() for n in v]
    assert len(set(flat)) == N and sorted(flat) == sorted(task.names)
    idx = seeded_split(N, SPLIT_SEED)
    for s in SPLITS:
        assert names[s] == [task.names[i] for i in idx[s]]
        assert ChoralesTask(max_chorales=N, split=s).split_names() == names[s]
    assert all(n.startswith("bach/bwv") and n.endswith((".mxl", ".xml")) for n in flat)


def test_rolls_follow_the_recipe_on_a_real_chorale(cache):
    """Rebuild one roll straight from music21 with exact fractions: a note sounds at beat t when offset ≤ t < end."""
    music21 = need_music21()
    task = ChoralesTask(max_chorales=N)
    rolls = task.chorales("train") + task.chorales("valid") + task.chorales("test")
    by_name = dict(zip(task.split_names("train") + task.split_names("valid") + task.split_names("test"), rolls, strict=True))
    name = task.names[0]
    path = music21.common.getCorpusFilePath() / name
    score = music21.converter.parse(path, forceSource=True, storePickle=False)
    assert len(score.parts) == 4
    notes = [
        (Fraction(n.offset), Fraction(n.offset) + Fraction(n.quarterLength), p.midi)
        for n in score.flatten().notes
        for p in n.pitches
    ]
    L = max(math.ceil(end) for _, end, _ in notes)
    expected = np.zeros((L, 88), dtype=np.uint8)
    for t in range(L):
        for start, end, midi in notes:
            if start <= t < end:
                expected[t, midi - 21] = 1
    np.testing.assert_array_equal(by_name[name], expected)


# ---- scoring and the baseline --------------------------------------------------------------------


def test_score_nll_is_the_masked_bce(cache):
    task, batch = draw(batch_size=8)
    pred = np.random.default_rng(0).normal(0, 2, batch.y.shape)
    scores = task.score(pred, batch)
    assert scores["nll"] == scores["loss"] == binary_cross_entropy(pred, batch.y, batch.mask)[0]
    assert set(scores) == {"loss", "nll", "accuracy"}
    perfect = np.where(batch.y > 0.5, 30.0, -30.0)
    perfect[batch.mask == 0] = np.nan  # padding is never read
    best = task.score(perfect, batch)
    assert best["accuracy"] == 1.0 and best["nll"] < 1e-9
    assert task.score(np.zeros_like(pred), batch)["nll"] == pytest.approx(88 * math.log(2))


def independent_baseline(task, split):
    train = [r[1:] for r in task.chorales("train")]
    frames = sum(len(t) for t in train)
    p = [(sum(int(t[:, k].sum()) for t in train) + 0.5) / (frames + 1) for k in range(88)]
    total, count, hits = 0.0, 0, 0
    for roll in task.chorales(split):
        for frame in roll[1:]:
            for k in range(88):
                total -= math.log(p[k] if frame[k] else 1 - p[k])
                hits += int(frame[k] == (p[k] > 0.5))
            count += 1
    return total / count, hits / (88 * count), p


@pytest.mark.parametrize("split", SPLITS)
def test_baseline_is_the_training_bernoulli_model(cache, split):
    task = ChoralesTask(max_chorales=N, split=split)
    nll, acc, p = independent_baseline(task, split)
    base = task.baseline()
    assert base["loss"] == base["nll"] == pytest.approx(nll, rel=1e-10)
    assert base["accuracy"] == pytest.approx(acc, rel=1e-12)
    np.testing.assert_allclose(task.key_probabilities(), p, rtol=1e-14)
    assert 5 < base["nll"] < 88 * math.log(2)


def test_baseline_is_what_the_constant_predictor_scores(cache):
    """The score of logits log(p/(1−p)) on a batch is the baseline restricted to that batch's chorales."""
    task, batch = draw(seed=1, batch_size=12, split="valid")
    p = task.key_probabilities()
    pred = np.broadcast_to(np.log(p / (1 - p)), batch.y.shape).copy()
    y = batch.y[batch.mask > 0]
    assert task.score(pred, batch)["nll"] == pytest.approx(bernoulli_nll(p, y), rel=1e-10)


# ---- the cache ----------------------------------------------------------------------------------


def test_cache_is_written_then_loaded(monkeypatch, tmp_path):
    need_music21()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    first = ChoralesTask(max_chorales=3)
    assert first.cache_path == tmp_path / "chorales-v1-n3.npz"
    a = first.sample(np.random.default_rng(0), 4)
    assert first.loaded_from_cache is False
    assert sorted(os.listdir(tmp_path)) == ["chorales-v1-n3.npz"]
    stored = load_npz(first.cache_path, CACHE_VERSION)
    assert stored is not None and len(stored["names"]) == 3 and stored["rolls"].shape[1] == 88
    assert str(stored["music21_version"]) == sys.modules["music21"].__version__

    monkeypatch.setitem(sys.modules, "music21", None)  # loading from the cache needs no music21
    second = ChoralesTask(max_chorales=3)
    b = second.sample(np.random.default_rng(0), 4)
    assert second.loaded_from_cache is True
    for field in ("x", "y", "mask"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert second.baseline() == first.baseline()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "stale", "inconsistent"])
def test_a_bad_cache_file_is_rebuilt(monkeypatch, tmp_path, damage):
    need_music21()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    good = ChoralesTask(max_chorales=3)
    reference = good.sample(np.random.default_rng(0), 4)
    path = good.cache_path
    data = path.read_bytes()
    if damage == "garbage":
        path.write_bytes(b"\x00garbage" * 10)
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 3])
    elif damage == "stale":
        np.savez_compressed(
            path, version=np.array("chorales-v0"), **{k: v for k, v in load_npz(path, CACHE_VERSION).items() if k != "version"}
        )
    else:
        arrays = load_npz(path, CACHE_VERSION)
        arrays["lengths"] = arrays["lengths"] + 1  # no longer adds up to the stored frames
        np.savez_compressed(path, **arrays)
    again = ChoralesTask(max_chorales=3)
    batch = again.sample(np.random.default_rng(0), 4)
    assert again.loaded_from_cache is False
    np.testing.assert_array_equal(batch.x, reference.x)
    assert load_npz(path, CACHE_VERSION) is not None, "the rebuilt file replaced the bad one"
    third = ChoralesTask(max_chorales=3)
    third.chorales()
    assert third.loaded_from_cache is True


def test_an_unwritable_cache_still_gives_data(monkeypatch, tmp_path):
    need_music21()
    blocker = tmp_path / "file"
    blocker.write_text("x")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    task = ChoralesTask(max_chorales=3)
    with pytest.warns(RuntimeWarning, match="could not write the cache file"):
        batch = task.sample(np.random.default_rng(0), 2)
    assert batch.x.shape[2] == 88


def test_missing_music21_without_a_cache_fails_at_construction(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    monkeypatch.setitem(sys.modules, "music21", None)
    with pytest.raises(ConfigError) as err:
        ChoralesTask(max_chorales=5)
    assert str(err.value) == "task 'chorales': needs the 'music21' package, which is not installed (pip install music21)"


# ---- the full corpus (slow) --------------------------------------------------------------------


@pytest.mark.slow
def test_full_corpus_figures(request, tmp_path, monkeypatch):
    """The counts and baselines quoted in the module docstring (about 25 s: parses every chorale)."""
    if "slow" not in (request.config.getoption("markexpr") or ""):
        pytest.skip("parses the whole corpus; run with pytest -m slow")
    need_music21()
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    tasks = {s: ChoralesTask(split=s) for s in SPLITS}
    rolls = tasks["train"].chorales("train") + tasks["train"].chorales("valid") + tasks["train"].chorales("test")
    assert len(rolls) == 332
    lengths = [len(r) for r in rolls]
    assert (min(lengths), max(lengths), sum(lengths)) == (24, 193, 17838)
    assert [len(tasks[s].chorales()) for s in SPLITS] == [200, 66, 66]
    assert [sum(len(r) - 1 for r in tasks[s].chorales()) for s in SPLITS] == [10183, 3805, 3518]
    nll = [tasks[s].baseline()["nll"] for s in SPLITS]
    assert nll == pytest.approx([11.32, 11.40, 11.50], abs=0.005)
