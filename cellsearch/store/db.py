"""Opening a results database: URL checks, SQLite pragmas, and Alembic migrations to the newest schema.

Any SQLAlchemy URL works; a plain path means an SQLite file. SQLite runs in WAL mode with a busy
timeout, so readers (``cellsearch query``) never block the run that writes, and several processes of
one machine (the workers) may write to one file. ``postgresql://`` (or ``postgres://``) means
PostgreSQL through psycopg 3, the shared store for workers on many machines.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, insert, inspect, select, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError, SQLAlchemyError

from ..errors import ConfigError
from .schema import SCHEMA_VERSION, Meta

MIGRATIONS = Path(__file__).with_name("migrations")
BUSY_TIMEOUT_MS = 30_000


def normalise_url(url: str) -> str:
    """A SQLAlchemy URL; a plain path (no ``://``) becomes an SQLite file URL."""
    if "://" not in url:
        return f"sqlite:///{Path(url).expanduser().resolve()}"
    return url


def driver_url(url: str) -> str:
    """``url`` with the PostgreSQL driver made explicit: a bare ``postgresql://`` or ``postgres://``
    means psycopg 3 (SQLAlchemy would pick psycopg2, which cellsearch does not install)."""
    for scheme in ("postgresql://", "postgres://"):
        if url.startswith(scheme):
            return "postgresql+psycopg://" + url[len(scheme) :]
    return url


def full_url(engine: Engine) -> str:
    """The engine's URL with its password, for the workers to connect with (never print it)."""
    return engine.url.render_as_string(hide_password=False)


def is_sqlite(url: str) -> bool:
    return normalise_url(url).startswith("sqlite")


def sqlite_path(url: str) -> Path | None:
    """The file behind an SQLite URL (None for other databases and for in-memory SQLite)."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def _on_connect_sqlite(dbapi_conn: Any, _record: Any) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.execute("PRAGMA synchronous=NORMAL")
    cur.close()


def _alembic_config(connection: Any) -> Any:
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def _head() -> str:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    head = ScriptDirectory.from_config(cfg).get_current_head()
    assert head is not None
    return head


def make_engine(url: str) -> Engine:
    """An engine for ``url``; ``ConfigError`` for a malformed URL or a missing driver."""
    try:
        url = driver_url(url)
        u = make_url(url)
        if u.get_backend_name() == "sqlite":
            engine = create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000})
            event.listen(engine, "connect", _on_connect_sqlite)
        else:
            engine = create_engine(url, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError, ValueError) as err:
        raise ConfigError(f"bad database URL '{url}': {err}") from None
    except ImportError as err:
        raise ConfigError(f"database URL '{url}': its driver is not installed ({err})") from None
    return engine


def _one_line(err: BaseException) -> str:
    text = str(getattr(err, "orig", None) or err).strip().splitlines()
    return text[0] if text else type(err).__name__


def open_engine(url: str, *, create: bool) -> Engine:
    """Connect to ``url`` and bring its schema to the newest version.

    ``create=False`` (reading, resuming) refuses a database that does not exist yet instead of making
    an empty one. Errors are ``ConfigError`` with one line naming the URL.
    """
    url = normalise_url(url)
    path = sqlite_path(url)
    if path is not None:
        if not create and not path.exists():
            raise ConfigError(f"no database at {path} (run `cellsearch run --db {path}` to make one)")
        if create and not path.parent.is_dir():
            raise ConfigError(f"cannot create database {path}: folder {path.parent} does not exist")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            tables = set(inspect(conn).get_table_names())
            if not create and "runs" not in tables:
                raise ConfigError(f"{url} is not a cellsearch database (no 'runs' table)")
    except SQLAlchemyError as err:
        engine.dispose()
        raise ConfigError(f"cannot open database {url}: {_one_line(err)}") from None
    migrate(engine)
    return engine


def migrate(engine: Engine) -> None:
    """Upgrade the schema to the newest Alembic revision (a no-op when it is there already)."""
    from alembic import command
    from alembic.runtime.migration import MigrationContext

    head = _head()
    try:
        with engine.begin() as conn:
            current = MigrationContext.configure(conn).get_current_revision()
            if current == head:
                return
            known = _known_revisions()
            if current is not None and current not in known:
                raise ConfigError(
                    f"database schema revision '{current}' is newer than this cellsearch knows (upgrade cellsearch)"
                )
            command.upgrade(_alembic_config(conn), "head")
            row = conn.execute(select(Meta).where(Meta.key == "schema_version")).first()
            values = {"key": "schema_version", "value": SCHEMA_VERSION}
            if row is None:
                conn.execute(insert(Meta).values(**values))
                conn.execute(insert(Meta).values(key="created", value=f"{time.time():.3f}"))
            else:
                conn.execute(update(Meta).where(Meta.key == "schema_version").values(value=SCHEMA_VERSION))
    except SQLAlchemyError as err:
        raise ConfigError(f"cannot migrate database {engine.url}: {_one_line(err)}") from None


def _known_revisions() -> set[str]:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    return {s.revision for s in ScriptDirectory.from_config(cfg).walk_revisions()}
