"""Fixtures for the store and executor tests: a fresh PostgreSQL database per test, a Dask cluster.

PostgreSQL comes from ``CELLSEARCH_TEST_PG_URL`` (a role that may create databases; ``.ci/run`` starts
a server and sets it). Without it the ``postgres`` tests skip, except in CI (``CI=true``), where a
missing server is a failure. The Dask cluster for the worker-kill test is ``CELLSEARCH_TEST_DASK``
(a scheduler address; ``.ci/run`` starts a LocalCluster there), else one started for the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
PG_ENV = "CELLSEARCH_TEST_PG_URL"
DASK_ENV = "CELLSEARCH_TEST_DASK"
REPO = Path(__file__).resolve().parents[2]


def _unavailable(why: str) -> None:
    if CI:
        pytest.fail(f"PostgreSQL is required in CI: {why}")
    pytest.skip(f"no PostgreSQL: {why}")


@pytest.fixture(scope="session")
def pg_admin() -> Iterator[object]:
    """An AUTOCOMMIT engine on the server of ``CELLSEARCH_TEST_PG_URL``."""
    url = os.environ.get(PG_ENV)
    if not url:
        _unavailable(f"{PG_ENV} is not set (.ci/run starts a server and sets it)")
    from sqlalchemy import create_engine, text

    from cellsearch.store.db import driver_url

    engine = create_engine(driver_url(url), isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as err:
        _unavailable(f"cannot connect to {engine.url}: {str(err).splitlines()[0]}")
    yield engine
    engine.dispose()


@pytest.fixture
def pg_url(pg_admin) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    from sqlalchemy import text

    name = f"cellsearch_test_{uuid.uuid4().hex[:12]}"
    with pg_admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = pg_admin.url.set(database=name).render_as_string(hide_password=False)
    yield url
    with pg_admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request, tmp_path: Path) -> str:
    """The same test on an SQLite file and on a PostgreSQL database."""
    if request.param == "sqlite":
        return str(tmp_path / "store.db")
    return request.getfixturevalue("pg_url")


@pytest.fixture(scope="session")
def dask_address(tmp_path_factory) -> Iterator[str]:
    """A Dask scheduler with 4 one-thread worker processes: ``CELLSEARCH_TEST_DASK``, or a LocalCluster
    started here (``tests/search/dask_cluster.py``, as ``.ci/run`` starts it)."""
    given = os.environ.get(DASK_ENV)
    if given:
        yield given
        return
    address_file = tmp_path_factory.mktemp("dask") / "address"
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.search.dask_cluster", "--workers", "4", "--address-file", str(address_file)], cwd=REPO
    )
    deadline = time.time() + 120
    while not address_file.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    if not address_file.exists():
        proc.kill()
        pytest.fail("the Dask LocalCluster did not start")
    yield address_file.read_text().strip()
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
