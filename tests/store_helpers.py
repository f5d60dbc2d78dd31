"""Helpers shared by the store tests (SQLite unit tests and PostgreSQL integration tests).

Import as ``from store_helpers import ...``: pytest puts ``tests/`` on ``sys.path`` for the
root conftest. Plain functions that return what happened; the asserts stay in the tests, so
pytest's assertion rewriting shows the failing values.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError

from store.db import current_revision, make_engine, migrate, open_store
from store.scratch import DEFAULT_ADMIN_URL, scratch_postgres


def scratch_postgres_or_skip(tag: str) -> AbstractContextManager[str]:
    """``scratch_postgres(tag=tag)`` (a fresh database's URL, dropped afterwards), or the test
    skipped, with the reason, when the PostgreSQL server is not reachable."""
    try:
        with create_engine(DEFAULT_ADMIN_URL).connect() as c:
            c.execute(text("SELECT 1"))
    except OperationalError as e:
        pytest.skip(f"PostgreSQL not reachable: {e.orig}")
    return scratch_postgres(DEFAULT_ADMIN_URL, tag=tag)


@contextmanager
def store_engine(kind: str, tmp: Path, tag: str) -> Iterator[Engine]:
    """An open, migrated store of ``kind`` (``sqlite`` under ``tmp``, or ``postgresql``: a scratch
    database named by ``tag``, skipped when unreachable), disposed afterwards."""
    with scratch_postgres_or_skip(tag) if kind == "postgresql" else _sqlite_url(tmp) as url:
        engine = open_store(url)
        try:
            yield engine
        finally:
            engine.dispose()


@contextmanager
def _sqlite_url(tmp: Path) -> Iterator[str]:
    yield f"sqlite:///{tmp / 'store.db'}"


def run_at_once(fn: Callable[..., Any], calls: Sequence[tuple]) -> tuple[list[Any], list[Exception]]:
    """Run ``fn(*args)`` for each ``args`` in ``calls``, each on its own thread, all released
    together by a barrier so they really race. Returns (results, errors), in finishing order;
    an exception is collected, never swallowed: the caller asserts ``errors == []``."""
    start = threading.Barrier(len(calls))
    results: list[Any] = []
    errors: list[Exception] = []

    def run(args: tuple) -> None:
        start.wait()
        try:
            results.append(fn(*args))
        except Exception as e:  # returned to the caller, whose assert surfaces it
            errors.append(e)

    threads = [threading.Thread(target=run, args=(args,)) for args in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, errors


def migrate_at_once(url: str, n: int) -> tuple[list[Exception], list[str | None]]:
    """``n`` engines on one fresh database all run ``migrate`` at once. Returns the errors and
    the revision each engine sees afterwards; the engines are disposed."""
    engines = [make_engine(url) for _ in range(n)]
    try:
        _, errors = run_at_once(migrate, [(e,) for e in engines])
        return errors, [current_revision(e) for e in engines]
    finally:
        for e in engines:
            e.dispose()
