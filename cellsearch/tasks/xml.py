"""Synthetic XML, Jozefowicz, Zaremba & Sutskever (2015), §3.5 (STUDIES.md §2.3).

A sample is built by a loop over iterations ``i = 0, 1, …``: "with 50% probability or after
``max_steps`` (50) iterations close the most recent tag (stop if none is open), else open a new tag"
whose name is 2–10 lowercase letters (length and letters uniform). Tags are written back to back
with no whitespace, e.g. ``<qwe><rt></rt></qwe>``, and the text ends with ``.``, the end symbol (also
the padding symbol). The loop stops only when a close finds no open tag, so after the outermost tag
closes a new one may open: a sample can hold several top-level elements. A sample that comes out
empty (about half do: the first draw closes nothing) is skipped and drawn again. With the default
``max_steps = 50`` texts average ≈ 175 characters (median ≈ 75, 99th percentile ≈ 580), so a padded
batch is often 500+ steps long; a smaller ``max_steps`` keeps CPU runs short.

Task: next-character prediction over the whole text: ``x = s[:-1]``, ``y = s[1:]`` for
``s = text + "."`` (``mask`` 1 on every real step, 0 on padding). Loss: CE; metric: accuracy.

Vocabulary (ids): ``a``–``z`` = 0..25, ``<`` 26, ``>`` 27, ``/`` 28, ``.`` 29; outputs are over the
same 30 symbols. Baseline: a uniform guess over the 30 symbols, loss ``ln 30`` and accuracy
``1/30`` — a chance level; much of the text (closing names, ``>``) is predictable.
"""

from __future__ import annotations

import math
import string
from typing import ClassVar

import numpy as np

from .base import Alphabet, Batch, Option, Task, pad_sequences

VOCAB = string.ascii_lowercase + "<>/."
ALPHABET = Alphabet(VOCAB)
INDEX = ALPHABET.index
encode = ALPHABET.encode
decode = ALPHABET.decode
END = INDEX["."]
MIN_TAG, MAX_TAG = 2, 10


class XMLTask(Task):
    name = "xml"
    loss = "ce"
    metric = "accuracy"
    higher_is_better = True
    INPUT_KIND = "symbols"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "max_steps": Option(int, 50, 1, 1000, doc="iterations after which tags are only closed"),
    }

    max_steps: int

    @property
    def input_size(self) -> int:
        return len(VOCAB)

    @property
    def output_size(self) -> int:
        return len(VOCAB)

    def text(self, rng: np.random.Generator) -> str:
        """One non-empty sample, without the end symbol."""
        while True:
            parts: list[str] = []
            stack: list[str] = []
            i = 0
            while True:
                if rng.random() < 0.5 or i >= self.max_steps:
                    if not stack:
                        break
                    parts.append(f"</{stack.pop()}>")
                else:
                    size = int(rng.integers(MIN_TAG, MAX_TAG + 1))
                    tag = "".join(string.ascii_lowercase[j] for j in rng.integers(0, 26, size=size))
                    stack.append(tag)
                    parts.append(f"<{tag}>")
                i += 1
            if parts:
                return "".join(parts)

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        texts = [encode(self.text(rng) + ".") for _ in range(batch_size)]
        x, mask = pad_sequences([s[:-1] for s in texts], END)
        y, _ = pad_sequences([s[1:] for s in texts], END)
        return Batch(x, y, mask)

    def baseline(self) -> dict[str, float]:
        return {"loss": math.log(len(VOCAB)), "accuracy": 1.0 / len(VOCAB)}
