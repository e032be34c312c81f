"""Reading a results database back: pandas DataFrames for runs, evaluations, leaderboards, lineage.

These are what ``cellsearch query`` prints, and the Python API for notebooks::

    from cellsearch.store import evaluations_frame
    df = evaluations_frame("cellsearch.db", task="adding")
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import select

from ..errors import ConfigError
from ..search.score import relative
from .schema import Attempt, CellRow, CellSize, Evaluation, GenerationMember, Lineage, RunRow
from .store import Store

REFERENCES = ("lstm", "gru")


def _store(db: Store | str) -> Store:
    return db if isinstance(db, Store) else Store(db, create=False)


def resolve_hash(store: Store, prefix: str) -> str:
    """The full hash of a cell from a unique prefix (at least 4 hex digits) or a zoo name."""
    from .. import zoo

    if prefix in zoo.CELLS:
        return zoo.CELLS[prefix].hash
    if len(prefix) < 4:
        raise ConfigError(f"cell hash prefix '{prefix}' is too short (give at least 4 characters)")
    with store.session() as s:
        found = list(s.scalars(select(CellRow.hash).where(CellRow.hash.like(f"{prefix}%")).limit(3)))
    if not found:
        raise ConfigError(f"no cell with hash {prefix}... in {store.url}")
    if len(found) > 1:
        raise ConfigError(f"hash prefix '{prefix}' is ambiguous ({', '.join(h[:12] for h in found)}, ...)")
    return found[0]


def _run_id(store: Store, run: str | None) -> int | None:
    return None if run is None else store.run_by_name(run).id


def _latest_run(store: Store) -> RunRow:
    runs = store.runs()
    if not runs:
        raise ConfigError(f"{store.url} has no runs yet")
    return runs[-1]


def runs_frame(db: Store | str) -> pd.DataFrame:
    """One row per run: progress, evaluations, failures, best score, throughput and compile share."""
    store = _store(db)
    ev = evaluations_frame(store)
    rows = []
    for run in store.runs():
        mine = ev[ev["run"] == run.name] if len(ev) else ev
        with store.session() as s:
            last = list(
                s.scalars(
                    select(GenerationMember)
                    .where(GenerationMember.run_id == run.id, GenerationMember.generation == run.generation - 1)
                    .order_by(GenerationMember.score.desc())
                )
            )
        compile_s = float(mine["compile_seconds"].sum()) if len(mine) else 0.0
        train_s = float(mine["train_seconds"].sum()) if len(mine) else 0.0
        rows.append(
            {
                "run": run.name,
                "status": run.status,
                "generations": run.generation,
                "of": run.config.get("generations", 0) + 1,
                "population": run.config.get("population"),
                "tasks": ",".join(run.config.get("tasks", [])),
                "evaluations": len(mine),
                "failures": int((mine["status"].isin(["failed", "diverged"])).sum()) if len(mine) else 0,
                "timeouts": int((mine["status"] == "timeout").sum()) if len(mine) else 0,
                "best_score": last[0].score if last else None,
                "best_hash": last[0].cell_hash if last else None,
                "seconds": round(run.seconds, 1),
                "evals_per_hour": round(3600 * len(mine) / run.seconds, 1) if run.seconds > 0 else None,
                "compile_share": round(compile_s / (compile_s + train_s), 4) if compile_s + train_s > 0 else None,
                "seed": run.seed,
                "created": pd.Timestamp(run.created, unit="s").isoformat(timespec="seconds"),
            }
        )
    return pd.DataFrame(rows)


def evaluations_frame(
    db: Store | str,
    run: str | None = None,
    cell: str | None = None,
    task: str | None = None,
    status: str | None = None,
) -> pd.DataFrame:
    """Every evaluation (filtered), with ``score``: its validation result relative to the GRU's on the
    same task, options, hyperparameters and seed (see ``cellsearch.search.score``), when the GRU ran."""
    store = _store(db)
    from .. import zoo

    gru = zoo.get("gru").hash
    with store.session() as s:
        names = {r.id: r.name for r in s.scalars(select(RunRow))}
        q = select(Evaluation, CellRow.name).join(CellRow, CellRow.hash == Evaluation.cell_hash)
        records = list(s.execute(q.order_by(Evaluation.id)))

    def ident(e: Evaluation) -> str:
        return json.dumps([e.task, e.task_options, e.hp, e.seed], sort_keys=True)

    refs = {ident(e): e.valid for e, _ in records if e.cell_hash == gru and e.status not in ("failed", "diverged")}
    rows: list[dict[str, Any]] = []
    for e, name in records:
        ref = refs.get(ident(e))
        ok = e.status not in ("failed", "diverged") and e.valid is not None and math.isfinite(e.valid)
        score = relative(e.valid if ok else None, ref, e.baseline, bool(e.higher_is_better)) if e.metric else 0.0
        rows.append(
            {
                "id": e.id,
                "run": names.get(e.run_id) if e.run_id is not None else None,
                "generation": e.generation,
                "hash": e.cell_hash,
                "name": name,
                "task": e.task,
                "seed": e.seed,
                "status": e.status,
                "reason": e.reason,
                "metric": e.metric,
                "valid": e.valid,
                "test": e.test,
                "baseline": e.baseline,
                "score": round(score, 6) if ref is not None or not e.metric else None,
                "steps": e.steps,
                "compile_seconds": e.compile_seconds,
                "train_seconds": e.train_seconds,
                "worker": e.worker,
                "task_options": e.task_options,
                "hp": e.hp,
            }
        )
    cols = ["id", "run", "generation", "hash", "name", "task", "seed", "status", "reason", "metric", "valid", "test",
            "baseline", "score", "steps", "compile_seconds", "train_seconds", "worker", "task_options", "hp"]  # fmt: skip
    df = pd.DataFrame(rows, columns=cols)
    if run is not None:
        store.run_by_name(run)  # an unknown run is an error, not an empty table
        df = df[df["run"] == run]
    if cell is not None:
        df = df[df["hash"] == resolve_hash(store, cell)]
    if task is not None:
        df = df[df["task"] == task]
    if status is not None:
        df = df[df["status"] == status]
    return df.reset_index(drop=True)


def top_frame(db: Store | str, run: str | None = None, task: str | None = None, limit: int = 10) -> pd.DataFrame:
    """The best cells of a run (the latest run by default) by score, or by one task's relative result;
    LSTM and GRU are always listed for reference (``reference`` is True on their rows)."""
    store = _store(db)
    row = store.run_by_name(run) if run is not None else _latest_run(store)
    if task is not None and task not in row.config.get("tasks", []):
        raise ConfigError(f"run '{row.name}' has no task '{task}' (its tasks: {', '.join(row.config.get('tasks', []))})")
    with store.session() as s:
        members = list(s.execute(
            select(GenerationMember, CellRow.name, CellRow.text)
            .join(CellRow, CellRow.hash == GenerationMember.cell_hash)
            .where(GenerationMember.run_id == row.id)
            .order_by(GenerationMember.generation, GenerationMember.position)
        ))  # fmt: skip
        first_seen: dict[str, int] = {}
        for m, _, _ in members:
            first_seen.setdefault(m.cell_hash, m.generation)
        sizes = {h: (p, f) for h, p, f in s.execute(select(CellSize.hash, CellSize.params, CellSize.flops))}
    best: dict[str, dict[str, Any]] = {}
    for m, name, text in members:  # later generations overwrite: the same cell, the same numbers
        rec: dict[str, Any] = {
            "hash": m.cell_hash,
            "name": name,
            "score": m.score,
            "params": m.params,
            "flops": sizes.get(m.cell_hash, (None, None))[1],
            "generation": first_seen[m.cell_hash],
            "last_generation": m.generation,
            "reference": name in REFERENCES,
        }
        for t, v in (m.scores or {}).items():
            rec[f"{t}_{v['metric']}"] = v["value"]
            rec[f"{t}_relative"] = v["relative"]
        rec["text"] = text
        best[m.cell_hash] = rec
    confirmed = ((row.summary or {}).get("confirmed") or {}).get("cells", {})
    for h, rec in best.items():  # the held-out-seed scores, where the run confirmed this cell
        c = confirmed.get(h)
        rec["confirmed"] = None if c is None else c["score"]
        if task is not None and c is not None:
            rec["confirmed"] = c["per_task"][task]["relative"]
    key = "score" if task is None else f"{task}_relative"

    def order(r: dict[str, Any]) -> tuple[float, int, str]:
        value = r.get(key)
        return (-(float(value) if value is not None else -math.inf), r["generation"], r["hash"])

    ranked = sorted(best.values(), key=order)
    out = [dict(r, rank=k + 1) for k, r in enumerate(ranked)]
    shown = out[:limit] + [r for r in out[limit:] if r["reference"]]
    df = pd.DataFrame(shown)
    if len(df):
        df.insert(0, "rank", df.pop("rank"))
        df.insert(1, "run", row.name)
    return df


#: the columns ``diagnostics_frame`` can sort by (largest first)
DIAGNOSTIC_SORTS = (
    "reach", "reach_init", "score", "spectral_radius", "spectral_radius_init", "singular_max", "singular_max_init",
    "decay_rate", "decay_rate_init", "saturation", "saturation_init",
)  # fmt: skip
_DIAGNOSTIC_COLUMNS = [
    "rank", "run", "hash", "name", "score", "reach", "reach_init", "spectral_radius", "spectral_radius_init",
    "singular_max", "singular_max_init", "decay_rate", "decay_rate_init", "saturation", "saturation_init",
    "unreached", "unreached_init", "max_lag", "diagnosed", "evaluations", "rerun_mismatches", "params", "generation",
    "reference",
]  # fmt: skip


def _run_keys(row: RunRow, hashes: list[str], tasks: list[str]) -> dict[str, tuple[str, str]]:
    """The evaluation keys a search run's config gives these cells on these tasks (its search seeds
    0 .. trials - 1): key -> (cell hash, task), as the search computed them."""
    import dataclasses

    from ..search.config import evaluation_options
    from ..search.evaluation import evaluation_key
    from ..train.loop import make_hp

    cfg = row.config
    hp = dataclasses.asdict(make_hp(**(cfg.get("hp") or {})))
    options = {t: evaluation_options(t, (cfg.get("task_options") or {}).get(t, {})) for t in tasks}
    seeds = range(int(cfg.get("trials") or 1))
    return {evaluation_key(h, t, options[t], hp, seed): (h, t) for h in hashes for t in tasks for seed in seeds}


def diagnostics_frame(
    db: Store | str, run: str | None = None, task: str | None = None, sort: str = "reach", limit: int | None = None
) -> pd.DataFrame:
    """The cells of a search run (the latest run by default) with their score and the diagnostics
    stored with their evaluations (a run with ``diagnose = true``): per cell the median over its
    evaluations (the run's tasks, or ``task``, and training seeds) of the gradient reach, the step
    Jacobian's spectral radius and largest singular value, the gradient's decay rate and the gates'
    saturation, after training and (``*_init``) at initialisation. ``unreached``: evaluations whose
    gradient never fell below 1e-3 within ``max_lag`` (their reach is ``max_lag + 1``, a lower bound).
    Sorted by ``sort`` (one of ``DIAGNOSTIC_SORTS``), largest first, cells without diagnostics last;
    ``rank`` is the position in that order. ``limit`` keeps the first rows, LSTM and GRU always."""
    if sort not in DIAGNOSTIC_SORTS:
        raise ConfigError(f"cannot sort by '{sort}' (one of {', '.join(DIAGNOSTIC_SORTS)})")
    store = _store(db)
    row = store.run_by_name(run) if run is not None else _latest_run(store)
    tasks = list(row.config.get("tasks", []))
    if task is not None:
        if task not in tasks:
            raise ConfigError(f"run '{row.name}' has no task '{task}' (its tasks: {', '.join(tasks)})")
        tasks = [task]
    cells = top_frame(store, run=row.name, limit=10**9)
    if not len(cells):
        return pd.DataFrame(columns=_DIAGNOSTIC_COLUMNS)
    keys = _run_keys(row, list(cells["hash"]), tasks)
    found = store.diagnostics_by_key(list(keys))
    per_cell: dict[str, list[Any]] = {}
    for key, d in found.items():
        per_cell.setdefault(keys[key][0], []).append(d)

    def median(rows: list[Any], column: str) -> float | None:
        v = np.array([getattr(r, column) for r in rows if getattr(r, column) is not None], dtype=float)
        v = v[np.isfinite(v)]
        return float(np.median(v)) if len(v) else None

    records = []
    for c in cells.to_dict(orient="records"):
        mine = per_cell.get(c["hash"], [])
        ok = [d for d in mine if d.init_reach is not None or d.trained_reach is not None]  # measured, at least in part
        rec: dict[str, Any] = {"run": row.name, "hash": c["hash"], "name": c["name"], "score": c["score"]}
        for out, col in (("reach", "reach"), ("spectral_radius", "spectral_radius"), ("singular_max", "singular_max"),
                         ("decay_rate", "decay_rate"), ("saturation", "saturation")):  # fmt: skip
            rec[out] = median(ok, f"trained_{col}")
            rec[f"{out}_init"] = median(ok, f"init_{col}")
        rec["unreached"] = sum(1 for d in ok if d.trained_reached is False)
        rec["unreached_init"] = sum(1 for d in ok if d.init_reached is False)
        rec["max_lag"] = max((d.max_lag for d in ok if d.max_lag is not None), default=None)
        rec["diagnosed"] = len(ok)
        rec["evaluations"] = sum(1 for h, t in keys.values() if h == c["hash"])
        rec["rerun_mismatches"] = sum(1 for d in mine if d.rerun and d.rerun_matches is False)
        rec.update(params=c["params"], generation=c["generation"], reference=bool(c["reference"]))
        records.append(rec)

    def number(v: Any) -> float | None:
        return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)

    def order(r: dict[str, Any]) -> tuple[bool, float, float, str]:
        v, score = number(r.get(sort)), number(r.get("score"))
        return (v is None, -v if v is not None else 0.0, -score if score is not None else math.inf, r["hash"])

    ranked = [dict(r, rank=k + 1) for k, r in enumerate(sorted(records, key=order))]
    if limit is not None:
        ranked = ranked[:limit] + [r for r in ranked[limit:] if r["reference"]]
    return pd.DataFrame(ranked, columns=_DIAGNOSTIC_COLUMNS)


def lineage_frame(db: Store | str, cell: str) -> pd.DataFrame:
    """Ancestry of a cell up to the seed cells: one row per (child, parent) edge, with its depth."""
    store = _store(db)
    target = resolve_hash(store, cell)
    with store.session() as s:
        edges = list(s.execute(select(Lineage, RunRow.name).join(RunRow, RunRow.id == Lineage.run_id)))
        names = dict(s.execute(select(CellRow.hash, CellRow.name)).all())
    parents: dict[str, list[tuple[Lineage, str]]] = {}
    for e, run_name in edges:
        parents.setdefault(e.child_hash, []).append((e, run_name))
    rows: list[dict[str, Any]] = []
    seen = {target}
    frontier = [(target, 1)]
    while frontier:
        child, depth = frontier.pop(0)
        for e, run_name in sorted(parents.get(child, []), key=lambda p: (p[0].run_id, p[0].generation, p[0].parent_hash)):
            rows.append(
                {
                    "depth": depth,
                    "child": e.child_hash,
                    "child_name": names.get(e.child_hash),
                    "parent": e.parent_hash,
                    "parent_name": names.get(e.parent_hash),
                    "operator": e.operator,
                    "run": run_name,
                    "generation": e.generation,
                }
            )
            if e.parent_hash not in seen:
                seen.add(e.parent_hash)
                frontier.append((e.parent_hash, depth + 1))
    return pd.DataFrame(rows, columns=["depth", "child", "child_name", "parent", "parent_name", "operator", "run", "generation"])


def cell_detail(db: Store | str, cell: str) -> dict[str, Any]:
    """A cell's text, name, sizes, every evaluation and its lineage."""
    store = _store(db)
    h = resolve_hash(store, cell)
    with store.session() as s:
        row = s.get(CellRow, h)
        if row is None:
            raise ConfigError(f"cell {h[:12]} is not in {store.url}")
        sizes = [{"input": z.input, "hidden": z.hidden, "params": z.params, "flops": z.flops}
                 for z in s.scalars(select(CellSize).where(CellSize.hash == h))]  # fmt: skip
    return {
        "hash": h,
        "name": row.name,
        "text": row.text,
        "states": row.n_states,
        "nodes": row.n_nodes,
        "sizes": sizes,
        "evaluations": evaluations_frame(store, cell=h),
        "lineage": lineage_frame(store, h),
    }


def attempts_frame(db: Store | str, run: str | None = None, status: str | None = None, cell: str | None = None) -> pd.DataFrame:
    """Every start of an evaluation on a worker (filtered): its worker, heartbeat and how it ended; the
    attempts of one evaluation key, in order, are its retry history."""
    store = _store(db)
    run_id = _run_id(store, run)
    target = resolve_hash(store, cell) if cell is not None else None
    with store.session() as s:
        names = {r.id: r.name for r in s.scalars(select(RunRow))}
        q = select(Attempt)
        if run_id is not None:
            q = q.where(Attempt.run_id == run_id)
        if status is not None:
            q = q.where(Attempt.status == status)
        if target is not None:
            q = q.where(Attempt.cell_hash == target)
        rows = [
            {
                "id": a.id,
                "run": names.get(a.run_id) if a.run_id is not None else None,
                "generation": a.generation,
                "key": a.key,
                "attempt": a.attempt,
                "hash": a.cell_hash,
                "task": a.task,
                "seed": a.seed,
                "worker": a.worker,
                "status": a.status,
                "reason": a.reason,
                "started": a.started,
                "heartbeat": a.heartbeat,
                "finished": a.finished,
                "seconds": None if a.finished is None else round(a.finished - a.started, 3),
            }
            for a in s.scalars(q.order_by(Attempt.id))
        ]
    cols = ["id", "run", "generation", "key", "attempt", "hash", "task", "seed", "worker", "status", "reason", "started",
            "heartbeat", "finished", "seconds"]  # fmt: skip
    return pd.DataFrame(rows, columns=cols)
