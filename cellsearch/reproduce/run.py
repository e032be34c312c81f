"""Running a study: every (cell, task, trial) of its random search as an evaluation in the store.

A trial's hyperparameters are drawn from the study's space with a generator seeded by (study seed,
task, trial), and shared by all the study's cells: each cell meets the same draws, so the comparison
between cells is paired (common random numbers) and a cell's trials are still an independent random
search. The trial index is also the training seed. Running the same command again resumes: trials
already in the store are not trained again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from .. import zoo
from ..errors import ConfigError
from ..search.config import evaluation_options
from ..search.evaluation import EvalSpec
from ..search.executor import Executor
from ..store.store import Store
from ..tasks import make_task
from ..train.loop import make_hp
from .studies import Study, sample


def _task_seed(task: str) -> int:
    return int.from_bytes(hashlib.blake2b(task.encode(), digest_size=4).digest(), "little")


def study_tasks(study: Study, ptb: str | None) -> list[str]:
    return list(study.tasks) + (["text"] if ptb else [])


def task_options(study: Study, scale: str, task: str, ptb: str | None) -> dict[str, Any]:
    opts = dict(study.scale(scale).task_options.get(task, {}))
    if task == "text":
        opts.setdefault("path", ptb)
    return evaluation_options(task, opts)


def trial_specs(study: Study, scale: str, seed: int = 0, ptb: str | None = None) -> Iterator[EvalSpec]:
    """Every evaluation of the study, trial by trial (each trial: every task, every cell), so a run
    stopped part-way holds whole trials of every task and cell."""
    sc = study.scale(scale)
    cells = [zoo.get(v) for v in study.variants]
    tasks = study_tasks(study, ptb)
    options = {task: task_options(study, scale, task, ptb) for task in tasks}
    for trial in range(sc.trials):
        for task in tasks:
            rng = np.random.default_rng([seed, _task_seed(task), trial])
            hp = dataclasses.asdict(make_hp(**{**sc.hp, **sample(sc.space, rng)}))
            for cell in cells:
                yield EvalSpec(cell.hash, cell.text, task, options[task], hp, trial)


def study_config(study: Study, scale: str, seed: int, ptb: str | None) -> dict[str, Any]:
    sc = study.scale(scale)
    tasks = study_tasks(study, ptb)
    return {
        "study": study.name,
        "title": study.title,
        "scale": scale,
        "seed": seed,
        "variants": list(study.variants),
        # a variant may be structurally another zoo cell (Greff's NP is the plain LSTM), whose name the
        # cells table keeps: match a study's evaluations to its variants by hash
        "variant_hashes": {v: zoo.get(v).hash for v in study.variants},
        "vanilla": study.vanilla,
        "tasks": tasks,
        "trials": sc.trials,
        "search_space": sc.space,
        "fixed_hp": sc.hp,
        "task_options": {t: task_options(study, scale, t, ptb) for t in tasks},
        "stand_ins": {t: why for t, why in study.stand_ins.items() if t in tasks},
        "ptb": ptb,
    }


def open_study_run(store: Store, name: str, config: dict[str, Any]) -> int:
    """The run row of this study: made when new; checked and resumed when it exists."""
    try:
        row = store.run_by_name(name)
    except ConfigError:
        return store.create_run(name, config, config["seed"])
    old = row.config
    if old.get("study") != config["study"] or old.get("scale") != config["scale"] or old.get("seed") != config["seed"]:
        raise ConfigError(
            f"run '{name}' in {store.url} is not {config['study']} at scale {config['scale']} with seed {config['seed']}; "
            "pick another --name"
        )
    if {**old, "trials": None} != {**config, "trials": None}:
        raise ConfigError(f"run '{name}' was made with other settings (a different cellsearch or --ptb); pick another --name")
    if old["trials"] != config["trials"]:  # more or fewer trials: trial k is the same draw either way
        store.update_run(row.id, config=config)
    return row.id


@dataclasses.dataclass
class Progress:
    total: int
    done: int = 0
    cached: int = 0
    failures: int = 0


def run_study(
    store: Store,
    run_id: int,
    specs: list[EvalSpec],
    executor: Executor,
    on_result: Callable[[Progress, dict[str, Any] | None], None] | None = None,
) -> Progress:
    """Train the trials the store lacks, committing each as it finishes."""
    store.add_cells({s.cell_hash: zoo.get(zoo.BY_HASH[s.cell_hash]) for s in specs}.values())
    known = store.evaluations_by_key([s.key for s in specs])
    pending = [s for s in specs if s.key not in known]
    prog = Progress(total=len(specs), done=len(specs) - len(pending), cached=len(specs) - len(pending))
    if on_result:
        on_result(prog, None)
    t0 = time.perf_counter()
    store.update_run(run_id, status="running", finished=None)
    try:
        for spec, result in executor.run(pending):
            store.add_evaluation(spec.key, spec.as_dict(), result, run_id, None)
            prog.done += 1
            prog.failures += result["status"] in ("failed", "diverged")
            if on_result:
                on_result(prog, result)
    except BaseException as err:
        status = "interrupted" if isinstance(err, KeyboardInterrupt) else "failed"
        row = store.run_by_id(run_id)
        store.update_run(run_id, status=status, message=f"{type(err).__name__}: {err}"[:500],
                         seconds=row.seconds + time.perf_counter() - t0)  # fmt: skip
        raise
    row = store.run_by_id(run_id)
    store.update_run(run_id, status="done", finished=time.time(), message="", seconds=row.seconds + time.perf_counter() - t0)
    return prog


def summary_rows(store: Store, run_name: str) -> list[dict[str, Any]]:
    """Per (task, cell): trials, failures, median and best test result (best in the task's direction)."""
    from ..store.queries import evaluations_frame

    df = evaluations_frame(store, run=run_name)
    rows: list[dict[str, Any]] = []
    if not len(df):
        return rows
    cfg = store.run_by_name(run_name).config
    for task in cfg["tasks"]:
        higher = make_task(task, **cfg["task_options"][task]).higher_is_better
        for variant in cfg["variants"]:
            d = df[(df["task"] == task) & (df["hash"] == cfg["variant_hashes"][variant])]
            ok = d[d["test"].notna() & ~d["status"].isin(["failed", "diverged"])]
            best = (ok["test"].max() if higher else ok["test"].min()) if len(ok) else None
            rows.append(
                {
                    "task": task,
                    "cell": variant,
                    "metric": d["metric"].dropna().iloc[0] if d["metric"].notna().any() else None,
                    "trials": len(d),
                    "failures": int(d["status"].isin(["failed", "diverged"]).sum()),
                    "median_test": float(ok["test"].median()) if len(ok) else None,
                    "best_test": float(best) if best is not None else None,
                }
            )
    return rows
