"""Text: next-token language modelling on a Penn Treebank style corpus that the user names.

STUDIES.md §4 ("PTB"). Option ``path`` (required) is a directory holding ``ptb.train.txt``,
``ptb.valid.txt`` and ``ptb.test.txt`` (UTF-8; nothing is downloaded, and tests make their own tiny
corpus); ``split`` picks the file that ``sample`` and ``baseline`` read. Two levels:

- ``level="word"``: one sentence per line, tokens split on whitespace, ``<eos>`` appended at the
  end of every line (an empty line is just ``<eos>``); the file is the concatenation of its lines.
- ``level="char"``: the characters of the file as they are, spaces included, with ``"\\n"`` as the
  end-of-line symbol.

Vocabulary: built from the training file only, whatever the split, so the three splits share ids
and sizes. Tokens are ordered by falling training count, ties by their text. At word level
``<unk>`` is PTB's own token when the training file has it (placed by its count like any other),
else it is appended last; at char level it is always appended last and stands for any character
unseen in training (it is not a character, so it cannot clash with one). Valid and test tokens not in the vocabulary map to
``<unk>`` (PTB's files are made for a 10,000-word vocabulary, ``<eos>`` included).

Sequences: a batch holds ``B`` windows of ``length + 1`` consecutive tokens of the split, each
starting uniformly at random (with replacement) among the ``N − length`` possible starts, where
``N`` is the split's token count; ``x = window[:-1]`` and ``y = window[1:]``, int64 ``[length, B]``
symbol ids; ``mask`` is all ones. Loss: cross-entropy on every step; metric ``perplexity`` =
``exp(loss)`` (lower is better); ``accuracy`` is the next-token argmax hit rate.

Baseline: a unigram model fitted on the training file, ``q_i = (c_i + ½) / (N_train + V/2)`` (add-½
smoothing, so a token never seen in training still has a finite cost), scored as the mean of
``−log q`` over every token of the split's file; its ``accuracy`` is the share of the split's
tokens that equal the most frequent training token.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError
from .base import Batch, Option, Task
from .cache import SPLIT_OPTION, SPLITS

__all__ = ["EOS", "FILES", "UNK", "TextTask", "tokenize"]

EOS = "<eos>"
UNK = "<unk>"
FILES = {split: f"ptb.{split}.txt" for split in SPLITS}
_EXPECTED = "a directory holding ptb.train.txt, ptb.valid.txt and ptb.test.txt"


class _PathOption(Option):
    """A free-form path (a string or ``os.PathLike``), checked by the task itself after conversion."""

    def expected(self) -> str:
        return _EXPECTED

    def check(self, value: Any) -> str | None:
        if isinstance(value, str | os.PathLike):
            path = os.fspath(value)
            return path if isinstance(path, str) else None
        return None


def tokenize(text: str, level: str) -> list[str]:
    """The tokens of a file's text: words plus ``<eos>`` per line, or its characters."""
    if level == "char":
        return list(text)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the newline that ends the last line starts no new line
    tokens: list[str] = []
    for line in lines:
        tokens.extend(line.split())
        tokens.append(EOS)
    return tokens


class TextTask(Task):
    name = "text"
    loss = "ce"
    metric = "perplexity"
    higher_is_better = False
    INPUT_KIND = "symbols"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "path": _PathOption(str, "", doc="directory holding ptb.train.txt, ptb.valid.txt, ptb.test.txt (required)"),
        "level": Option(str, "word", choices=("word", "char"), doc="tokens are words (plus <eos>) or characters"),
        "length": Option(int, 35, 1, 100000, doc="steps per window (truncated-BPTT length)"),
        "split": SPLIT_OPTION,
    }

    path: str
    level: str
    length: int
    split: str

    def __init__(self, **options: Any) -> None:
        super().__init__(**options)
        folder = self._check_folder()
        train = tokenize(self._read(folder / FILES["train"]), self.level)
        counts: dict[str, int] = {}
        for tok in train:
            counts[tok] = counts.get(tok, 0) + 1
        vocab = sorted(counts, key=lambda t: (-counts[t], t))
        if UNK not in counts:
            vocab.append(UNK)
        self.vocab: list[str] = vocab
        self.ids: dict[str, int] = {tok: i for i, tok in enumerate(vocab)}
        self.train_counts = np.array([counts.get(tok, 0) for tok in vocab], dtype=np.int64)
        if self.split == "train":
            tokens = train
        else:
            tokens = tokenize(self._read(folder / FILES[self.split]), self.level)
        self.stream = self.encode(tokens)
        self.stream.setflags(write=False)
        if len(self.stream) < self.length + 1:
            raise ConfigError(
                f"task '{self.name}': option 'length' must be at most {len(self.stream) - 1} for the "
                f"{len(self.stream)} tokens of {FILES[self.split]} (got {self.length!r})"
            )

    def _check_folder(self) -> Path:
        reason = ""
        folder = Path(self.path).expanduser()
        if not self.path:
            reason = "it is required"
        elif not folder.is_dir():
            reason = "no such directory"
        else:
            missing = [f for f in FILES.values() if not (folder / f).is_file()]
            if missing:
                reason = " and ".join(missing) + (" is" if len(missing) == 1 else " are") + " missing"
        if reason:
            raise ConfigError(f"task '{self.name}': option 'path' must be {_EXPECTED}; {reason} (got {self.path!r})")
        return folder

    def _read(self, file: Path) -> str:
        try:
            return file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ConfigError(f"task '{self.name}': cannot read {file}: {err}") from None

    def encode(self, tokens: list[str]) -> np.ndarray:
        """Token ids (int64), ``<unk>``'s id for tokens outside the vocabulary."""
        unk = self.ids[UNK]
        return np.fromiter((self.ids.get(t, unk) for t in tokens), dtype=np.int64, count=len(tokens))

    def decode(self, ids: np.ndarray) -> list[str]:
        """The tokens of ``ids``."""
        return [self.vocab[int(i)] for i in np.ravel(ids)]

    @property
    def input_size(self) -> int:
        return len(self.vocab)

    @property
    def output_size(self) -> int:
        return len(self.vocab)

    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        starts = rng.integers(0, len(self.stream) - self.length, size=batch_size)
        windows = self.stream[starts[None, :] + np.arange(self.length + 1)[:, None]]  # [length + 1, B]
        x = np.ascontiguousarray(windows[:-1])
        y = np.ascontiguousarray(windows[1:])
        mask = np.ones(x.shape, dtype=np.float32)
        return Batch(x, y, mask)

    def score(self, pred: np.ndarray, batch: Batch) -> dict[str, float]:
        out = super().score(pred, batch)
        out["perplexity"] = _perplexity(out["loss"])
        return out

    def unigram(self) -> np.ndarray:
        """The baseline's smoothed unigram probabilities over the vocabulary (float64, sums to 1)."""
        c = self.train_counts.astype(np.float64)
        return (c + 0.5) / (c.sum() + 0.5 * len(c))

    def baseline(self) -> dict[str, float]:
        q = self.unigram()
        ce = float(-np.mean(np.log(q[self.stream])))
        top = int(np.argmax(self.train_counts))
        return {"loss": ce, "perplexity": _perplexity(ce), "accuracy": float(np.mean(self.stream == top))}


def _perplexity(ce: float) -> float:
    return math.exp(ce) if ce < 700.0 else math.inf
