"""Write search trees (and problems) into the store: bulk, idempotent, one transaction per call.

    from store.writer import upsert_trees
    n_new = upsert_trees(engine, batch)      # batch: Sequence[rstar.schemas.TreeResult]

This is the hot path of ingest. Guarantees:

- **Idempotent, keyed by tree id.** A tree already stored is skipped whole; its nodes are never
  written twice. Repeating a batch, or two ingest processes racing on the same tree, stores each
  tree exactly once: the tree row is inserted with ``ON CONFLICT DO NOTHING … RETURNING id`` and
  only the trees that came back get their nodes inserted, inside the same transaction, so the
  loser of a race sees the conflict (PostgreSQL waits for the winner's commit) and writes nothing.
- **All or nothing.** One transaction per call: problems, trees and nodes commit together or not
  at all; an ingest consumer acks its messages only after this returns.
- **Bad trees are refused before anything is written.** ``check_tree`` (also run on every tree
  here) raises ``InvalidTreeError`` naming the tree and the node, so a consumer can validate each
  message as it decodes it and dead-letter the bad one instead of failing a whole batch.

Problems are inserted if new and never overwritten (a problem's id is a hash of its content).
Problem and tree rows go through SQLAlchemy Core inserts (``ON CONFLICT DO NOTHING`` of the
dialect, executemany). Nodes, the bulk, skip SQLAlchemy's per-row parameter processing: on SQLite
the driver's executemany takes plain tuples; on PostgreSQL they are streamed with ``COPY``, safe
because their trees are new in this very transaction, and faster than Core's multi-row INSERT. NUL characters in step text, code output and
answers, which PostgreSQL text cannot hold, are stored as U+FFFD on both backends. Figures:
``benchmarks/store_write.py``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from sqlalchemy import Connection, Engine
from sqlalchemy.dialects import postgresql, sqlite

from rstar.schemas import Problem, TreeResult
from store.models import ProblemRow, TreeRow

NODE_COLUMNS = (
    "tree_id",
    "idx",
    "parent_idx",
    "depth",
    "path",
    "text",
    "code_output",
    "q",
    "visits",
    "ppm_score",
    "terminal",
    "correct",
    "answer",
    "policy_version",
    "ppm_version",
    "gen_tokens",
)


_SQLITE_NODE_INSERT = f"INSERT INTO nodes ({', '.join(NODE_COLUMNS)}) VALUES ({', '.join('?' * len(NODE_COLUMNS))})"


class InvalidProblemError(ValueError):
    """A Problem that cannot be stored as it is."""

    def __init__(self, problem_id: str, reason: str):
        self.problem_id, self.reason = problem_id, reason
        super().__init__(f"problem {problem_id!r}: {reason}")


class InvalidTreeError(ValueError):
    """A TreeResult that cannot be stored as it is; ``tree_id`` and ``reason`` say which and why."""

    def __init__(self, tree_id: str, reason: str):
        self.tree_id, self.reason = tree_id, reason
        super().__init__(f"tree {tree_id!r}: {reason}")


_INT32 = 2**31 - 1


def _clean(text: str | None) -> str | None:
    # PostgreSQL text cannot hold NUL; sandboxed code can print one. Store U+FFFD instead, on
    # both backends, rather than refuse the whole tree.
    return text.replace("\x00", "\ufffd") if text and "\x00" in text else text


def _bad_name(value: str, max_len: int = 128) -> bool:
    return not 0 < len(value) <= max_len or "\x00" in value


def _name(tree_id: str, field: str, value: str, max_len: int = 128) -> None:
    if _bad_name(value, max_len):
        raise InvalidTreeError(tree_id, f"{field}={value[:40]!r}: must be 1..{max_len} characters, no NUL")


def check_problem(p: Problem) -> None:
    """Refuse a problem PostgreSQL would refuse: id and source 1..128 characters, NUL in meta."""
    for field, value in (("id", p.id), ("source", p.source)):
        if _bad_name(value):
            raise InvalidProblemError(p.id, f"{field}={value[:40]!r}: must be 1..128 characters, no NUL")
    if "\\u0000" in msgspec.json.encode(p.meta).decode():
        raise InvalidProblemError(p.id, "meta holds a NUL character")


def _time(tree_id: str, name: str, t: float) -> datetime:
    if not math.isfinite(t) or not 0 <= t < 1e11:
        raise InvalidTreeError(tree_id, f"{name}={t!r} is not a unix time")
    return datetime.fromtimestamp(t, tz=UTC)


def check_tree(tree: TreeResult) -> list[tuple]:
    """Validate the tree; return its node rows (tuples in ``NODE_COLUMNS`` order).

    Shape: one root (idx 0, no parent, depth 0); idx unique; every parent present; depth =
    parent's + 1 (which also rules out cycles); nodes may come in any order. Values: ids and
    versions 1..128 characters, q and PPM scores finite, integers within 32 bits, times plausible,
    so that PostgreSQL and SQLite accept exactly the same trees.
    """
    tid = tree.tree_id
    _name(tid, "tree_id", tid)
    try:
        check_problem(tree.problem)
    except InvalidProblemError as e:
        raise InvalidTreeError(tid, f"problem: {e.reason}") from None
    _name(tid, "actor_id", tree.actor_id)
    _name(tid, "source", tree.source, 16)
    for field, v in (("policy_version", tree.policy_version), ("ppm_version", tree.ppm_version)):
        if v:
            _name(tid, field, v)
    if not tree.nodes:
        raise InvalidTreeError(tid, "no nodes")
    by_idx = {}
    for n in tree.nodes:
        if n.idx in by_idx:
            raise InvalidTreeError(tid, f"node idx {n.idx} appears twice")
        by_idx[n.idx] = n
    root = by_idx.get(0)
    if root is None or root.parent is not None or root.depth != 0:
        raise InvalidTreeError(tid, "node 0 must be the root (parent None, depth 0)")
    paths: dict[int, str] = {0: "0"}
    rows = []
    versions = set()
    for n in sorted(tree.nodes, key=lambda n: n.depth):  # parents before children
        if n.idx != 0:
            parent = by_idx.get(n.parent) if n.parent is not None else None
            if parent is None:
                raise InvalidTreeError(tid, f"node {n.idx}: parent {n.parent!r} is not in the tree")
            if n.depth != parent.depth + 1:
                raise InvalidTreeError(
                    tid, f"node {n.idx}: depth {n.depth} but parent {n.parent} has depth {parent.depth}"
                )
            paths[n.idx] = f"{paths[parent.idx]}.{n.idx}"
        if not (math.isfinite(n.q) and (n.ppm_score is None or math.isfinite(n.ppm_score))):
            raise InvalidTreeError(tid, f"node {n.idx}: q={n.q!r} / ppm_score={n.ppm_score!r} must be finite")
        if not (0 <= n.idx <= _INT32 and 0 <= n.visits <= _INT32 and 0 <= n.gen_tokens <= _INT32):
            raise InvalidTreeError(tid, f"node {n.idx}: idx, visits and gen_tokens must be 0..2**31-1")
        versions.add(n.policy_version)
        versions.add(n.ppm_version)
        rows.append(
            (
                tid,
                n.idx,
                n.parent,
                n.depth,
                paths[n.idx],
                _clean(n.text),
                _clean(n.code_output),
                n.q,
                n.visits,
                n.ppm_score,
                n.terminal,
                n.correct,
                _clean(n.answer),
                n.policy_version,
                n.ppm_version,
                n.gen_tokens,
            )
        )
    for v in versions - {""}:
        _name(tid, "node policy/ppm version", v)
    if not (0 <= tree.round <= _INT32 and 0 <= tree.rollouts <= _INT32):
        raise InvalidTreeError(tid, f"round={tree.round} / rollouts={tree.rollouts} must be 0..2**31-1")
    _time(tid, "started_at", tree.started_at)
    _time(tid, "finished_at", tree.finished_at)
    return rows


def _tree_row(tree: TreeResult) -> dict[str, Any]:
    return {
        "id": tree.tree_id,
        "problem_id": tree.problem.id,
        "actor_id": tree.actor_id,
        "policy_version": tree.policy_version,
        "ppm_version": tree.ppm_version,
        "round": tree.round,
        "source": tree.source,
        "started_at": _time(tree.tree_id, "started_at", tree.started_at),
        "finished_at": _time(tree.tree_id, "finished_at", tree.finished_at),
        "solved": tree.solved,
        "best_answer": _clean(tree.best_answer),
        "rollouts": tree.rollouts,
        "n_nodes": len(tree.nodes),
        "max_depth": max(n.depth for n in tree.nodes),
    }


def _problem_row(p: Problem) -> dict[str, Any]:
    return {"id": p.id, "source": p.source, "question": _clean(p.question), "answer": _clean(p.answer), "meta": p.meta}


def _insert(conn: Connection, model):
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert(model)


def _begin(engine: Engine) -> Connection:
    conn = engine.connect()
    # SQLite: take the write lock up front (waits on busy_timeout) rather than upgrading later.
    return conn.execution_options(sqlite_begin="IMMEDIATE") if engine.dialect.name == "sqlite" else conn


def _insert_problems(conn: Connection, problems: Sequence[Problem]) -> int:
    # Sorted by key, as are trees: writers racing on overlapping batches then take row locks in
    # one global order and cannot deadlock (PostgreSQL did, unsorted, in the race test).
    rows = [_problem_row(p) for _, p in sorted({p.id: p for p in problems}.items())]  # callers checked them
    if not rows:
        return 0
    stmt = _insert(conn, ProblemRow).on_conflict_do_nothing(index_elements=["id"]).returning(ProblemRow.id)
    return len(conn.execute(stmt, rows).all())


def upsert_problems(engine: Engine, problems: Sequence[Problem]) -> int:
    """Store problems not yet stored (by id); returns how many were new. One transaction.

    Raises ``InvalidProblemError`` before writing anything if any problem is malformed.
    """
    for p in problems:
        check_problem(p)
    with _begin(engine) as conn, conn.begin():
        return _insert_problems(conn, problems)


def _copy_nodes(conn: Connection, rows: list[tuple]) -> None:
    driver = conn.connection.driver_connection
    if driver is None:
        raise RuntimeError("COPY needs the psycopg connection under the pool's, and it is closed")
    cursor = driver.cursor()
    with cursor.copy(f"COPY nodes ({', '.join(NODE_COLUMNS)}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def upsert_trees(engine: Engine, trees: Sequence[TreeResult]) -> int:
    """Store every tree not yet stored, with its problem and all its nodes, in one transaction.

    Returns the number of trees newly written (the rest were already there and were skipped).
    Raises ``InvalidTreeError`` before writing anything if any tree is malformed.
    """
    unique: dict[str, TreeResult] = {}
    for t in trees:  # a batch may carry a redelivered duplicate: keep the first
        unique.setdefault(t.tree_id, t)
    if not unique:
        return 0
    node_rows = {tid: check_tree(t) for tid, t in unique.items()}
    tree_rows = [_tree_row(unique[tid]) for tid in sorted(unique)]  # lock order: see _insert_problems
    with _begin(engine) as conn, conn.begin():
        _insert_problems(conn, [t.problem for t in unique.values()])
        stmt = _insert(conn, TreeRow).on_conflict_do_nothing(index_elements=["id"]).returning(TreeRow.id)
        new = [tid for (tid,) in conn.execute(stmt, tree_rows)]
        rows = [r for tid in new for r in node_rows[tid]]
        if rows:
            if conn.dialect.name == "postgresql":
                _copy_nodes(conn, rows)
            else:
                # Straight to the driver's executemany with tuples: SQLAlchemy's per-row parameter
                # processing cost more than SQLite's own insert work (profiled).
                conn.exec_driver_sql(_SQLITE_NODE_INSERT, rows)
    return len(new)
