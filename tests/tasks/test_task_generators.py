"""Every generator: shapes and dtypes, determinism, and the target recomputed independently from ``x``."""

import random
import string

import numpy as np
import pytest

from cellsearch.tasks import TASKS, make_task

# Small settings so the whole folder stays fast; defaults are covered by test_task_options.py.
SMALL = {
    "copy": {"length": 12, "symbols": 5, "n": 4},
    "adding": {"length": 20},
    "temporal_order": {"variant": "b"},
    "delayed_recall": {"lag": 7, "symbols": 6},
    "associative_recall": {"pairs": 5},
    "parity": {"length": 15, "running": True},
    "arithmetic": {"digits": 4, "distractors": 2},
    "xml": {"max_steps": 12},
    "mackey_glass": {"length": 30, "warmup": 5, "horizon": 2, "washout": 100},
    "sunspots": {"length": 10, "warmup": 3, "split": "valid"},
    "tagging": {"length": 12, "symbols": 3, "distance": 2},
    "timing": {"interval": 3, "spread": 4, "onset": 3},
}
VARIANTS = [(name, opts) for name, opts in SMALL.items()] + [
    ("copy", {}),
    ("temporal_order", {"variant": "a"}),
    ("parity", {"length": 15, "running": False}),
    ("arithmetic", {"digits": 1, "distractors": 0}),
]


def sample(name, seed=0, batch_size=64, **options):
    task = make_task(name, **options)
    return task, task.sample(np.random.default_rng(seed), batch_size)


def test_small_settings_cover_every_task():
    assert set(SMALL) == set(TASKS) - {"digits", "chorales", "text"}  # those have test_task_data_*.py


@pytest.mark.parametrize(("name", "opts"), VARIANTS)
def test_shapes_and_dtypes(name, opts):
    task, batch = sample(name, batch_size=17, **opts)
    T, B = batch.mask.shape
    assert B == 17 and batch.steps == T and batch.batch_size == B
    assert batch.mask.dtype == np.float32 and set(np.unique(batch.mask)) <= {0.0, 1.0}
    assert np.all(batch.mask.sum(axis=0) >= 1), "every sequence counts at least one step"
    if name != "tagging":  # tagging's last `distance` steps are context for the last counted label
        assert batch.mask[-1].any(), "padding stops at the longest sequence"
    if task.input_kind == "symbols":
        assert batch.x.dtype == np.int64 and batch.x.shape == (T, B)
        assert batch.x.min() >= 0 and batch.x.max() < task.input_size
    else:
        assert batch.x.dtype == np.float32 and batch.x.shape == (T, B, task.input_size)
    if task.loss == "ce":
        assert batch.y.dtype == np.int64 and batch.y.shape == (T, B)
        counted = batch.y[batch.mask > 0]
        assert counted.min() >= 0 and counted.max() < task.output_size
    else:
        assert batch.y.dtype == np.float32 and batch.y.shape == (T, B, task.output_size)


@pytest.mark.parametrize(("name", "opts"), VARIANTS)
def test_determinism(name, opts):
    _, a = sample(name, seed=7, **opts)
    _, b = sample(name, seed=7, **opts)
    _, c = sample(name, seed=8, **opts)
    for field in ("x", "y", "mask"):
        np.testing.assert_array_equal(getattr(a, field), getattr(b, field))
    assert a.x.shape != c.x.shape or not np.array_equal(a.x, c.x)


@pytest.mark.parametrize("name", list(SMALL))
def test_global_random_state_is_untouched(name):
    np.random.seed(3)
    random.seed(3)
    before_np, before_py = np.random.get_state()[1].copy(), random.getstate()
    sample(name, **SMALL[name])
    np.testing.assert_array_equal(np.random.get_state()[1], before_np)
    assert random.getstate() == before_py


# ---- copy --------------------------------------------------------------------------------------


@pytest.mark.parametrize("opts", [SMALL["copy"], {}, {"length": 1, "symbols": 2, "n": 1}])
def test_copy_layout(opts):
    task, batch = sample("copy", **opts)
    T, S, n = task.length, task.symbols, task.n
    x, y = batch.x, batch.y
    assert x.shape[0] == T + 2 * n
    assert np.all((x[:n] >= 1) & (x[:n] <= S))
    assert np.all(x[n : n + T - 1] == 0)
    assert np.all(x[n + T - 1] == S + 1)  # the marker
    assert np.all(x[n + T :] == 0)
    assert np.all(y[: T + n] == 0)
    np.testing.assert_array_equal(y[T + n :], x[:n])
    assert np.all(batch.mask == 1)
    metric_mask = task.metric_mask(batch)
    assert np.all(metric_mask[-n:] == 1) and np.all(metric_mask[:-n] == 0)
    assert task.input_size == S + 2 and task.output_size == S + 1


def test_copy_symbols_are_uniform():
    task, batch = sample("copy", batch_size=4000, length=1)
    counts = np.bincount(batch.x[: task.n].ravel(), minlength=task.symbols + 1)
    assert counts[0] == 0
    np.testing.assert_allclose(counts[1:] / counts.sum(), 1 / task.symbols, atol=0.01)


# ---- adding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", [2, 3, 20, 101])
def test_adding_target_is_the_marked_sum(length):
    _, batch = sample("adding", batch_size=300, length=length)
    values, marks = batch.x[:, :, 0], batch.x[:, :, 1]
    assert np.all((values >= 0) & (values < 1))
    assert set(np.unique(marks)) <= {0.0, 1.0}
    half = length // 2
    assert np.all(marks[:half].sum(axis=0) == 1) and np.all(marks[half:].sum(axis=0) == 1)
    expected = (values.astype(np.float64) * marks).sum(axis=0)
    np.testing.assert_allclose(batch.y[-1, :, 0], expected, rtol=1e-6)
    assert np.all(batch.y[:-1] == 0)
    assert np.all(batch.mask[-1] == 1) and np.all(batch.mask[:-1] == 0)


# ---- temporal order ----------------------------------------------------------------------------

RANGES = {"a": [(10, 20), (50, 60)], "b": [(10, 20), (33, 43), (66, 76)]}


@pytest.mark.parametrize("variant", ["a", "b"])
def test_temporal_order_class_is_the_order_of_x_and_y(variant):
    task, batch = sample("temporal_order", batch_size=400, variant=variant)
    letters = "abcdXYEB"  # ids 0..7, 8 pads
    seen_classes, seen_lengths = set(), set()
    for b in range(batch.batch_size):
        col = batch.x[:, b]
        text = "".join(letters[i] if i < 8 else "_" for i in col)
        length = text.index("B") + 1
        seen_lengths.add(length)
        assert 100 <= length <= 110
        assert text[0] == "E" and set(text[length:]) <= {"_"}
        assert set(text[1 : length - 1]) <= set("abcdXY")
        relevant = [(t + 1, ch) for t, ch in enumerate(text) if ch in "XY"]  # 1-based positions
        assert len(relevant) == len(RANGES[variant])
        label = 0
        for (pos, ch), (lo, hi) in zip(relevant, RANGES[variant]):
            assert lo <= pos <= hi
            label = label * 2 + (ch == "Y")
        assert batch.y[length - 1, b] == label
        assert batch.mask[:, b].sum() == 1 and batch.mask[length - 1, b] == 1
        seen_classes.add(label)
    assert seen_classes == set(range(task.output_size))
    assert {100, 110} <= seen_lengths


# ---- delayed recall ----------------------------------------------------------------------------


@pytest.mark.parametrize(("lag", "cue"), [(1, True), (7, False), (200, True)])
def test_delayed_recall_target_is_the_first_symbol_lag_steps_later(lag, cue):
    _task, batch = sample("delayed_recall", lag=lag, symbols=6, cue=cue)
    x, y = batch.x, batch.y
    assert x.shape[0] == lag + 1
    assert np.all((x[0] >= 1) & (x[0] <= 6))  # the symbol, never the blank or the cue
    np.testing.assert_array_equal(y[lag], x[0] - 1)
    assert np.all(x[1:lag] == 0)
    assert np.all(x[lag] == (7 if cue else 0)) or lag == 0
    assert batch.mask.sum(axis=0).tolist() == [1.0] * x.shape[1] and np.all(batch.mask[lag] == 1)


# ---- associative recall ------------------------------------------------------------------------


@pytest.mark.parametrize("pairs", [1, 4, 26])
def test_associative_recall_answer_is_the_querys_digit(pairs):
    _, batch = sample("associative_recall", batch_size=200, pairs=pairs)
    vocab = string.ascii_lowercase + string.digits + "?"
    assert batch.x.shape[0] == 2 * pairs + 3
    answers = set()
    for b in range(batch.batch_size):
        text = "".join(vocab[i] for i in batch.x[:, b])
        body, query = text[:-3], text[-1]
        assert text[-3:-1] == "??"
        keys, values = body[0::2], body[1::2]
        assert all(k in string.ascii_lowercase for k in keys) and len(set(keys)) == pairs
        assert all(v in string.digits for v in values)
        assert query in keys
        answer = int(values[keys.index(query)])
        assert batch.y[-1, b] == answer
        answers.add(answer)
    assert np.all(batch.mask[-1] == 1) and batch.mask.sum() == batch.batch_size
    assert answers == set(range(10))


# ---- parity ------------------------------------------------------------------------------------


@pytest.mark.parametrize("running", [False, True])
def test_parity_target_is_the_xor(running):
    _, batch = sample("parity", length=15, running=running)
    bits = batch.x[:, :, 0]
    assert set(np.unique(bits)) == {0.0, 1.0}
    for b in range(batch.batch_size):
        acc = 0
        for t in range(bits.shape[0]):
            acc ^= int(bits[t, b])
            if running or t == bits.shape[0] - 1:
                assert batch.y[t, b, 0] == acc and batch.mask[t, b] == 1
            else:
                assert batch.mask[t, b] == 0


# ---- arithmetic --------------------------------------------------------------------------------

ARITH_VOCAB = "0123456789+-=." + string.ascii_lowercase


def parse_number(chars):
    value = 0
    for ch in chars:
        value = value * 10 + (ord(ch) - ord("0"))
    return value


def solve(question):
    """The answer to 'a op b =' with letters removed: a tiny parser, no eval."""
    clean = [ch for ch in question if ch not in string.ascii_lowercase]
    assert clean[-1] == "="
    clean = clean[:-1]
    ops = [i for i, ch in enumerate(clean) if ch in "+-"]
    assert len(ops) == 1 and 0 < ops[0] < len(clean) - 1
    a, b = clean[: ops[0]], clean[ops[0] + 1 :]
    for num in (a, b):
        assert all(ch in string.digits for ch in num)
        assert len(num) == 1 or num[0] != "0", "no leading zeros"
    value = parse_number(a) + (1 if clean[ops[0]] == "+" else -1) * parse_number(b)
    return str(value), len(a), len(b)


@pytest.mark.parametrize(("digits", "distractors"), [(1, 0), (3, 3), (8, 5)])
def test_arithmetic_answer_is_the_sum_or_difference(digits, distractors):
    from cellsearch.tasks import arithmetic

    assert arithmetic.VOCAB == ARITH_VOCAB
    _, batch = sample("arithmetic", batch_size=200, digits=digits, distractors=distractors)
    lengths, ops, negative = set(), set(), False
    for b in range(batch.batch_size):
        text = "".join(ARITH_VOCAB[i] for i in batch.x[:, b])
        eq = text.index("=")
        answer, la, lb = solve(text[: eq + 1])
        lengths |= {la, lb}
        assert la <= digits and lb <= digits
        ops |= {ch for ch in text[:eq] if ch in "+-"}
        negative |= answer.startswith("-")
        # teacher forcing: the answer follows '=' in the input, then padding
        assert text[eq + 1 : eq + 1 + len(answer)] == answer
        assert set(text[eq + 1 + len(answer) :]) <= {"."}
        # distractor runs between question characters are at most `distractors` long
        run = 0
        for ch in text[:eq]:
            run = run + 1 if ch in string.ascii_lowercase else 0
            assert run <= distractors
        # the counted targets are the answer then the end symbol, predicted from '=' on
        counted = np.flatnonzero(batch.mask[:, b])
        np.testing.assert_array_equal(counted, np.arange(eq, eq + len(answer) + 1))
        assert "".join(ARITH_VOCAB[i] for i in batch.y[counted, b]) == answer + "."
        # everywhere else y is the next input character (plain next-character layout)
        real = eq + len(answer)
        np.testing.assert_array_equal(batch.y[:real, b], batch.x[1 : real + 1, b])
    assert ops == {"+", "-"} and negative
    assert lengths == set(range(1, digits + 1))
    if distractors:
        assert (batch.x >= ARITH_VOCAB.index("a")).any()
    else:
        assert not (batch.x >= ARITH_VOCAB.index("a")).any()


def test_arithmetic_operand_lengths_are_uniform():
    """The digit count of each operand is uniform in 1..digits (not the value in [0, 10^digits))."""
    _, batch = sample("arithmetic", batch_size=2000, digits=3, distractors=0)
    counts = np.zeros(4)
    for b in range(batch.batch_size):
        text = "".join(ARITH_VOCAB[i] for i in batch.x[:, b])
        _, la, lb = solve(text[: text.index("=") + 1])
        counts[la] += 1
        counts[lb] += 1
    np.testing.assert_allclose(counts[1:] / counts.sum(), 1 / 3, atol=0.025)


def test_arithmetic_example_from_the_paper_parses():
    assert solve("3e36d9-h1h39f94eeh43keg3c=") == ("-13991064", 4, 8)


# ---- xml ---------------------------------------------------------------------------------------

XML_VOCAB = string.ascii_lowercase + "<>/."


def check_xml(text, names=None):
    """Well-formed, non-empty, tag names of 2–10 lowercase letters; returns the greatest depth."""
    assert text
    stack, i, depth = [], 0, 0
    names = [] if names is None else names
    while i < len(text):
        assert text[i] == "<"
        j = text.index(">", i)
        tag = text[i + 1 : j]
        closing = tag.startswith("/")
        name = tag[1:] if closing else tag
        assert 2 <= len(name) <= 10 and set(name) <= set(string.ascii_lowercase)
        if closing:
            assert stack and stack.pop() == name
        else:
            stack.append(name)
            names.append(name)
            depth = max(depth, len(stack))
        i = j + 1
    assert not stack
    return depth


def test_xml_is_next_character_prediction_of_well_formed_text():
    from cellsearch.tasks import xml

    assert xml.VOCAB == XML_VOCAB
    _, batch = sample("xml", batch_size=100, max_steps=12)
    depths, names = [], []
    for b in range(batch.batch_size):
        n = int(batch.mask[:, b].sum())
        assert np.all(batch.mask[:n, b] == 1) and np.all(batch.mask[n:, b] == 0)
        x = "".join(XML_VOCAB[i] for i in batch.x[:n, b])
        y = "".join(XML_VOCAB[i] for i in batch.y[:n, b])
        assert y[:-1] == x[1:] and y[-1] == "."
        depths.append(check_xml(x[0] + y[:-1], names))
        assert set("".join(XML_VOCAB[i] for i in batch.x[n:, b])) <= {"."}
    assert max(depths) <= 12 and max(depths) >= 3
    assert {len(n) for n in names} == set(range(2, 11))
    assert set("".join(names)) == set(string.ascii_lowercase)


def test_xml_after_one_step_only_closes():
    """max_steps=1: the first iteration must open (empty samples are skipped), then only closes follow."""
    _, batch = sample("xml", batch_size=50, max_steps=1)
    for b in range(batch.batch_size):
        n = int(batch.mask[:, b].sum())
        text = "".join(XML_VOCAB[i] for i in batch.x[:n, b]) + XML_VOCAB[batch.y[n - 1, b]]
        assert text.endswith(".")
        name = text[1 : text.index(">")]
        assert text == f"<{name}></{name}>."


def test_xml_follows_the_fifty_percent_rule():
    """After the first open: close (½), then close-with-nothing-open stops (½), so P(<t></t>) = ¼;
    and the first tag gets a child with probability ½. Empty draws are skipped, never returned."""
    task = make_task("xml")
    rng = np.random.default_rng(1)
    texts = [task.text(rng) for _ in range(4000)]
    assert all(texts)
    single = np.mean([t.count("<") == 2 for t in texts])
    child = np.mean([not t[t.index(">") + 1 :].startswith("</") for t in texts])
    assert single == pytest.approx(0.25, abs=0.03)
    assert child == pytest.approx(0.5, abs=0.03)
