"""Training-data selection picks exactly the paper's examples on a hand-built tree."""

from tree_helpers import PAPER, walk

from learner.selection import select_final_pairs, select_ppm_pairs, select_sft, select_step_pairs, trajectories
from rstar.schemas import Node


def build():
    """The paper's example tree (``tree_helpers.PAPER``, drawn there)."""
    return [
        Node(idx=idx, parent=parent, depth=depth, q=q, terminal=terminal, correct=correct)
        for idx, parent, depth, q, terminal, correct in walk(PAPER)
    ]


def test_trajectories_and_average_q():
    t = {x.leaf: x for x in trajectories(build())}
    assert set(t) == {4, 5, 6, 7, 9, 11, 13}
    assert t[7].path == (3, 7) and t[7].avg_q == (0.9 + 1) / 2 and t[7].correct
    assert t[9].avg_q == (-0.9 - 1) / 2 and not t[9].correct


def test_sft_takes_two_correct_with_highest_average_q():
    picked = select_sft(trajectories(build()), per_problem=2)
    assert [p.leaf for p in picked] == [7, 4]  # avg .95 and .9; leaf 6 (.75) left out


def test_step_pairs_two_best_reaching_correct_vs_two_worst_reaching_only_wrong():
    pairs = select_step_pairs(build(), k=2)
    root_pairs = {(p.pos, p.neg) for p in pairs if p.prefix == ()}
    # Positives: 3 (.9) and 1 (.8); node 2 (.5) is third. Negatives: 8 (-.9), 12 (-.5); 10 is third.
    assert root_pairs == {((3,), (8,)), ((3,), (12,)), ((1,), (8,)), ((1,), (12,))}
    # Node 1's children are terminal: they are compared as whole trajectories, not as steps.
    assert all(p.prefix == () for p in pairs)


def test_final_pairs_compare_whole_trajectories():
    pairs = select_final_pairs(trajectories(build()), k=2)
    assert {(p.pos, p.neg) for p in pairs} == {
        ((3, 7), (8, 9)),
        ((3, 7), (12, 13)),
        ((1, 4), (8, 9)),
        ((1, 4), (12, 13)),
    }
    assert all(p.kind == "final" for p in pairs)


def test_unsolved_tree_gives_no_sft_and_no_pairs():
    nodes = [
        Node(idx=0, parent=None, depth=0),
        Node(idx=1, parent=0, depth=1, q=-1),
        Node(idx=2, parent=1, depth=2, q=-1, terminal=True, correct=False),
    ]
    assert select_sft(trajectories(nodes)) == [] and select_ppm_pairs(nodes) == []
