"""Synthetic tasks: seeded batch generators with a loss, a metric and a chance level.

``TASKS`` maps each task's name to its class; ``make_task(name, **options)`` builds one with checked
options. Layering: this package imports only NumPy, the standard library and ``cellsearch.errors``.
"""

from __future__ import annotations

from typing import Any

from ..errors import ConfigError
from .adding import AddingTask
from .arithmetic import ArithmeticTask
from .associative_recall import AssociativeRecallTask
from .base import Batch, Option, Task
from .chorales import ChoralesTask
from .copy import CopyTask
from .delayed_recall import DelayedRecallTask
from .digits import DigitsTask
from .forecast import ForecastTask
from .losses import binary_cross_entropy, cross_entropy, mean_squared_error
from .mackey_glass import MackeyGlassTask
from .parity import ParityTask
from .sunspots import SunspotsTask
from .tagging import TaggingTask
from .temporal_order import TemporalOrderTask
from .text import TextTask
from .timing import TimingTask
from .xml import XMLTask

__all__ = [
    "TASKS",
    "AddingTask",
    "ArithmeticTask",
    "AssociativeRecallTask",
    "Batch",
    "CopyTask",
    "DelayedRecallTask",
    "ForecastTask",
    "MackeyGlassTask",
    "Option",
    "ParityTask",
    "SunspotsTask",
    "TaggingTask",
    "Task",
    "TemporalOrderTask",
    "TimingTask",
    "XMLTask",
    "binary_cross_entropy",
    "cross_entropy",
    "make_task",
    "mean_squared_error",
]

TASKS: dict[str, type[Task]] = {
    cls.name: cls
    for cls in (
        CopyTask,
        AddingTask,
        TemporalOrderTask,
        DelayedRecallTask,
        AssociativeRecallTask,
        ParityTask,
        ArithmeticTask,
        XMLTask,
        DigitsTask,
        ChoralesTask,
        TextTask,
        MackeyGlassTask,
        SunspotsTask,
        TaggingTask,
        TimingTask,
    )
}


def make_task(name: str, **options: Any) -> Task:
    """The task ``name`` with ``options`` checked; ``ConfigError`` for an unknown name or bad option."""
    cls = TASKS.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ConfigError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return cls(**options)
