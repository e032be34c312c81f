"""Parity (a project task, STUDIES.md §4): the XOR of a stream of random bits.

Input: ``length`` bits, each 0 or 1 with probability ½, as a 1-wide vector (``x`` float32
``[T, B, 1]``). Target (``y`` float32 ``[T, B, 1]``): with ``running=False`` the parity of the whole
stream at the final step only (``mask`` 1 there); with ``running=True`` the parity of the prefix
``x[0..t]`` at every step (``mask`` all ones). Loss: BCE on one logit; metric: accuracy (logit > 0
predicts 1).

Chance: every counted parity is a fair coin, so a predictor that ignores the input scores accuracy
1/2 and loss ln 2.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from .base import Batch, Option, Task


class ParityTask(Task):
    name = "parity"
    loss = "bce"
    metric = "accuracy"
    higher_is_better = True
    INPUT_KIND = "vector"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "length": Option(int, 50, 1, 10000, doc="T, the number of bits"),
        "running": Option(bool, False, doc="target the prefix parity at every step, not only the final one"),
    }

    length: int
    running: bool

    @property
    def input_size(self) -> int:
        return 1

    @property
    def output_size(self) -> int:
        return 1

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        T = self.length
        bits = rng.integers(0, 2, size=(T, batch_size), dtype=np.int64)
        prefix = np.cumsum(bits, axis=0) % 2
        x = bits[:, :, None].astype(np.float32)
        if self.running:
            y = prefix[:, :, None].astype(np.float32)
            mask = np.ones((T, batch_size), dtype=np.float32)
        else:
            y = np.zeros((T, batch_size, 1), dtype=np.float32)
            y[-1, :, 0] = prefix[-1]
            mask = np.zeros((T, batch_size), dtype=np.float32)
            mask[-1] = 1.0
        return Batch(x, y, mask)

    def baseline(self) -> dict[str, float]:
        return {"loss": math.log(2), "accuracy": 0.5}
