"""Reading studies and searches back from a results database, as tidy DataFrames for the analysis.

A *study* is one row of ``runs`` whose config has ``"study"`` (``greff2016`` or ``jozefowicz2015``):
a random search of ``config["trials"]`` hyperparameter settings per (variant, task), each trial one
``evaluations`` row. A *search* is any other run (``cellsearch run``, or a study's evolutionary
search, whose config has ``"study_of"``).

``trials_frame`` gives one row per trial with the variant's label (its zoo name as listed in the
study's config, or the first 8 hex digits of a cell from a file), whether it finished (``ok``), its
scores, and its hyperparameters flattened into ``hp_<name>`` columns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from ..errors import ConfigError
from ..store import Store, evaluations_frame
from ..store.schema import RunRow

STUDIES = ("greff2016", "jozefowicz2015")
FAILED = ("failed", "diverged")

#: Greff et al.'s names for the zoo cells of their study
GREFF_NAMES = {
    "lstm_peephole": "vanilla",
    "nig": "NIG",
    "nfg": "NFG",
    "nog": "NOG",
    "niaf": "NIAF",
    "noaf": "NOAF",
    "np": "NP",
    "cifg": "CIFG",
    "fgr": "FGR",
}

#: Jozefowicz et al.'s roles, each with the zoo names that can play it (first present wins)
JOZEFOWICZ_ROLES: dict[str, tuple[str, ...]] = {
    "LSTM": ("jz_lstm", "lstm"),
    "LSTM-b": ("jz_lstm_b", "lstm_fb1"),
    "LSTM-f": ("jz_lstm_f",),
    "LSTM-i": ("jz_lstm_i",),
    "LSTM-o": ("jz_lstm_o",),
    "tanh": ("rnn",),
    "GRU": ("gru", "gru_jz"),
    "MUT1": ("mut1",),
    "MUT2": ("mut2",),
    "MUT3": ("mut3",),
}

#: how each metric reads on an axis, with its unit
METRIC_UNITS = {
    "accuracy": "accuracy (fraction correct)",
    "mse": "MSE (squared error)",
    "nll": "NLL (nats per step)",
    "perplexity": "perplexity (per symbol)",
    "nrmse": "NRMSE (RMSE / std of the targets)",
    "timing_accuracy": "exact-timing accuracy (fraction of sequences)",
}


def higher_is_better(task: str, fallback: bool | None = None) -> bool:
    """The direction of ``task``'s metric (the task class says), else ``fallback``, else True."""
    from ..tasks import TASKS

    cls = TASKS.get(task)
    if cls is not None:
        return bool(cls.higher_is_better)
    return True if fallback is None else bool(fallback)


def metric_label(metric: str | None, task: str, prefix: str = "test") -> str:
    """An axis label such as ``test accuracy (fraction correct), higher is better``."""
    from ..tasks import TASKS

    if not metric:
        cls = TASKS.get(task)
        metric = cls.metric if cls is not None else "score"
    unit = METRIC_UNITS.get(metric, metric)
    better = "higher" if higher_is_better(task) else "lower"
    return f"{prefix} {unit}, {better} is better"


def run_kind(run: RunRow) -> str:
    """``study`` (a study's random search), ``claims`` (``cellsearch claims``), ``search`` (an evolutionary search)."""
    if run.config.get("kind") == "claims":
        return "claims"
    return "study" if run.config.get("study") in STUDIES else "search"


def select_runs(store: Store, names: list[str] | tuple[str, ...] | None = None) -> list[RunRow]:
    """The runs to report on, in creation order: ``names`` (each must exist), or every run."""
    runs = store.runs()
    if not runs:
        raise ConfigError(f"{store.url} has no runs yet")
    if not names:
        return runs
    wanted = [store.run_by_name(n).name for n in names]  # unknown names raise ConfigError
    return [r for r in runs if r.name in wanted]


@dataclass
class Study:
    """One study run: its config and its trials (see ``trials_frame``)."""

    run: str
    study: str
    scale: str
    variants: list[str]  # the labels, in display order (the config's order first)
    vanilla: str
    tasks: list[str]
    trials_per: int
    search_space: dict[str, dict[str, Any]]
    stand_ins: dict[str, str]
    trials: pd.DataFrame
    config: dict[str, Any] = field(default_factory=dict)

    def paper_name(self, variant: str) -> str:
        return paper_names(self.study, self.variants, self.vanilla).get(variant, variant)


def paper_names(study: str, variants: list[str], vanilla: str) -> dict[str, str]:
    """Each variant's name in the paper (``NFG``, ``LSTM-b``, ...); a variant with none keeps its own."""
    out = {v: v for v in variants}
    if study == "greff2016":
        for v in variants:
            out[v] = GREFF_NAMES.get(v, v)
        out[vanilla] = "vanilla"
        return out
    taken: set[str] = set()
    for role, names in JOZEFOWICZ_ROLES.items():
        candidates = ((vanilla,) if role == "GRU" else ()) + names
        for n in candidates:
            if n in variants and n not in taken:
                out[n] = role
                taken.add(n)
                break
    return out


def role_of(study: Study, role: str) -> str | None:
    """The variant that plays ``role`` (a Jozefowicz name such as ``LSTM-b``) in ``study``, if any."""
    for v, name in paper_names(study.study, study.variants, study.vanilla).items():
        if name == role:
            return v
    return None


def _labels(config: dict[str, Any], ev: pd.DataFrame) -> pd.Series:
    from .. import zoo

    by_hash: dict[str, str] = {}
    hashes = config.get("variant_hashes") or {}
    for name in [str(v) for v in config.get("variants", [])]:
        # by hash: a variant may be structurally another zoo cell (Greff's NP is the LSTM), whose name the
        # cells table keeps
        cell = zoo.CELLS.get(name)
        h = hashes.get(name) or (cell.hash if cell is not None else None)
        if h:
            by_hash.setdefault(str(h), name)

    def label(h: str, name: Any) -> str:
        if h in by_hash:
            return by_hash[h]
        if isinstance(name, str) and name:
            return name
        return h[:8]

    return pd.Series([label(h, n) for h, n in zip(ev["hash"], ev["name"], strict=True)], index=ev.index, dtype=object)


def _finite(v: Any) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(float(v))


def trials_frame(evaluations: pd.DataFrame, config: dict[str, Any]) -> pd.DataFrame:
    """One row per trial of a study: variant, task, seed, status, ok, valid, test, ..., ``hp_<k>``.

    ``ok`` is False for a failed or diverged trial and for one without a finite test result: such
    trials are counted and shown, never used in statistics."""
    cols = [
        "variant",
        "hash",
        "task",
        "seed",
        "status",
        "ok",
        "valid",
        "test",
        "baseline",
        "metric",
        "higher_is_better",
        "reason",
        "hp",
    ]
    if not len(evaluations):
        return pd.DataFrame(columns=cols)
    ev = evaluations.copy()
    if isinstance(config.get("trials"), int):  # a study whose trial count shrank keeps the trials it asks for
        ev = ev[ev["seed"] < config["trials"]]
        if not len(ev):
            return pd.DataFrame(columns=cols)
    ev["variant"] = _labels(config, ev)
    ev["higher_is_better"] = [higher_is_better(t) for t in ev["task"]]
    ev["ok"] = [s not in FAILED and _finite(x) for s, x in zip(ev["status"], ev["test"], strict=True)]
    for c in ("valid", "test", "baseline"):
        ev[c] = pd.to_numeric(ev[c], errors="coerce").astype(float)
    out = ev[cols].copy()
    keys: list[str] = []
    for hp in out["hp"]:
        for k, v in (hp or {}).items():
            if k not in keys and isinstance(v, (int, float, str, bool)):
                keys.append(k)
    for k in keys:
        out[f"hp_{k}"] = [(hp or {}).get(k) for hp in out["hp"]]
    return out.reset_index(drop=True)


def load_study(db: Store | str, run: str | RunRow, evaluations: pd.DataFrame | None = None) -> Study:
    """A study run and its trials. ``evaluations`` (every evaluation of the database, from
    ``evaluations_frame``) saves reading them again when several runs are reported."""
    store = db if isinstance(db, Store) else Store(db, create=False)
    row = run if isinstance(run, RunRow) else store.run_by_name(run)
    config = dict(row.config)
    if config.get("study") not in STUDIES:
        raise ConfigError(
            f"run '{row.name}' is not a study (config 'study' is {config.get('study')!r}; known: {', '.join(STUDIES)})"
        )
    ev = evaluations_frame(store) if evaluations is None else evaluations
    mine = ev[ev["run"] == row.name] if len(ev) else ev
    trials = trials_frame(mine, config)
    listed = [str(v) for v in config.get("variants", [])]
    present = list(dict.fromkeys(trials["variant"])) if len(trials) else []
    variants = [v for v in listed if v in present] + sorted(v for v in present if v not in listed)
    if not variants:
        variants = listed
    default_vanilla = "lstm_peephole" if config["study"] == "greff2016" else "gru"
    tasks_listed = [str(t) for t in config.get("tasks", [])]
    tasks_present = list(dict.fromkeys(trials["task"])) if len(trials) else []
    tasks = [t for t in tasks_listed if t in tasks_present] + [t for t in tasks_present if t not in tasks_listed]
    return Study(
        run=row.name,
        study=str(config["study"]),
        scale=str(config.get("scale", "?")),
        variants=variants,
        vanilla=str(config.get("vanilla") or default_vanilla),
        tasks=tasks or tasks_listed,
        trials_per=int(config.get("trials") or 0),
        search_space=dict(config.get("search_space") or {}),
        stand_ins={str(k): str(v) for k, v in (config.get("stand_ins") or {}).items()},
        trials=trials,
        config=config,
    )
