"""Temporal order, Hochreiter & Schmidhuber (1997), experiments 6a and 6b.

STUDIES.md §4. A sequence of random length ``L ∈ [100, 110]`` starts with ``E``, ends with the trigger
``B`` and is otherwise filled with distractors drawn uniformly from ``{a, b, c, d}``, except at the
relevant positions, which hold ``X`` or ``Y`` (each with probability ½):

- variant ``"a"`` (6a): positions ``t1 ∈ [10, 20]``, ``t2 ∈ [50, 60]`` → 4 classes
  (XX→Q, XY→R, YX→S, YY→U);
- variant ``"b"`` (6b): ``t1 ∈ [10, 20]``, ``t2 ∈ [33, 43]``, ``t3 ∈ [66, 76]`` → 8 classes.

Positions are 1-based as in the paper (``E`` is position 1), so position ``t`` is step ``t − 1``;
every range is inclusive and drawn uniformly. The class id reads the relevant symbols in order as a
binary number with X = 0, Y = 1 (6a: Q=0, R=1, S=2, U=3).

Symbols (ids): ``a b c d X Y E B`` = 0..7, and 8 pads a sequence to the batch's longest. The class
is the target at the ``B`` step only (``mask`` 1 there). Loss: CE; metric: accuracy. (The paper's
criterion, every output error < 0.3, is not used.) Chance: accuracy 1/4 or 1/8, loss ln 4 or ln 8.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from .base import Batch, Option, Task

SYMBOLS = "abcdXYEB"
X_ID, Y_ID, E_ID, B_ID, PAD_ID = 4, 5, 6, 7, 8
MIN_LENGTH, MAX_LENGTH = 100, 110
POSITIONS = {"a": ((10, 20), (50, 60)), "b": ((10, 20), (33, 43), (66, 76))}


class TemporalOrderTask(Task):
    name = "temporal_order"
    loss = "ce"
    metric = "accuracy"
    higher_is_better = True
    INPUT_KIND = "symbols"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "variant": Option(str, "a", choices=("a", "b"), doc="'a': two relevant symbols (6a), 'b': three (6b)"),
    }

    variant: str

    @property
    def input_size(self) -> int:
        return len(SYMBOLS) + 1

    @property
    def output_size(self) -> int:
        return 2 ** len(POSITIONS[self.variant])

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        cols = np.arange(batch_size)
        lengths = rng.integers(MIN_LENGTH, MAX_LENGTH + 1, size=batch_size)
        T = int(lengths.max())
        x = rng.integers(0, 4, size=(T, batch_size), dtype=np.int64)
        x[0] = E_ID
        label = np.zeros(batch_size, dtype=np.int64)
        for lo, hi in POSITIONS[self.variant]:
            step = rng.integers(lo, hi + 1, size=batch_size) - 1
            bit = rng.integers(0, 2, size=batch_size)
            x[step, cols] = X_ID + bit
            label = 2 * label + bit
        last = lengths - 1
        x[last, cols] = B_ID
        x[np.arange(T)[:, None] > last[None, :]] = PAD_ID
        y = np.zeros((T, batch_size), dtype=np.int64)
        y[last, cols] = label
        mask = np.zeros((T, batch_size), dtype=np.float32)
        mask[last, cols] = 1.0
        return Batch(x, y, mask)

    def baseline(self) -> dict[str, float]:
        k = self.output_size
        return {"loss": math.log(k), "accuracy": 1.0 / k}
