"""The store: every write the search makes, and the reads that resume it and answer queries.

Each finished evaluation is committed at once, in its own transaction, so a run killed at any moment
keeps everything it finished. Evaluations are idempotent upserts on their key (``INSERT ... ON
CONFLICT DO NOTHING``, SQLite and PostgreSQL alike): the driver and the workers may both write the
same result, and whoever is first wins, so each evaluation is in the store exactly once.

An evaluation's diagnostics (when its spec asked for them: ``result["diagnostics"]``) go into
``diagnostics`` in the same transaction, keyed by the evaluation's key, also an upsert: an evaluation
already stored gets them added (``rerun``), never replaced.

Liveness: a worker records each start of an evaluation as an ``attempts`` row and refreshes its
heartbeat while it trains; ``reap`` marks attempts whose heartbeat stopped (or whose local process is
gone) ``lost`` so the executor can queue them again. A run is driven by one process at a time: the
driver holds a lease on its ``runs`` row (``acquire_run``), renewed by a heartbeat.
"""

from __future__ import annotations

import math
import os
import socket
import time
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import Engine, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from ..errors import ConfigError
from ..ir.cell import Cell
from .db import open_engine
from .schema import Attempt, CellRow, CellSize, DiagnosticsRow, Evaluation, GenerationMember, Lineage, LogbookRow, RunRow

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


def local_process_gone(worker: str) -> bool:
    """True when ``worker`` (``host:pid[:...]``) names a process of this machine that no longer exists.

    A dead local worker needs no grace period; a worker on another machine (or one whose process is
    still there, or that this user may not signal) is judged by its heartbeat alone.
    """
    host, _, rest = worker.partition(":")
    pid = rest.split(":", 1)[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _json_safe(v: Any) -> Any:
    """``v`` with NaN and infinities as None, numpy scalars as Python numbers (for JSON columns)."""
    if isinstance(v, dict):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


#: the measurements kept in columns of a diagnostics row, for each of init_* and trained_*
DIAGNOSTICS_COLUMNS = ("reach", "reached", "decay_rate", "spectral_radius", "singular_max", "saturation")


def diagnostics_row(key: str, diagnostics: dict[str, Any], rerun: bool, rerun_matches: bool | None) -> dict[str, Any]:
    """The column values of a diagnostics row from an evaluation result's ``diagnostics``."""
    parts = {"init": diagnostics.get("initial") or {}, "trained": diagnostics.get("trained") or {}}
    max_lag = parts["init"].get("max_lag", parts["trained"].get("max_lag"))
    values = {f"{w}_{c}": _json_safe(d.get(c)) for w, d in parts.items() for c in DIAGNOSTICS_COLUMNS}
    detail = {k: diagnostics.get(k) for k in ("initial", "trained", "budget")}
    return {
        "key": key,
        "status": str(diagnostics.get("status") or "ok"),
        "reason": str(diagnostics.get("reason") or ""),
        "max_lag": None if max_lag is None else int(max_lag),
        **values,
        "detail": _json_safe(detail),
        "seconds": float(diagnostics.get("seconds") or 0.0),
        "rerun": rerun,
        "rerun_matches": rerun_matches,
        "created": time.time(),
    }


def _same_result(stored: Evaluation, result: dict[str, Any]) -> bool:
    """Whether a re-run's result is the stored one: the same status and validation result (to 1e-6)."""
    a, b = stored.valid, _finite_or_none(result.get("valid"))
    if stored.status != result.get("status"):
        return False
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-12)


def evaluation_row(
    key: str, spec: dict[str, Any], result: dict[str, Any], run_id: int | None, generation: int | None
) -> dict[str, Any]:
    """The column values of an evaluations row for one finished spec."""
    values = {k: _finite_or_none(result.get(k)) for k in _RESULT_COLUMNS}
    values["history"] = [{k: _finite_or_none(v) for k, v in h.items()} for h in (values["history"] or [])]
    values["reason"] = values["reason"] or ""
    values["worker"] = values["worker"] or ""
    values["steps"] = values["steps"] or 0
    values["compile_seconds"] = values["compile_seconds"] or 0.0
    values["train_seconds"] = values["train_seconds"] or 0.0
    return {
        "key": key,
        "run_id": run_id,
        "generation": generation,
        "cell_hash": spec["cell_hash"],
        "task": spec["task"],
        "task_options": spec["task_options"],
        "hp": spec["hp"],
        "seed": spec["seed"],
        "budget": {"steps": spec["hp"]["steps"], "time_budget": spec["hp"]["time_budget"]},
        "created": time.time(),
        **values,
    }


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

    def create_run(self, name: str, config: dict[str, Any], seed: int, driver: str | None = None) -> int:
        """A new run; ``driver`` (``host:pid:token``) holds its lease from the start (see ``acquire_run``)."""
        now = time.time()
        exists = ConfigError(f"a run named '{name}' already exists in {self.url} (resume it with --resume {name})")
        try:
            with self.session() as s, s.begin():
                if s.scalar(select(RunRow.id).where(RunRow.name == name)) is not None:
                    raise exists
                run = RunRow(
                    name=name, config=config, seed=seed, status="running", generation=0, rng_state=None,
                    message="", created=now, updated=now, finished=None, seconds=0.0,
                    driver=driver, driver_heartbeat=now if driver else None,
                )  # fmt: skip
                s.add(run)
                s.flush()
                return run.id
        except IntegrityError:  # created by another process between the check and the insert
            raise exists from None

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
        """Commit one finished evaluation; False when its key is there already (nothing written).

        An idempotent upsert: any number of processes may write the same key at the same time."""
        with self.session() as s, s.begin():
            return self._insert_result(s, key, spec, result, run_id, generation)

    def _insert_result(
        self, s: Session, key: str, spec: dict[str, Any], result: dict[str, Any], run_id: int | None, generation: int | None
    ) -> bool:
        """The evaluation (an upsert) and its diagnostics when the result has them (an upsert too:
        added to an evaluation stored without them). Whether the evaluation was new."""
        inserted = self._insert_new(s, Evaluation, evaluation_row(key, spec, result, run_id, generation))
        diagnostics = result.get("diagnostics")
        if isinstance(diagnostics, dict):
            matches = None
            if not inserted:
                stored = s.scalar(select(Evaluation).where(Evaluation.key == key))
                matches = None if stored is None else _same_result(stored, result)
            self._insert_new(s, DiagnosticsRow, diagnostics_row(key, diagnostics, not inserted, matches))
        return inserted

    def _insert_new(self, s: Session, table: Any, row: dict[str, Any]) -> bool:
        """Insert ``row`` into ``table`` unless its ``key`` is there; whether it was inserted."""
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            from sqlalchemy.dialects.sqlite import insert as sqlite_insert

            stmt: Any = sqlite_insert(table).values(**row).on_conflict_do_nothing(index_elements=["key"])
        elif dialect == "postgresql":
            from sqlalchemy.dialects.postgresql import insert as pg_insert

            stmt = pg_insert(table).values(**row).on_conflict_do_nothing(index_elements=["key"])
        else:
            stmt = None
        if stmt is not None:
            return s.execute(stmt.returning(table.key)).first() is not None
        if s.scalar(select(table.key).where(table.key == row["key"])) is not None:  # other databases
            return False
        try:
            with s.begin_nested():
                s.execute(insert(table).values(**row))
        except IntegrityError:
            return False
        return True

    def diagnosed_keys(self, keys: Sequence[str]) -> set[str]:
        """Those of ``keys`` whose evaluation has a diagnostics row."""
        out: set[str] = set()
        keys = list(keys)
        with self.session() as s:
            for i in range(0, len(keys), 500):
                out.update(s.scalars(select(DiagnosticsRow.key).where(DiagnosticsRow.key.in_(keys[i : i + 500]))))
        return out

    def diagnostics_by_key(self, keys: Sequence[str]) -> dict[str, DiagnosticsRow]:
        out: dict[str, DiagnosticsRow] = {}
        keys = list(keys)
        with self.session() as s:
            for i in range(0, len(keys), 500):
                for row in s.scalars(select(DiagnosticsRow).where(DiagnosticsRow.key.in_(keys[i : i + 500]))):
                    out[row.key] = row
        return out

    # ---- attempts: liveness and retry history -----------------------------------------------

    def start_attempt(self, key: str, spec: dict[str, Any], worker: str, run_id: int | None, generation: int | None) -> int:
        """Record that ``worker`` starts evaluating ``key``; the attempt's id."""
        now = time.time()
        with self.session() as s, s.begin():
            n = s.scalar(select(func.count(Attempt.id)).where(Attempt.key == key)) or 0
            row = Attempt(
                key=key, attempt=n + 1, run_id=run_id, generation=generation, cell_hash=spec["cell_hash"], task=spec["task"],
                seed=spec["seed"], worker=worker, status="running", reason="", started=now, heartbeat=now, finished=None,
            )  # fmt: skip
            s.add(row)
            s.flush()
            return row.id

    def beat(self, attempt_id: int) -> bool:
        """Refresh a running attempt's heartbeat; False when it is no longer running (it was reaped)."""
        with self.session() as s, s.begin():
            r = s.execute(
                update(Attempt).where(Attempt.id == attempt_id, Attempt.status == "running").values(heartbeat=time.time())
            )
            return bool(r.rowcount == 1)  # type: ignore[attr-defined]

    def finish_attempt(
        self,
        attempt_id: int,
        key: str,
        spec: dict[str, Any],
        result: dict[str, Any],
        run_id: int | None,
        generation: int | None,
        *,
        write: bool,
    ) -> bool | None:
        """Atomically: the evaluation (when ``write``; an upsert) and the attempt's end. Whether this
        attempt's result is the one stored (None when not written here)."""
        now = time.time()
        with self.session() as s, s.begin():
            inserted = self._insert_result(s, key, spec, result, run_id, generation) if write else None
            att = s.get(Attempt, attempt_id)
            if att is not None:
                if att.status == "running":
                    att.status = "done"
                    att.reason = "" if inserted is not False else "the evaluation was in the store already"
                else:  # reaped while it still ran: keep the verdict, note the late result
                    att.reason = f"{att.reason}; finished after all".lstrip("; ")
                att.finished = now
                att.heartbeat = now
        return inserted

    def reap(self, grace: float, keys: Iterable[str] | None = None) -> list[Attempt]:
        """Mark running attempts ``lost`` whose heartbeat is older than ``grace`` seconds, or whose worker
        process (on this machine) is gone; the attempts so marked. ``keys`` limits it to those keys."""
        now = time.time()
        cutoff = now - grace
        out: list[Attempt] = []
        with self.session() as s, s.begin():
            q = select(Attempt).where(Attempt.status == "running")
            if keys is not None:
                keys = list(keys)
                if not keys:
                    return []
                q = q.where(Attempt.key.in_(keys))
            for att in s.scalars(q).all():
                if att.heartbeat < cutoff:
                    reason = f"no heartbeat from worker {att.worker} for {now - att.heartbeat:.0f} s (grace {grace:g} s)"
                    guard = Attempt.heartbeat < cutoff
                elif local_process_gone(att.worker):
                    reason = f"worker process {att.worker} is gone"
                    guard = Attempt.heartbeat == att.heartbeat
                else:
                    continue
                r = s.execute(
                    update(Attempt)
                    .where(Attempt.id == att.id, Attempt.status == "running", guard)
                    .values(status="lost", reason=reason, finished=now)
                )
                if r.rowcount == 1:  # type: ignore[attr-defined]
                    att.status, att.reason, att.finished = "lost", reason, now
                    out.append(att)
        return out

    def end_attempts(self, attempt_ids: Iterable[int], status: str, reason: str) -> None:
        """Give running (or lost) attempts their final status: ``failed`` when retries are spent."""
        ids = list(attempt_ids)
        if not ids:
            return
        with self.session() as s, s.begin():
            s.execute(
                update(Attempt)
                .where(Attempt.id.in_(ids), Attempt.status.in_(["running", "lost"]))
                .values(status=status, reason=reason, finished=time.time())
            )

    def attempts(self, keys: Sequence[str] | None = None, run_id: int | None = None) -> list[Attempt]:
        """Attempts (of these keys, of this run), oldest first: the retry history."""
        with self.session() as s:
            q = select(Attempt)
            if keys is not None:
                q = q.where(Attempt.key.in_(list(keys)))
            if run_id is not None:
                q = q.where(Attempt.run_id == run_id)
            return list(s.scalars(q.order_by(Attempt.id)))

    # ---- the run's driver lease -------------------------------------------------------------

    def acquire_run(self, run_id: int, owner: str, grace: float) -> None:
        """Become the one process driving run ``run_id``; ``ConfigError`` while another driver is alive
        (its heartbeat younger than ``grace`` seconds and, on this machine, its process still there)."""
        now = time.time()
        with self.session() as s, s.begin():
            row = s.get(RunRow, run_id)
            assert row is not None, run_id
            held, beat = row.driver, row.driver_heartbeat
            free = held is None or held == owner or beat is None or beat < now - grace or local_process_gone(held)
            if not free:
                assert held is not None and beat is not None
                raise ConfigError(
                    f"run '{row.name}' is being driven by {held} (heartbeat {now - beat:.0f} s ago); "
                    f"one driver per run: wait for it to end, or {grace:g} s after it stopped"
                )
            same = RunRow.driver.is_(None) if held is None else RunRow.driver == held
            r = s.execute(update(RunRow).where(RunRow.id == run_id, same).values(driver=owner, driver_heartbeat=now))
            if r.rowcount != 1:  # type: ignore[attr-defined]
                raise ConfigError(f"run '{row.name}' was just taken over by another driver")

    def renew_run(self, run_id: int, owner: str) -> bool:
        """Refresh the driver's heartbeat; False when another driver holds the run now."""
        with self.session() as s, s.begin():
            r = s.execute(update(RunRow).where(RunRow.id == run_id, RunRow.driver == owner).values(driver_heartbeat=time.time()))
            return bool(r.rowcount == 1)  # type: ignore[attr-defined]

    def release_run(self, run_id: int, owner: str) -> None:
        with self.session() as s, s.begin():
            s.execute(
                update(RunRow).where(RunRow.id == run_id, RunRow.driver == owner).values(driver=None, driver_heartbeat=None)
            )

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


class RunLease:
    """The driver's hold on a run: taken on start (``acquire_run`` or ``create_run``), renewed by a
    heartbeat thread, released at the end. ``lost`` turns True when another driver took the run over
    (this one stopped renewing for longer than the grace period: suspended, or cut off)."""

    def __init__(self, store: Store, run_id: int, owner: str, every: float) -> None:
        import threading

        self.store, self.run_id, self.owner = store, run_id, owner
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(every,), daemon=True, name="cellsearch-driver-lease")
        self._thread.start()

    def _loop(self, every: float) -> None:
        while not self._stop.wait(every):
            try:
                if not self.store.renew_run(self.run_id, self.owner):
                    self.lost = True
                    return
            except Exception:  # the database is away for a moment: try again at the next beat
                continue

    def release(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if not self.lost:
            try:
                self.store.release_run(self.run_id, self.owner)
            except Exception:
                pass  # its heartbeat stops: the lease runs out after the grace period
