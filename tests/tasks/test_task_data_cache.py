"""Plumbing of the data tasks: seeded 60/20/20 splits, optional imports with a pip hint, the .npz cache."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest

from cellsearch.errors import ConfigError
from cellsearch.tasks import cache
from cellsearch.tasks.cache import (
    CACHE_ENV,
    SPLIT_OPTION,
    cache_dir,
    check_installed,
    load_npz,
    require,
    save_npz,
    seeded_split,
    split_sizes,
)

# ---- splits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n", "sizes"),
    [
        (3, (1, 1, 1)),
        (4, (2, 1, 1)),
        (5, (3, 1, 1)),
        (10, (6, 2, 2)),
        (12, (8, 2, 2)),
        (332, (200, 66, 66)),
        (1797, (1079, 359, 359)),
    ],
)
def test_split_sizes(n, sizes):
    assert split_sizes(n) == sizes
    assert sum(sizes) == n


def test_split_sizes_are_close_to_60_20_20():
    for n in range(3, 3000):
        train, valid, test = split_sizes(n)
        assert valid == test >= 1 and train >= valid
        assert abs(valid - 0.2 * n) <= 0.5


def test_split_sizes_need_three():
    with pytest.raises(ValueError):
        split_sizes(2)


@pytest.mark.parametrize("n", [3, 12, 100, 1797])
def test_seeded_split_is_a_disjoint_cover(n):
    parts = seeded_split(n, seed=5)
    assert list(parts) == ["train", "valid", "test"]
    assert tuple(len(p) for p in parts.values()) == split_sizes(n)
    joined = np.concatenate(list(parts.values()))
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))
    for p in parts.values():
        assert p.dtype == np.int64 and np.all(np.diff(p) > 0)


def test_seeded_split_is_deterministic_and_seeded():
    a, b, c = seeded_split(50, 1), seeded_split(50, 1), seeded_split(50, 2)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert any(not np.array_equal(a[key], c[key]) for key in a)
    # pinned: the split depends on nothing but n and the seed (NumPy's PCG64 stream is stable)
    assert a["test"].tolist() == [5, 8, 10, 13, 18, 32, 36, 38, 41, 46]


def test_split_option():
    assert SPLIT_OPTION.default == "train"
    assert SPLIT_OPTION.choices == ("train", "valid", "test")


# ---- optional packages -------------------------------------------------------------------------


def test_missing_package_is_a_config_error_with_a_pip_hint(monkeypatch):
    monkeypatch.setitem(sys.modules, "some_missing_pkg", None)
    with pytest.raises(ConfigError) as err:
        check_installed("some_missing_pkg", "some-missing-pkg", "digits")
    assert (
        str(err.value)
        == "task 'digits': needs the 'some-missing-pkg' package, which is not installed (pip install some-missing-pkg)"
    )
    with pytest.raises(ConfigError) as err:
        require("some_missing_pkg", "some-missing-pkg", "chorales")
    assert str(err.value).startswith("task 'chorales': needs the 'some-missing-pkg' package")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError):
        check_installed("no_such_module_xyz.sub", "xyz", "text")


def test_require_imports_an_installed_module():
    assert require("json", "json", "text") is sys.modules["json"]
    check_installed("json", "json", "text")


def test_importing_the_tasks_loads_no_optional_package():
    code = (
        "import sys, cellsearch.tasks as t; "
        "assert {'digits', 'chorales', 'text'} <= set(t.TASKS); "
        "print(sorted(m for m in ('sklearn', 'music21', 'platformdirs') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---- cache dir ---------------------------------------------------------------------------------


def test_cache_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "here"))
    assert cache_dir("chorales") == tmp_path / "here"


def test_cache_dir_default_is_platformdirs(monkeypatch):
    platformdirs = pytest.importorskip("platformdirs")
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert str(cache_dir("chorales")) == platformdirs.user_cache_dir("cellsearch")


def test_cache_dir_without_platformdirs(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "platformdirs", None)
    monkeypatch.delenv(CACHE_ENV, raising=False)
    with pytest.raises(ConfigError) as err:
        cache_dir("chorales")
    assert "pip install platformdirs" in str(err.value)
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))  # the override needs no platformdirs
    assert cache_dir("chorales") == tmp_path


# ---- npz files ---------------------------------------------------------------------------------


def arrays():
    return {"a": np.arange(6, dtype=np.int64).reshape(2, 3), "names": np.array(["x", "yz"]), "r": np.eye(3, dtype=np.uint8)}


def test_round_trip(tmp_path):
    path = tmp_path / "sub" / "f.npz"
    assert save_npz(path, "v1", arrays())
    back = load_npz(path, "v1")
    assert back is not None
    assert set(back) == {"a", "names", "r", "version"}
    for key, value in arrays().items():
        np.testing.assert_array_equal(back[key], value)
        assert back[key].dtype == value.dtype
    assert os.listdir(path.parent) == ["f.npz"], "no temporary file is left behind"


def test_stale_missing_and_corrupt_files_read_as_none(tmp_path):
    path = tmp_path / "f.npz"
    assert load_npz(path, "v1") is None
    save_npz(path, "v1", arrays())
    assert load_npz(path, "v2") is None
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert load_npz(path, "v1") is None
    path.write_bytes(b"not a zip file at all")
    assert load_npz(path, "v1") is None
    path.write_bytes(b"")
    assert load_npz(path, "v1") is None
    np.savez(path, a=np.zeros(2))  # readable, but written without a version
    assert load_npz(path, "v1") is None
    np.savez(path, version=np.array(["v1", "v1"]))  # a version that is not a scalar string
    assert load_npz(path, "v1") is None


def test_pickles_are_never_loaded(tmp_path):
    path = tmp_path / "f.npz"
    np.savez(path, version=np.array("v1"), obj=np.array([{"a": 1}], dtype=object))
    assert load_npz(path, "v1") is None


def test_a_failed_write_keeps_the_old_file_and_warns(tmp_path, monkeypatch):
    path = tmp_path / "f.npz"
    save_npz(path, "v1", arrays())
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(cache.np, "savez_compressed", broken)
    with pytest.warns(RuntimeWarning, match="disk full"):
        assert not save_npz(path, "v2", arrays())
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["f.npz"]


def test_an_unusable_cache_folder_only_warns(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert not save_npz(blocker / "sub" / "f.npz", "v1", arrays())
    assert any(issubclass(w.category, RuntimeWarning) for w in caught)
