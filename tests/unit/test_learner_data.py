"""learner.data on a real SQLite store: the paper's examples, traceable rows, idempotent per round."""

from __future__ import annotations

import time

import msgspec
import pytest
from sqlalchemy import select
from tree_helpers import PAPER, walk

from learner.data import ppm_pairs, select_round, sft_examples, write_selection
from rstar.config import TrainConfig
from rstar.schemas import Node, Problem, TreeResult, problem_id
from store import learner_tables as lt
from store.db import open_store
from store.models import NodeRow, PpmPairRow, SftExampleRow


@pytest.fixture
def engine(tmp_path):
    e = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    yield e
    e.dispose()


def problem(q: str) -> Problem:
    return Problem(id=problem_id("t", q), source="t", question=q, answer="1")


def text(idx: int, terminal: bool) -> str:
    return f"# step {idx}\nx{idx} = {idx}\n" + (f"answer = x{idx}\n" if terminal else "")


def tree(tid: str, p: Problem, spec, round: int = 1, texts: dict[int, str] | None = None) -> TreeResult:
    """spec: (idx, parent, q[, terminal, correct]) per node; root first."""
    nodes = []
    for idx, parent, depth, q, terminal, correct in walk(spec):
        t = "" if parent is None else (texts or {}).get(idx, text(idx, terminal))
        nodes.append(
            Node(
                idx=idx,
                parent=parent,
                depth=depth,
                q=q,
                visits=1,
                text=t,
                terminal=terminal,
                correct=correct,
                answer="1" if terminal else None,
            )
        )
    now = time.time()
    return TreeResult(
        tree_id=tid,
        problem=p,
        actor_id="a",
        policy_version="p",
        ppm_version="",
        started_at=now,
        finished_at=now,
        nodes=nodes,
        solved=any(n.correct for n in nodes),
        round=round,
        rollouts=8,
    )


LINEAR = [(0, None, 0), (1, 0, 0.96), (2, 1, 1, True, True)]  # avg .98: the best of problem A
DEEP = [(0, None, 0), (1, 0, 0.5), (2, 1, 0.9), (3, 2, 1, True, True), (4, 1, -0.8), (5, 4, -1, True, False)]
UNSOLVED = [(0, None, 0), (1, 0, -1), (2, 1, -1, True, False)]
A, B, C, D = (problem(q) for q in ("problem A", "problem B", "problem C", "problem D"))


@pytest.fixture
def stored(engine):
    from store.writer import upsert_trees

    upsert_trees(
        engine,
        [
            tree("a1", A, PAPER),
            tree("a2", A, LINEAR),
            # Same solution text as a2's, lower Q: a duplicate, never a second example.
            tree("a3", A, [(0, None, 0), (1, 0, 0.9), (2, 1, 0.9, True, True)]),
            tree("b1", B, UNSOLVED),
            tree("d1", D, DEEP),
            tree("c2", C, LINEAR, round=2),
        ],
    )
    return engine


def test_sft_rows_are_the_best_two_correct_per_problem_over_all_its_trees(stored):
    sel = select_round(stored, 1, TrainConfig())
    rows = sorted((r["tree_id"], r["leaf_idx"], round(r["avg_q"], 3)) for r in sel.sft)
    # A: a2 (.98) and a1 leaf 7 (.95); a3 repeats a2's text, a1 leaf 4 (.9) comes third.
    # D: its only correct trajectory. B is unsolved, C belongs to round 2.
    assert rows == [("a1", 7, 0.95), ("a2", 2, 0.98), ("d1", 3, 0.8)]
    assert sel.problems == 3 and sel.solved_problems == 2


def test_pair_rows_are_the_papers_pairs_and_name_their_nodes(stored):
    sel = select_round(stored, 1, TrainConfig())
    a1 = {(r["kind"], r["pos_idx"], r["neg_idx"]) for r in sel.pairs if r["tree_id"] == "a1"}
    assert a1 == {
        ("step", 3, 8),
        ("step", 3, 12),
        ("step", 1, 8),
        ("step", 1, 12),
        ("final", 7, 9),
        ("final", 7, 13),
        ("final", 4, 9),
        ("final", 4, 13),
    }
    d1 = {(r["kind"], r["pos_idx"], r["neg_idx"]) for r in sel.pairs if r["tree_id"] == "d1"}
    assert d1 == {("step", 2, 4), ("final", 3, 5)}
    assert not [r for r in sel.pairs if r["tree_id"] in ("a2", "a3", "b1", "c2")]  # no wrong leaf: no pair


def test_rows_round_trip_to_exact_examples_and_pairs(stored):
    with lt.begin(stored) as conn:
        write_selection(conn, 1, select_round(stored, 1, TrainConfig()))
    ex = {e.steps: e.question for e in sft_examples(stored, 1)}
    assert ex[(text(1, False), text(2, True))] == "problem A"  # a2's trajectory
    assert ex[(text(3, False), text(7, True))] == "problem A"
    pairs = ppm_pairs(stored, 1)
    deep_step = [p for p in pairs if p.tree_id == "d1" and len(p.pos) == 1]
    assert [(p.prefix, p.pos, p.neg) for p in deep_step] == [((text(1, False),), (text(2, False),), (text(4, False),))]
    final = [p for p in pairs if p.tree_id == "d1" and len(p.pos) > 1]
    assert [(p.prefix, p.pos, p.neg) for p in final] == [
        ((), (text(1, False), text(2, False), text(3, True)), (text(1, False), text(4, False), text(5, True)))
    ]
    # Every row joins to the node it names, with that node's text.
    with stored.connect() as c:
        for r in c.execute(
            select(SftExampleRow.text, NodeRow.text.label("leaf"), NodeRow.terminal).join(
                NodeRow, (NodeRow.tree_id == SftExampleRow.tree_id) & (NodeRow.idx == SftExampleRow.leaf_idx)
            )
        ):
            assert r.terminal and r.text.endswith(r.leaf + "<end_of_step>\n")


def test_selection_is_idempotent_and_replaces_only_its_round(stored):
    cfg = TrainConfig()

    def counts(r):
        with stored.connect() as c:
            return (
                len(c.execute(select(SftExampleRow.id).where(SftExampleRow.round == r)).all()),
                len(c.execute(select(PpmPairRow.id).where(PpmPairRow.round == r)).all()),
            )

    for _ in range(2):
        with lt.begin(stored) as conn:
            write_selection(conn, 1, select_round(stored, 1, cfg))
            write_selection(conn, 2, select_round(stored, 2, cfg))
    assert counts(1) == (3, 10) and counts(2) == (1, 0)
    with lt.begin(stored) as conn:  # a narrower rule replaces round 1's rows, round 2 untouched
        write_selection(conn, 1, select_round(stored, 1, TrainConfig(sft_per_problem=1, ppm_pairs_k=1)))
    assert counts(1) == (2, 4) and counts(2) == (1, 0)


def test_window_pools_rounds_and_exclude_keeps_eval_problems_out(stored):
    both = select_round(stored, 2, TrainConfig(), window=2)
    assert {r["tree_id"] for r in both.sft} == {"a1", "a2", "d1", "c2"}
    sel = select_round(stored, 1, TrainConfig(), exclude={A.id})
    assert {r["tree_id"] for r in sel.sft} == {"d1"} and {r["tree_id"] for r in sel.pairs} == {"d1"}


def test_unsolved_problems_are_the_searched_ones_no_tree_solved(stored):
    assert [p.id for p in lt.unsolved_problems(stored, 1, below_rollouts=64)] == [B.id]
    assert lt.unsolved_problems(stored, 1, below_rollouts=8) == []  # already searched with 8
    assert lt.tree_counts(stored, 1) == {"trees": 5, "solved_trees": 4, "problems": 3, "solved_problems": 2}


def test_round_selection_falls_back_to_every_round_and_a_control_takes_round_0(stored):
    from learner.data import round_selection
    from rstar.config import load_config
    from store.writer import upsert_trees

    upsert_trees(stored, [tree("b3", B, UNSOLVED, round=3)])  # round 3 solved nothing
    cfg = load_config(None, ["learner.sft_rounds_window=1"], env={})
    sel = round_selection(stored, cfg, 3, exclude=set())
    assert {r["tree_id"] for r in sel.sft} == {"a1", "a2", "d1", "c2"}  # every round so far
    assert sel.solved_problems == 0 and {r["tree_id"] for r in sel.pairs} == set()  # pairs: round 3's only
    assert {r["tree_id"] for r in round_selection(stored, cfg, 2, exclude=set()).sft} == {"c2"}
    upsert_trees(stored, [tree("t0", C, LINEAR, round=0)])  # a teacher tree
    control = load_config(None, ["learner.control=true"], env={})
    assert {r["tree_id"] for r in round_selection(stored, control, 2, exclude=set()).sft} == {"t0"}


def test_examples_from_search_trees_are_marked_searched_and_the_teachers_are_not(stored):
    from store.writer import upsert_trees

    teacher = tree("teacher-c", C, LINEAR, round=1)
    upsert_trees(stored, [msgspec.structs.replace(teacher, source="teacher")])
    with lt.begin(stored) as conn:
        write_selection(conn, 1, select_round(stored, 1, TrainConfig()))
    marks = {ex.question: ex.searched for ex in sft_examples(stored, 1)}
    assert marks == {"problem A": True, "problem D": True, "problem C": False}
