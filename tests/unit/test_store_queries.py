"""store.queries on a real SQLite store filled with sample trees; expected values are recomputed
from the TreeResults themselves, never hard-coded."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from sqlalchemy import select
from sqlalchemy.orm import aliased

from store.db import open_store
from store.models import NodeRow, TreeRow
from store.queries import (
    BadQueryError,
    NotFoundError,
    TreeFilter,
    count_trees,
    get_problem,
    get_tree,
    list_trees,
    stats,
    trajectories,
)
from store.sample_trees import sample_problem, sample_tree
from store.writer import upsert_trees


@pytest.fixture(scope="module")
def filled(tmp_path_factory):
    engine = open_store(f"sqlite:///{tmp_path_factory.mktemp('q') / 'store.db'}")
    rng = random.Random(7)
    problems = [sample_problem(rng) for _ in range(5)]
    trees = [
        sample_tree(rng, rng.randint(10, 60), round=i % 3, problem=problems[i % 5], policy_version=f"p{i % 2}")
        for i in range(24)
    ]
    upsert_trees(engine, trees)
    yield engine, trees, problems
    engine.dispose()


def test_stats_match_the_trees(filled):
    engine, trees, problems = filled
    s = stats(engine)
    assert s["problems"] == len(problems) and s["trees"] == len(trees)
    assert s["nodes"] == sum(len(t.nodes) for t in trees)
    assert s["solved_trees"] == sum(t.solved for t in trees)
    assert s["solved_problems"] == len({t.problem.id for t in trees if t.solved})
    by_round = {r["round"]: r for r in s["by_round"]}
    for rnd in range(3):
        ts = [t for t in trees if t.round == rnd]
        assert by_round[rnd]["trees"] == len(ts)
        assert by_round[rnd]["solved_trees"] == sum(t.solved for t in ts)
        assert by_round[rnd]["problems_searched"] == len({t.problem.id for t in ts})
    assert {r["policy_version"]: r["trees"] for r in s["by_policy_version"]} == dict(
        Counter(t.policy_version for t in trees)
    )


def test_list_trees_filters_and_paginates(filled):
    engine, trees, problems = filled
    want = {t.tree_id for t in trees if t.round == 1 and t.solved}
    rows, total = list_trees(engine, round_no=1, solved=True, limit=1000)
    assert total == len(want) and {r["id"] for r in rows} == want
    pages = [list_trees(engine, limit=5, offset=o)[0] for o in range(0, 30, 5)]
    ids = [r["id"] for p in pages for r in p]
    assert len(ids) == len(set(ids)) == len(trees)  # pages neither overlap nor skip
    rows, total = list_trees(engine, problem_id=problems[2].id)
    assert total == sum(t.problem.id == problems[2].id for t in trees)
    assert all(r["question"] == problems[2].question for r in rows)
    for bad in ({"limit": 0}, {"limit": 10_000}, {"offset": -1}):
        with pytest.raises(BadQueryError):
            list_trees(engine, **bad)


def test_get_tree_returns_every_node_in_idx_order(filled):
    engine, trees, _ = filled
    t = trees[5]
    row, nodes = get_tree(engine, t.tree_id)
    assert row["id"] == t.tree_id and row["gold"] == t.problem.answer
    assert [n["idx"] for n in nodes] == sorted(n.idx for n in t.nodes)
    with pytest.raises(NotFoundError) as e:
        get_tree(engine, "no-such-tree")
    assert e.value.kind == "tree"


def test_get_problem_counts_its_trees(filled):
    engine, trees, problems = filled
    p = get_problem(engine, problems[0].id)
    mine = [t for t in trees if t.problem.id == problems[0].id]
    assert (p["question"], p["trees"], p["solved_trees"]) == (
        problems[0].question,
        len(mine),
        sum(t.solved for t in mine),
    )
    with pytest.raises(NotFoundError):
        get_problem(engine, "nope")


def _paths(t):
    by = {n.idx: n for n in t.nodes}
    for leaf in t.nodes:
        if leaf.terminal:
            path, n = [], leaf
            while n.parent is not None:
                path.append(n)
                n = by[n.parent]
            yield leaf, path[::-1]


def test_trajectories_are_the_root_to_leaf_paths(filled):
    engine, trees, _ = filled
    want = {(t.tree_id, leaf.idx): steps for t in trees if t.round == 2 for leaf, steps in _paths(t)}
    got = list(trajectories(engine, TreeFilter(round=2), chunk=3))  # several chunks
    assert {(g["tree_id"], g["leaf_idx"]) for g in got} == set(want)
    for g in got:
        steps = want[(g["tree_id"], g["leaf_idx"])]
        assert g["steps"] == [s.text for s in steps]
        assert g["q"] == pytest.approx([s.q for s in steps]) and g["ppm"] == pytest.approx([s.ppm_score for s in steps])
        assert g["correct"] == steps[-1].correct and g["answer"] == steps[-1].answer
    correct = list(trajectories(engine, TreeFilter(round=2), only_correct=True))
    assert correct and len(correct) == sum(s[-1].correct is True for s in want.values())
    chunks = []
    list(trajectories(engine, TreeFilter(round=2), chunk=3, on_chunk=chunks.append))
    assert sum(chunks) == count_trees(engine, TreeFilter(round=2))


def test_correct_round_2_trajectories_with_third_step_ppm_below_zero_is_one_query(filled):
    """The design's example question, answered by one SQL statement (the one in store/models.py)."""
    engine, trees, _ = filled
    leaf, step = aliased(NodeRow), aliased(NodeRow)
    q = (
        select(leaf.tree_id, leaf.idx)
        .join(TreeRow, TreeRow.id == leaf.tree_id)
        .join(
            step,
            (step.tree_id == leaf.tree_id)
            & (step.depth == 3)
            & ((leaf.path == step.path) | leaf.path.startswith(step.path + ".")),
        )
        .where(TreeRow.round == 2, leaf.terminal, leaf.correct.is_(True), step.ppm_score < 0)
    )
    with engine.connect() as c:
        got = set(c.execute(q).all())
    want = {
        (t.tree_id, lf.idx)
        for t in trees
        if t.round == 2
        for lf, steps in _paths(t)
        if lf.correct is True and len(steps) >= 3 and steps[2].ppm_score < 0
    }
    assert want and got == want
