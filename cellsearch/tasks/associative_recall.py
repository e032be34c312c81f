"""Associative retrieval, Ba, Hinton, Mnih, Leibo & Ionescu (2016), "Using Fast Weights".

STUDIES.md §4. A sequence lists ``pairs`` key→value pairs, then ``??``, then a query key; the
answer is the query's value at the final step: ``c9k8j3f1??c`` → 9. Keys are distinct lowercase
letters (drawn without replacement, so the answer is unique), values are digits drawn uniformly with
replacement, and the query is one of the keys, uniformly. Every sequence has ``2·pairs + 3`` steps.

Symbols (ids): ``a``–``z`` = 0..25, ``0``–``9`` = 26..35, ``?`` = 36. Output: the digit 0..9 as a
class, at the final step only. Loss: CE; metric: accuracy. Chance: accuracy 1/10, loss ln 10.
"""

from __future__ import annotations

import math
import string
from typing import ClassVar

import numpy as np

from .base import Batch, Option, Task

VOCAB = string.ascii_lowercase + string.digits + "?"
DIGIT0 = 26
QUESTION = 36


class AssociativeRecallTask(Task):
    name = "associative_recall"
    loss = "ce"
    metric = "accuracy"
    higher_is_better = True
    INPUT_KIND = "symbols"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "pairs": Option(int, 4, 1, 26, doc="number of key→value pairs (keys are distinct letters)"),
    }

    pairs: int

    @property
    def input_size(self) -> int:
        return len(VOCAB)

    @property
    def output_size(self) -> int:
        return 10

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        K, cols = self.pairs, np.arange(batch_size)
        keys = np.argsort(rng.random((26, batch_size)), axis=0)[:K]  # distinct letters per column
        values = rng.integers(0, 10, size=(K, batch_size), dtype=np.int64)
        which = rng.integers(0, K, size=batch_size)
        T = 2 * K + 3
        x = np.empty((T, batch_size), dtype=np.int64)
        x[0 : 2 * K : 2] = keys
        x[1 : 2 * K : 2] = DIGIT0 + values
        x[2 * K] = x[2 * K + 1] = QUESTION
        x[-1] = keys[which, cols]
        y = np.zeros((T, batch_size), dtype=np.int64)
        y[-1] = values[which, cols]
        mask = np.zeros((T, batch_size), dtype=np.float32)
        mask[-1] = 1.0
        return Batch(x, y, mask)

    def baseline(self) -> dict[str, float]:
        return {"loss": math.log(10), "accuracy": 0.1}
