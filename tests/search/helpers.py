"""Helpers for the search tests: tiny run configs that finish in seconds."""

from __future__ import annotations

import textwrap
from pathlib import Path

TINY = """
population = 4
generations = {generations}
workers = {workers}
tasks = ["copy", "adding"]
seed_cells = [{seed_cells}]
[task_options.copy]
length = 5
n = 3
[task_options.adding]
length = 10
[hp]
steps = {steps}
hidden = 8
batch = 8
eval_every = 10
eval_size = 16
time_budget = {time_budget}
"""


def tiny_config(
    path: Path,
    generations: int = 2,
    workers: int = 0,
    steps: int = 20,
    seed_cells: str = '"lstm", "gru"',
    time_budget: float = 60.0,
) -> Path:
    path.write_text(
        textwrap.dedent(
            TINY.format(generations=generations, workers=workers, steps=steps, seed_cells=seed_cells, time_budget=time_budget)
        )
    )
    return path
