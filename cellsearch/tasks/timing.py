"""Timing: reproduce an interval — answer with one spike exactly as long after a second cue as that cue
came after the first.

In the spirit of Gers, Schraudolph & Schmidhuber (2002), "Learning precise timing with LSTM
recurrent networks" (JMLR 3), whose networks had to measure the delay between spikes and emit spikes
at precise times; this variant asks for both at once (the "ready–set–go" form). One input channel
(``input_size = 1``) is 0 except for two spikes of 1.0, at ``t0`` and ``t0 + N``; the target
(``output_size = 1``) is 0 except for a single 1 at ``t0 + 2N``::

    t0 ~ U{0 … onset},   N ~ U{interval … interval + spread}   (independent, from the generator)
    T  = onset + 2·(interval + spread) + 1                       (the latest target is the last step)

Every step counts (``mask`` is all 1): the model must stay silent before and after its spike. Loss:
binary cross-entropy per step (``pred`` holds logits). Metric ``timing_accuracy`` (higher is
better): the fraction of sequences whose output is above threshold (logit > 0, probability > ½) at
exactly the target step and at no other step. ``accuracy`` is the plain per-step rate of right
thresholded outputs (``1 − 1/T`` for a model that never spikes).

Chance (``baseline()``, exact, by enumerating every ``(t0, N)``): the best input-blind outputs for
each key. Such a model emits the same pattern on every sequence, so its ``timing_accuracy`` is at
most ``max_s P(target at s)`` (one spike at the likeliest target step): 6/121 ≈ 0.0496 at the
defaults (``onset`` 10, ``interval`` 10, ``spread`` 10, ``T`` = 51). Its best ``loss`` outputs
``p_s = P(target at s)`` at every step and pays the mean binary entropy ``mean_s H(p_s)`` (nats); its
best ``accuracy`` thresholds those ``p_s`` at ½.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from .base import Batch, Option, Task

__all__ = ["TimingTask"]


class TimingTask(Task):
    name = "timing"
    loss = "bce"
    metric = "timing_accuracy"
    higher_is_better = True
    INPUT_KIND = "vector"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "interval": Option(int, 10, 1, 1000, doc="the shortest interval N between the two cues"),
        "spread": Option(int, 10, 0, 1000, doc="N is uniform in interval … interval + spread"),
        "onset": Option(int, 10, 0, 1000, doc="the first cue comes at a step uniform in 0 … onset"),
    }

    interval: int
    spread: int
    onset: int

    @property
    def input_size(self) -> int:
        return 1

    @property
    def output_size(self) -> int:
        return 1

    @property
    def steps(self) -> int:
        """``T = onset + 2·(interval + spread) + 1``."""
        return self.onset + 2 * (self.interval + self.spread) + 1

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        cols = np.arange(batch_size)
        t0 = rng.integers(0, self.onset + 1, size=batch_size)
        n = rng.integers(self.interval, self.interval + self.spread + 1, size=batch_size)
        x = np.zeros((self.steps, batch_size, 1), dtype=np.float32)
        x[t0, cols, 0] = 1.0
        x[t0 + n, cols, 0] = 1.0
        y = np.zeros_like(x)
        y[t0 + 2 * n, cols, 0] = 1.0
        mask = np.ones((self.steps, batch_size), dtype=np.float32)
        return Batch(x, y, mask)

    def _metrics(self, pred: np.ndarray, batch: Batch) -> dict[str, float]:
        out = super()._metrics(pred, batch)
        counted = np.asarray(self.metric_mask(batch)) > 0
        fired = np.asarray(pred)[:, :, 0] > 0
        wrong = (fired != (batch.y[:, :, 0] > 0.5)) & counted
        out["timing_accuracy"] = float(np.mean(~wrong.any(axis=0)))
        return out

    def target_distribution(self) -> np.ndarray:
        """``P(target at step s)`` for ``s = 0 … T − 1`` (float64, exact)."""
        t0 = np.arange(self.onset + 1)
        n = np.arange(self.interval, self.interval + self.spread + 1)
        counts = np.bincount((t0[:, None] + 2 * n[None, :]).ravel(), minlength=self.steps)
        return counts / counts.sum()

    def baseline(self) -> dict[str, float]:
        p = self.target_distribution()
        q = np.clip(p, 1e-300, 1.0)
        r = np.clip(1.0 - p, 1e-300, 1.0)
        entropy = -(p * np.log(q) + (1.0 - p) * np.log(r))
        return {
            "loss": float(entropy.mean()),
            "accuracy": float(np.maximum(p, 1.0 - p).mean()),
            "timing_accuracy": float(p.max()),
        }
