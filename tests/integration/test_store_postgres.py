"""The store on a real PostgreSQL (127.0.0.1:5432): migrations, COPY writer, races, queries.

Each module works in its own scratch database (``store.scratch``), dropped afterwards, so it
never touches other sessions' tables. Skipped, with the reason, when PostgreSQL is not reachable.
"""

from __future__ import annotations

import os
import random

import msgspec
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, func, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import aliased
from store_helpers import migrate_at_once, run_at_once

from rstar.schemas import Node, Problem, TreeResult
from store.db import current_revision, head_revision, open_store
from store.models import Base, NodeRow, TreeRow
from store.queries import TreeFilter, get_tree, list_trees, stats, trajectories
from store.sample_trees import sample_problem, sample_tree
from store.scratch import DEFAULT_ADMIN_URL, scratch_postgres
from store.writer import upsert_trees

ADMIN_URL = os.environ.get("RSTAR_TEST_PG_ADMIN_URL", DEFAULT_ADMIN_URL)


def _require_postgres() -> None:
    try:
        with create_engine(ADMIN_URL).connect() as c:
            c.execute(text("SELECT 1"))
    except OperationalError as e:
        pytest.skip(f"PostgreSQL not reachable at {ADMIN_URL}: {e.orig}")


@pytest.fixture(scope="module")
def pg_url():
    _require_postgres()
    with scratch_postgres(ADMIN_URL, tag="test_store") as url:
        yield url


@pytest.fixture
def fresh_pg_url():
    _require_postgres()
    with scratch_postgres(ADMIN_URL, tag="test_store") as url:
        yield url


@pytest.fixture(scope="module")
def engine(pg_url):
    e = open_store(pg_url)
    yield e
    e.dispose()


def test_migrated_schema_equals_the_models(engine):
    with engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    assert current_revision(engine) == head_revision()


def test_writers_migrating_one_fresh_database_at_once_all_succeed(fresh_pg_url):
    errors, revisions = migrate_at_once(fresh_pg_url, 3)
    assert errors == []
    assert revisions == [head_revision()] * 3


def test_copy_writer_round_trips_awkward_text_and_nulls(engine):
    awkward = "tab\there\nnew line \\N back\\slash \"quotes\" 'single' ünïcødé ∑ \x00 end"
    nodes = [
        Node(idx=0, parent=None, depth=0),
        Node(idx=1, parent=0, depth=1, text=awkward, code_output="\\.\n", ppm_score=None, correct=None),
        Node(idx=2, parent=1, depth=2, text="", terminal=True, correct=False, answer=None, q=-1.0),
    ]
    t = TreeResult(
        tree_id="awkward",
        problem=Problem(id="aw-1", source="aw", question=awkward, meta={"k": [1, "x"]}),
        actor_id="a",
        policy_version="p",
        ppm_version="",
        started_at=1.5e9,
        finished_at=1.5e9 + 1,
        nodes=nodes,
        solved=False,
    )
    assert upsert_trees(engine, [t]) == 1
    row, got = get_tree(engine, "awkward")
    assert row["question"] == awkward.replace("\x00", "\ufffd")
    assert got[1]["text"] == awkward.replace("\x00", "\ufffd") and got[1]["code_output"] == "\\.\n"
    assert got[1]["ppm_score"] is None and got[1]["correct"] is None and got[2]["answer"] is None
    assert (got[2]["terminal"], got[2]["correct"], got[2]["q"], got[2]["path"]) == (True, False, -1.0, "0.1.2")


def test_repeats_and_racing_writers_store_each_tree_once(fresh_pg_url):
    trees = [sample_tree(random.Random(i), 40, round=1) for i in range(30)]
    engines = [open_store(fresh_pg_url) for _ in range(3)]

    def write(e, order):
        return sum(upsert_trees(e, [trees[i] for i in order[k : k + 10]]) for k in range(0, 30, 10))

    orders = [list(range(30)), list(range(29, -1, -1)), random.Random(5).sample(range(30), 30)]
    results, errors = run_at_once(write, list(zip(engines, orders)))
    assert not errors, errors
    assert sum(results) == 30
    assert upsert_trees(engines[0], trees) == 0
    with engines[0].connect() as c:
        assert c.scalar(select(func.count()).select_from(NodeRow)) == 30 * 40
        assert c.scalar(select(func.count()).select_from(TreeRow)) == 30
    for e in engines:
        e.dispose()


def test_queries_agree_with_the_trees(fresh_pg_url):
    engine = open_store(fresh_pg_url)
    rng = random.Random(3)
    problems = [sample_problem(rng) for _ in range(4)]
    trees = [sample_tree(rng, rng.randint(15, 50), round=i % 3, problem=problems[i % 4]) for i in range(18)]
    upsert_trees(engine, trees)
    s = stats(engine)
    assert (s["trees"], s["nodes"], s["solved_trees"]) == (
        18,
        sum(len(t.nodes) for t in trees),
        sum(t.solved for t in trees),
    )
    rows, total = list_trees(engine, round_no=2, solved=False)
    assert total == sum(t.round == 2 and not t.solved for t in trees) == len(rows)
    n_correct = sum(n.terminal and n.correct is True for t in trees if t.round == 0 for n in t.nodes)
    assert len(list(trajectories(engine, TreeFilter(round=0), only_correct=True, chunk=4))) == n_correct
    leaf, step = aliased(NodeRow), aliased(NodeRow)
    q = (
        select(func.count())
        .select_from(leaf)
        .join(TreeRow, TreeRow.id == leaf.tree_id)
        .join(
            step,
            (step.tree_id == leaf.tree_id)
            & (step.depth == 3)
            & ((leaf.path == step.path) | leaf.path.startswith(step.path + ".")),
        )
        .where(TreeRow.round == 2, leaf.terminal, leaf.correct.is_(True), step.ppm_score < 0)
    )
    want = 0
    for t in trees:
        by = {n.idx: n for n in t.nodes}
        for n in t.nodes:
            if t.round == 2 and n.terminal and n.correct is True and n.depth >= 3:
                a = n
                while a.depth > 3:
                    a = by[a.parent]
                want += a.ppm_score < 0
    with engine.connect() as c:
        assert c.scalar(q) == want
    engine.dispose()


def test_json_meta_is_stored_as_jsonb(engine):
    t = sample_tree(random.Random(9), 5)
    t = msgspec.structs.replace(t, problem=msgspec.structs.replace(t.problem, meta={"level": 3, "tags": ["a"]}))
    upsert_trees(engine, [t])
    with engine.connect() as c:
        assert c.execute(text("SELECT meta->>'level' FROM problems WHERE id = :i"), {"i": t.problem.id}).scalar() == "3"
