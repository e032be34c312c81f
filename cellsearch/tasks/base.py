"""The task protocol: a seeded batch generator with a loss, a metric, a chance level and checked options.

A task turns an explicit ``numpy.random.Generator`` into a :class:`Batch` of time-major arrays and
scores a model's outputs on it. It knows nothing of models or training. Conventions:

- ``x`` is float32 ``[T, B, I]`` (``input_kind == "vector"``, ``I == input_size``) or int64 ``[T, B]``
  symbol ids in ``[0, input_size)`` (``input_kind == "symbols"``).
- ``y`` is int64 ``[T, B]`` class ids for loss ``"ce"``, float32 ``[T, B, K]`` for ``"bce"`` and
  ``"mse"``; ``K == output_size``. Targets on uncounted steps mean nothing (0 or padding).
- ``mask`` is float32 ``[T, B]``: 1 where a step's prediction counts, 0 elsewhere. Final-step tasks
  count only the last real step of each sequence; variable-length tasks pad at the end, up to the
  longest sequence of the batch, with mask 0.
- ``score(pred, batch)`` reads model outputs ``[T, B, K]`` (logits for CE and BCE, values for MSE)
  and returns ``{"loss": ..., <metric>: ...}`` plus any extra figures a task defines.
- ``baseline()`` is the chance level in ``score``'s keys: what the best predictor that ignores the
  inputs (it may know the step index) scores, or a uniform guess where a task's docstring says so.

Options are declared in ``OPTIONS`` as data; ``Task(**options)`` checks each against its
declaration and raises :class:`~cellsearch.errors.ConfigError` with one line that names the task and
the key. Checked options become attributes (``CopyTask(length=50).length == 50``).
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ..errors import ConfigError, ShapeError
from .losses import binary_cross_entropy, cross_entropy, mean_squared_error

__all__ = ["Alphabet", "Batch", "Option", "Task"]

OptionValue = int | float | bool | str
_KIND_WORDS = {int: "an integer", float: "a number", bool: "True or False", str: "a string"}


class Alphabet:
    """Characters <-> symbol ids for the character-level tasks."""

    def __init__(self, symbols: str) -> None:
        self.symbols = symbols
        self.index = {c: i for i, c in enumerate(symbols)}

    def encode(self, text: str) -> list[int]:
        return [self.index[c] for c in text]

    def decode(self, ids: np.ndarray | list[int]) -> str:
        return "".join(self.symbols[int(i)] for i in ids)


@dataclass
class Batch:
    """One batch, time-major. See the module docstring for dtypes and shapes."""

    x: np.ndarray
    y: np.ndarray
    mask: np.ndarray

    @property
    def steps(self) -> int:
        return int(self.x.shape[0])

    @property
    def batch_size(self) -> int:
        return int(self.x.shape[1])


@dataclass(frozen=True)
class Option:
    """One option: its type (int, float, bool or str), default, inclusive range or allowed strings."""

    kind: type
    default: OptionValue
    low: float | None = None
    high: float | None = None
    choices: tuple[str, ...] = ()
    doc: str = ""

    def expected(self) -> str:
        """What a valid value looks like, as the error message says it."""
        if self.kind is str:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        words = _KIND_WORDS[self.kind]
        if self.low is not None and self.high is not None:
            return f"{words} in [{_num(self.low)}, {_num(self.high)}]"
        if self.low is not None:
            return f"{words} ≥ {_num(self.low)}"
        if self.high is not None:
            return f"{words} ≤ {_num(self.high)}"
        return words

    def check(self, value: Any) -> OptionValue | None:
        """The value converted to a plain Python type, or None when it is not valid."""
        if self.kind is bool:
            return bool(value) if isinstance(value, bool | np.bool_) else None
        if self.kind is str:
            return value if isinstance(value, str) and value in self.choices else None
        if isinstance(value, bool | np.bool_):
            return None
        if self.kind is int:
            if not isinstance(value, numbers.Integral):
                return None
            num: int | float = int(value)
        elif self.kind is float:
            if not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
                return None
            num = float(value)
        else:  # pragma: no cover - guarded by Task.__init_subclass__
            return None
        if (self.low is not None and num < self.low) or (self.high is not None and num > self.high):
            return None
        return num


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else str(v)


class Task(ABC):
    """A synthetic (or data) task. Subclasses set the class attributes and implement ``sample``.

    Class attributes: ``name`` (the registry key), ``loss`` ("ce" | "bce" | "mse"), ``metric`` (the
    key of the headline figure in ``score``), ``higher_is_better`` (for that metric), ``OPTIONS``.
    """

    name: ClassVar[str]
    loss: ClassVar[str]
    metric: ClassVar[str]
    higher_is_better: ClassVar[bool]
    OPTIONS: ClassVar[dict[str, Option]] = {}
    INPUT_KIND: ClassVar[str]  # "vector" | "symbols"

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "name" not in vars(cls):  # an intermediate base, not a concrete task
            return
        assert cls.loss in ("ce", "bce", "mse"), f"{cls.__name__}: unknown loss {cls.loss!r}"
        assert cls.INPUT_KIND in ("vector", "symbols"), f"{cls.__name__}: unknown input kind {cls.INPUT_KIND!r}"
        for key, opt in cls.OPTIONS.items():
            assert opt.kind in _KIND_WORDS, f"{cls.__name__}.{key}: unsupported option type {opt.kind}"
            assert not hasattr(Task, key), f"{cls.__name__}.{key}: option name shadows a Task attribute"
            assert opt.check(opt.default) == opt.default, f"{cls.__name__}.{key}: default fails its own check"

    def __init__(self, **options: Any) -> None:
        unknown = [k for k in options if k not in self.OPTIONS]
        if unknown:
            known = ", ".join(self.OPTIONS) or "none"
            raise ConfigError(f"task '{self.name}': unknown option '{unknown[0]}' (known: {known})")
        for key, opt in self.OPTIONS.items():
            value = options.get(key, opt.default)
            checked = opt.check(value)
            if checked is None:
                raise ConfigError(f"task '{self.name}': option '{key}' must be {opt.expected()} (got {value!r})")
            setattr(self, key, checked)

    # ---- description ------------------------------------------------------------------------

    @property
    def options(self) -> dict[str, OptionValue]:
        """The checked options, defaults filled in, in declaration order (what a store records)."""
        return {key: getattr(self, key) for key in self.OPTIONS}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({args})"

    @property
    def input_kind(self) -> str:
        """``"vector"`` (``x`` is float ``[T, B, input_size]``) or ``"symbols"`` (``x`` is int ``[T, B]``)."""
        return self.INPUT_KIND

    @property
    @abstractmethod
    def input_size(self) -> int:
        """Vector width, or vocabulary size for symbol inputs."""

    @property
    @abstractmethod
    def output_size(self) -> int:
        """Number of classes (CE), bits (BCE) or real outputs (MSE)."""

    # ---- data -------------------------------------------------------------------------------

    def sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        """A fresh batch drawn from ``rng`` alone (never the global NumPy or ``random`` state)."""
        if not isinstance(rng, np.random.Generator):
            raise ConfigError(f"task '{self.name}': rng must be a numpy.random.Generator (got {type(rng).__name__})")
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise ConfigError(f"task '{self.name}': batch_size must be a positive integer (got {batch_size!r})")
        return self._sample(rng, int(batch_size))

    @abstractmethod
    def _sample(self, rng: np.random.Generator, batch_size: int) -> Batch:
        """Generate a batch; arguments are already checked."""

    # ---- scoring ----------------------------------------------------------------------------

    def metric_mask(self, batch: Batch) -> np.ndarray:
        """The steps the metric counts; the loss mask unless a task says otherwise."""
        return batch.mask

    def score(self, pred: np.ndarray, batch: Batch) -> dict[str, float]:
        """``{"loss": ..., <metric>: ...}`` of model outputs ``pred`` ``[T, B, output_size]``."""
        want = (*batch.mask.shape, self.output_size)
        if pred.shape != want:
            raise ShapeError(f"task '{self.name}': predictions must have shape {want} (got {pred.shape})")
        if self.loss == "ce":
            loss, _ = cross_entropy(pred, batch.y, batch.mask)
        elif self.loss == "bce":
            loss, _ = binary_cross_entropy(pred, batch.y, batch.mask)
        else:
            loss, _ = mean_squared_error(pred, batch.y, batch.mask)
        out = {"loss": loss}
        out.update(self._metrics(pred, batch))
        return out

    def loss_and_grad(self, pred: np.ndarray, batch: Batch) -> tuple[float, np.ndarray]:
        """The training loss and its gradient with respect to ``pred`` (see :mod:`.losses`)."""
        fn = {"ce": cross_entropy, "bce": binary_cross_entropy, "mse": mean_squared_error}[self.loss]
        return fn(pred, batch.y, batch.mask)

    def _metrics(self, pred: np.ndarray, batch: Batch) -> dict[str, float]:
        """The metric(s) for the loss family: accuracy for CE and BCE, MSE for MSE."""
        m = np.asarray(self.metric_mask(batch), dtype=np.float64)
        if self.loss == "ce":
            hit = np.argmax(pred, axis=2) == batch.y
            return {"accuracy": _masked_mean(hit, m)}
        if self.loss == "bce":
            hit = (np.asarray(pred) > 0) == (np.asarray(batch.y) > 0.5)
            return {"accuracy": _masked_mean(hit.mean(axis=2), m)}
        mse, _ = mean_squared_error(pred, batch.y, m)
        return {"mse": mse}

    @abstractmethod
    def baseline(self) -> dict[str, float]:
        """Loss and/or metric of an input-blind (or uniform) predictor, in ``score``'s keys."""


def _masked_mean(values: np.ndarray, mask: np.ndarray) -> float:
    return float(np.sum(values * mask) / np.sum(mask))


def sequence_accuracy(pred: np.ndarray, batch: Batch, mask: np.ndarray) -> float:
    """Fraction of sequences whose every counted step has the right argmax class."""
    counted = mask > 0
    wrong = (np.argmax(pred, axis=2) != batch.y) & counted
    has_steps = counted.any(axis=0)
    return float(np.mean(~wrong.any(axis=0)[has_steps]))


def pad_sequences(seqs: list[list[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """Stack variable-length id lists into time-major ``[T, B]`` int64, padded at the end with
    ``pad``; also return the float32 ``[T, B]`` mask of real steps."""
    T = max(len(s) for s in seqs)
    out = np.full((T, len(seqs)), pad, dtype=np.int64)
    real = np.zeros((T, len(seqs)), dtype=np.float32)
    for b, s in enumerate(seqs):
        out[: len(s), b] = s
        real[: len(s), b] = 1.0
    return out, real
