"""The results store: schema from the migrations equals the ORM's, SQLite pragmas, bad URLs, queries."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cellsearch import zoo
from cellsearch.errors import ConfigError
from cellsearch.search.evaluation import EvalSpec
from cellsearch.store import Store, evaluations_frame
from cellsearch.store.db import MIGRATIONS, normalise_url
from cellsearch.store.schema import SCHEMA_VERSION, Base


def test_migrations_build_exactly_the_orm_schema(tmp_path: Path) -> None:
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    store = Store(str(tmp_path / "a.db"), create=True)
    with store.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == [], (
        f"schema.py and the migrations disagree: {diff[:3]} (write a migration: python -m cellsearch.store.revision)"
    )
    assert (MIGRATIONS / "versions").is_dir()


def test_sqlite_is_wal_with_a_schema_version_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    Store(str(path), create=True).close()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert dict(con.execute("SELECT key, value FROM meta").fetchall())["schema_version"] == SCHEMA_VERSION
    assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] == SCHEMA_VERSION
    con.close()
    Store(str(path), create=False).close()  # opening again migrates nothing and keeps the data
    Store(f"sqlite:///{path}", create=False).close()


def test_a_database_from_a_newer_cellsearch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    Store(str(path), create=True).close()
    con = sqlite3.connect(path)
    con.execute("UPDATE alembic_version SET version_num = '9999'")
    con.commit()
    con.close()
    with pytest.raises(ConfigError, match="newer than this cellsearch"):
        Store(str(path))


@pytest.mark.parametrize(
    "url, message",
    [
        ("nosuchdialect://x/y", "bad database URL"),
        ("postgresql://nobody@127.0.0.1:1/none", "database URL|cannot open database"),
        ("{tmp}/missing/dir/a.db", "does not exist"),
    ],
)
def test_bad_urls_are_one_line_config_errors(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        Store(url.format(tmp=tmp_path), create=True)
    assert "\n" not in str(err.value)


def test_reading_never_creates_a_database(tmp_path: Path) -> None:
    path = tmp_path / "none.db"
    with pytest.raises(ConfigError, match="no database at"):
        Store(str(path))
    assert not path.exists()
    other = tmp_path / "other.db"
    sqlite3.connect(other).execute("CREATE TABLE t (x)").connection.commit()
    with pytest.raises(ConfigError, match="not a cellsearch database"):
        Store(str(other))


def test_plain_paths_become_sqlite_urls(tmp_path: Path) -> None:
    assert normalise_url(str(tmp_path / "x.db")) == f"sqlite:///{tmp_path / 'x.db'}"
    assert normalise_url("postgresql://h/db") == "postgresql://h/db"


def _result(status: str, valid: float | None) -> dict:
    return {"status": status, "reason": "" if status == "ok" else "why", "metric": "mse", "higher_is_better": False,
            "valid": valid, "test": valid, "baseline": 0.2, "steps": 5, "history": [{"step": 5, "loss": float("nan")}],
            "compile_seconds": 0.1, "train_seconds": 1.0, "worker": "w:1"}  # fmt: skip


def test_evaluations_are_unique_by_key_and_scored_against_the_gru(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "a.db"), create=True)
    run = store.create_run("r", {"tasks": ["adding"]}, 0)
    lstm, gru = zoo.get("lstm"), zoo.get("gru")
    store.add_cells([lstm, gru])
    hp = {"steps": 5, "time_budget": 0.0}
    specs = [EvalSpec(c.hash, c.text, "adding", {"length": 10}, hp, 0) for c in (lstm, gru)]
    assert specs[0].key != specs[1].key
    assert store.add_evaluation(specs[0].key, specs[0].as_dict(), _result("ok", 0.05), run, 0)
    assert not store.add_evaluation(specs[0].key, specs[0].as_dict(), _result("ok", 0.01), run, 0)  # kept, not replaced
    store.add_evaluation(specs[1].key, specs[1].as_dict(), _result("ok", 0.1), run, 0)
    df = evaluations_frame(store)
    assert list(df["name"]) == ["lstm", "gru"] and list(df["run"]) == ["r", "r"]
    # skill = ln(0.2 / mse): lstm ln 4, gru ln 2
    assert df["score"].tolist() == pytest.approx([2.0, 1.0])
    assert df["valid"].tolist() == [0.05, 0.1]
    with pytest.raises(ConfigError, match="no run named 'nope'"):
        evaluations_frame(store, run="nope")
    with pytest.raises(ConfigError, match="already exists"):
        store.create_run("r", {}, 0)


def test_the_python_api_returns_a_dataframe_from_a_url(tmp_path: Path) -> None:
    Store(str(tmp_path / "a.db"), create=True).close()
    df = evaluations_frame(str(tmp_path / "a.db"))
    assert list(df.columns)[:8] == ["id", "run", "generation", "hash", "name", "task", "seed", "status"]
    assert len(df) == 0


def test_an_older_database_is_migrated_in_place_keeping_its_rows(tmp_path: Path) -> None:
    from alembic import command

    from cellsearch.store.db import _alembic_config, make_engine

    path = tmp_path / "old.db"
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        command.upgrade(_alembic_config(conn), "0001")  # the first schema, as an early cellsearch made it
        conn.exec_driver_sql(
            "INSERT INTO runs (name, config, seed, status, generation, message, created, updated, seconds) "
            "VALUES ('old', '{}', 0, 'done', 3, '', 0, 0, 1.5)"
        )
    engine.dispose()
    store = Store(str(path))
    run = store.run_by_name("old")
    assert run.generation == 3 and run.summary is None
    con = sqlite3.connect(path)
    assert con.execute("SELECT version_num FROM alembic_version").fetchone()[0] == SCHEMA_VERSION
    con.close()
