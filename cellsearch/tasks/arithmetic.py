"""Arithmetic with distractors, Jozefowicz, Zaremba & Sutskever (2015), §3.5 (STUDIES.md §2.3).

A sample is the character string ``<a><op><b>=<answer>``, e.g. ``3e36d9-h1h39f94eeh43keg3c=-13991064``
(3369 − 13994433). Definition used here:

- ``a`` and ``b`` are non-negative: the digit count is uniform in ``1..digits``, then the value is
  uniform among numbers with exactly that many digits (no leading zeros; one digit includes 0).
- ``op`` is ``+`` or ``-`` with probability ½; the answer is ``str(a op b)`` (``-`` sign if negative).
- After every character of ``a op b`` (so between successive characters, and before ``=``) come
  ``U{0..distractors}`` letters drawn uniformly from ``a``–``z``. The answer has no distractors.
- The sequence ends with ``.``, the end symbol, which is also the padding symbol.

Input is teacher-forced: ``x`` is the whole string up to the last answer character, and the model
predicts the next character on the steps from ``=`` on, i.e. every answer character and then ``.``
(``mask`` 1 on exactly those ``len(answer) + 1`` steps). Predicting the end symbol makes the answer's
length part of being right.

Vocabulary (ids): ``0``–``9`` = 0..9, ``+`` 10, ``-`` 11, ``=`` 12, ``.`` 13, ``a``–``z`` = 14..39;
outputs are over the same 40 symbols. Loss: CE; metric: ``accuracy`` per predicted character
(``.`` included); ``score`` also returns ``sequence_accuracy``, the fraction of samples with every
answer character and the end right.

Baseline: a uniform guess over the 12 symbols an answer can hold (10 digits, ``-``, ``.``): loss
``ln 12``, accuracy ``1/12``. It is a chance level, not the best input-blind predictor (which knows,
e.g., that ``-`` can only come first).
"""

from __future__ import annotations

import math
import string
from typing import ClassVar

import numpy as np

from .base import Alphabet, Batch, Option, Task, pad_sequences, sequence_accuracy

VOCAB = string.digits + "+-=." + string.ascii_lowercase
ALPHABET = Alphabet(VOCAB)
INDEX = ALPHABET.index
encode = ALPHABET.encode
decode = ALPHABET.decode
END = INDEX["."]
ANSWER_SYMBOLS = string.digits + "-."


class ArithmeticTask(Task):
    name = "arithmetic"
    loss = "ce"
    metric = "accuracy"
    higher_is_better = True
    INPUT_KIND = "symbols"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "digits": Option(int, 3, 1, 8, doc="most digits per operand"),
        "distractors": Option(int, 3, 0, 20, doc="most distractor letters after each question character"),
    }

    digits: int
    distractors: int

    @property
    def input_size(self) -> int:
        return len(VOCAB)

    @property
    def output_size(self) -> int:
        return len(VOCAB)

    def _number(self, rng: np.random.Generator) -> int:
        k = int(rng.integers(1, self.digits + 1))
        lo = 0 if k == 1 else 10 ** (k - 1)
        return int(rng.integers(lo, 10**k))

    def text(self, rng: np.random.Generator) -> tuple[str, str]:
        """One sample as ``(question ending in '=', answer)``, e.g. ``('3e36d9-h1h…3c=', '-13991064')``."""
        a, b = self._number(rng), self._number(rng)
        op = "+" if rng.random() < 0.5 else "-"
        answer = str(a + b if op == "+" else a - b)
        parts: list[str] = []
        for ch in f"{a}{op}{b}":
            parts.append(ch)
            count = int(rng.integers(0, self.distractors + 1))
            parts.extend(string.ascii_lowercase[i] for i in rng.integers(0, 26, size=count))
        parts.append("=")
        return "".join(parts), answer

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        inputs: list[list[int]] = []
        targets: list[list[int]] = []
        for _ in range(batch_size):
            question, answer = self.text(rng)
            inputs.append(encode(question + answer))
            targets.append(encode(question[1:] + answer + "."))
        x, _ = pad_sequences(inputs, END)
        y, _ = pad_sequences(targets, END)
        mask = np.zeros(x.shape, dtype=np.float32)
        for b, seq in enumerate(inputs):
            n_answer = len(seq) - seq.index(INDEX["="]) - 1
            mask[len(seq) - n_answer - 1 : len(seq), b] = 1.0
        return Batch(x, y, mask)

    def _metrics(self, pred: np.ndarray, batch: Batch) -> dict[str, float]:
        out = super()._metrics(pred, batch)
        out["sequence_accuracy"] = sequence_accuracy(pred, batch, batch.mask)
        return out

    def baseline(self) -> dict[str, float]:
        k = len(ANSWER_SYMBOLS)
        return {"loss": math.log(k), "accuracy": 1.0 / k}
