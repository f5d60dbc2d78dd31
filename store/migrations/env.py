"""Alembic environment for the rstar store: always run through ``store.db.migrate``.

The connection (already inside a transaction that ``migrate`` holds, with its lock) comes in
``config.attributes["connection"]``; offline SQL generation is not supported.
"""

from alembic import context

from store.models import Base

connection = context.config.attributes.get("connection")
if context.is_offline_mode() or connection is None:
    raise RuntimeError("rstar store migrations run online through store.db.migrate(engine)")

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
