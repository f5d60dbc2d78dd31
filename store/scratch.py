"""Throwaway PostgreSQL databases for tests and benchmarks, dropped when done.

    with scratch_postgres("postgresql+psycopg://postgres@127.0.0.1:5432/postgres") as url:
        engine = open_store(url)
        ...

Each call creates a database with a unique name (``rstar_<tag>_<random>``), so concurrent test
sessions and benchmarks on a shared server never see or drop each other's tables; on exit it is
dropped ``WITH (FORCE)``, which also ends connections a test left open. Needs a role allowed to
CREATE DATABASE. Nothing else on the server is touched.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import create_engine, text

DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"


@contextmanager
def scratch_postgres(admin_url: str = DEFAULT_ADMIN_URL, tag: str = "scratch") -> Iterator[str]:
    """Yield the URL of a fresh, empty database; drop it afterwards."""
    if not re.fullmatch(r"[a-z0-9_]{1,20}", tag):
        raise ValueError(f"tag {tag!r}: use 1-20 of a-z, 0-9, _")
    name = f"rstar_{tag}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        with admin.connect() as c:
            c.execute(text(f'CREATE DATABASE "{name}"'))  # name is ours: a tag and hex digits
        try:
            yield admin.url.set(database=name).render_as_string(hide_password=False)
        finally:
            with admin.connect() as c:
                c.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()
