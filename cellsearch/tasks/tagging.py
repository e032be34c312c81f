"""Tagging: label every position by a rule that needs the symbol ``d`` steps *ahead*, as well as behind.

A sequence tagging task on which a model that reads only the past cannot beat chance accuracy but
one that also reads the future (a bidirectional RNN) can be perfect. Input: ``T = length +
2·distance`` symbols drawn independently and uniformly from ``0 … K − 1`` (``K = symbols``,
``input_size = K``). The ``length`` positions ``t = d … d + length − 1`` (``d = distance``) are
tagged with the sum of their two neighbours at distance ``d``::

    y[t] = x[t − d] + x[t + d]          (a class in 0 … 2K − 2, so output_size = 2K − 1)

and only they count (``mask`` 1); the ``d`` positions at either end are context only, so every
counted position has both neighbours in the sequence (no padding symbol is ever needed). Loss: CE
per counted step; metric: ``accuracy``, the fraction of counted positions tagged right.

Why the plain sum and not the sum mod ``K``: the model's head is linear in the concatenated forward
and backward states, so its class scores are ``f_c(past) + g_c(future)``. The sum is representable
that way (``−(c − a − b)² = (2ca − c²/2) + (2cb − c²/2)`` up to a term that is the same for every
class), the sum mod ``K`` is not (for ``K = 2`` it is XOR), so a one-layer bidirectional model could
not solve the modular rule however well it remembered both neighbours.

Chance (``baseline()``, exact): the label has the triangular distribution ``P(s) = (K − |s − K +
1|) / K²``; the best input-blind guess is ``K − 1``, accuracy ``1/K``, and the best input-blind
loss is its entropy ``−Σ P(s) ln P(s)`` (1.8407 nats at ``K = 4``, where the accuracy is 0.25).

A strictly causal model (one whose output at ``t`` depends on ``x[0 … t]`` only) knows
``a = x[t − d]`` but ``x[t + d]`` is uniform and independent of everything it has read, so the label
is uniform over ``a … a + K − 1`` given its input: its best is accuracy ``1/K`` (no better than
chance) and loss ``ln K`` (:meth:`TaggingTask.causal_best`). A bidirectional model can reach
accuracy 1.
"""

from __future__ import annotations

import math
from typing import ClassVar

import numpy as np

from .base import Batch, Option, Task

__all__ = ["TaggingTask"]


class TaggingTask(Task):
    name = "tagging"
    loss = "ce"
    metric = "accuracy"
    higher_is_better = True
    INPUT_KIND = "symbols"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "length": Option(int, 30, 1, 10000, doc="tagged (counted) positions per sequence"),
        "symbols": Option(int, 4, 2, 100, doc="K: vocabulary size (the tags are 0 … 2K − 2)"),
        "distance": Option(int, 2, 1, 100, doc="d: the label at t combines x[t − d] and x[t + d]"),
    }

    length: int
    symbols: int
    distance: int

    @property
    def input_size(self) -> int:
        return self.symbols

    @property
    def output_size(self) -> int:
        return 2 * self.symbols - 1

    @property
    def steps(self) -> int:
        """``T = length + 2·distance``."""
        return self.length + 2 * self.distance

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        L, d, K = self.length, self.distance, self.symbols
        x = rng.integers(0, K, size=(self.steps, batch_size), dtype=np.int64)
        y = np.zeros_like(x)
        y[d : d + L] = x[:L] + x[2 * d : 2 * d + L]
        mask = np.zeros(x.shape, dtype=np.float32)
        mask[d : d + L] = 1.0
        return Batch(x, y, mask)

    def label_distribution(self) -> np.ndarray:
        """``P(label = s)`` for ``s = 0 … 2K − 2`` (float64, exact): the triangular distribution."""
        K = self.symbols
        s = np.arange(2 * K - 1)
        return (K - np.abs(s - (K - 1))) / K**2

    def baseline(self) -> dict[str, float]:
        p = self.label_distribution()
        return {"loss": float(-np.sum(p * np.log(p))), "accuracy": 1.0 / self.symbols}

    def causal_best(self) -> dict[str, float]:
        """The best a strictly causal model can score: loss ``ln K``, accuracy ``1/K`` (see the docstring)."""
        return {"loss": math.log(self.symbols), "accuracy": 1.0 / self.symbols}
