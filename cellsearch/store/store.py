"""The store: every write the search makes, and the reads that resume it and answer queries.

One process writes (the search's main process); each finished evaluation is committed at once, in
its own transaction, so a run killed at any moment keeps everything it finished.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session

from ..errors import ConfigError
from ..ir.cell import Cell
from .db import open_engine
from .schema import CellRow, CellSize, Evaluation, GenerationMember, Lineage, LogbookRow, RunRow

#: result-dict keys copied into an evaluations row
_RESULT_COLUMNS = (
    "status",
    "reason",
    "metric",
    "higher_is_better",
    "valid",
    "test",
    "baseline",
    "valid_loss",
    "test_loss",
    "steps",
    "compile_seconds",
    "train_seconds",
    "worker",
    "history",
)


def _finite_or_none(v: Any) -> Any:
    if isinstance(v, float) and v != v:  # NaN is not JSON and sorts badly in SQL
        return None
    return v


class Store:
    """A results database. ``Store(url, create=True)`` makes it when it does not exist."""

    def __init__(self, url: str, *, create: bool = False) -> None:
        self.engine: Engine = open_engine(url, create=create)
        self.url = str(self.engine.url)

    def close(self) -> None:
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def session(self) -> Session:
        return Session(self.engine, expire_on_commit=False)

    # ---- cells ------------------------------------------------------------------------------

    def add_cells(self, cells: Iterable[Cell], sizes: Iterable[tuple[int, int, int, int]] = ()) -> None:
        """Insert cells (by hash) that are not there yet, and their (input, hidden, params, flops)
        rows: ``sizes`` is aligned with ``cells``."""
        from .. import zoo

        cells = list(cells)
        sizes = list(sizes)
        now = time.time()
        with self.session() as s, s.begin():
            known = set(s.scalars(select(CellRow.hash).where(CellRow.hash.in_([c.hash for c in cells]))))
            for k, cell in enumerate(cells):
                if cell.hash not in known:
                    known.add(cell.hash)
                    s.add(
                        CellRow(
                            hash=cell.hash,
                            text=cell.text,
                            name=zoo.name_of(cell),
                            n_states=len(cell.states),
                            n_nodes=sum(1 for n in cell.nodes if not n.is_leaf),
                            created=now,
                        )
                    )
                if k < len(sizes):
                    i, h, params, flops = sizes[k]
                    if s.get(CellSize, (cell.hash, i, h)) is None:
                        s.add(CellSize(hash=cell.hash, input=i, hidden=h, params=params, flops=flops))
                        s.flush()

    def cell_texts(self, hashes: Sequence[str]) -> dict[str, str]:
        with self.session() as s:
            rows = s.execute(select(CellRow.hash, CellRow.text).where(CellRow.hash.in_(list(hashes))))
            return {h: t for h, t in rows}

    # ---- runs -------------------------------------------------------------------------------

    def create_run(self, name: str, config: dict[str, Any], seed: int) -> int:
        now = time.time()
        with self.session() as s, s.begin():
            if s.scalar(select(RunRow.id).where(RunRow.name == name)) is not None:
                raise ConfigError(f"a run named '{name}' already exists in {self.url} (resume it with --resume {name})")
            run = RunRow(
                name=name, config=config, seed=seed, status="running", generation=0, rng_state=None,
                message="", created=now, updated=now, finished=None, seconds=0.0,
            )  # fmt: skip
            s.add(run)
            s.flush()
            return run.id

    def run_by_name(self, name: str) -> RunRow:
        with self.session() as s:
            run = s.scalar(select(RunRow).where(RunRow.name == name))
            if run is None:
                names = list(s.scalars(select(RunRow.name).order_by(RunRow.id)))
                known = f" (runs here: {', '.join(names)})" if names else " (it has no runs)"
                raise ConfigError(f"no run named '{name}' in {self.url}{known}")
            return run

    def run_by_id(self, run_id: int) -> RunRow:
        with self.session() as s:
            run = s.get(RunRow, run_id)
            assert run is not None, run_id
            return run

    def runs(self) -> list[RunRow]:
        with self.session() as s:
            return list(s.scalars(select(RunRow).order_by(RunRow.id)))

    def update_run(self, run_id: int, **values: Any) -> None:
        values.setdefault("updated", time.time())
        with self.session() as s, s.begin():
            run = s.get(RunRow, run_id)
            assert run is not None
            for k, v in values.items():
                setattr(run, k, v)

    # ---- evaluations ------------------------------------------------------------------------

    def evaluations_by_key(self, keys: Sequence[str]) -> dict[str, Evaluation]:
        out: dict[str, Evaluation] = {}
        keys = list(keys)
        with self.session() as s:
            for i in range(0, len(keys), 500):
                for ev in s.scalars(select(Evaluation).where(Evaluation.key.in_(keys[i : i + 500]))):
                    out[ev.key] = ev
        return out

    def add_evaluation(
        self, key: str, spec: dict[str, Any], result: dict[str, Any], run_id: int | None, generation: int | None
    ) -> bool:
        """Commit one finished evaluation; False when its key is there already (nothing written)."""
        values = {k: _finite_or_none(result.get(k)) for k in _RESULT_COLUMNS}
        values["history"] = [{k: _finite_or_none(v) for k, v in h.items()} for h in (values["history"] or [])]
        values["reason"] = values["reason"] or ""
        values["worker"] = values["worker"] or ""
        values["steps"] = values["steps"] or 0
        with self.session() as s, s.begin():
            if s.scalar(select(Evaluation.id).where(Evaluation.key == key)) is not None:
                return False
            s.add(
                Evaluation(
                    key=key,
                    run_id=run_id,
                    generation=generation,
                    cell_hash=spec["cell_hash"],
                    task=spec["task"],
                    task_options=spec["task_options"],
                    hp=spec["hp"],
                    seed=spec["seed"],
                    budget={"steps": spec["hp"]["steps"], "time_budget": spec["hp"]["time_budget"]},
                    created=time.time(),
                    **values,
                )
            )
        return True

    # ---- generations, logbook, lineage ------------------------------------------------------

    def add_lineage(self, run_id: int, generation: int, edges: Iterable[tuple[str, str, str]]) -> None:
        """(child hash, parent hash, operator) edges; edges already stored are skipped."""
        with self.session() as s, s.begin():
            for child, parent, op in edges:
                found = s.scalar(
                    select(Lineage.id).where(
                        Lineage.run_id == run_id,
                        Lineage.child_hash == child,
                        Lineage.parent_hash == parent,
                        Lineage.operator == op,
                    )
                )
                if found is None:
                    s.add(Lineage(run_id=run_id, generation=generation, child_hash=child, parent_hash=parent, operator=op))
                    s.flush()

    def finish_generation(
        self,
        run_id: int,
        generation: int,
        members: Sequence[tuple[str, float, int, dict[str, Any]]],
        record: dict[str, Any],
        rng_state: dict[str, Any],
        seconds: float,
    ) -> None:
        """Atomically: the population after ``generation`` (hash, score, params, per-task scores), its
        logbook record, the RNG state the next generation starts from, and the run's progress."""
        now = time.time()
        with self.session() as s, s.begin():
            for old in s.scalars(
                select(GenerationMember).where(GenerationMember.run_id == run_id, GenerationMember.generation == generation)
            ):
                s.delete(old)
            old_log = s.get(LogbookRow, (run_id, generation))
            if old_log is not None:
                s.delete(old_log)
            s.flush()
            for pos, (h, score, params, scores) in enumerate(members):
                s.add(
                    GenerationMember(
                        run_id=run_id, generation=generation, position=pos, cell_hash=h, score=score, params=params, scores=scores
                    )
                )
            s.add(LogbookRow(run_id=run_id, generation=generation, record=record, rng_state=rng_state, created=now))
            run = s.get(RunRow, run_id)
            assert run is not None
            run.generation = generation + 1
            run.rng_state = rng_state
            run.seconds = seconds
            run.updated = now

    def population(self, run_id: int, generation: int) -> list[GenerationMember]:
        with self.session() as s:
            q = select(GenerationMember).where(GenerationMember.run_id == run_id, GenerationMember.generation == generation)
            return list(s.scalars(q.order_by(GenerationMember.position)))

    def logbook(self, run_id: int) -> list[LogbookRow]:
        with self.session() as s:
            return list(s.scalars(select(LogbookRow).where(LogbookRow.run_id == run_id).order_by(LogbookRow.generation)))

    def count_evaluations(self, run_id: int) -> int:
        with self.session() as s:
            return int(s.scalar(select(func.count(Evaluation.id)).where(Evaluation.run_id == run_id)) or 0)
