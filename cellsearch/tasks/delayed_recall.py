"""Delayed recall (a project task, STUDIES.md §4): a symbol seen at step 0 must be output ``lag``
steps later — the vanishing-gradient test in its plainest form.

Ids: 0 is the blank, ``1..symbols`` the symbols, ``symbols + 1`` the cue. A sequence has ``lag + 1``
steps::

    x = [s, 0 × (lag − 1), cue]        (with ``cue=False`` the last step is a blank too)
    y[lag] = s − 1                      (classes 0..symbols−1; only that step counts)

so the model must carry one symbol across ``lag`` steps of blanks. With the cue it only has to hold
the symbol; without it, it must also count. Loss: CE at the recall step; metric: accuracy.

Chance: the symbol is uniform and independent of everything a memoryless model sees, so accuracy
``1/symbols`` and loss ``ln(symbols)``.
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
        "lag": Option(int, 50, 1, 1000, doc="L: steps between seeing the symbol and recalling it"),
        "symbols": Option(int, 8, 2, 1000, doc="K: alphabet size"),
        "cue": Option(bool, True, doc="mark the recall step with a cue symbol"),
    }

    lag: int
    symbols: int
    cue: bool

    @property
    def input_size(self) -> int:
        return self.symbols + 2

    @property
    def output_size(self) -> int:
        return self.symbols

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        L = self.lag
        s = rng.integers(1, self.symbols + 1, size=batch_size, dtype=np.int64)
        x = np.zeros((L + 1, batch_size), dtype=np.int64)
        x[0] = s
        if self.cue:
            x[L] = self.symbols + 1
        y = np.zeros_like(x)
        y[L] = s - 1
        mask = np.zeros(x.shape, dtype=np.float32)
        mask[L] = 1.0
        return Batch(x, y, mask)

    def baseline(self) -> dict[str, float]:
        return {"loss": math.log(self.symbols), "accuracy": 1.0 / self.symbols}
