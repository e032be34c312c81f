"""The results database: SQLAlchemy 2.x ORM tables.

``cells`` (one row per structural hash), ``cell_sizes`` (parameter count and FLOPs per step at the
sizes a run used), ``runs`` (config, seed, status, RNG state, progress), ``evaluations`` (one row per
trained (cell, task, options, hyperparameters, seed), unique by its ``key``), ``generations`` (who
was in each population and with what fitness), ``logbook`` (DEAP's per-generation statistics and
the RNG state the next generation starts from), ``lineage`` (parent -> child, with the operator) and
``attempts`` (each start of an evaluation on a worker, with its heartbeat: liveness and retry history)
and ``diagnostics`` (a cell's gradient reach, Jacobian spectrum and gate saturation at initialisation
and after training, per evaluation, when the run asked for them).

Times are UNIX seconds (float). JSON columns hold plain dicts and lists. The schema is created and
upgraded by the Alembic migrations in ``cellsearch/store/migrations``; ``SCHEMA_VERSION`` names the
newest one and is also kept in the ``meta`` table.
"""

from __future__ import annotations

from typing import Any, ClassVar

from sqlalchemy import JSON, Boolean, Float, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

SCHEMA_VERSION = "0004"


class Base(DeclarativeBase):
    type_annotation_map: ClassVar[dict[Any, Any]] = {dict[str, Any]: JSON, list[Any]: JSON}


class Meta(Base):
    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class CellRow(Base):
    __tablename__ = "cells"
    hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    text: Mapped[str] = mapped_column(Text)
    name: Mapped[str | None] = mapped_column(String(64))  # the zoo name, when the cell is a zoo cell
    n_states: Mapped[int] = mapped_column(Integer)
    n_nodes: Mapped[int] = mapped_column(Integer)
    created: Mapped[float] = mapped_column(Float)


class CellSize(Base):
    __tablename__ = "cell_sizes"
    hash: Mapped[str] = mapped_column(ForeignKey("cells.hash"), primary_key=True)
    input: Mapped[int] = mapped_column(Integer, primary_key=True)
    hidden: Mapped[int] = mapped_column(Integer, primary_key=True)
    params: Mapped[int] = mapped_column(Integer)
    flops: Mapped[int] = mapped_column(Integer)  # forward FLOPs of one step for one sequence


class RunRow(Base):
    __tablename__ = "runs"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))  # running | interrupted | done | failed
    generation: Mapped[int] = mapped_column(Integer, default=0)  # generations completed
    rng_state: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # where the next generation starts
    message: Mapped[str] = mapped_column(Text, default="")
    created: Mapped[float] = mapped_column(Float)
    updated: Mapped[float] = mapped_column(Float)
    finished: Mapped[float | None] = mapped_column(Float)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)  # wall time spent running, over all sessions
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSON)  # the end-of-run confirmation (0002)
    driver: Mapped[str | None] = mapped_column(String(128))  # host:pid:token of the driving process (0003)
    driver_heartbeat: Mapped[float | None] = mapped_column(Float)  # its last sign of life (0003)


class Evaluation(Base):
    __tablename__ = "evaluations"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64), unique=True)  # hash of (cell, task, options, hp, seed)
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))  # the run that trained it
    generation: Mapped[int | None] = mapped_column(Integer)
    cell_hash: Mapped[str] = mapped_column(ForeignKey("cells.hash"))
    task: Mapped[str] = mapped_column(String(64))
    task_options: Mapped[dict[str, Any]] = mapped_column(JSON)
    hp: Mapped[dict[str, Any]] = mapped_column(JSON)
    seed: Mapped[int] = mapped_column(Integer)
    budget: Mapped[dict[str, Any]] = mapped_column(JSON)  # steps and time_budget
    status: Mapped[str] = mapped_column(String(16))  # ok | timeout | diverged | failed
    reason: Mapped[str] = mapped_column(Text, default="")
    metric: Mapped[str | None] = mapped_column(String(32))
    higher_is_better: Mapped[bool | None] = mapped_column(Boolean)
    valid: Mapped[float | None] = mapped_column(Float)
    test: Mapped[float | None] = mapped_column(Float)
    baseline: Mapped[float | None] = mapped_column(Float)
    valid_loss: Mapped[float | None] = mapped_column(Float)
    test_loss: Mapped[float | None] = mapped_column(Float)
    steps: Mapped[int] = mapped_column(Integer, default=0)
    compile_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    train_seconds: Mapped[float] = mapped_column(Float, default=0.0)
    worker: Mapped[str] = mapped_column(String(128), default="")
    history: Mapped[list[Any]] = mapped_column(JSON)
    created: Mapped[float] = mapped_column(Float)
    __table_args__ = (Index("ix_evaluations_cell_task", "cell_hash", "task"), Index("ix_evaluations_run", "run_id"))


class Attempt(Base):
    """One start of one evaluation on a worker (0003): its heartbeat while it runs, then how it ended.

    ``status``: running (heartbeating), done (its result is committed, or was already), lost (its
    worker stopped heartbeating for the grace period, or died: the evaluation was queued again),
    failed (given up after the last allowed attempt). All attempts of a key are its retry history.
    """

    __tablename__ = "attempts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(64))  # the evaluation's key
    attempt: Mapped[int] = mapped_column(Integer)  # 1, 2, ...: starts of this key so far
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id"))
    generation: Mapped[int | None] = mapped_column(Integer)
    cell_hash: Mapped[str] = mapped_column(String(64))
    task: Mapped[str] = mapped_column(String(64))
    seed: Mapped[int] = mapped_column(Integer)
    worker: Mapped[str] = mapped_column(String(128))  # host:pid
    status: Mapped[str] = mapped_column(String(16))  # running | done | lost | failed | superseded
    reason: Mapped[str] = mapped_column(Text, default="")
    started: Mapped[float] = mapped_column(Float)
    heartbeat: Mapped[float] = mapped_column(Float)
    finished: Mapped[float | None] = mapped_column(Float)
    __table_args__ = (Index("ix_attempts_key", "key"), Index("ix_attempts_status_heartbeat", "status", "heartbeat"))


class DiagnosticsRow(Base):
    """The diagnostics of one evaluation (0004; ``cellsearch.inspect.diagnostics.evaluation_diagnostics``):
    the cell at initialisation (``init_*``) and with its trained parameters (``trained_*``) on a small
    batch of the evaluation's task. ``reach`` is the first lag where the gradient norm fell below 1e-3
    of its lag-0 value, ``max_lag + 1`` when it never did (``reached`` False); ``saturation`` the mean
    over the sigmoid gates of the fraction of activations below 0.05 or above 0.95. ``detail`` holds
    both diagnoses whole (gradient curve, per state, gates, states) and the budget.

    ``rerun``: added to an evaluation stored without diagnostics by training it again;
    ``rerun_matches``: whether that re-run's status and validation result were the stored ones (so the
    trained diagnostics are of the stored result's parameters)."""

    __tablename__ = "diagnostics"
    key: Mapped[str] = mapped_column(ForeignKey("evaluations.key"), primary_key=True)  # the evaluation's key
    status: Mapped[str] = mapped_column(String(16))  # ok | failed
    reason: Mapped[str] = mapped_column(Text, default="")
    max_lag: Mapped[int | None] = mapped_column(Integer)
    init_reach: Mapped[int | None] = mapped_column(Integer)
    init_reached: Mapped[bool | None] = mapped_column(Boolean)
    init_decay_rate: Mapped[float | None] = mapped_column(Float)
    init_spectral_radius: Mapped[float | None] = mapped_column(Float)
    init_singular_max: Mapped[float | None] = mapped_column(Float)
    init_saturation: Mapped[float | None] = mapped_column(Float)
    trained_reach: Mapped[int | None] = mapped_column(Integer)
    trained_reached: Mapped[bool | None] = mapped_column(Boolean)
    trained_decay_rate: Mapped[float | None] = mapped_column(Float)
    trained_spectral_radius: Mapped[float | None] = mapped_column(Float)
    trained_singular_max: Mapped[float | None] = mapped_column(Float)
    trained_saturation: Mapped[float | None] = mapped_column(Float)
    detail: Mapped[dict[str, Any]] = mapped_column(JSON)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)
    rerun: Mapped[bool] = mapped_column(Boolean, default=False)
    rerun_matches: Mapped[bool | None] = mapped_column(Boolean)
    created: Mapped[float] = mapped_column(Float)


class GenerationMember(Base):
    __tablename__ = "generations"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, primary_key=True)
    position: Mapped[int] = mapped_column(Integer, primary_key=True)
    cell_hash: Mapped[str] = mapped_column(ForeignKey("cells.hash"))
    score: Mapped[float] = mapped_column(Float)
    params: Mapped[int] = mapped_column(Integer)
    scores: Mapped[dict[str, Any]] = mapped_column(JSON)  # per task: metric and relative score


class LogbookRow(Base):
    __tablename__ = "logbook"
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"), primary_key=True)
    generation: Mapped[int] = mapped_column(Integer, primary_key=True)
    record: Mapped[dict[str, Any]] = mapped_column(JSON)
    rng_state: Mapped[dict[str, Any]] = mapped_column(JSON)  # the state after this generation
    created: Mapped[float] = mapped_column(Float)


class Lineage(Base):
    __tablename__ = "lineage"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id"))
    generation: Mapped[int] = mapped_column(Integer)
    child_hash: Mapped[str] = mapped_column(ForeignKey("cells.hash"))
    parent_hash: Mapped[str] = mapped_column(ForeignKey("cells.hash"))
    operator: Mapped[str] = mapped_column(String(32))
    __table_args__ = (
        UniqueConstraint("run_id", "child_hash", "parent_hash", "operator", name="uq_lineage_edge"),
        Index("ix_lineage_child", "child_hash"),
    )
