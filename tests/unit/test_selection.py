"""Training-data selection picks exactly the paper's examples on a hand-built tree."""

from learner.selection import select_final_pairs, select_ppm_pairs, select_sft, select_step_pairs, trajectories
from rstar.schemas import Node


def build():
    """
    0 (root)
    ├─ 1 q=.8 ─ 4 q=1  T correct
    │         └ 5 q=-1 T wrong
    ├─ 2 q=.5 ─ 6 q=1  T correct
    ├─ 3 q=.9 ─ 7 q=1  T correct   (highest q positive)
    ├─ 8 q=-.9 ─ 9 q=-1 T wrong     (lowest q negative)
    ├─ 10 q=-.2 ─ 11 q=-1 T wrong
    └─ 12 q=-.5 ─ 13 q=-1 T wrong
    """
    spec = [
        (0, None, 0),
        (1, 0, 0.8),
        (2, 0, 0.5),
        (3, 0, 0.9),
        (4, 1, 1, True, True),
        (5, 1, -1, True, False),
        (6, 2, 1, True, True),
        (7, 3, 1, True, True),
        (8, 0, -0.9),
        (9, 8, -1, True, False),
        (10, 0, -0.2),
        (11, 10, -1, True, False),
        (12, 0, -0.5),
        (13, 12, -1, True, False),
    ]
    depth = {None: -1}
    nodes = []
    for idx, parent, q, *rest in spec:
        depth[idx] = depth[parent] + 1
        terminal, correct = rest if rest else (False, None)
        nodes.append(Node(idx=idx, parent=parent, depth=depth[idx], q=q, terminal=terminal, correct=correct))
    return nodes


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
