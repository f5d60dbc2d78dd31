"""Open the store: build an engine for a URL and bring its schema to the newest migration.

    from store.db import open_store
    engine = open_store(cfg.store_url)      # make_engine + migrate; every process does this

SQLite (``sqlite:///path/rstar.db``, the default) gets its parent folder created, WAL journaling
(readers never block the writer), ``synchronous=NORMAL`` (a commit survives a killed process; an
OS crash or power cut may undo the last few commits but never corrupts the file), foreign keys
on, and a busy timeout so several processes can share one file.
PostgreSQL (``postgresql+psycopg://…``) needs nothing special. The rest of the store is the same
code on both.

``migrate`` is idempotent and safe to call from several processes at once: on PostgreSQL the
upgrade runs under a transaction-scoped advisory lock, on SQLite inside ``BEGIN IMMEDIATE``; the
second caller waits, then finds the schema at head. The Alembic scripts live inside this package
(``store/migrations``), so no ``alembic.ini`` is needed and an installed package migrates itself.
To write a new revision after changing ``store/models.py``::

    python -m store.db revision "add column x" [--url sqlite:///scratch.db]

then review the generated file under ``store/migrations/versions`` before committing it.
"""

from __future__ import annotations

import sqlite3
import sys
import time
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import URL, make_url

from rstar.log import get_logger, timed

log = get_logger(__name__)

MIGRATIONS = Path(__file__).resolve().parent / "migrations"
# Any fixed 64-bit number; only rstar's migrate() takes this advisory lock.
_PG_MIGRATE_LOCK = 0x7273746172_01


class StoreError(RuntimeError):
    """The store cannot be opened or migrated; carries the URL (password hidden)."""

    def __init__(self, url: str | URL, reason: str):
        self.url = make_url(url).render_as_string(hide_password=True)
        super().__init__(f"{self.url}: {reason}")


def _sqlite_file(url: URL) -> Path | None:
    db = url.database
    if not db or db == ":memory:" or db.startswith("file:"):
        return None
    return Path(db)


def make_engine(url: str | URL, *, sqlite_busy_timeout_s: float = 30.0, echo: bool = False) -> Engine:
    """An engine for ``url``; SQLite files get their folder and the pragmas above."""
    url = make_url(url)
    if url.get_backend_name() == "sqlite":
        path = _sqlite_file(url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, echo=echo)
        _setup_sqlite(engine, sqlite_busy_timeout_s)
        return engine
    if url.get_backend_name() == "postgresql":
        return create_engine(url, echo=echo, pool_pre_ping=True)
    raise StoreError(url, f"unsupported database {url.get_backend_name()!r} (use sqlite or postgresql)")


def _setup_sqlite(engine: Engine, busy_timeout_s: float) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record) -> None:
        # Python's sqlite3 opens transactions itself, and only before DML, so DDL (migrations)
        # would autocommit statement by statement. Take transaction control: BEGIN is ours.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        _enable_wal(cur, busy_timeout_s)
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn) -> None:
        # A writer that starts with BEGIN IMMEDIATE waits for the lock (busy_timeout) instead of
        # failing when a read transaction tries to upgrade to a write after another commit.
        mode = conn.get_execution_options().get("sqlite_begin", "")
        conn.exec_driver_sql(f"BEGIN {mode}".strip())


def _enable_wal(cur: sqlite3.Cursor, busy_timeout_s: float) -> None:
    """Switch the file to WAL (a no-op once it is). Switching a fresh file takes its exclusive
    lock, and when several connections try at once SQLite answers the loser "database is locked"
    at once, without waiting on the busy timeout (it would deadlock otherwise): retry until then."""
    deadline = time.monotonic() + busy_timeout_s
    delay = 0.005
    while True:
        try:
            cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() >= deadline:
                raise
        time.sleep(delay)
        delay = min(2 * delay, 0.2)


def alembic_config(connection=None) -> AlembicConfig:
    """Alembic's config pointing at the packaged scripts; env.py uses ``connection``."""
    cfg = AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "store/migrations has no revisions"
    return head


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def migrate(engine: Engine) -> str:
    """Upgrade the schema to head (no-op when already there); returns the head revision."""
    head = head_revision()
    if current_revision(engine) == head:
        return head
    url = engine.url
    with timed(log, f"migrating {url.render_as_string(hide_password=True)} to {head}", slow_s=0.0):
        conn_ctx = engine.connect()
        if engine.dialect.name == "sqlite":
            conn_ctx = conn_ctx.execution_options(sqlite_begin="IMMEDIATE")
        with conn_ctx as conn, conn.begin():
            if engine.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_MIGRATE_LOCK})
            command.upgrade(alembic_config(conn), "head")
    return head


def open_store(url: str | URL, **engine_kw) -> Engine:
    """``make_engine`` + ``migrate``: what every process that uses the store calls at startup."""
    engine = make_engine(url, **engine_kw)
    try:
        migrate(engine)
    except Exception:
        engine.dispose()
        raise
    return engine


def _new_revision(argv: list[str]) -> None:
    import argparse

    p = argparse.ArgumentParser(prog="python -m store.db")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("revision", help="autogenerate a migration from store/models.py")
    r.add_argument("message")
    r.add_argument("--url", default="sqlite:///:memory:", help="database to diff against (migrated first)")
    args = p.parse_args(argv)
    engine = make_engine(args.url)
    with engine.begin() as conn:
        command.upgrade(alembic_config(conn), "head")
        command.revision(alembic_config(conn), message=args.message, autogenerate=True)


if __name__ == "__main__":
    _new_revision(sys.argv[1:])
