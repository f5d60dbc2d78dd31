"""Writers and queries for the learner's tables: rounds, sft_examples, ppm_pairs, checkpoints.

    with learner_tables.begin(engine) as conn:          # one transaction
        learner_tables.replace_selection(conn, 2, sft_rows, pair_rows)
        learner_tables.advance(conn, 2, "collecting", "training_policy")

Guaranteed: ``replace_selection`` swaps a round's training rows as one unit (delete, then insert:
re-running selection for a round replaces its rows, never adds to them); ``advance`` changes a
round's state only from the state the caller saw, so a stale caller changes nothing (returns
False); ``add_checkpoint`` is idempotent on (kind, version) and returns the row's id either way;
``merge_eval`` writes a round's evaluation parts typed (``rstar.schemas.RoundEval``).
Values read are plain dicts and lists; timestamps are aware datetimes in UTC.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, case, delete, func, insert, select, update

from rstar.schemas import ModelRef, Node, Problem, RoundEval
from store.models import CheckpointRow, NodeRow, PpmPairRow, ProblemRow, RoundRow, SftExampleRow, TreeRow


@contextlib.contextmanager
def begin(engine: Engine) -> Iterator[Connection]:
    """A write transaction; on SQLite it takes the write lock up front (no upgrade deadlock)."""
    conn = engine.connect()
    if engine.dialect.name == "sqlite":
        conn = conn.execution_options(sqlite_begin="IMMEDIATE")
    with conn, conn.begin():
        yield conn


# --- rounds -------------------------------------------------------------------------------------
def get_round(engine: Engine, round_no: int) -> dict[str, Any] | None:
    with engine.connect() as c:
        row = c.execute(select(*RoundRow.__table__.c).where(RoundRow.round == round_no)).one_or_none()
    return dict(row._mapping) if row is not None else None


def last_round(engine: Engine) -> dict[str, Any] | None:
    """The round with the highest number (the one the controller works on), or None."""
    with engine.connect() as c:
        row = c.execute(select(*RoundRow.__table__.c).order_by(RoundRow.round.desc()).limit(1)).one_or_none()
    return dict(row._mapping) if row is not None else None


def unevaluated_round(engine: Engine) -> dict[str, Any] | None:
    """The newest published round whose ``eval`` has no ``accuracy`` yet, or None.

    Newest first: the serving pair's figures matter most, and a learner that falls behind
    (evaluation slower than rounds) still reports on its latest model; older rounds fill in later.
    """
    with engine.connect() as c:
        rows = c.execute(
            select(*RoundRow.__table__.c).where(RoundRow.state == "published").order_by(RoundRow.round.desc())
        ).all()
    return next((dict(r._mapping) for r in rows if "accuracy" not in (r.eval or {})), None)


def open_round(conn: Connection, round_no: int, quota: int) -> None:
    """Insert round ``round_no`` in state ``collecting`` unless it exists."""
    if conn.execute(select(RoundRow.round).where(RoundRow.round == round_no)).first() is None:
        conn.execute(
            insert(RoundRow).values(
                round=round_no, state="collecting", quota=quota, eval={}, started_at=datetime.now(UTC)
            )
        )


def advance(conn: Connection, round_no: int, expect: str, to: str, **values: Any) -> bool:
    """Move ``round_no`` from state ``expect`` to ``to`` (and set ``values``); False if not in ``expect``."""
    if to == "published":
        values.setdefault("closed_at", datetime.now(UTC))
    res = conn.execute(
        update(RoundRow).where(RoundRow.round == round_no, RoundRow.state == expect).values(state=to, **values)
    )
    return res.rowcount == 1


def merge_eval(conn: Connection, round_no: int, parts: RoundEval, clear: tuple[str, ...] = ()) -> dict[str, Any]:
    """Store the parts ``parts`` sets (``RoundEval.parts``: a part not of its type raises
    ``TypeError``) in the round's ``eval`` document, each replacing the stored part of its name,
    and remove the parts named in ``clear``; every other part stays as stored, so one stage never
    clobbers another's. Returns the document stored."""
    if unknown := set(clear) - set(RoundEval.__struct_fields__):
        raise ValueError(f"no such part of a round's eval: {sorted(unknown)}")
    cur = conn.execute(select(RoundRow.eval).where(RoundRow.round == round_no)).scalar_one()
    doc = {k: v for k, v in {**(cur or {}), **parts.parts()}.items() if k not in clear}
    conn.execute(update(RoundRow).where(RoundRow.round == round_no).values(eval=doc))
    return doc


# --- trees of a round -------------------------------------------------------------------------------
def tree_counts(engine: Engine, round_no: int) -> dict[str, int]:
    """Trees, solved trees, problems and solved problems of one round (all sources)."""
    solved = func.coalesce(func.sum(case((TreeRow.solved, 1), else_=0)), 0)
    q = select(func.count(), solved, func.count(func.distinct(TreeRow.problem_id))).where(TreeRow.round == round_no)
    sq = select(func.count(func.distinct(TreeRow.problem_id))).where(
        TreeRow.round == round_no, TreeRow.solved.is_(True)
    )
    with engine.connect() as c:
        trees, solved_trees, problems = c.execute(q).one()
        solved_problems = c.scalar(sq)
    return {"trees": trees, "solved_trees": int(solved_trees), "problems": problems, "solved_problems": solved_problems}


def trees_with_nodes(
    engine: Engine, rounds: list[int], chunk: int = 200
) -> Iterator[tuple[str, str, list[tuple[str, list[Node]]]]]:
    """Per problem with trees in ``rounds``: ``(problem_id, question, [(tree_id, nodes)])``.

    Problems come in id order, ``chunk`` at a time (keyset), so memory stays flat on any store.
    """
    after = ""
    cols = (
        NodeRow.tree_id,
        NodeRow.idx,
        NodeRow.parent_idx,
        NodeRow.depth,
        NodeRow.text,
        NodeRow.code_output,
        NodeRow.visits,
        NodeRow.q,
        NodeRow.ppm_score,
        NodeRow.terminal,
        NodeRow.correct,
        NodeRow.answer,
    )
    while True:
        with engine.connect() as c:
            pids = (
                c.execute(
                    select(TreeRow.problem_id)
                    .where(TreeRow.round.in_(rounds), TreeRow.problem_id > after)
                    .group_by(TreeRow.problem_id)
                    .order_by(TreeRow.problem_id)
                    .limit(chunk)
                )
                .scalars()
                .all()
            )
            if not pids:
                return
            trees = c.execute(
                select(TreeRow.id, TreeRow.problem_id, ProblemRow.question)
                .join(ProblemRow, ProblemRow.id == TreeRow.problem_id)
                .where(TreeRow.problem_id.in_(pids), TreeRow.round.in_(rounds))
                .order_by(TreeRow.problem_id, TreeRow.id)
            ).all()
            nodes = c.execute(
                select(*cols).where(NodeRow.tree_id.in_([t.id for t in trees])).order_by(NodeRow.tree_id, NodeRow.idx)
            ).all()
        by_tree: dict[str, list[Node]] = {}
        for n in nodes:
            by_tree.setdefault(n.tree_id, []).append(
                Node(
                    idx=n.idx,
                    parent=n.parent_idx,
                    depth=n.depth,
                    text=n.text,
                    code_output=n.code_output,
                    visits=n.visits,
                    q=n.q,
                    ppm_score=n.ppm_score,
                    terminal=n.terminal,
                    correct=n.correct,
                    answer=n.answer,
                )
            )
        for pid in pids:
            ts = [t for t in trees if t.problem_id == pid]
            yield pid, ts[0].question, [(t.id, by_tree.get(t.id, [])) for t in ts]
        after = pids[-1]


def unsolved_problems(engine: Engine, round_no: int, below_rollouts: int) -> list[Problem]:
    """Problems searched in ``round_no`` (source ``search``) that no tree solved, each of whose trees
    used fewer than ``below_rollouts`` rollouts."""
    solved = func.max(case((TreeRow.solved, 1), else_=0))
    ids = (
        select(TreeRow.problem_id)
        .where(TreeRow.round == round_no, TreeRow.source == "search")
        .group_by(TreeRow.problem_id)
        .having(solved == 0, func.max(TreeRow.rollouts) < below_rollouts)
    )
    q = (
        select(ProblemRow.id, ProblemRow.source, ProblemRow.question, ProblemRow.answer, ProblemRow.meta)
        .where(ProblemRow.id.in_(ids.scalar_subquery()))
        .order_by(ProblemRow.id)
    )
    with engine.connect() as c:
        return [
            Problem(id=r.id, source=r.source, question=r.question, answer=r.answer, meta=dict(r.meta or {}))
            for r in c.execute(q)
        ]


# --- training rows ------------------------------------------------------------------------------
def replace_selection(conn: Connection, round_no: int, sft: list[dict[str, Any]], pairs: list[dict[str, Any]]) -> None:
    """Replace round ``round_no``'s sft_examples and ppm_pairs with these rows (their ``round`` is set here)."""
    conn.execute(delete(SftExampleRow).where(SftExampleRow.round == round_no))
    conn.execute(delete(PpmPairRow).where(PpmPairRow.round == round_no))
    if sft:
        conn.execute(insert(SftExampleRow), [{**r, "round": round_no} for r in sft])
    if pairs:
        conn.execute(insert(PpmPairRow), [{**r, "round": round_no} for r in pairs])


def sft_rows(engine: Engine, round_no: int) -> list[dict[str, Any]]:
    """The round's SFT rows with each tree's question and source, in id order."""
    t = SftExampleRow
    return _round_rows(engine, t, round_no, t.id, t.tree_id, t.leaf_idx, t.text, t.avg_q, TreeRow.source)


def pair_rows(engine: Engine, round_no: int) -> list[dict[str, Any]]:
    """The round's PPM pair rows with each tree's question, in id order."""
    t = PpmPairRow
    cols = (t.id, t.tree_id, t.pos_idx, t.neg_idx, t.prompt, t.pos_text, t.neg_text, t.kind)
    return _round_rows(engine, t, round_no, *cols)


def _round_rows(
    engine: Engine, table: type[SftExampleRow] | type[PpmPairRow], round_no: int, *cols: Any
) -> list[dict[str, Any]]:
    """``cols`` of ``table``'s rows of round ``round_no`` and each one's tree's question, in id order."""
    q = (
        select(*cols, ProblemRow.question)
        .join(TreeRow, TreeRow.id == table.tree_id)
        .join(ProblemRow, ProblemRow.id == TreeRow.problem_id)
        .where(table.round == round_no)
        .order_by(table.id)
    )
    with engine.connect() as c:
        return [dict(r._mapping) for r in c.execute(q)]


# --- checkpoints --------------------------------------------------------------------------------
def add_checkpoint(
    conn: Connection,
    ref: ModelRef,
    *,
    round_no: int,
    kind: str,
    metrics: dict[str, Any],
    parent_id: int | None = None,
    base: str | None = None,
) -> int:
    """Record the published model ``ref`` (idempotent on kind+version); returns its row id."""
    found = conn.execute(
        select(CheckpointRow.id).where(CheckpointRow.kind == kind, CheckpointRow.version == ref.version)
    ).scalar_one_or_none()
    if found is not None:
        return found
    return conn.execute(
        insert(CheckpointRow)
        .values(
            round=round_no,
            kind=kind,
            version=ref.version,
            object=ref.object,
            sha256=ref.sha256,
            metrics=metrics,
            parent_id=parent_id,
            base=base,
            created_at=datetime.now(UTC),
        )
        .returning(CheckpointRow.id)
    ).scalar_one()
