"""The registry, option checking and its one-line errors, and the layering rule of cellsearch.tasks."""

import ast
import pathlib
import sys

import numpy as np
import pytest

import cellsearch.tasks as tasks_pkg
from cellsearch.errors import ConfigError
from cellsearch.tasks import TASKS, Task, make_task

NAMES = [
    "copy",
    "adding",
    "temporal_order",
    "delayed_recall",
    "associative_recall",
    "parity",
    "arithmetic",
    "xml",
    "mackey_glass",
    "sunspots",
    "tagging",
    "timing",
]
DATA_NAMES = ["digits", "chorales", "text"]  # checked in test_task_data_*.py (they need data)


def test_registry_holds_exactly_the_contract_names():
    assert sorted(TASKS) == sorted(NAMES + DATA_NAMES)
    for name, cls in TASKS.items():
        assert issubclass(cls, Task) and cls.name == name
        assert cls.loss in ("ce", "bce", "mse")
        assert cls.higher_is_better == (cls.metric not in ("mse", "nrmse", "nll", "perplexity"))


def test_unknown_task():
    with pytest.raises(ConfigError) as err:
        make_task("foo")
    assert str(err.value) == "unknown task 'foo' (known: " + ", ".join(TASKS) + ")"


@pytest.mark.parametrize("name", NAMES)
def test_defaults_are_valid_and_recorded(name):
    task = make_task(name)
    assert type(task) is TASKS[name]
    assert task.options == {k: opt.default for k, opt in task.OPTIONS.items()}
    assert repr(task).startswith(type(task).__name__ + "(")
    assert task.input_kind in ("vector", "symbols")
    assert task.input_size >= 1 and task.output_size >= 1


def test_options_become_attributes():
    task = make_task("copy", length=7, symbols=3, n=2)
    assert (task.length, task.symbols, task.n) == (7, 3, 2)
    assert task.options == {"length": 7, "symbols": 3, "n": 2}
    assert make_task("parity", running=np.bool_(True)).running is True
    assert type(make_task("copy", length=np.int64(5)).length) is int


def test_exact_messages():
    with pytest.raises(ConfigError) as err:
        make_task("copy", length=0)
    assert str(err.value) == "task 'copy': option 'length' must be an integer in [1, 10000] (got 0)"
    with pytest.raises(ConfigError) as err:
        make_task("copy", lenght=5)
    assert str(err.value) == "task 'copy': unknown option 'lenght' (known: length, symbols, n)"
    with pytest.raises(ConfigError) as err:
        make_task("temporal_order", variant="c")
    assert str(err.value) == "task 'temporal_order': option 'variant' must be one of 'a', 'b' (got 'c')"
    with pytest.raises(ConfigError) as err:
        make_task("parity", running=1)
    assert str(err.value) == "task 'parity': option 'running' must be True or False (got 1)"


def bad_values(opt):
    """Values of the wrong type and values just out of range, for one declared option."""
    if opt.kind is bool:
        return [1, 0, "true", None, 0.5]
    if opt.kind is str:
        return ["", "zz", 1, None, opt.choices[0].upper() + "x"]
    out = ["5", None, True, [1]]
    if opt.kind is int:
        out += [1.0, float(opt.default) + 0.5]
    else:
        out += [float("nan"), float("inf")]
    if opt.low is not None:
        out.append(opt.low - 1)
    if opt.high is not None:
        out.append(opt.high + 1)
    return out


CASES = [(name, key, value) for name in NAMES for key, opt in TASKS[name].OPTIONS.items() for value in bad_values(opt)]


@pytest.mark.parametrize(("name", "key", "value"), CASES)
def test_every_bad_option_value_raises(name, key, value):
    with pytest.raises(ConfigError) as err:
        make_task(name, **{key: value})
    message = str(err.value)
    assert message.startswith(f"task '{name}': option '{key}' must be ")
    assert message.endswith(f"(got {value!r})")
    assert "\n" not in message


@pytest.mark.parametrize("name", NAMES)
def test_unknown_option_names_the_task_and_key(name):
    with pytest.raises(ConfigError) as err:
        make_task(name, bogus=1)
    assert str(err.value).startswith(f"task '{name}': unknown option 'bogus' (known: ")
    for key in TASKS[name].OPTIONS:
        assert key in str(err.value)


@pytest.mark.parametrize("name", NAMES)
def test_range_ends_are_inclusive(name):
    for key, opt in TASKS[name].OPTIONS.items():
        for end in (opt.low, opt.high):
            if end is not None:
                assert getattr(make_task(name, **{key: opt.kind(end)}), key) == end


@pytest.mark.parametrize("batch_size", [0, -1, 2.0, True, "4"])
def test_bad_batch_size(batch_size):
    with pytest.raises(ConfigError) as err:
        make_task("copy").sample(np.random.default_rng(0), batch_size)
    assert str(err.value).startswith("task 'copy': batch_size must be a positive integer")


def test_rng_must_be_a_generator():
    with pytest.raises(ConfigError) as err:
        make_task("adding").sample(np.random.RandomState(0), 2)
    assert "numpy.random.Generator" in str(err.value)


def test_tasks_import_only_numpy_stdlib_and_errors():
    """Layering: cellsearch.tasks sits below train and beside model; it may not reach into cellsearch."""
    root = pathlib.Path(tasks_pkg.__file__).parent
    files = sorted(root.glob("*.py"))
    assert len(files) >= 11
    for path in files:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    continue  # a sibling inside cellsearch.tasks
                assert node.level in (0, 2), f"{path.name}: import from level {node.level}"
                if node.level == 2:
                    # (and the losses' kernel installs Numba's cache locator where it compiles them, at first use)
                    late = path.name == "losses.py" and node.module == "numba_cache" and node.col_offset > 0
                    assert node.module == "errors" or late, f"{path.name}: imports ..{node.module}"
                    continue
                mods = [node.module]
            else:
                continue
            for mod in mods:
                top = mod.split(".")[0]
                ok = top == "numpy" or top in sys.stdlib_module_names or mod == "cellsearch.errors"
                # (the losses' compiled kernel imports Numba inside the function that compiles it, at first use)
                ok = ok or (path.name == "losses.py" and mod == "numba" and node.col_offset > 0)
                assert ok, f"{path.name} imports {mod}"
