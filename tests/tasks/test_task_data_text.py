"""The text task on a tiny PTB-style corpus made here: vocabulary, windows, levels, splits, unigram baseline."""

import math
import pathlib
import random
from collections import Counter

import numpy as np
import pytest

from cellsearch.errors import ConfigError
from cellsearch.tasks import TASKS, make_task
from cellsearch.tasks.losses import cross_entropy
from cellsearch.tasks.text import TextTask

SPLITS = ("train", "valid", "test")
WORDS = ["the", "a", "of", "N", "$", "to", "in", *(f"w{i}" for i in range(30))]


def write_corpus(folder: pathlib.Path, seed: int = 0) -> dict[str, str]:
    """ptb.{train,valid,test}.txt in PTB's layout: ' tok tok ... \\n' per sentence, some <unk>, Zipf-ish words."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, len(WORDS) + 1)
    p /= p.sum()

    def lines(n):
        out = []
        for _ in range(n):
            toks = [str(w) for w in rng.choice(WORDS, size=int(rng.integers(2, 14)), p=p)]
            if rng.random() < 0.15:
                toks.insert(int(rng.integers(0, len(toks) + 1)), "<unk>")
            out.append(" " + " ".join(toks) + " ")
        return out

    text = {"train": lines(300), "valid": lines(60), "test": lines(60)}
    text["train"][7] = ""  # an empty line is one <eos>
    text["valid"][3] += "zebra "  # a word (and characters z, b, r) never seen in training
    text["test"][5] += "quokka Üx "
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, ls in text.items():
        out[split] = "\n".join(ls) + "\n"
        (folder / f"ptb.{split}.txt").write_text(out[split], encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ptb")
    return folder, write_corpus(folder)


def words_of(text):
    """The word tokens of a file, computed independently of the task."""
    out = []
    for line in text.splitlines():
        out += [*line.split(), "<eos>"]
    return out


def tokens_of(text, level):
    return words_of(text) if level == "word" else list(text)


def expected_vocab(train_tokens):
    counts = Counter(train_tokens)
    vocab = sorted(counts, key=lambda t: (-counts[t], t))
    return vocab if "<unk>" in counts else [*vocab, "<unk>"]


def task_for(corpus, **opts):
    folder, _ = corpus
    return make_task("text", path=str(folder), **opts)


# ---- construction ----------------------------------------------------------------------------------


def test_registered(corpus):
    assert TASKS["text"] is TextTask
    task = task_for(corpus)
    assert task.options == {"path": str(corpus[0]), "level": "word", "length": 35, "split": "train"}
    assert (task.loss, task.metric, task.higher_is_better, task.input_kind) == ("ce", "perplexity", False, "symbols")
    assert make_task("text", path=corpus[0]).path == str(corpus[0]), "an os.PathLike path is recorded as a string"


@pytest.mark.parametrize("level", ["word", "char"])
def test_vocabulary_is_from_train_only_and_shared(corpus, level):
    _, text = corpus
    vocab = expected_vocab(tokens_of(text["train"], level))
    for split in SPLITS:
        task = task_for(corpus, level=level, split=split)
        assert task.vocab == vocab
        assert task.input_size == task.output_size == len(vocab)
    if level == "word":
        assert "<eos>" in vocab and "<unk>" in vocab and "zebra" not in vocab and vocab.count("<unk>") == 1
    else:
        assert "\n" in vocab and " " in vocab and vocab[-1] == "<unk>" and "z" not in vocab and "Ü" not in vocab


@pytest.mark.parametrize("level", ["word", "char"])
@pytest.mark.parametrize("split", SPLITS)
def test_streams_encode_their_own_file(corpus, level, split):
    _, text = corpus
    task = task_for(corpus, level=level, split=split)
    ids = {t: i for i, t in enumerate(task.vocab)}
    expected = [ids.get(t, ids["<unk>"]) for t in tokens_of(text[split], level)]
    assert task.stream.dtype == np.int64
    assert task.stream.tolist() == expected
    if split != "train":
        assert (task.stream == ids["<unk>"]).sum() > tokens_of(text[split], level).count("<unk>"), "unseen tokens map to <unk>"


def test_word_level_eos_and_empty_lines(tmp_path):
    for split in SPLITS:
        (tmp_path / f"ptb.{split}.txt").write_text(" a b \n\n c \n", encoding="utf-8")
    task = make_task("text", path=str(tmp_path), length=3)
    assert task.decode(task.stream) == ["a", "b", "<eos>", "<eos>", "c", "<eos>"]
    char = make_task("text", path=str(tmp_path), level="char", length=3)
    assert "".join(char.decode(char.stream)) == " a b \n\n c \n"


# ---- batches ------------------------------------------------------------------------------------


@pytest.mark.parametrize(("level", "length"), [("word", 35), ("char", 50), ("word", 1)])
def test_shapes_and_dtypes(corpus, level, length):
    task = task_for(corpus, level=level, length=length)
    batch = task.sample(np.random.default_rng(0), 13)
    assert batch.x.shape == batch.y.shape == batch.mask.shape == (length, 13)
    assert batch.x.dtype == batch.y.dtype == np.int64 and batch.mask.dtype == np.float32
    np.testing.assert_array_equal(batch.mask, 1.0)
    assert 0 <= batch.x.min() and batch.x.max() < task.input_size and batch.y.max() < task.output_size


@pytest.mark.parametrize("level", ["word", "char"])
@pytest.mark.parametrize("split", SPLITS)
def test_windows_are_contiguous_and_y_is_x_shifted(corpus, level, split):
    task = task_for(corpus, level=level, split=split, length=20)
    batch = task.sample(np.random.default_rng(5), 32)
    np.testing.assert_array_equal(batch.y[:-1], batch.x[1:])
    stream = task.stream
    starts = np.lib.stride_tricks.sliding_window_view(stream, 21)
    for b in range(32):
        window = np.concatenate([batch.x[:, b], batch.y[-1:, b]])
        assert (starts == window).all(axis=1).any(), "a window of this split's file"


def test_char_windows_read_as_text(corpus):
    _, text = corpus
    task = task_for(corpus, level="char", length=40)
    batch = task.sample(np.random.default_rng(1), 10)
    for b in range(10):
        assert "".join(task.decode(np.concatenate([batch.x[:, b], batch.y[-1:, b]]))) in text["train"]


def test_windows_cover_the_whole_stream(tmp_path):
    for split in SPLITS:
        (tmp_path / f"ptb.{split}.txt").write_text("a b c d e\n", encoding="utf-8")  # 6 tokens with <eos>
    task = make_task("text", path=str(tmp_path), length=4)
    batch = task.sample(np.random.default_rng(0), 200)
    assert set(batch.x[0].tolist()) == {task.ids["a"], task.ids["b"]}, "both possible starts, and no more"
    make_task("text", path=str(tmp_path), length=5)  # the whole stream is one window
    with pytest.raises(ConfigError) as err:
        make_task("text", path=str(tmp_path), length=6)
    assert str(err.value) == "task 'text': option 'length' must be at most 5 for the 6 tokens of ptb.train.txt (got 6)"


def test_determinism_and_global_state(corpus):
    task = task_for(corpus, level="char")
    np.random.seed(3)
    random.seed(3)
    before_np, before_py = np.random.get_state()[1].copy(), random.getstate()
    a = task.sample(np.random.default_rng(7), 16)
    b = task_for(corpus, level="char").sample(np.random.default_rng(7), 16)
    c = task.sample(np.random.default_rng(8), 16)
    np.testing.assert_array_equal(np.random.get_state()[1], before_np)
    assert random.getstate() == before_py
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert not np.array_equal(a.x, c.x)


# ---- scoring and the baseline --------------------------------------------------------------------


def test_score(corpus):
    task = task_for(corpus, length=12)
    batch = task.sample(np.random.default_rng(0), 8)
    pred = np.random.default_rng(1).normal(size=(*batch.y.shape, task.output_size))
    scores = task.score(pred, batch)
    assert set(scores) == {"loss", "accuracy", "perplexity"}
    assert scores["loss"] == cross_entropy(pred, batch.y, batch.mask)[0]
    assert scores["perplexity"] == pytest.approx(math.exp(scores["loss"]), rel=1e-15)
    perfect = task.score(30.0 * np.eye(task.output_size)[batch.y], batch)
    assert perfect["accuracy"] == 1.0 and perfect["perplexity"] == pytest.approx(1.0)
    assert task.score(np.zeros_like(pred), batch)["perplexity"] == pytest.approx(task.output_size)
    huge = np.zeros_like(pred)
    huge[..., 0] = 1e6  # a confident wrong guess: perplexity overflows to inf, not an error
    if not (batch.y == 0).all():
        assert task.score(huge, batch)["perplexity"] == math.inf


@pytest.mark.parametrize("level", ["word", "char"])
@pytest.mark.parametrize("split", SPLITS)
def test_baseline_is_the_smoothed_training_unigram(corpus, level, split):
    _, text = corpus
    train = tokens_of(text["train"], level)
    vocab = expected_vocab(train)
    counts = Counter(train)
    V, N = len(vocab), len(train)
    q = {t: (counts[t] + 0.5) / (N + V / 2) for t in vocab}
    assert sum(q.values()) == pytest.approx(1.0)
    scored = [t if t in counts else "<unk>" for t in tokens_of(text[split], level)]
    ce = -sum(math.log(q[t]) for t in scored) / len(scored)
    top = max(vocab, key=lambda t: counts[t])
    base = task_for(corpus, level=level, split=split).baseline()
    assert base["loss"] == pytest.approx(ce, rel=1e-12)
    assert base["perplexity"] == pytest.approx(math.exp(ce), rel=1e-12)
    assert base["accuracy"] == pytest.approx(scored.count(top) / len(scored), rel=1e-12)
    assert 1.0 < base["perplexity"] < V


def test_baseline_is_what_the_unigram_predictor_scores(corpus):
    task = task_for(corpus, split="valid", length=10)
    batch = task.sample(np.random.default_rng(0), 4000)
    pred = np.broadcast_to(np.log(task.unigram()), (*batch.y.shape, task.output_size))
    assert task.score(pred, batch)["loss"] == pytest.approx(task.baseline()["loss"], rel=0.01)


# ---- bad options --------------------------------------------------------------------------------

EXPECTED = "a directory holding ptb.train.txt, ptb.valid.txt and ptb.test.txt"


def test_path_is_required():
    with pytest.raises(ConfigError) as err:
        make_task("text")
    assert str(err.value) == f"task 'text': option 'path' must be {EXPECTED}; it is required (got '')"


def test_bad_paths(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError) as err:
        make_task("text", path=str(missing))
    assert str(err.value) == f"task 'text': option 'path' must be {EXPECTED}; no such directory (got {str(missing)!r})"
    (tmp_path / "ptb.train.txt").write_text("a b\n")
    with pytest.raises(ConfigError) as err:
        make_task("text", path=str(tmp_path))
    assert str(err.value).endswith(f"; ptb.valid.txt and ptb.test.txt are missing (got {str(tmp_path)!r})")
    (tmp_path / "ptb.valid.txt").write_text("a b\n")
    with pytest.raises(ConfigError) as err:
        make_task("text", path=str(tmp_path))
    assert "; ptb.test.txt is missing (got" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_task("text", path=str(tmp_path / "ptb.train.txt"))  # a file, not a directory
    assert "no such directory" in str(err.value)
    with pytest.raises(ConfigError) as err:
        make_task("text", path=1)
    assert str(err.value) == f"task 'text': option 'path' must be {EXPECTED} (got 1)"


def test_unreadable_file(tmp_path):
    for split in SPLITS:
        (tmp_path / f"ptb.{split}.txt").write_bytes(b"a b\n")
    (tmp_path / "ptb.valid.txt").write_bytes(b"\xff\xfe\xfa not utf-8\n")
    make_task("text", path=str(tmp_path), length=2)  # train does not read the valid file
    with pytest.raises(ConfigError) as err:
        make_task("text", path=str(tmp_path), split="valid", length=2)
    assert str(err.value).startswith("task 'text': cannot read ") and "ptb.valid.txt" in str(err.value)


@pytest.mark.parametrize(
    ("opts", "message"),
    [
        ({"level": "byte"}, "task 'text': option 'level' must be one of 'word', 'char' (got 'byte')"),
        ({"split": "dev"}, "task 'text': option 'split' must be one of 'train', 'valid', 'test' (got 'dev')"),
        ({"length": 0}, "task 'text': option 'length' must be an integer in [1, 100000] (got 0)"),
        ({"length": 10**6}, "task 'text': option 'length' must be an integer in [1, 100000] (got 1000000)"),
        ({"vocab": 10}, "task 'text': unknown option 'vocab' (known: path, level, length, split)"),
    ],
)
def test_bad_options(corpus, opts, message):
    with pytest.raises(ConfigError) as err:
        task_for(corpus, **opts)
    assert str(err.value) == message
