"""Plumbing shared by the data tasks (``digits``, ``chorales``, ``text``): splits, optional imports, a cache.

- **Splits.** Every data task has the option ``split`` (:data:`SPLIT_OPTION`): ``"train"``,
  ``"valid"`` or ``"test"``, default ``"train"``; ``sample`` draws from that split only. Where the
  data has no standard split, :func:`seeded_split` makes one: a permutation of the example indices
  drawn from ``numpy.random.default_rng(seed)`` with a seed fixed in the task's module, cut 60/20/20
  (:func:`split_sizes`). The same data and seed give the same three disjoint index sets on every
  machine and run.
- **Optional packages.** A data task may need a package that ``cellsearch.tasks`` itself does not
  (scikit-learn, music21, platformdirs). :func:`check_installed` looks one up without importing it
  (task construction calls it, so a missing package fails early); :func:`require` imports it when
  the data is first needed. Both raise :class:`~cellsearch.errors.ConfigError` with a one-line
  ``pip install`` hint. Importing ``cellsearch.tasks`` never imports these packages.
- **Cache.** Data that is slow to build (the chorale piano rolls) is kept as a compressed ``.npz``
  in :func:`cache_dir`: ``$CELLSEARCH_CACHE_DIR`` when set, else platformdirs'
  ``user_cache_dir("cellsearch")``. :func:`save_npz` writes through a temporary file in the same
  folder and ``os.replace``, so readers never see half a file and concurrent writers cannot mix
  theirs; :func:`load_npz` returns ``None`` for a missing, unreadable, corrupt or stale file (its
  stored ``version`` differs), and the caller rebuilds it.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import tempfile
import warnings
import zipfile
import zlib
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ..errors import ConfigError
from .base import Option

__all__ = [
    "CACHE_ENV",
    "SPLITS",
    "SPLIT_OPTION",
    "cache_dir",
    "check_installed",
    "load_npz",
    "require",
    "save_npz",
    "seeded_split",
    "split_sizes",
]

SPLITS = ("train", "valid", "test")
SPLIT_OPTION = Option(str, "train", choices=SPLITS, doc="which part of the data to draw from")
CACHE_ENV = "CELLSEARCH_CACHE_DIR"


# ---- splits --------------------------------------------------------------------------------------


def split_sizes(n: int) -> tuple[int, int, int]:
    """``(train, valid, test)`` sizes of ``n`` examples cut 60/20/20.

    Valid and test each get ``round(0.2·n)`` (halves rounded up), at least 1 when ``n ≥ 3``; train
    gets the rest, so it is never smaller than either. ``n = 1797`` → 1079/359/359; 350 → 210/70/70;
    12 → 8/2/2; 3 → 1/1/1.
    """
    if n < 3:
        raise ValueError(f"a 60/20/20 split needs at least 3 examples (got {n})")
    held = max(1, int(0.2 * n + 0.5))
    return n - 2 * held, held, held


def seeded_split(n: int, seed: int) -> dict[str, np.ndarray]:
    """Disjoint sorted int64 index arrays ``{"train", "valid", "test"}`` covering ``range(n)``.

    The indices are ``default_rng(seed).permutation(n)`` cut into :func:`split_sizes` pieces in the
    order train, valid, test.
    """
    order = np.random.default_rng(seed).permutation(n)
    n_train, n_valid, _ = split_sizes(n)
    cuts = (order[:n_train], order[n_train : n_train + n_valid], order[n_train + n_valid :])
    return {name: np.sort(part).astype(np.int64) for name, part in zip(SPLITS, cuts, strict=True)}


# ---- optional packages -------------------------------------------------------------------------


def _hint(task: str, package: str) -> str:
    return f"task '{task}': needs the '{package}' package, which is not installed (pip install {package})"


def check_installed(module: str, package: str, task: str) -> None:
    """Raise ``ConfigError`` naming ``task`` unless ``module`` can be imported; imports nothing."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigError(_hint(task, package))


def require(module: str, package: str, task: str) -> ModuleType:
    """Import ``module`` (pip package ``package``) for ``task``; ``ConfigError`` with a hint if missing.

    The import goes through :mod:`importlib` on purpose: these packages are optional, loaded only
    when a data task first needs its data, and not a dependency of ``cellsearch.tasks`` itself.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(_hint(task, package)) from None


# ---- cache -------------------------------------------------------------------------------------


def cache_dir(task: str) -> Path:
    """Where data tasks keep built data: ``$CELLSEARCH_CACHE_DIR``, else ``user_cache_dir("cellsearch")``."""
    env = os.environ.get(CACHE_ENV, "")
    if env:
        return Path(env).expanduser()
    platformdirs = require("platformdirs", "platformdirs", task)
    return Path(platformdirs.user_cache_dir("cellsearch"))


_BAD_FILE = (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error)


def load_npz(path: Path, version: str) -> dict[str, np.ndarray] | None:
    """All arrays of the ``.npz`` at ``path`` if it reads cleanly and its ``version`` is ``version``.

    ``None`` when the file is missing, unreadable, corrupt (a truncated or garbage file included)
    or was written under another version string. Pickled objects are never loaded.
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {key: np.asarray(f[key]) for key in f.files}
    except _BAD_FILE:
        return None
    stored = arrays.get("version")
    if stored is None or stored.shape != () or str(stored) != version:
        return None
    return arrays


def save_npz(path: Path, version: str, arrays: dict[str, np.ndarray]) -> bool:
    """Write ``arrays`` and ``version`` to ``path`` (compressed) atomically; ``False`` if it cannot.

    A cache that cannot be written (a read-only folder, a full disk) is not an error: the data is
    already in memory, so this warns and the next run builds it again.
    """
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            payload: dict[str, Any] = {"version": np.array(version), **arrays}
            np.savez_compressed(fh, **payload)
        os.replace(tmp, path)
        tmp = None
        return True
    except OSError as err:
        warnings.warn(f"could not write the cache file {path}: {err}", RuntimeWarning, stacklevel=2)
        return False
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass
