"""Alembic migrations of the rstar store; run them with store.db.migrate()."""
