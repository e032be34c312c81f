"""Digits: scikit-learn's bundled 8×8 handwritten digits read as a sequence, the sequential-MNIST stand-in.

STUDIES.md §4. Data: ``sklearn.datasets.load_digits()``, 1797 images of 8×8 pixels with integer
values 0–16 and 10 classes (needs ``pip install scikit-learn``; nothing is downloaded). Pixels are
scaled to ``[0, 1]`` (divided by 16) and read in row-major order:

- ``mode="rows"``: ``T = 8`` steps, each one image row of 8 values (``input_size = 8``);
- ``mode="pixels"``: ``T = 64`` steps of one pixel each (``input_size = 1``).

``permute=True`` reorders the 64 pixels by one fixed permutation, ``default_rng(PERMUTATION_SEED)
.permutation(64)``, the same for every image and run, before they are read out (pixel-by-pixel
this is the permuted-MNIST stand-in; in rows mode each step then carries 8 scattered pixels).

Loss: cross-entropy on the final step only (``mask`` is 1 at step ``T − 1``); ``y[T − 1]`` is the
digit, 0 elsewhere. Metric: ``accuracy`` on that step. ``sample`` draws images uniformly with
replacement from the chosen ``split``.

Split: no standard one exists, so it is stratified and seeded: the indices of each digit class (in
``load_digits`` order) are permuted by ``default_rng(SPLIT_SEED + digit)`` and cut 60/20/20 by
:func:`~cellsearch.tasks.cache.split_sizes`, giving 1079 / 359 / 359 images with every class in
every split at almost exactly its overall share.

Baseline: the class prior fitted on the training split (frequencies of its labels), scored on the
chosen split: loss ``−mean log q(y)`` and the accuracy of always answering the training majority
class. With the stratified split the prior is almost uniform, so these are almost ``ln 10 ≈ 2.3026``
and ``0.1`` (train: loss 2.30244, accuracy 0.1019; valid and test, which hold the same number of each
digit: 2.30257, 0.1003).
"""

from __future__ import annotations

import functools
from typing import ClassVar

import numpy as np

from .base import Batch, Option, Task
from .cache import SPLIT_OPTION, check_installed, require, split_sizes

__all__ = ["PERMUTATION_SEED", "SPLIT_SEED", "DigitsTask", "load_digits_data"]

SPLIT_SEED = 20240  # digit d's indices are permuted by default_rng(SPLIT_SEED + d)
PERMUTATION_SEED = 1797  # the fixed pixel order of permute=True
SIDE = 8
CLASSES = 10


@functools.cache
def _load() -> tuple[np.ndarray, np.ndarray]:
    datasets = require("sklearn.datasets", "scikit-learn", "digits")
    bunch = datasets.load_digits()
    images = np.asarray(bunch.data, dtype=np.float32) / np.float32(16.0)
    labels = np.asarray(bunch.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def load_digits_data() -> tuple[np.ndarray, np.ndarray]:
    """All 1797 images as read-only float32 ``[1797, 64]`` in ``[0, 1]`` and their int64 labels."""
    return _load()


@functools.cache
def _split_indices() -> dict[str, np.ndarray]:
    _, labels = _load()
    parts: dict[str, list[np.ndarray]] = {"train": [], "valid": [], "test": []}
    for digit in range(CLASSES):
        members = np.flatnonzero(labels == digit)
        order = members[np.random.default_rng(SPLIT_SEED + digit).permutation(len(members))]
        n_train, n_valid, _ = split_sizes(len(members))
        parts["train"].append(order[:n_train])
        parts["valid"].append(order[n_train : n_train + n_valid])
        parts["test"].append(order[n_train + n_valid :])
    out = {name: np.sort(np.concatenate(chunks)).astype(np.int64) for name, chunks in parts.items()}
    for idx in out.values():
        idx.setflags(write=False)
    return out


def pixel_permutation() -> np.ndarray:
    """The fixed order of the 64 pixels under ``permute=True``."""
    return np.random.default_rng(PERMUTATION_SEED).permutation(SIDE * SIDE)


class DigitsTask(Task):
    name = "digits"
    loss = "ce"
    metric = "accuracy"
    higher_is_better = True
    INPUT_KIND = "vector"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "mode": Option(str, "rows", choices=("rows", "pixels"), doc="one row (8 values) or one pixel per step"),
        "permute": Option(bool, False, doc="read the pixels in one fixed seeded random order"),
        "split": SPLIT_OPTION,
    }

    mode: str
    permute: bool
    split: str

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        check_installed("sklearn", "scikit-learn", self.name)

    @property
    def input_size(self) -> int:
        return SIDE if self.mode == "rows" else 1

    @property
    def output_size(self) -> int:
        return CLASSES

    @property
    def steps(self) -> int:
        """``T``: 8 in rows mode, 64 in pixels mode."""
        return SIDE * SIDE // self.input_size

    @property
    def indices(self) -> np.ndarray:
        """The ``load_digits`` indices of this task's split (sorted, read-only)."""
        return _split_indices()[self.split]

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        images, labels = _load()
        pool = self.indices
        idx = pool[rng.integers(0, len(pool), size=batch_size)]
        pixels = images[idx]
        if self.permute:
            pixels = pixels[:, pixel_permutation()]
        T, width = self.steps, self.input_size
        x = np.ascontiguousarray(pixels.reshape(batch_size, T, width).transpose(1, 0, 2))
        y = np.zeros((T, batch_size), dtype=np.int64)
        y[-1] = labels[idx]
        mask = np.zeros((T, batch_size), dtype=np.float32)
        mask[-1] = 1.0
        return Batch(x, y, mask)

    def baseline(self) -> dict[str, float]:
        _, labels = _load()
        split = _split_indices()
        prior = np.bincount(labels[split["train"]], minlength=CLASSES) / len(split["train"])
        scored = labels[self.indices]
        return {
            "loss": float(-np.mean(np.log(prior[scored]))),
            "accuracy": float(np.mean(scored == int(np.argmax(prior)))),
        }
