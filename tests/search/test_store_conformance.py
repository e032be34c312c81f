"""The store conformance suite: every test runs on an SQLite file and on PostgreSQL alike.

Schema from the migrations equals the ORM's; an older schema is migrated keeping its rows; evaluations
are idempotent upserts (also under concurrent writers); attempts record liveness and retry history;
one driver per run; the queries read the same back.
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from sqlalchemy import select, update

from cellsearch import zoo
from cellsearch.errors import ConfigError
from cellsearch.search.evaluation import EvalSpec
from cellsearch.store import Store, attempts_frame, evaluations_frame, runs_frame, top_frame
from cellsearch.store.schema import SCHEMA_VERSION, Attempt, Base, Meta, RunRow


def _result(valid: float, worker: str = "w:1", status: str = "ok") -> dict:
    return {"status": status, "reason": "" if status == "ok" else "why", "metric": "mse", "higher_is_better": False,
            "valid": valid, "test": valid, "baseline": 0.2, "steps": 5, "history": [{"step": 5, "loss": float("nan")}],
            "compile_seconds": 0.1, "train_seconds": 1.0, "worker": worker}  # fmt: skip


def _specs(n: int, cell: str = "gru") -> list[EvalSpec]:
    c = zoo.get(cell)
    return [EvalSpec(c.hash, c.text, "adding", {"length": 10}, {"steps": 5, "time_budget": 0.0}, seed) for seed in range(n)]


def test_the_migrations_build_exactly_the_orm_schema(db_url: str) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    store = Store(db_url, create=True)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
        version = conn.execute(select(Meta.value).where(Meta.key == "schema_version")).scalar()
    assert diff == [], f"schema.py and the migrations disagree on {store.engine.dialect.name}: {diff[:3]}"
    assert version == SCHEMA_VERSION
    store.close()
    Store(db_url, create=False).close()  # opens again, migrates nothing


def test_an_older_database_is_migrated_keeping_its_rows(db_url: str) -> None:
    from alembic import command

    from cellsearch.store.db import _alembic_config, make_engine, normalise_url

    engine = make_engine(normalise_url(db_url))
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0002")
        conn.exec_driver_sql(
            "INSERT INTO runs (name, config, seed, status, generation, message, created, updated, seconds) "
            "VALUES ('old', '{}', 0, 'done', 3, '', 0, 0, 1.5)"
        )
    engine.dispose()
    store = Store(db_url)
    run = store.run_by_name("old")
    assert run.generation == 3 and run.driver is None and store.attempts() == []


def test_evaluations_are_idempotent_upserts_by_key(db_url: str) -> None:
    store = Store(db_url, create=True)
    run = store.create_run("r", {"tasks": ["adding"]}, 0)
    store.add_cells([zoo.get("gru"), zoo.get("lstm")])
    a, b = _specs(2)
    assert store.add_evaluation(a.key, a.as_dict(), _result(0.05), run, 0)
    assert not store.add_evaluation(a.key, a.as_dict(), _result(0.01), run, 0)  # the first result is kept
    assert store.add_evaluation(b.key, b.as_dict(), _result(0.1), run, 1)
    rows = store.evaluations_by_key([a.key, b.key])
    assert rows[a.key].valid == 0.05 and rows[b.key].generation == 1
    assert rows[a.key].history == [{"step": 5, "loss": None}]  # NaN is not JSON
    assert store.count_evaluations(run) == 2
    df = evaluations_frame(store)
    assert list(df["valid"]) == [0.05, 0.1] and list(df["run"]) == ["r", "r"]


def test_concurrent_writers_of_the_same_keys_store_each_once(db_url: str) -> None:
    store = Store(db_url, create=True)
    run = store.create_run("r", {}, 0)
    store.add_cells([zoo.get("gru")])
    specs = _specs(20)
    errors: list[BaseException] = []
    inserted: list[int] = []

    def writer(k: int) -> None:
        mine = Store(db_url)
        try:
            n = 0
            for s in specs:
                n += mine.add_evaluation(s.key, s.as_dict(), _result(0.1, worker=f"w:{k}"), run, 0)
            inserted.append(n)
        except BaseException as err:
            errors.append(err)
        finally:
            mine.close()

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert sum(inserted) == 20 and store.count_evaluations(run) == 20


def test_attempts_heartbeat_reap_and_finish(db_url: str) -> None:
    store = Store(db_url, create=True)
    run = store.create_run("r", {}, 0)
    store.add_cells([zoo.get("gru")])
    a, b = _specs(2)
    first = store.start_attempt(a.key, a.as_dict(), "elsewhere:11", run, 0)
    second = store.start_attempt(b.key, b.as_dict(), "elsewhere:12", run, 0)
    assert store.beat(first) and store.reap(grace=60) == []
    with store.session() as s, s.begin():  # the worker of `first` went silent 100 s ago
        s.execute(update(Attempt).where(Attempt.id == first).values(heartbeat=time.time() - 100))
    lost = store.reap(grace=60)
    assert [x.id for x in lost] == [first] and "no heartbeat from worker elsewhere:11" in lost[0].reason
    assert not store.beat(first)  # a lost attempt stays lost
    retry = store.start_attempt(a.key, a.as_dict(), "elsewhere:13", run, 0)
    assert store.finish_attempt(retry, a.key, a.as_dict(), _result(0.1, "elsewhere:13"), run, 0, write=True) is True
    # the lost worker was alive after all and finishes late: its result is not stored twice
    assert store.finish_attempt(first, a.key, a.as_dict(), _result(0.2, "elsewhere:11"), run, 0, write=True) is False
    history = store.attempts([a.key])
    assert [(h.attempt, h.worker, h.status) for h in history] == [(1, "elsewhere:11", "lost"), (2, "elsewhere:13", "done")]
    assert "finished after all" in history[0].reason
    assert store.evaluations_by_key([a.key])[a.key].worker == "elsewhere:13"
    store.end_attempts([second], "failed", "gave up")
    assert store.attempts([b.key])[0].status == "failed"
    df = attempts_frame(store, run="r", cell="gru")
    assert sorted(df["status"]) == ["done", "failed", "lost"] and df["seconds"].notna().all()


def test_query_attempts_prints_the_retry_history(db_url: str, capsys) -> None:
    from cellsearch.cli import main

    store = Store(db_url, create=True)
    run = store.create_run("r", {}, 0)
    store.add_cells([zoo.get("gru")])
    (a,) = _specs(1)
    for worker in ("h:1", "h:2"):
        att = store.start_attempt(a.key, a.as_dict(), worker, run, 0)
    store.end_attempts([att - 1], "lost", "no heartbeat")
    main(["query", "attempts", "--db", db_url, "--format", "json"])
    rows = json.loads(capsys.readouterr().out)
    assert [(r["attempt"], r["worker"], r["status"], r["run"]) for r in rows] == [
        (1, "h:1", "lost", "r"),
        (2, "h:2", "running", "r"),
    ]
    main(["query", "attempts", "--db", db_url, "--status", "running", "--format", "json"])
    assert [r["worker"] for r in json.loads(capsys.readouterr().out)] == ["h:2"]


def test_an_attempt_of_a_dead_local_process_needs_no_grace(db_url: str) -> None:
    import socket
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a pid of this machine that is gone
    store = Store(db_url, create=True)
    (a,) = _specs(1)
    store.add_cells([zoo.get("gru")])
    dead = store.start_attempt(a.key, a.as_dict(), f"{socket.gethostname()}:{proc.pid}", None, None)
    alive = store.start_attempt(a.key, a.as_dict(), f"{socket.gethostname()}:{__import__('os').getpid()}", None, None)
    assert [x.id for x in store.reap(grace=3600)] == [dead]
    assert {x.id: x.status for x in store.attempts([a.key])} == {dead: "lost", alive: "running"}


def test_one_driver_per_run(db_url: str) -> None:
    store = Store(db_url, create=True)
    run = store.create_run("r", {}, 0, driver="otherhost:1:aaaa")
    with pytest.raises(ConfigError, match=r"run 'r' is being driven by otherhost:1:aaaa"):
        store.acquire_run(run, "me:2:bbbb", grace=60)
    assert not store.renew_run(run, "me:2:bbbb") and store.renew_run(run, "otherhost:1:aaaa")
    with store.session() as s, s.begin():  # the other driver stopped renewing 100 s ago
        s.execute(update(RunRow).where(RunRow.id == run).values(driver_heartbeat=time.time() - 100))
    store.acquire_run(run, "me:2:bbbb", grace=60)
    assert store.run_by_id(run).driver == "me:2:bbbb"
    assert not store.renew_run(run, "otherhost:1:aaaa")  # the old driver learns it lost the run
    store.release_run(run, "otherhost:1:aaaa")  # not its lease any more: nothing happens
    assert store.run_by_id(run).driver == "me:2:bbbb"
    store.release_run(run, "me:2:bbbb")
    store.acquire_run(run, "third:3:cccc", grace=60)
    with pytest.raises(ConfigError, match="already exists"):
        store.create_run("r", {}, 0)


def test_generations_lineage_and_queries_round_trip(db_url: str) -> None:
    store = Store(db_url, create=True)
    run = store.create_run("r", {"tasks": ["adding"], "generations": 1}, 0)
    gru, lstm = zoo.get("gru"), zoo.get("lstm")
    store.add_cells([gru, lstm], [(8, 8, 100, 200), (8, 8, 120, 240)])
    store.add_cells([gru], [(8, 8, 100, 200)])  # again: nothing new
    store.add_lineage(run, 1, [(lstm.hash, gru.hash, "swap_activation")] * 2)
    scores = {"adding": {"metric": "mse", "value": 0.1, "relative": 1.0}}
    members = [(gru.hash, 1.0, 100, scores), (lstm.hash, 0.5, 120, scores)]
    store.finish_generation(run, 0, members, {"max": 1.0}, {"state": 1}, 2.0)
    store.finish_generation(run, 0, members[::-1], {"max": 1.0}, {"state": 2}, 3.0)  # rewritten, not doubled
    assert [m.cell_hash for m in store.population(run, 0)] == [lstm.hash, gru.hash]
    row = store.run_by_id(run)
    assert row.generation == 1 and row.rng_state == {"state": 2} and len(store.logbook(run)) == 1
    top = top_frame(store)
    assert set(top["name"]) == {"gru", "lstm"} and list(top["rank"]) == [1, 2]
    assert runs_frame(store)["run"].tolist() == ["r"]
    assert store.cell_texts([gru.hash]) == {gru.hash: gru.text}


def _diagnostics(reach: int, status: str = "ok") -> dict:
    part = {"max_lag": 9, "reach": reach, "reached": True, "decay_rate": 0.7, "spectral_radius": 0.5,
            "singular_max": 0.9, "saturation": 0.25, "grad_norm_by_lag": [1.0, 0.5, float("nan")]}  # fmt: skip
    return {"status": status, "reason": "", "budget": {"batch": 8}, "initial": part, "trained": dict(part, reach=reach + 1),
            "seconds": 0.05}  # fmt: skip


def test_diagnostics_are_stored_with_their_evaluation_and_added_to_stored_ones(db_url: str) -> None:
    store = Store(db_url, create=True)
    run = store.create_run("r", {"tasks": ["adding"]}, 0)
    store.add_cells([zoo.get("gru")])
    a, b, c = _specs(3)
    assert store.add_evaluation(a.key, a.as_dict(), {**_result(0.05), "diagnostics": _diagnostics(4)}, run, 0)
    row = store.diagnostics_by_key([a.key])[a.key]
    assert (row.init_reach, row.trained_reach, row.init_reached, row.max_lag) == (4, 5, True, 9)
    assert row.init_saturation == 0.25 and not row.rerun and row.rerun_matches is None
    assert row.detail["initial"]["grad_norm_by_lag"] == [1.0, 0.5, None]  # NaN is not JSON
    # stored once: a second result with other diagnostics replaces neither
    assert not store.add_evaluation(a.key, a.as_dict(), {**_result(0.05), "diagnostics": _diagnostics(7)}, run, 0)
    assert store.diagnostics_by_key([a.key])[a.key].init_reach == 4
    # evaluations stored without diagnostics get them added by a re-run, which says whether it matched
    store.add_evaluation(b.key, b.as_dict(), _result(0.1), run, 0)
    store.add_evaluation(c.key, c.as_dict(), _result(0.1), run, 0)
    assert store.diagnosed_keys([a.key, b.key, c.key]) == {a.key}
    assert not store.add_evaluation(b.key, b.as_dict(), {**_result(0.1), "diagnostics": _diagnostics(3)}, run, 0)
    assert not store.add_evaluation(c.key, c.as_dict(), {**_result(0.3), "diagnostics": _diagnostics(3)}, run, 0)
    rows = store.diagnostics_by_key([b.key, c.key])
    assert rows[b.key].rerun and rows[b.key].rerun_matches is True
    assert rows[c.key].rerun and rows[c.key].rerun_matches is False
    assert store.evaluations_by_key([c.key])[c.key].valid == 0.1  # the stored result stays
    # the worker's path: the evaluation and its diagnostics in the attempt's transaction
    (d,) = [s for s in _specs(4) if s.key not in (a.key, b.key, c.key)]
    att = store.start_attempt(d.key, d.as_dict(), "w:1", run, 0)
    assert store.finish_attempt(att, d.key, d.as_dict(), {**_result(0.2), "diagnostics": _diagnostics(6)}, run, 0, write=True)
    assert store.diagnostics_by_key([d.key])[d.key].init_reach == 6


def test_a_0003_database_is_migrated_and_its_evaluations_take_diagnostics(db_url: str) -> None:
    from alembic import command
    from sqlalchemy import insert, inspect

    from cellsearch.store.db import _alembic_config, make_engine, normalise_url
    from cellsearch.store.schema import CellRow, Evaluation
    from cellsearch.store.store import evaluation_row

    (a,) = _specs(1)
    gru = zoo.get("gru")
    engine = make_engine(normalise_url(db_url))
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0003")  # the schema before diagnostics
        assert "diagnostics" not in inspect(conn).get_table_names()
        conn.execute(insert(RunRow.__table__).values(name="old", config={}, seed=0, status="done", generation=1, message="",
                                                     created=0.0, updated=0.0, seconds=1.0))  # fmt: skip
        conn.execute(insert(CellRow.__table__).values(hash=gru.hash, text=gru.text, name="gru", n_states=1, n_nodes=5,
                                                      created=0.0))  # fmt: skip
        conn.execute(insert(Evaluation.__table__).values(**evaluation_row(a.key, a.as_dict(), _result(0.05), 1, 0)))
    engine.dispose()
    store = Store(db_url)
    with store.engine.connect() as conn:
        assert "diagnostics" in inspect(conn).get_table_names()
        assert conn.execute(select(Meta.value).where(Meta.key == "schema_version")).scalar() == SCHEMA_VERSION == "0004"
    assert list(evaluations_frame(store)["valid"]) == [0.05] and store.diagnosed_keys([a.key]) == set()
    assert not store.add_evaluation(a.key, a.as_dict(), {**_result(0.05), "diagnostics": _diagnostics(2)}, 1, 0)
    row = store.diagnostics_by_key([a.key])[a.key]
    assert row.rerun and row.rerun_matches and row.trained_reach == 3
