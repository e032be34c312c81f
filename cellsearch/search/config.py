"""A search run's configuration: a TOML file (``runs/*.toml``) checked key by key.

Every key has a default (``RunConfig()`` is the default run, the same as ``runs/default.toml``), so a
file names only what it changes. Unknown keys and bad values are ``ConfigError`` s naming the file
and key; TOML syntax errors carry ``file:line:col``.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from ..errors import ConfigError
from ..ir.cell import Cell
from ..tasks import TASKS, make_task
from ..train.loop import make_hp

SELECTIONS = ("single", "nsga2")


def evaluation_options(task: str, options: dict[str, Any]) -> dict[str, Any]:
    """All of a task's options, defaults filled in, as an evaluation takes them: without ``split``,
    which the evaluation chooses itself (train, valid, test) for tasks with fixed data splits."""
    out = make_task(task, **options).options
    out.pop("split", None)
    return out


def _default_task_options() -> dict[str, dict[str, Any]]:
    return {"copy": {"length": 10, "n": 5}, "adding": {"length": 30}}


def _default_hp() -> dict[str, Any]:
    return {"steps": 500, "hidden": 32, "batch": 32, "lr": 0.01, "eval_every": 100, "eval_size": 256, "time_budget": 60.0}


@dataclass(frozen=True)
class RunConfig:
    """What a run searches over and how; saved in the run's row so ``--resume`` needs nothing else."""

    name: str | None = None  # default: run-<date>-<time>
    seed: int = 0  # the search's RNG (random cells, selection, variation)
    population: int = 10
    generations: int = 5  # after the seed population (generation 0)
    workers: int | None = None  # evaluation processes; None = the number of cores, 0 = in this process
    selection: str = "single"  # single: Jozefowicz's min-over-tasks score vs GRU; nsga2: (score, parameters)
    tasks: tuple[str, ...] = ("copy", "adding")
    trials: int = 1  # training seeds per (cell, task): 0, 1, ...
    seed_cells: tuple[str, ...] = ("lstm", "gru")  # zoo names or .cell files (relative to the config file)
    crossover: float = 0.2  # probability that an offspring comes from crossover instead of mutation
    tournament: int = 3
    hall_of_fame: int = 10
    confirm_top: int = 3  # at the end, retrain this many best evolved cells and the seed cells ...
    confirm_trials: int = 3  # ... on this many held-out training seeds, and score them again (0: skip)
    study_of: str | None = None  # the study run this search belongs to (`cellsearch reproduce jozefowicz2015`)
    diagnose: bool = False  # also store each evaluation's diagnostics (gradient reach, Jacobian spectrum, gates)
    task_options: dict[str, dict[str, Any]] = field(default_factory=_default_task_options)
    hp: dict[str, Any] = field(default_factory=_default_hp)
    source: str = field(default="<defaults>", compare=False)  # where it was read from

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out.pop("source")
        out["tasks"] = list(self.tasks)
        out["seed_cells"] = list(self.seed_cells)
        return out

    def replace(self, **changes: Any) -> RunConfig:
        return check_config({**self.as_dict(), **{k: v for k, v in changes.items() if v is not None}}, self.source)

    # ---- what evaluations use ---------------------------------------------------------------

    def full_task_options(self, task: str) -> dict[str, Any]:
        """The task's options with defaults filled in (part of each evaluation's identity)."""
        return evaluation_options(task, self.task_options.get(task, {}))

    def full_hp(self) -> dict[str, Any]:
        return dataclasses.asdict(make_hp(**self.hp))

    def load_seed_cells(self) -> list[Cell]:
        from .. import zoo

        base = Path(self.source).parent if self.source not in ("<defaults>", "<stored>") else None
        return [zoo.load(ref, base) for ref in self.seed_cells]


_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str, type(None)),
    "seed": (int,),
    "population": (int,),
    "generations": (int,),
    "workers": (int, type(None)),
    "selection": (str,),
    "tasks": (list, tuple),
    "trials": (int,),
    "seed_cells": (list, tuple),
    "crossover": (float, int),
    "tournament": (int,),
    "hall_of_fame": (int,),
    "confirm_top": (int,),
    "confirm_trials": (int,),
    "study_of": (str, type(None)),
    "diagnose": (bool,),
    "task_options": (dict,),
    "hp": (dict,),
}
_RANGES: dict[str, tuple[float, float]] = {
    "seed": (0, 2**63 - 1),
    "population": (2, 10_000),
    "generations": (0, 100_000),
    "workers": (0, 1024),
    "trials": (1, 100),
    "crossover": (0.0, 1.0),
    "tournament": (1, 100),
    "hall_of_fame": (1, 10_000),
    "confirm_top": (0, 1000),
    "confirm_trials": (1, 100),
}
_HP_FIXED = ("backend",)  # the search trains on the compiled backend unless the config says otherwise


def check_config(values: dict[str, Any], source: str = "<config>") -> RunConfig:
    """A ``RunConfig`` from plain values; ``ConfigError`` naming ``source`` and the key otherwise."""
    where = f"{source}: " if source else ""
    for key, value in values.items():
        if key not in _TYPES:
            raise ConfigError(f"{where}unknown key '{key}' (known: {', '.join(_TYPES)})")
        types = _TYPES[key]
        if (isinstance(value, bool) and bool not in types) or not isinstance(value, types):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise ConfigError(f"{where}key '{key}' must be {want} (got {value!r})")
        if key in _RANGES and value is not None:
            lo, hi = _RANGES[key]
            if not lo <= cast(float, value) <= hi:
                raise ConfigError(f"{where}key '{key}' must be in [{lo}, {hi}] (got {value!r})")
    if "name" in values and values["name"] is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}", values["name"]):
        raise ConfigError(f"{where}key 'name' must be letters, digits, '_', '.', '-' (got {values['name']!r})")
    if values.get("selection", "single") not in SELECTIONS:
        raise ConfigError(f"{where}key 'selection' must be one of {', '.join(SELECTIONS)} (got {values['selection']!r})")
    tasks = tuple(values.get("tasks", RunConfig.tasks))
    if not tasks:
        raise ConfigError(f"{where}key 'tasks' must name at least one task")
    for t in tasks:
        if t not in TASKS:
            raise ConfigError(f"{where}key 'tasks': unknown task '{t}' (known: {', '.join(TASKS)})")
    if len(set(tasks)) != len(tasks):
        raise ConfigError(f"{where}key 'tasks' names a task twice")
    seed_cells = tuple(values.get("seed_cells", RunConfig.seed_cells))
    if not all(isinstance(c, str) for c in seed_cells):
        raise ConfigError(f"{where}key 'seed_cells' must be a list of zoo names or .cell files")
    task_options = values.get("task_options", _default_task_options() if "tasks" not in values else {})
    for t, opts in task_options.items():
        if t not in tasks:
            raise ConfigError(f"{where}task_options.{t}: '{t}' is not one of the run's tasks ({', '.join(tasks)})")
        if not isinstance(opts, dict):
            raise ConfigError(f"{where}task_options.{t} must be a table of options")
        try:
            make_task(t, **opts)
        except ConfigError as err:
            raise ConfigError(f"{where}task_options.{t}: {err}") from None
    hp = dict(values.get("hp", _default_hp()))
    try:
        make_hp(**hp)
    except ConfigError as err:
        raise ConfigError(f"{where}hp: {err}") from None
    out = {k: v for k, v in values.items() if k in _TYPES}
    out.update(tasks=tasks, seed_cells=seed_cells, task_options=task_options, hp=hp)
    if "crossover" in out:
        out["crossover"] = float(out["crossover"])
    cfg = RunConfig(**out, source=source)
    cfg.load_seed_cells()  # a missing file or unknown zoo name is bad input too
    return cfg


def _toml_error(path: Path, text: str, err: tomllib.TOMLDecodeError) -> ConfigError:
    msg = str(err)
    m = re.search(r"\(at line (\d+), column (\d+)\)", msg)
    if m:
        return ConfigError(f"{path}:{m.group(1)}:{m.group(2)}: {msg[: m.start()].strip()}")
    m = re.search(r"\(at end of document\)", msg)
    if m:
        lines = text.split("\n")
        line = len(lines) - 1 if len(lines) > 1 and lines[-1] == "" else len(lines)
        col = len(lines[line - 1]) + 1
        return ConfigError(f"{path}:{line}:{col}: {msg[: m.start()].strip()} (at the end of the file)")
    return ConfigError(f"{path}: {msg}")


def load_config(path: str | Path) -> RunConfig:
    """Read and check a run config file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such run config: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file") from None
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise _toml_error(path, text, err) from None
    return check_config(values, str(path))


def stored_config(values: dict[str, Any]) -> RunConfig:
    """The config a run saved (its seed cells resolved from the working directory)."""
    return check_config(values, "<stored>")
