"""What the forecasting tasks (``mackey_glass``, ``sunspots``) share: windows, the mask, nrmse and two baselines.

A forecasting task reads one real series, already normalised (the training data's mean subtracted,
divided by its standard deviation), through windows of ``warmup + length`` steps:

- ``x[t] = v(a + t)`` (``input_size = 1``, float32 ``[T, B, 1]``) and ``y[t] = v(a + t + horizon)``
  on every step, so ``y[t] == x[t + horizon]`` wherever the window's input reaches that far;
- ``mask`` is 0 on the first ``warmup`` steps (the model reads them as context only) and 1 on the
  last ``length``.

Loss: MSE per counted step. Metric ``nrmse`` (lower is better): ``sqrt(masked mean of (pred − y)²)
/ σ``, where ``σ`` is :meth:`ForecastTask.target_std`, the standard deviation of the counted
targets as the task draws them (each task's docstring says how it gets it).

Two input-blind or trivial predictors are reported side by side:

- the **training mean**, always predicting the training data's mean (0 after normalisation): it
  ignores the input, so it is the chance level, ``baseline()["nrmse"]`` and ``["loss"]`` (its MSE),
  ``nrmse ≈ 1`` where the scored targets have the training data's mean;
- **persistence**, predicting ``x(t)`` for ``x(t + horizon)``: ``score()`` reports it on the same
  batch as ``persistence_nrmse`` and ``baseline()`` gives its expected value under the same key.

``baseline()`` measures both on :meth:`ForecastTask.reference`, a fixed batch that stands for the
task's sampling distribution (every window once for a data series, a large fixed-seed batch for a
generator).
"""

from __future__ import annotations

import math
from abc import abstractmethod
from typing import ClassVar

import numpy as np

from .base import Batch, Option, Task

__all__ = ["ForecastTask", "forecast_options", "masked_rms"]


def forecast_options(defaults: tuple[int, int, int], highs: tuple[int, int, int]) -> dict[str, Option]:
    """The ``length``, ``warmup`` and ``horizon`` options with a task's defaults and upper ends."""
    (length, warmup, horizon), (max_length, max_warmup, max_horizon) = defaults, highs
    return {
        "length": Option(int, length, 1, max_length, doc="counted steps per window (after the warm-up)"),
        "warmup": Option(int, warmup, 0, max_warmup, doc="uncounted context steps before them"),
        "horizon": Option(int, horizon, 1, max_horizon, doc="k: predict the value k steps ahead"),
    }


def masked_rms(diff: np.ndarray, mask: np.ndarray) -> float:
    """``sqrt(Σ mask · diff² / Σ mask)`` in float64 (``diff`` and ``mask`` ``[T, B]``)."""
    d = np.asarray(diff, dtype=np.float64)
    m = np.asarray(mask, dtype=np.float64)
    return math.sqrt(float(np.sum(m * d * d) / np.sum(m)))


class ForecastTask(Task):
    """Base of the one-dimensional forecasting tasks; subclasses provide the windows and ``σ``."""

    loss = "mse"
    metric = "nrmse"
    higher_is_better = False
    INPUT_KIND = "vector"
    OPTIONS: ClassVar[dict[str, Option]] = {}

    length: int
    warmup: int
    horizon: int

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        self._reference: Batch | None = None
        self._baseline: dict[str, float] | None = None

    @property
    def input_size(self) -> int:
        return 1

    @property
    def output_size(self) -> int:
        return 1

    @property
    def steps(self) -> int:
        """``T = warmup + length``, the steps of every window."""
        return self.warmup + self.length

    # ---- what a subclass provides ---------------------------------------------------------------

    @abstractmethod
    def _windows(self, rng: np.random.Generator, batch_size: int) -> np.ndarray:
        """``[T + horizon, B]`` float64 normalised values: window ``b`` is ``v(a_b), …, v(a_b + T + horizon − 1)``."""

    @abstractmethod
    def _reference_windows(self) -> np.ndarray:
        """The windows (as :meth:`_windows` returns them) that stand for the sampling distribution."""

    @abstractmethod
    def target_std(self) -> float:
        """``σ``, the nrmse denominator: the standard deviation of the counted targets."""

    # ---- data -----------------------------------------------------------------------------------

    def _batch(self, v: np.ndarray) -> Batch:
        T, k = self.steps, self.horizon
        x = np.ascontiguousarray(v[:T, :, None], dtype=np.float32)
        y = np.ascontiguousarray(v[k : k + T, :, None], dtype=np.float32)
        mask = np.zeros((T, v.shape[1]), dtype=np.float32)
        mask[self.warmup :] = 1.0
        return Batch(x, y, mask)

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        return self._batch(self._windows(rng, batch_size))

    def reference(self) -> Batch:
        """The fixed batch ``baseline()`` is measured on (built once per task object)."""
        if self._reference is None:
            self._reference = self._batch(self._reference_windows())
        return self._reference

    # ---- scoring --------------------------------------------------------------------------------

    def _metrics(self, pred: np.ndarray, batch: Batch) -> dict[str, float]:
        m = self.metric_mask(batch)
        sigma = self.target_std()
        y = batch.y[:, :, 0].astype(np.float64)
        return {
            "nrmse": masked_rms(np.asarray(pred, dtype=np.float64)[:, :, 0] - y, m) / sigma,
            "persistence_nrmse": masked_rms(batch.x[:, :, 0].astype(np.float64) - y, m) / sigma,
        }

    def baseline(self) -> dict[str, float]:
        """The training mean's loss and nrmse (the chance level) and persistence's nrmse."""
        if self._baseline is None:
            ref = self.reference()
            y, m = ref.y[:, :, 0].astype(np.float64), ref.mask
            mean_rms = masked_rms(y, m)  # the training mean is 0 after normalisation
            self._baseline = {
                "loss": mean_rms**2,
                "nrmse": mean_rms / self.target_std(),
                "persistence_nrmse": masked_rms(ref.x[:, :, 0].astype(np.float64) - y, m) / self.target_std(),
            }
        return dict(self._baseline)
