"""The SQL schema of the trajectory store (SQLAlchemy 2 declarative tables).

Seven tables: ``problems``, ``trees``, ``nodes`` (one row per search step), ``checkpoints``,
``rounds``, ``sft_examples`` and ``ppm_pairs``. The same classes serve SQLite and PostgreSQL;
the schema itself is created and changed only by the Alembic migrations in ``store/migrations``
(``store.db.migrate``), never by ``metadata.create_all``, so a live database and this file cannot
drift apart unnoticed (``tests/unit/test_store_migrations.py`` compares them).

A node is keyed by ``(tree_id, idx)``. Besides its parent it carries ``path``, the chain of idx
from the root (``"0.3.7"``), so that questions about a trajectory's k-th step are a plain join
instead of a recursive walk. "Every correct trajectory of round 2 whose third step the PPM scored
below 0" is one query::

    leaf, step = aliased(NodeRow), aliased(NodeRow)
    select(leaf.tree_id, leaf.idx).join(TreeRow, TreeRow.id == leaf.tree_id).join(
        step, (step.tree_id == leaf.tree_id) & (step.depth == 3)
        & ((leaf.path == step.path) | leaf.path.startswith(step.path + ".")),
    ).where(TreeRow.round == 2, leaf.terminal, leaf.correct.is_(True), step.ppm_score < 0)

Timestamps are stored timezone-aware and always read back as UTC (SQLite keeps no zone).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    func,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

# JSONB on PostgreSQL (indexable, compact); plain JSON text on SQLite.
JsonDoc = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator):
    """A timestamp that goes in as any aware datetime and always comes back aware, in UTC."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: store only timezone-aware times")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    # Deterministic constraint names, the same on SQLite and PostgreSQL, so later migrations
    # can drop or alter them by name.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class ProblemRow(Base):
    __tablename__ = "problems"

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    source: Mapped[str] = mapped_column(String(128), index=True)
    question: Mapped[str] = mapped_column(Text)
    answer: Mapped[str | None] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column(JsonDoc, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())


class TreeRow(Base):
    __tablename__ = "trees"
    __table_args__ = (
        # The listing and stats queries: by round (and solved), by problem, by model version.
        Index("ix_trees_round_solved", "round", "solved"),
        Index("ix_trees_problem_id", "problem_id"),
        Index("ix_trees_policy_version", "policy_version"),
        Index("ix_trees_finished_at", "finished_at"),  # newest-first listing
    )

    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    problem_id: Mapped[str] = mapped_column(ForeignKey("problems.id"))
    actor_id: Mapped[str] = mapped_column(String(128))
    policy_version: Mapped[str] = mapped_column(String(128))
    ppm_version: Mapped[str] = mapped_column(String(128))
    round: Mapped[int] = mapped_column(Integer)
    source: Mapped[str] = mapped_column(String(16))
    """"search" (MCTS) or "teacher" (bootstrap demonstrations)."""
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)
    solved: Mapped[bool] = mapped_column(Boolean)
    best_answer: Mapped[str | None] = mapped_column(Text)
    rollouts: Mapped[int] = mapped_column(Integer)
    n_nodes: Mapped[int] = mapped_column(Integer)
    max_depth: Mapped[int] = mapped_column(Integer)
    ingested_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())


class NodeRow(Base):
    __tablename__ = "nodes"
    # The primary key (tree_id, idx) is also the "nodes of a tree" index.

    tree_id: Mapped[str] = mapped_column(ForeignKey("trees.id", ondelete="CASCADE"), primary_key=True)
    idx: Mapped[int] = mapped_column(Integer, primary_key=True)
    parent_idx: Mapped[int | None] = mapped_column(Integer)
    depth: Mapped[int] = mapped_column(Integer)
    path: Mapped[str] = mapped_column(Text)
    """idx of every ancestor and the node itself, root first, joined by dots: ``"0.3.7"``."""
    text: Mapped[str] = mapped_column(Text)
    code_output: Mapped[str] = mapped_column(Text)
    q: Mapped[float] = mapped_column(Float)
    visits: Mapped[int] = mapped_column(Integer)
    ppm_score: Mapped[float | None] = mapped_column(Float)
    terminal: Mapped[bool] = mapped_column(Boolean)
    correct: Mapped[bool | None] = mapped_column(Boolean)
    answer: Mapped[str | None] = mapped_column(Text)
    policy_version: Mapped[str] = mapped_column(String(128))
    ppm_version: Mapped[str] = mapped_column(String(128))
    gen_tokens: Mapped[int] = mapped_column(Integer)


class CheckpointRow(Base):
    __tablename__ = "checkpoints"
    __table_args__ = (UniqueConstraint("kind", "version"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round: Mapped[int] = mapped_column(Integer, index=True)
    kind: Mapped[str] = mapped_column(String(16))
    """"policy" or "ppm"."""
    version: Mapped[str] = mapped_column(String(128))
    object: Mapped[str] = mapped_column(Text)
    """Object Store name (or URI on shared storage) of the weights."""
    sha256: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(JsonDoc, default=dict)
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("checkpoints.id"))
    """The checkpoint this one was trained from (lineage is the chain of parents)."""
    base: Mapped[str | None] = mapped_column(Text)
    """The base model it was fine-tuned from, when not from a stored checkpoint."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())


class RoundRow(Base):
    __tablename__ = "rounds"

    round: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    state: Mapped[str] = mapped_column(String(32))
    """e.g. "collecting", "training", "evaluating", "closed" (set by the round controller)."""
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
    closed_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    quota: Mapped[int] = mapped_column(Integer)
    """Trees to collect before training starts."""
    eval: Mapped[dict[str, Any]] = mapped_column(JsonDoc, default=dict)
    """Evaluation figures: greedy/majority/mcts accuracy, PPM pairwise accuracy, …"""
    policy_version: Mapped[str | None] = mapped_column(String(128))
    ppm_version: Mapped[str | None] = mapped_column(String(128))


class SftExampleRow(Base):
    __tablename__ = "sft_examples"
    __table_args__ = (
        ForeignKeyConstraint(["tree_id", "leaf_idx"], ["nodes.tree_id", "nodes.idx"], ondelete="CASCADE"),
        UniqueConstraint("round", "tree_id", "leaf_idx"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round: Mapped[int] = mapped_column(Integer, index=True)
    """The round whose policy is trained on it."""
    tree_id: Mapped[str] = mapped_column(String(128), index=True)  # a tree's page: what it trained
    leaf_idx: Mapped[int] = mapped_column(Integer)
    """The trajectory's terminal node; its ``path`` names every step."""
    text: Mapped[str] = mapped_column(Text)
    avg_q: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())


class PpmPairRow(Base):
    __tablename__ = "ppm_pairs"
    __table_args__ = (
        ForeignKeyConstraint(["tree_id", "pos_idx"], ["nodes.tree_id", "nodes.idx"], ondelete="CASCADE"),
        ForeignKeyConstraint(["tree_id", "neg_idx"], ["nodes.tree_id", "nodes.idx"], ondelete="CASCADE"),
        UniqueConstraint("round", "tree_id", "pos_idx", "neg_idx"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    round: Mapped[int] = mapped_column(Integer, index=True)
    tree_id: Mapped[str] = mapped_column(String(128), index=True)
    pos_idx: Mapped[int] = mapped_column(Integer)
    neg_idx: Mapped[int] = mapped_column(Integer)
    prompt: Mapped[str] = mapped_column(Text)
    """Question plus the shared prefix of steps."""
    pos_text: Mapped[str] = mapped_column(Text)
    neg_text: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(8))
    """"step" (sibling steps) or "final" (whole trajectories)."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, server_default=func.now())
