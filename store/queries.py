"""Read the store: counts, tree listings, one tree with its nodes, rounds, checkpoints, trajectories.

    from store import queries
    queries.stats(engine)
    rows, total = queries.list_trees(engine, round_no=2, solved=True, limit=20)
    tree, nodes = queries.get_tree(engine, tree_id)

Every function takes a SQLAlchemy Engine, builds its SQL from SQLAlchemy expressions with bound
parameters (no SQL is ever assembled from caller strings), and returns JSON-ready values: dicts of
str/int/float/bool/None/list/dict, timestamps as ISO 8601 strings in UTC. Unknown ids raise
``NotFoundError``; out-of-range arguments raise ``BadQueryError`` naming the parameter.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, Text, case, cast, func, select

from store.models import CheckpointRow, NodeRow, PpmPairRow, ProblemRow, RoundRow, SftExampleRow, TreeRow

MAX_LIMIT = 1000


class NotFoundError(LookupError):
    """No ``kind`` row with id ``key``."""

    def __init__(self, kind: str, key: Any):
        self.kind, self.key = kind, key
        super().__init__(f"no {kind} with id {key!r}")


class BadQueryError(ValueError):
    """Argument ``param`` has a value the query cannot take."""

    def __init__(self, param: str, value: Any, reason: str):
        self.param, self.value = param, value
        super().__init__(f"{param}={value!r}: {reason}")


# A problem's curriculum level (``meta["level"]``: an int for ``rstar.curriculum``'s problems, any
# JSON value elsewhere, absent for most real sets), as JSON and as text to compare: the same text
# for the number 3 and the string "3" on SQLite and PostgreSQL.
_LEVEL = ProblemRow.meta["level"]
_LEVEL_TEXT = cast(_LEVEL.as_string(), Text)


def _jsonable(row) -> dict[str, Any]:
    return {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in row._mapping.items()}


@dataclass(frozen=True)
class TreeFilter:
    """Which trees: every field left None matches all."""

    round: int | None = None
    solved: bool | None = None
    problem_id: str | None = None
    source: str | None = None  # "search" or "teacher"
    level: str | None = None  # the problem's meta["level"] as text ("3" matches 3 and "3")

    def where(self) -> list:
        conds = []
        if self.round is not None:
            conds.append(TreeRow.round == self.round)
        if self.solved is not None:
            conds.append(TreeRow.solved.is_(self.solved))
        if self.problem_id is not None:
            conds.append(TreeRow.problem_id == self.problem_id)
        if self.source is not None:
            conds.append(TreeRow.source == self.source)
        if self.level is not None:
            conds.append(TreeRow.problem_id.in_(select(ProblemRow.id).where(_LEVEL_TEXT == self.level)))
        return conds


def _count_solved(col=TreeRow.solved):
    return func.coalesce(func.sum(case((col, 1), else_=0)), 0)


def _tree_counts(*group_by) -> Any:
    return select(
        *group_by,
        func.count().label("trees"),
        _count_solved().label("solved_trees"),
        func.coalesce(func.sum(TreeRow.n_nodes), 0).label("nodes"),
        func.count(func.distinct(TreeRow.problem_id)).label("problems_searched"),
        func.count(func.distinct(case((TreeRow.solved, TreeRow.problem_id)))).label("solved_problems"),
    )


def stats(engine: Engine) -> dict[str, Any]:
    """Totals, and the same per round and per policy version.

    ``nodes`` sums trees.n_nodes (written with each tree) instead of counting the nodes table,
    which would scan the store's biggest table on every call.
    """
    with engine.connect() as c:
        totals = _jsonable(c.execute(_tree_counts()).one())
        totals["problems"] = c.scalar(select(func.count()).select_from(ProblemRow))
        by_round = [
            _jsonable(r) for r in c.execute(_tree_counts(TreeRow.round).group_by(TreeRow.round).order_by(TreeRow.round))
        ]
        by_policy = [
            _jsonable(r)
            for r in c.execute(
                _tree_counts(TreeRow.policy_version)
                .group_by(TreeRow.policy_version)
                .order_by(func.min(TreeRow.finished_at))
            )
        ]
    # "problems" counts every stored problem; "problems_searched" those with at least one tree.
    return {**totals, "by_round": by_round, "by_policy_version": by_policy}


def _check_page(limit: int, offset: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise BadQueryError("limit", limit, f"must be between 1 and {MAX_LIMIT}")
    if offset < 0:
        raise BadQueryError("offset", offset, "must be >= 0")


_TREE_COLUMNS = [c for c in TreeRow.__table__.c]


def list_trees(
    engine: Engine,
    round_no: int | None = None,
    solved: bool | None = None,
    problem_id: str | None = None,
    limit: int = 50,
    offset: int = 0,
    source: str | None = None,
    level: str | None = None,
) -> tuple[list[dict[str, Any]], int]:
    """One page of trees, newest first, with each tree's question and its problem's level (None
    when its meta has none); and the total that match."""
    _check_page(limit, offset)
    where = TreeFilter(round_no, solved, problem_id, source, level).where()
    page = (
        select(*_TREE_COLUMNS, ProblemRow.question, _LEVEL.label("level"))
        .join(ProblemRow, ProblemRow.id == TreeRow.problem_id)
        .where(*where)
        .order_by(TreeRow.finished_at.desc(), TreeRow.id)
        .limit(limit)
        .offset(offset)
    )
    with engine.connect() as c:
        total = c.execute(select(func.count()).select_from(TreeRow).where(*where)).scalar_one()
        rows = [_jsonable(r) for r in c.execute(page)]
    return rows, total


_NODE_COLUMNS = [c for c in NodeRow.__table__.c if c.name != "tree_id"]


def get_tree(engine: Engine, tree_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The tree row (with its problem's question, gold answer and level) and all its nodes by idx.

    The row also says what training took from the tree: ``sft``, the trajectories data selection
    chose for a policy's SFT (``{"round", "leaf_idx", "avg_q"}``: the round trained on it and the
    leaf, whose ``path`` names the steps), and ``ppm_pairs``, the PPM's preference pairs
    (``{"round", "pos_idx", "neg_idx", "kind"}``: the preferred and the rejected step or
    trajectory end), oldest round first. A tree is only selected by its own round or later ones,
    so both reads start at the tree's round (the tables' round index).
    """
    with engine.connect() as c:
        tree = c.execute(
            select(*_TREE_COLUMNS, ProblemRow.question, ProblemRow.answer.label("gold"), _LEVEL.label("level"))
            .join(ProblemRow, ProblemRow.id == TreeRow.problem_id)
            .where(TreeRow.id == tree_id)
        ).one_or_none()
        if tree is None:
            raise NotFoundError("tree", tree_id)
        nodes = [
            _jsonable(r)
            for r in c.execute(select(*_NODE_COLUMNS).where(NodeRow.tree_id == tree_id).order_by(NodeRow.idx))
        ]
        sft, pair = SftExampleRow, PpmPairRow
        sft_rows = c.execute(
            select(sft.round, sft.leaf_idx, sft.avg_q)
            .where(sft.round >= tree.round, sft.tree_id == tree_id)
            .order_by(sft.round, sft.leaf_idx)
        )
        pair_rows = c.execute(
            select(pair.round, pair.pos_idx, pair.neg_idx, pair.kind)
            .where(pair.round >= tree.round, pair.tree_id == tree_id)
            .order_by(pair.round, pair.id)
        )
        training = {"sft": [_jsonable(r) for r in sft_rows], "ppm_pairs": [_jsonable(r) for r in pair_rows]}
    return _jsonable(tree) | training, nodes


def get_problem(engine: Engine, problem_id: str) -> dict[str, Any]:
    """The problem, with how many trees searched it and how many of those solved it."""
    with engine.connect() as c:
        row = c.execute(select(*ProblemRow.__table__.c).where(ProblemRow.id == problem_id)).one_or_none()
        if row is None:
            raise NotFoundError("problem", problem_id)
        counts = c.execute(
            select(func.count().label("trees"), _count_solved().label("solved_trees")).where(
                TreeRow.problem_id == problem_id
            )
        ).one()
    return {**_jsonable(row), **_jsonable(counts)}


def list_rounds(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as c:
        return [_jsonable(r) for r in c.execute(select(*RoundRow.__table__.c).order_by(RoundRow.round))]


def list_checkpoints(engine: Engine, kind: str | None = None, round_no: int | None = None) -> list[dict[str, Any]]:
    """Checkpoints oldest first; ``parent_id`` links each to the one it was trained from."""
    q = select(*CheckpointRow.__table__.c).order_by(CheckpointRow.id)
    if kind is not None:
        q = q.where(CheckpointRow.kind == kind)
    if round_no is not None:
        q = q.where(CheckpointRow.round == round_no)
    with engine.connect() as c:
        return [_jsonable(r) for r in c.execute(q)]


def count_trees(engine: Engine, filters: TreeFilter = TreeFilter()) -> int:
    with engine.connect() as c:
        return c.execute(select(func.count()).select_from(TreeRow).where(*filters.where())).scalar_one()


def trajectories(
    engine: Engine,
    filters: TreeFilter = TreeFilter(),
    *,
    only_correct: bool = False,
    chunk: int = 200,
    on_chunk: Callable[[int], None] | None = None,
) -> Iterator[dict[str, Any]]:
    """Every root→leaf path ending in a terminal node of the matching trees, tree by tree.

    Each item: tree_id, problem_id, round, question, gold, policy_version, leaf_idx, steps (texts,
    root excluded), q and ppm (per step, same length as steps), answer, correct. Trees are read
    ``chunk`` at a time (keyset on tree id), so memory stays flat on any store size; each chunk is
    its own short read, so trees written meanwhile may or may not appear. ``on_chunk(n)`` is called
    after the trajectories of each ``n`` trees have been yielded (for progress bars).
    """
    after = ""
    tree_q = (
        select(
            TreeRow.id,
            TreeRow.problem_id,
            TreeRow.round,
            TreeRow.policy_version,
            ProblemRow.question,
            ProblemRow.answer.label("gold"),
        )
        .join(ProblemRow, ProblemRow.id == TreeRow.problem_id)
        .where(*filters.where())
        .order_by(TreeRow.id)
        .limit(chunk)
    )
    node_cols = (
        NodeRow.tree_id,
        NodeRow.idx,
        NodeRow.path,
        NodeRow.text,
        NodeRow.q,
        NodeRow.ppm_score,
        NodeRow.terminal,
        NodeRow.correct,
        NodeRow.answer,
    )
    while True:
        with engine.connect() as c:
            trees = c.execute(tree_q.where(TreeRow.id > after)).all()
            if not trees:
                return
            nodes = c.execute(
                select(*node_cols)
                .where(NodeRow.tree_id.in_([t.id for t in trees]))
                .order_by(NodeRow.tree_id, NodeRow.idx)
            ).all()
        by_tree: dict[str, dict[int, Any]] = {}
        for n in nodes:
            by_tree.setdefault(n.tree_id, {})[n.idx] = n
        for t in trees:
            tree_nodes = by_tree.get(t.id, {})
            for leaf in tree_nodes.values():
                if not leaf.terminal or (only_correct and leaf.correct is not True):
                    continue
                steps = [tree_nodes[int(i)] for i in leaf.path.split(".")[1:]]
                yield {
                    "tree_id": t.id,
                    "problem_id": t.problem_id,
                    "round": t.round,
                    "question": t.question,
                    "gold": t.gold,
                    "policy_version": t.policy_version,
                    "leaf_idx": leaf.idx,
                    "steps": [s.text for s in steps],
                    "q": [s.q for s in steps],
                    "ppm": [s.ppm_score for s in steps],
                    "answer": leaf.answer,
                    "correct": leaf.correct,
                }
        after = trees[-1].id
        if on_chunk is not None:
            on_chunk(len(trees))
