"""Delayed recall (a project task, STUDIES.md §4): output the symbol seen ``lag`` steps ago.

The input is a stream of ``lag + steps`` symbols drawn uniformly and independently from
``{0, …, symbols−1}``. The target at step ``t`` is the input at step ``t − lag``; it counts only for
``t ≥ lag`` (``mask`` 0 on the first ``lag`` steps, whose targets are 0), so every sequence has
exactly ``steps`` counted steps. Loss: CE; metric: accuracy.

Chance: the recalled symbol is independent of everything the model could know without memory, so
accuracy ``1/symbols`` and loss ``ln(symbols)``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from .base import Batch, Option, Task


class DelayedRecallTask(Task):
    name = "delayed_recall"
    loss = "ce"
    metric = "accuracy"
    higher_is_better = True
    INPUT_KIND = "symbols"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "lag": Option(int, 50, 1, 1000, doc="L: steps between seeing a symbol and recalling it"),
        "symbols": Option(int, 8, 2, 1000, doc="K: alphabet size"),
        "steps": Option(int, 50, 1, 10000, doc="counted recall steps per sequence (length = lag + steps)"),
    }

    lag: int
    symbols: int
    steps: int

    @property
    def input_size(self) -> int:
        return self.symbols

    @property
    def output_size(self) -> int:
        return self.symbols

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        L = self.lag
        x = rng.integers(0, self.symbols, size=(L + self.steps, batch_size), dtype=np.int64)
        y = np.zeros_like(x)
        y[L:] = x[:-L]
        mask = np.zeros(x.shape, dtype=np.float32)
        mask[L:] = 1.0
        return Batch(x, y, mask)

    def baseline(self) -> dict[str, float]:
        return {"loss": math.log(self.symbols), "accuracy": 1.0 / self.symbols}
