"""Beyond one process: Dask workers, PostgreSQL, heartbeats and retries, one driver per run.

- a Dask worker killed with SIGKILL while 4 workers run 200 evaluations into PostgreSQL: every
  evaluation ends in the store exactly once, the killed worker's are run again, nothing is lost;
- 4 processes writing to one SQLite file at once: no "database is locked";
- ``cellsearch run --dask local:2`` on SQLite and on PostgreSQL; ``cellsearch worker``;
- a second driver of a running run is refused, and the run of a SIGKILLed driver resumes at once.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cellsearch import zoo
from cellsearch.search.evaluation import EvalSpec
from cellsearch.search.executor import Context
from cellsearch.store import Store
from cellsearch.tasks import make_task
from cellsearch.train.loop import make_hp
from tests.search.helpers import tiny_config
from tests.search.sqlite_writer import write_all

REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cellsearch", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def specs_for(cells: list[str], seeds: int, steps: int) -> list[EvalSpec]:
    hp = dataclasses.asdict(make_hp(steps=steps, hidden=8, batch=8, eval_every=steps, eval_size=16, time_budget=60.0))
    options = {"copy": make_task("copy", length=5, n=3).options, "adding": make_task("adding", length=10).options}
    out = []
    for name in cells:
        c = zoo.get(name)
        out += [EvalSpec(c.hash, c.text, t, options[t], hp, seed) for t in options for seed in range(seeds)]
    return out


# ---- a worker killed midway -----------------------------------------------------------------------


@pytest.mark.postgres
def test_a_worker_killed_midway_loses_nothing_and_stores_each_evaluation_once(pg_url: str, dask_address: str) -> None:
    from cellsearch.search.distributed import DaskExecutor

    store = Store(pg_url, create=True)
    run = store.create_run("kill", {}, 0)
    cells = ["gru", "lstm", "mgu", "rnn"]
    store.add_cells([zoo.get(c) for c in cells])
    specs = specs_for(cells, seeds=25, steps=40)
    assert len({s.key for s in specs}) == 200
    executor = DaskExecutor(dask_address, store, heartbeat=0.5, grace=10.0)
    assert len(executor.workers()) == 4
    got: list[str] = []
    killed: list[int] = []  # attempt ids whose worker process was killed
    landed = False  # a kill hit a worker in the middle of an evaluation
    try:
        for spec, result in executor.run(specs, Context(run, 0)):
            store.add_evaluation(spec.key, spec.as_dict(), result, run, 0)
            got.append(spec.key)
            if len(got) >= 40 and not landed and len(killed) < 5:  # kill a worker in the middle of an evaluation
                attempts = store.attempts(run_id=run)
                landed = any(a.id in killed and a.status != "done" for a in attempts)
                running = [a for a in attempts if a.status == "running"]
                if running and not landed:
                    victim = running[-1]
                    os.kill(int(victim.worker.split(":")[1]), signal.SIGKILL)
                    killed.append(victim.id)
    finally:
        executor.close()

    assert sorted(got) == sorted(s.key for s in specs)  # each spec came back once
    rows = store.evaluations_by_key([s.key for s in specs])
    assert len(rows) == 200 == store.count_evaluations(run)  # each evaluation in the store exactly once
    assert {r.status for r in rows.values()} == {"ok"}, "nothing was lost or failed"
    history = store.attempts(run_id=run)
    victims = [a for a in history if a.id in killed and a.status != "done"]
    assert victims, "no kill landed in the middle of an evaluation"
    for v in victims:
        # lost: the driver saw its worker gone (or its heartbeat stop) first; superseded: Dask re-ran the task on
        # another worker and that attempt finished before the driver's grace ran out (the run's end closes it)
        lost = v.status == "lost" and ("is gone" in v.reason or "no heartbeat" in v.reason)
        superseded = v.status == "superseded" and "another attempt" in v.reason
        assert lost or superseded, (v.status, v.reason)
        again = [a for a in history if a.key == v.key and a.id > v.id]
        assert any(a.status == "done" and a.worker != v.worker for a in again), "the killed worker's evaluation was not run again"
        assert rows[v.key].worker != v.worker
    assert not [a for a in history if a.status == "running"]
    assert {a.status for a in history} <= {"done", "lost", "superseded"}


# ---- SQLite with several writing processes ----------------------------------------------------------


def test_four_processes_writing_to_one_sqlite_file_do_not_lock(tmp_path: Path) -> None:
    url = str(tmp_path / "shared.db")
    store = Store(url, create=True)
    run = store.create_run("w", {}, 0)
    store.add_cells([zoo.get("gru")])
    specs = [(s.key, s.as_dict()) for s in specs_for(["gru"], seeds=25, steps=5)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        outcomes = [pool.apply_async(write_all, (url, run, k, specs)) for k in range(4)]
        results = [o.get(timeout=240) for o in outcomes]  # re-raises a "database is locked" from any writer
    assert results == ["ok"] * 4
    assert store.count_evaluations(run) == 50  # 2 tasks x 25 seeds, each once though written 8 times
    history = store.attempts(run_id=run)
    assert len(history) == 200 and {a.status for a in history} == {"done"}
    assert sorted({a.attempt for a in history}) == [1, 2, 3, 4]


# ---- the command line -------------------------------------------------------------------------------


def _quick_config(tmp_path: Path, **kw) -> Path:
    cfg = tiny_config(tmp_path / "t.toml", **kw)
    cfg.write_text("confirm_top = 0\n" + cfg.read_text())
    return cfg


def test_cellsearch_run_on_a_local_dask_cluster(db_url: str, tmp_path: Path) -> None:
    cfg = _quick_config(tmp_path, generations=1)
    proc = cli("run", str(cfg), "--db", db_url, "--name", "d", "--dask", "local:2", "--format", "json", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["status"] == "done" and summary["evaluations"] == summary["trained_now"] > 0
    store = Store(db_url)
    run = store.run_by_name("d")
    assert run.driver is None  # released at the end
    history = store.attempts(run_id=run.id)
    assert len(history) == summary["evaluations"] and {a.status for a in history} == {"done"}
    workers = {a.worker for a in history}
    assert 1 <= len(workers) <= 2 and all(w.split(":")[1] != str(os.getpid()) for w in workers)
    stored = store.evaluations_by_key([a.key for a in history])
    assert {e.worker for e in stored.values()} == workers  # the workers committed their own results


def test_dask_options_are_checked_before_anything_is_written(tmp_path: Path, capsys) -> None:
    from cellsearch.cli import main

    db = tmp_path / "x.db"
    for args, message in (
        (["run", "--db", str(db), "--dask", "local:0"], "local:N"),
        (["run", "--db", str(db), "--dask", "local:2", "--workers", "2"], "not both"),
        (["run", "--db", str(db), "--dask", "tcp://203.0.113.7:8786"], "PostgreSQL"),
        (["run", "--db", str(db), "--dask", "nonsense"], "scheduler address"),
        (["worker"], "scheduler"),
        (["worker", "--nworkers", "2"], "scheduler"),
    ):
        with pytest.raises(SystemExit) as exit_:
            main(args)
        err = capsys.readouterr().err
        assert exit_.value.code == 2, (args, err)
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert not db.exists()


def test_cellsearch_worker_serves_a_scheduler(tmp_path: Path) -> None:
    from distributed import Client

    from cellsearch.search.distributed import DaskExecutor

    sched_file = tmp_path / "scheduler.json"
    scheduler = subprocess.Popen(
        [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1", "--port", "0",
         "--scheduler-file", str(sched_file), "--no-dashboard"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    worker = None
    try:
        deadline = time.time() + 60
        while not sched_file.exists() and time.time() < deadline:
            time.sleep(0.1)
        worker = subprocess.Popen(
            [sys.executable, "-m", "cellsearch", "worker", "--scheduler-file", str(sched_file), "--nworkers", "2",
             "--no-dashboard"],
            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        with Client(scheduler_file=str(sched_file), timeout="30s") as client:
            client.wait_for_workers(2, timeout=90)
            info = client.scheduler_info()["workers"]
            assert [w["nthreads"] for w in info.values()] == [1, 1]
            env = client.run(lambda: os.environ.get("NUMBA_NUM_THREADS"))
            assert set(env.values()) == {"1"}
            address = client.scheduler.address
        store = Store(str(tmp_path / "w.db"), create=True)
        run = store.create_run("w", {}, 0)
        store.add_cells([zoo.get("gru")])
        specs = specs_for(["gru"], seeds=2, steps=10)
        executor = DaskExecutor(address, store)
        try:
            results = dict((s.key, r) for s, r in executor.run(specs, Context(run, 0)))
        finally:
            executor.close()
        assert {r["status"] for r in results.values()} == {"ok"}
        assert store.count_evaluations(run) == 4 and {a.status for a in store.attempts(run_id=run)} == {"done"}
    finally:
        for p in (worker, scheduler):
            if p is not None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()


def test_a_second_driver_is_refused_and_a_killed_drivers_run_resumes_at_once(tmp_path: Path) -> None:
    cfg = _quick_config(tmp_path, generations=50, workers=0, steps=40)
    db = tmp_path / "c.db"
    first = subprocess.Popen([sys.executable, "-m", "cellsearch", "run", str(cfg), "--db", str(db), "--name", "c"],
                             cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                con = sqlite3.connect(db)
                n = con.execute("SELECT count(*) FROM evaluations").fetchone()[0]
                con.close()
                if n >= 1:
                    break
            except sqlite3.OperationalError:
                pass
            time.sleep(0.05)
        second = cli("run", "--db", str(db), "--resume", "c", "--workers", "0", cwd=tmp_path)
        assert second.returncode == 2, second.stderr
        assert "run 'c' is being driven by" in second.stderr and len(second.stderr.strip().splitlines()) == 1
        assert first.poll() is None  # the first driver goes on
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    resumed = cli("run", "--db", str(db), "--resume", "c", "--workers", "0", "--generations", "0", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr  # a dead driver on this machine holds nothing


def test_a_local_clusters_workers_go_quiet_before_it_closes() -> None:
    """``DaskExecutor.close`` runs ``_quiet_teardown`` on its own LocalCluster's workers first: the heartbeat error a worker
    logs (with a traceback) when it races the scheduler's shutdown is then not printed (CI once failed a run that had
    succeeded on that traceback)."""
    import logging

    from cellsearch.search.distributed import _quiet_teardown

    root = logging.getLogger("distributed")
    level = root.level
    try:
        _quiet_teardown()
        assert not logging.getLogger("distributed.worker").isEnabledFor(logging.CRITICAL)
    finally:
        root.setLevel(level)
