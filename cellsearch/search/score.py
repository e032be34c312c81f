"""Fitness: Jozefowicz et al. 2015's score, min over tasks of a cell's result relative to the GRU's.

For an accuracy-like metric (higher is better) the relative result is ``acc / acc_GRU``, exactly as
in the paper. Our suite also has error-like metrics (MSE on adding, NLL on chorales) that the paper's
search did not use. For those the result is first turned into a *skill*: how many natural-log units
(orders of magnitude, times 2.3) the cell's error lies below the task's baseline,
``max(0, ln(baseline / m))``; the relative result is ``skill / skill_GRU``. A plain share of the
baseline removed, ``1 - m / baseline``, would saturate near 1 for every cell that learns the task at
all (MSE 0.001 and 0.0001 both give 0.99+), hiding exactly the differences a search is after.
When the GRU itself learns nothing on a task (skill below ``FLOOR``) the ratio means nothing, and
the cell's own skill is used. A failed or diverged evaluation scores 0 on its task, so the cell
scores 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

FLOOR = 0.05


#: an error this small counts as this small (a perfect cell does not get an infinite skill)
TINY_ERROR = 1e-9


def skill(value: float | None, baseline: float | None, higher_is_better: bool) -> float:
    """Higher-is-better form of a metric: accuracy as is; an error as ln(baseline / error), >= 0."""
    if value is None or not math.isfinite(value):
        return 0.0
    if higher_is_better:
        return max(0.0, value)
    if not baseline or baseline <= 0:
        return 0.0
    return max(0.0, math.log(baseline / max(value, TINY_ERROR)))


def relative(value: float | None, reference: float | None, baseline: float | None, higher_is_better: bool) -> float:
    """A result relative to the reference cell's (the GRU's) on the same task and budget."""
    mine = skill(value, baseline, higher_is_better)
    ref = skill(reference, baseline, higher_is_better)
    return mine / ref if ref >= FLOOR else mine


def task_value(rows: Sequence[dict[str, Any]]) -> float | None:
    """A cell's result on one task: the mean validation metric over its trials; None when any failed."""
    values = []
    for r in rows:
        if r["status"] in ("failed", "diverged") or r["valid"] is None or not math.isfinite(r["valid"]):
            return None
        values.append(float(r["valid"]))
    return sum(values) / len(values) if values else None


def cell_score(per_task: dict[str, dict[str, Any]]) -> float:
    """Min over tasks of the relative results (``per_task[t]["relative"]``)."""
    return min((v["relative"] for v in per_task.values()), default=0.0)
