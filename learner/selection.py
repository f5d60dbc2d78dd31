"""Which steps of the stored trees become training data (rStar-Math §3.3, DESIGN §5).

Pure functions over the nodes of one tree (``rstar.schemas.Node``), so they are tested on
hand-built trees; ``learner.data`` runs them over the trees of a round read from the store and
writes the rows, with their tree and node ids, to ``sft_examples`` and ``ppm_pairs``.

- **SFT**: per solved problem, the ``per_problem`` (2) correct trajectories with the highest
  average Q, over all of that problem's trees.
- **PPM pairs, intermediate steps**: for every node, among its non-terminal children, up to 2
  with the highest Q whose subtree reaches a correct answer (positives) against up to 2 with the
  lowest Q whose subtree reaches only wrong answers (negatives): every positive × negative pair.
  The pair shares its prefix, so the PPM learns to rank siblings.
- **PPM pairs, final step**: identical prefixes rarely end in different answers, so the final step
  pairs whole trajectories: the 2 correct ones with the highest average Q against the 2 wrong ones
  with the lowest average Q.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rstar.schemas import Node


@dataclass(frozen=True)
class Trajectory:
    leaf: int
    path: tuple[int, ...]  # node idx from the first step to the leaf (root excluded)
    avg_q: float
    correct: bool


@dataclass(frozen=True)
class Pair:
    kind: str  # "step" or "final"
    prefix: tuple[int, ...]  # shared steps before the compared ones (empty for "final")
    pos: tuple[int, ...]  # the preferred continuation (one node for "step", a path for "final")
    neg: tuple[int, ...]


def paths(nodes: Sequence[Node]) -> dict[int, tuple[int, ...]]:
    out: dict[int, tuple[int, ...]] = {0: ()}
    for n in sorted(nodes, key=lambda n: n.depth):
        if n.parent is not None:
            out[n.idx] = out[n.parent] + (n.idx,)
    return out


def trajectories(nodes: Sequence[Node]) -> list[Trajectory]:
    """Every root-to-terminal path that was graded (correct is True or False)."""
    by_idx = {n.idx: n for n in nodes}
    p = paths(nodes)
    out = []
    for n in nodes:
        if n.terminal and n.correct is not None:
            qs = [by_idx[i].q for i in p[n.idx]]
            out.append(Trajectory(n.idx, p[n.idx], sum(qs) / len(qs), bool(n.correct)))
    return out


def select_sft(trajs: Sequence[Trajectory], per_problem: int = 2) -> list[Trajectory]:
    """The ``per_problem`` correct trajectories with the highest average Q (ties: shorter first)."""
    correct = [t for t in trajs if t.correct]
    return sorted(correct, key=lambda t: (-t.avg_q, len(t.path), t.leaf))[:per_problem]


def _outcomes(nodes: Sequence[Node]) -> dict[int, tuple[bool, bool]]:
    """For each node: (some terminal below it is correct, some terminal below it is wrong)."""
    res = {n.idx: (False, False) for n in nodes}
    for n in sorted(nodes, key=lambda n: -n.depth):
        good, bad = res[n.idx]
        if n.terminal and n.correct is not None:
            good, bad = good or n.correct, bad or not n.correct
            res[n.idx] = (good, bad)
        if n.parent is not None:
            pg, pb = res[n.parent]
            res[n.parent] = (pg or good, pb or bad)
    return res


def select_step_pairs(nodes: Sequence[Node], k: int = 2) -> list[Pair]:
    children: dict[int, list[Node]] = {}
    for n in nodes:
        if n.parent is not None and not n.terminal:
            children.setdefault(n.parent, []).append(n)
    out = _outcomes(nodes)
    p = paths(nodes)
    pairs = []
    for parent, kids in sorted(children.items()):
        pos = sorted((c for c in kids if out[c.idx][0]), key=lambda c: (-c.q, c.idx))[:k]
        neg = sorted((c for c in kids if out[c.idx][1] and not out[c.idx][0]), key=lambda c: (c.q, c.idx))[:k]
        for a in pos:
            for b in neg:
                pairs.append(Pair("step", p[parent], (a.idx,), (b.idx,)))
    return pairs


def select_final_pairs(trajs: Sequence[Trajectory], k: int = 2) -> list[Pair]:
    pos = sorted((t for t in trajs if t.correct), key=lambda t: (-t.avg_q, t.leaf))[:k]
    neg = sorted((t for t in trajs if not t.correct), key=lambda t: (t.avg_q, t.leaf))[:k]
    return [Pair("final", (), a.path, b.path) for a in pos for b in neg]


def select_ppm_pairs(nodes: Sequence[Node], k: int = 2) -> list[Pair]:
    return select_step_pairs(nodes, k) + select_final_pairs(trajectories(nodes), k)
