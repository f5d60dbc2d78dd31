"""store.writer on a real SQLite file: idempotent bulk upsert, validation, problems."""

from __future__ import annotations

import random

import msgspec
import pytest
from sqlalchemy import func, select
from store_helpers import run_at_once

from rstar.schemas import Node, Problem, TreeResult
from store.db import open_store
from store.models import NodeRow, ProblemRow, TreeRow
from store.sample_trees import sample_problem, sample_tree
from store.writer import InvalidProblemError, InvalidTreeError, check_tree, upsert_problems, upsert_trees


@pytest.fixture
def engine(tmp_path):
    e = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    yield e
    e.dispose()


def _count(engine, model) -> int:
    with engine.connect() as c:
        return c.scalar(select(func.count()).select_from(model))


def _trees(n: int, seed: int = 0, n_nodes: int = 30, **kw) -> list[TreeResult]:
    rng = random.Random(seed)
    return [sample_tree(rng, n_nodes, **kw) for _ in range(n)]


def test_upsert_writes_every_node_once_and_repeats_are_skipped(engine):
    trees = _trees(6)
    assert upsert_trees(engine, trees[:4]) == 4
    assert upsert_trees(engine, trees) == 2  # 4 already stored, skipped whole
    assert upsert_trees(engine, trees) == 0
    assert _count(engine, TreeRow) == 6
    assert _count(engine, NodeRow) == sum(len(t.nodes) for t in trees)
    assert _count(engine, ProblemRow) == len({t.problem.id for t in trees})


def test_duplicates_inside_one_batch_are_stored_once(engine):
    t = _trees(1)[0]
    assert upsert_trees(engine, [t, t, msgspec.structs.replace(t)]) == 1
    assert _count(engine, NodeRow) == len(t.nodes)


def test_stored_rows_carry_the_tree_and_node_fields(engine):
    t = _trees(1, n_nodes=12, round=3, policy_version="pv7", ppm_version="mv2")[0]
    upsert_trees(engine, [t])
    with engine.connect() as c:
        row = c.execute(select(TreeRow).where(TreeRow.id == t.tree_id)).one()._mapping
        nodes = {r.idx: r for r in c.execute(select(*NodeRow.__table__.c).where(NodeRow.tree_id == t.tree_id))}
    assert (row["round"], row["policy_version"], row["ppm_version"], row["solved"]) == (3, "pv7", "mv2", t.solved)
    assert row["n_nodes"] == 12 and row["max_depth"] == max(n.depth for n in t.nodes)
    assert abs(row["started_at"].timestamp() - t.started_at) < 1e-3 and row["started_at"].tzinfo is not None
    for n in t.nodes:
        r = nodes[n.idx]
        assert (r.parent_idx, r.depth, r.text, r.code_output, r.visits, r.terminal, r.correct, r.answer) == (
            n.parent,
            n.depth,
            n.text,
            n.code_output,
            n.visits,
            n.terminal,
            n.correct,
            n.answer,
        )
        assert r.q == pytest.approx(n.q) and r.ppm_score == pytest.approx(n.ppm_score)
        assert (r.policy_version, r.ppm_version) == ((n.policy_version, n.ppm_version) if n.idx else ("", ""))
        assert n.idx == 0 or (n.policy_version, n.ppm_version) == ("pv7", "mv2")
        parent_path = nodes[n.parent].path if n.parent is not None else None
        assert r.path == ("0" if n.idx == 0 else f"{parent_path}.{n.idx}")


def _tree(nodes: list[Node], **kw) -> TreeResult:
    p = Problem(id="t-1", source="t", question="q?", answer="1")
    return TreeResult(
        tree_id=kw.pop("tree_id", "tree-x"),
        problem=p,
        actor_id="a",
        policy_version="p",
        ppm_version="m",
        started_at=1.0,
        finished_at=2.0,
        nodes=nodes,
        solved=False,
        **kw,
    )


@pytest.mark.parametrize(
    "nodes, reason",
    [
        ([], "no nodes"),
        ([Node(idx=1, parent=None, depth=0)], "node 0 must be the root"),
        ([Node(idx=0, parent=None, depth=0), Node(idx=1, parent=7, depth=1)], "parent 7 is not in the tree"),
        ([Node(idx=0, parent=None, depth=0), Node(idx=1, parent=0, depth=2)], "depth 2 but parent 0 has depth 0"),
        ([Node(idx=0, parent=None, depth=0), Node(idx=0, parent=None, depth=0)], "appears twice"),
        ([Node(idx=0, parent=None, depth=0, q=float("nan"))], "must be finite"),
        ([Node(idx=0, parent=None, depth=0, visits=2**31)], r"0\.\.2\*\*31-1"),
    ],
)
def test_malformed_trees_are_refused_naming_the_cause(engine, nodes, reason):
    good = _trees(1)[0]
    with pytest.raises(InvalidTreeError, match=reason) as e:
        upsert_trees(engine, [good, _tree(nodes)])
    assert e.value.tree_id == "tree-x"
    assert _count(engine, TreeRow) == 0  # nothing of the batch was written


@pytest.mark.parametrize(
    "kw, field", [({"tree_id": ""}, "tree_id"), ({"actor_id": "a" * 129}, "actor_id"), ({"source": "x" * 17}, "source")]
)
def test_identifiers_that_postgresql_would_refuse_are_refused_on_sqlite_too(kw, field):
    nodes = [Node(idx=0, parent=None, depth=0)]
    t = _tree(nodes, tree_id=kw.pop("tree_id", "tree-x"))
    t = msgspec.structs.replace(t, **kw)
    with pytest.raises(InvalidTreeError, match=field):
        check_tree(t)


def test_nul_characters_are_stored_as_replacement_characters(engine):
    nodes = [
        Node(idx=0, parent=None, depth=0),
        Node(idx=1, parent=0, depth=1, text="x = 1\x00", code_output="\x00\x00"),
    ]
    upsert_trees(engine, [_tree(nodes)])
    with engine.connect() as c:
        text, out = c.execute(select(NodeRow.text, NodeRow.code_output).where(NodeRow.idx == 1)).one()
    assert (text, out) == ("x = 1\ufffd", "\ufffd\ufffd")


def test_upsert_problems_stores_new_ones_and_never_overwrites(engine):
    rng = random.Random(1)
    ps = [sample_problem(rng) for _ in range(3)]
    assert upsert_problems(engine, ps) == 3
    changed = msgspec.structs.replace(ps[0], answer="different")
    assert upsert_problems(engine, [changed, ps[1]]) == 0
    with engine.connect() as c:
        assert c.scalar(select(ProblemRow.answer).where(ProblemRow.id == ps[0].id)) == ps[0].answer
    with pytest.raises(InvalidProblemError, match="source"):
        upsert_problems(engine, [msgspec.structs.replace(ps[0], source="s" * 200)])


def test_concurrent_writers_of_the_same_trees_store_each_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'race.db'}"
    trees = _trees(20, seed=3)
    engines = [open_store(url) for _ in range(3)]

    def write(e):
        return sum(upsert_trees(e, trees[i : i + 5]) for i in range(0, 20, 5))

    results, errors = run_at_once(write, [(e,) for e in engines])
    assert not errors and sum(results) == 20
    assert _count(engines[0], NodeRow) == sum(len(t.nodes) for t in trees)
    for e in engines:
        e.dispose()
