"""Adding problem, the Le et al. (2015) / Arjovsky et al. (2016) variant.

STUDIES.md §4. Input: 2 channels over ``length`` steps, ``x[:, :, 0] ~ U[0, 1)`` and a marker
channel ``x[:, :, 1]`` with exactly two 1s, one in the first half ``[0, T//2)`` and one in the
second half ``[T//2, T)`` (the "one in each half" reading; TCN's generator allows both anywhere).
Target: the sum of the two marked values, at the final step only (``y`` float32 ``[T, B, 1]``,
``mask`` 1 on the last step). Loss: MSE; metric: ``mse`` (lower is better).

Baseline: predicting the constant 1 = E[X1 + X2] gives
``E[(X1 + X2 − 1)²] = Var X1 + Var X2 = 2 · 1/12 = 1/6`` (≈ 0.1667), the best constant predictor.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .base import Batch, Option, Task


class AddingTask(Task):
    name = "adding"
    loss = "mse"
    metric = "mse"
    higher_is_better = False
    INPUT_KIND = "vector"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "length": Option(int, 100, 2, 10000, doc="T, the sequence length"),
    }

    length: int

    @property
    def input_size(self) -> int:
        return 2

    @property
    def output_size(self) -> int:
        return 1

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        T, half = self.length, self.length // 2
        cols = np.arange(batch_size)
        values = rng.random((T, batch_size), dtype=np.float32)
        first = rng.integers(0, half, size=batch_size)
        second = rng.integers(half, T, size=batch_size)
        x = np.zeros((T, batch_size, 2), dtype=np.float32)
        x[:, :, 0] = values
        x[first, cols, 1] = 1.0
        x[second, cols, 1] = 1.0
        y = np.zeros((T, batch_size, 1), dtype=np.float32)
        y[-1, :, 0] = values[first, cols] + values[second, cols]
        mask = np.zeros((T, batch_size), dtype=np.float32)
        mask[-1] = 1.0
        return Batch(x, y, mask)

    def baseline(self) -> dict[str, float]:
        return {"loss": 1.0 / 6.0, "mse": 1.0 / 6.0}
