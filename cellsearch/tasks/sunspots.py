"""Sunspots: forecast the yearly sunspot numbers, 1700–2008, split chronologically.

Data: ``statsmodels.datasets.sunspots`` (``load_pandas().data``, column ``SUNACTIVITY``), 309
yearly values bundled with statsmodels (``pip install statsmodels``; nothing is downloaded). It is
imported on first use (``sample`` or ``baseline``), not with the task.

Split: chronological, never shuffled, the same on every run. The last ``round(0.15 · 309) = 46`` years are the test split
(1963–2008), the 46 before them the validation split (1917–1962), the first 217 (70%, 1700–1916)
the training split. Every value is normalised by the training split's mean and standard deviation
(42.97 and 34.13 over 1700–1916: :attr:`SunspotsTask.train_mean`, :attr:`SunspotsTask.train_std`),
whichever split is drawn from.

Windows (as in :mod:`.forecast`): ``warmup + length`` consecutive years starting at year index
``a``; ``x[t]`` is year ``a + t``, ``y[t]`` year ``a + t + horizon``, and the ``length`` counted
steps are the last ones. A window belongs to a split when **every counted target lies in that
split**: ``lo ≤ a + warmup + horizon`` and ``a + warmup + length − 1 + horizon ≤ hi − 1`` for the
split's years ``[lo, hi)``, with ``a ≥ 0``. So no input or target of a window lies in a later split
(the last input is ``horizon`` years before the last target); its warm-up context and uncounted
targets may come from the earlier years of the series (the training split's, for a validation
window), which a forecaster standing in the split would know. ``sample`` draws the start ``a``
uniformly among a split's windows (``length ≤ 46`` so the held-out splits hold at least one; the
defaults, length 20, warm-up 10, horizon 1, give 27 validation and test windows, 187 training ones).
A training window's first counted target is year index ``warmup + horizon`` at the earliest (1711 at
the defaults). The split is fixed, not drawn; only the windows come from the task's generator.

Metric ``nrmse``: RMSE divided by ``σ``, the standard deviation of the split's counted targets over
all its windows, each window once (exact; ``target_std()``). Baselines (``baseline()``), exact over
the same windows: the training mean (0 after normalisation), whose ``nrmse`` is above 1 on the
held-out splits because the cycles of the 20th century were stronger than the training average,
and persistence (``persistence_nrmse``). At the defaults: train 1.003 / 0.613, valid 1.077 / 0.626,
test 1.185 / 0.658 (mean / persistence; ``σ`` = 1.022, 1.357, 1.463 in training-normalised units).
"""

from __future__ import annotations

import functools
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError
from .base import Option
from .cache import SPLIT_OPTION, SPLITS, check_installed, require
from .forecast import ForecastTask, forecast_options, masked_rms

__all__ = ["HELD_OUT_SHARE", "SunspotsTask", "load_sunspots", "split_bounds"]

HELD_OUT_SHARE = 0.15  # of the years, for each of valid and test (the last ones)
MAX_LENGTH = 46  # the held-out splits' size for the 309 years statsmodels ships


@functools.cache
def _load() -> tuple[np.ndarray, np.ndarray]:
    module = require("statsmodels.datasets.sunspots", "statsmodels", "sunspots")
    frame = module.load_pandas().data
    years = np.asarray(frame["YEAR"], dtype=np.float64).astype(np.int64)
    values = np.asarray(frame["SUNACTIVITY"], dtype=np.float64)
    years.setflags(write=False)
    values.setflags(write=False)
    return years, values


def load_sunspots() -> tuple[np.ndarray, np.ndarray]:
    """The years (int64) and yearly sunspot numbers (float64), read-only, in time order."""
    return _load()


def split_bounds(n: int) -> dict[str, tuple[int, int]]:
    """``{split: (lo, hi)}``, the year indices ``[lo, hi)`` of each split of ``n`` years."""
    held = int(HELD_OUT_SHARE * n + 0.5)
    train = n - 2 * held
    return {"train": (0, train), "valid": (train, train + held), "test": (train + held, n)}


@functools.cache
def _normalised() -> np.ndarray:
    _, values = _load()
    lo, hi = split_bounds(len(values))["train"]
    out = (values - values[lo:hi].mean()) / values[lo:hi].std()
    out.setflags(write=False)
    return out


class SunspotsTask(ForecastTask):
    name = "sunspots"
    OPTIONS: ClassVar[dict[str, Option]] = {
        **forecast_options((20, 10, 1), (MAX_LENGTH, 100, 20)),
        "split": SPLIT_OPTION,
    }

    split: str

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        check_installed("statsmodels", "statsmodels", self.name)
        self._std: float | None = None

    @property
    def train_mean(self) -> float:
        """The training split's mean sunspot number (subtracted from every value)."""
        _, values = _load()
        lo, hi = split_bounds(len(values))["train"]
        return float(values[lo:hi].mean())

    @property
    def train_std(self) -> float:
        """The training split's standard deviation (every value is divided by it)."""
        _, values = _load()
        lo, hi = split_bounds(len(values))["train"]
        return float(values[lo:hi].std())

    def series(self) -> tuple[np.ndarray, np.ndarray]:
        """All years and their normalised values (read-only), the series windows are cut from."""
        return _load()[0], _normalised()

    def starts(self, split: str | None = None) -> np.ndarray:
        """The start indices ``a`` of every window of ``split`` (default: this task's), ascending."""
        split = self.split if split is None else split
        if split not in SPLITS:
            raise ConfigError(f"task '{self.name}': split must be one of {', '.join(map(repr, SPLITS))} (got {split!r})")
        n = len(_normalised())
        lo, hi = split_bounds(n)[split]
        shift = self.warmup + self.horizon  # a + shift is the first counted target
        first, last = max(0, lo - shift), hi - shift - self.length
        if last < first:
            raise ConfigError(
                f"task '{self.name}': no window of {self.steps} steps with horizon {self.horizon} fits the "
                f"{split} split ({hi - lo} years)"
            )
        return np.arange(first, last + 1, dtype=np.int64)

    def _cut(self, starts: np.ndarray) -> np.ndarray:
        offsets = np.arange(self.steps + self.horizon, dtype=np.int64)
        return _normalised()[offsets[:, None] + starts[None, :]]

    def _windows(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        pool = self.starts()
        return self._cut(pool[rng.integers(0, len(pool), size=batch_size)])

    def _reference_windows(self) -> np.ndarray:
        return self._cut(self.starts())

    def target_std(self) -> float:
        if self._std is None:
            ref = self.reference()
            y, m = ref.y[:, :, 0].astype(np.float64), ref.mask
            mean = float(np.sum(m * y) / np.sum(m))
            self._std = masked_rms(y - mean, m)
        return self._std
