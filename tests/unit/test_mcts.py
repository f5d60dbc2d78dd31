"""The tree rules of actors.mcts on hand-built trees (no model, no sandbox)."""

import math

from actors.mcts import Candidate, Tree
from rstar.schemas import Problem


def cand(text, terminal=False, answer=None, correct=None, ppm=None):
    return Candidate(
        text=text,
        code_output="",
        terminal=terminal,
        answer=answer,
        correct=correct,
        ppm_score=ppm,
        gen_tokens=3,
        policy_version="p1",
        ppm_version="",
    )


def tree(**kw):
    return Tree(Problem(id="p", source="t", question="q", answer="4"), **kw)


def test_backup_updates_visits_and_mean_q_along_the_path():
    t = tree()
    a, b = t.expand(0, [cand("x = 1\n"), cand("x = 2\n")])
    (c,) = t.expand(a, [cand("answer = 4\n", terminal=True, answer="4", correct=True)])
    t.backup(c, t.leaf_value(c))
    t.backup(b, -1.0)
    assert [t.nodes[i].visits for i in (0, a, b, c)] == [2, 1, 1, 1]
    assert t.q(0) == 0.0 and t.q(a) == 1.0 and t.q(b) == -1.0 and t.q(c) == 1.0
    assert t.rollouts == 2


def test_selection_takes_unvisited_children_first_then_uct():
    t = tree(c_uct=2.0)
    a, b = t.expand(0, [cand("x = 1\n"), cand("x = 2\n")])
    assert t.select() == a  # both unvisited: sampling order
    t.backup(a, 1.0)
    assert t.select() == b  # b still unvisited
    t.backup(b, -1.0)
    t.backup(a, 1.0)  # a: 2 visits, q 1 ; b: 1 visit, q -1 ; root 3 visits
    ua = 1.0 + 2.0 * math.sqrt(math.log(3) / 2)
    ub = -1.0 + 2.0 * math.sqrt(math.log(3) / 1)
    assert math.isclose(t.uct(a), ua) and math.isclose(t.uct(b), ub)
    assert t.best_child(0) == (a if ua > ub else b)


def test_unvisited_children_ordered_by_ppm_score_when_scored():
    t = tree()
    kids = t.expand(0, [cand("x = 1\n", ppm=-0.5), cand("x = 2\n", ppm=0.7), cand("x = 3\n", ppm=0.1)])
    assert t.select() == kids[1]


def test_ppm_init_counts_the_score_as_a_virtual_visit():
    t = tree(ppm_init=True)
    (a,) = t.expand(0, [cand("x = 1\n", ppm=0.5)])
    assert t.q(a) == 0.5
    t.backup(a, -1.0)
    assert t.q(a) == (0.5 - 1.0) / 2
    plain = tree(ppm_init=False)
    (b,) = plain.expand(0, [cand("x = 1\n", ppm=0.5)])
    assert plain.q(b) == 0.0


def test_identical_sibling_steps_are_kept_once():
    t = tree()
    added = t.expand(0, [cand("x = 1\n"), cand("x = 1\n"), cand("x = 2\n")])
    assert len(added) == 2 and len(t.nodes) == 3


def test_dead_ends_and_depth_limit_are_worth_minus_one():
    t = tree(max_depth=1)
    (a,) = t.expand(0, [cand("x = 1\n")])
    assert not t.needs_expansion(a)  # at the depth limit
    assert t.leaf_value(a) == -1.0
    t2 = tree()
    t2.expand(0, [])  # nothing ran: worth -1 now, sampled afresh when selected again
    assert t2.select() == 0 and t2.leaf_value(0) == -1.0 and t2.needs_expansion(0)
    (b,) = t2.expand(0, [cand("x = 2\n")])
    assert t2.nodes[0].children == [b] and not t2.needs_expansion(0)


def test_terminal_values_with_and_without_reference():
    t = tree()
    ok, bad, blind, scored = t.expand(
        0,
        [
            cand("answer = 4\n", True, "4", True),
            cand("answer = 5\n", True, "5", False),
            cand("answer = 6\n", True, "6", None),
            cand("answer = 7\n", True, "7", None, ppm=0.3),
        ],
    )
    assert [t.leaf_value(i) for i in (ok, bad, blind, scored)] == [1.0, -1.0, 0.0, 0.3]


def test_best_terminal_majority_without_ppm_and_max_score_with_ppm():
    t = tree()
    t.expand(0, [cand("answer = 4\n", True, "4"), cand("answer = 2 + 2\n", True, "4"), cand("answer = 5\n", True, "5")])
    assert t.nodes[t.best_terminal()].answer == "4"
    s = tree()
    s.expand(
        0,
        [
            cand("answer = 4\n", True, "4", ppm=0.1),
            cand("answer = 2 + 2\n", True, "4", ppm=0.2),
            cand("answer = 5\n", True, "5", ppm=0.9),
        ],
    )
    assert s.nodes[s.best_terminal()].answer == "5"


def test_to_nodes_keeps_every_node_and_its_provenance():
    t = tree()
    (a,) = t.expand(0, [cand("x = 1\n", ppm=0.2)])
    t.backup(a, 1.0)
    nodes = t.to_nodes()
    assert [n.idx for n in nodes] == [0, 1]
    assert nodes[1].parent == 0 and nodes[1].depth == 1 and nodes[1].policy_version == "p1"
    assert nodes[1].q == 1.0 and nodes[1].visits == 1 and nodes[1].ppm_score == 0.2


def test_answer_node_prefers_the_best_verified_terminal():
    t = tree()
    a, b, c = t.expand(
        0,
        [
            cand("answer = 5\n", True, "5", False),
            cand("answer = 5 \n", True, "5", False),
            cand("answer = 4\n", True, "4", True),
        ],
    )
    assert t.nodes[t.best_terminal()].answer == "5"  # majority without the reference
    assert t.answer_node() == c and t.solved()
