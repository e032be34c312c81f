"""Copy memory, the uRNN variant (Arjovsky, Shah & Bengio 2016; the TCN benchmark's generator).

STUDIES.md §4. Symbols: 0 is the blank, ``1..symbols`` the data, ``symbols + 1`` the marker. A
sequence has ``length + 2n`` steps (``T = length``)::

    x = [s_1 … s_n, 0 × (T−1), marker, 0 × n]
    y = [0 × (T+n),                    s_1 … s_n]

so the marker sits at step ``n + T − 1`` and the ``n`` data symbols must be reproduced on the last
``n`` steps, with no input there. The TCN generator repeats the marker over the last ``n + 1``
steps; this follows the uRNN paper (one marker, then blanks), as the project's brief asks.

Loss: cross-entropy over **all** ``T + 2n`` steps (``mask`` is all ones), as in the uRNN paper.
Metric: ``accuracy`` over the ``n`` recall steps only (the blanks before them are free points that
would hide failure). Outputs: ``symbols + 1`` classes (blank and data; the marker is never a target).

Baseline: a memoryless predictor that outputs blank with certainty for the first ``T + n`` steps and
a uniform guess over the symbols on the last ``n`` has loss ``n·ln(symbols)/(T + 2n)``, which is
``10·ln 8/(T + 20)`` for the paper's ``n = 10, symbols = 8`` (0.173 at T = 100), and recall accuracy
``1/symbols``.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from .base import Batch, Option, Task


class CopyTask(Task):
    name = "copy"
    loss = "ce"
    metric = "accuracy"
    higher_is_better = True
    INPUT_KIND = "symbols"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "length": Option(int, 100, 1, 10000, doc="T, the blank stretch between the data and the recall"),
        "symbols": Option(int, 8, 2, 1000, doc="size of the data alphabet"),
        "n": Option(int, 10, 1, 1000, doc="how many symbols to copy"),
    }

    length: int
    symbols: int
    n: int

    @property
    def marker(self) -> int:
        return self.symbols + 1

    @property
    def input_size(self) -> int:
        return self.symbols + 2

    @property
    def output_size(self) -> int:
        return self.symbols + 1

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        T, n = self.length, self.n
        seq = rng.integers(1, self.symbols + 1, size=(n, batch_size), dtype=np.int64)
        x = np.zeros((T + 2 * n, batch_size), dtype=np.int64)
        x[:n] = seq
        x[n + T - 1] = self.marker
        y = np.zeros_like(x)
        y[T + n :] = seq
        mask = np.ones(x.shape, dtype=np.float32)
        return Batch(x, y, mask)

    def metric_mask(self, batch: Batch) -> np.ndarray:
        m = np.zeros_like(batch.mask)
        m[-self.n :] = batch.mask[-self.n :]
        return m

    def baseline(self) -> dict[str, float]:
        return {
            "loss": self.n * math.log(self.symbols) / (self.length + 2 * self.n),
            "accuracy": 1.0 / self.symbols,
        }
