"""The search tree and the MCTS rules, free of I/O (DESIGN §5).

A rollout is: *select* from the root by UCT down to a node that has not been expanded;
*expand* it with n candidate steps that the caller generated and executed (only steps whose code
ran become nodes); keep descending through the new children until a terminal node, a dead end
or the depth limit; *back up* the outcome along the path. ``actors.search`` drives this with the
model and the sandbox; this module only keeps the numbers right.

- UCT: ``Q(s) + c·sqrt(ln N(parent) / N(s))`` (c = ``SearchConfig.c_uct``, 2 by default);
  unvisited children first — highest PPM score first when there is one, else in sampling order.
- Values: a terminal node is worth +1 when its answer matches the reference and −1 otherwise
  (terminal-guided search). Without a reference (inference), a terminal node is worth its PPM
  score, or 0 without a PPM. A dead end (no candidate ran, or the depth limit) is worth −1; a
  node none of whose candidates ran is expanded again (fresh samples) when selected again.
- PPM-augmented Q (``ppm_init``, paper rounds ≥ 3): a new node starts with its PPM score as one
  virtual visit, so ``Q = (ppm_score + sum of backed-up values) / (visits + 1)``.
- Q of a node is the mean of the values backed up through it.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from dataclasses import dataclass, field

from rstar.schemas import Node, Problem


@dataclass
class TreeNode:
    idx: int
    parent: int | None
    depth: int
    text: str = ""
    code_output: str = ""
    children: list[int] = field(default_factory=list)
    visits: int = 0
    value_sum: float = 0.0
    ppm_score: float | None = None
    terminal: bool = False
    correct: bool | None = None
    answer: str | None = None
    expanded: bool = False
    policy_version: str = ""
    ppm_version: str = ""
    gen_tokens: int = 0


@dataclass
class Candidate:
    """A generated step that ran in the sandbox, ready to become a child node."""

    text: str
    code_output: str
    terminal: bool
    answer: str | None
    correct: bool | None
    ppm_score: float | None
    gen_tokens: int
    policy_version: str
    ppm_version: str


class Tree:
    def __init__(
        self, problem: Problem, c_uct: float = 2.0, max_depth: int = 16, ppm_init: bool = False, seed: int = 0
    ):
        self.problem = problem
        self.c_uct = c_uct
        self.max_depth = max_depth
        self.ppm_init = ppm_init
        self.rng = random.Random(seed)
        self.nodes: list[TreeNode] = [TreeNode(idx=0, parent=None, depth=0)]
        self.rollouts = 0

    # --- numbers -------------------------------------------------------------------------
    def q(self, idx: int) -> float:
        n = self.nodes[idx]
        if self.ppm_init and n.ppm_score is not None:
            return (n.ppm_score + n.value_sum) / (n.visits + 1)
        return n.value_sum / n.visits if n.visits else 0.0

    def uct(self, idx: int) -> float:
        n = self.nodes[idx]
        parent_visits = self.nodes[n.parent].visits if n.parent is not None else n.visits
        return self.q(idx) + self.c_uct * math.sqrt(math.log(max(parent_visits, 1)) / n.visits)

    def best_child(self, idx: int) -> int:
        """The child UCT picks: an unvisited one first (highest PPM score first), else max UCT."""
        kids = self.nodes[idx].children
        unvisited = [c for c in kids if self.nodes[c].visits == 0]
        if unvisited:
            scores = {c: s for c in unvisited if (s := self.nodes[c].ppm_score) is not None}
            if len(scores) == len(unvisited):
                return max(scores, key=scores.__getitem__)
            return unvisited[0]
        return max(kids, key=self.uct)

    # --- the rollout steps ---------------------------------------------------------------
    def select(self, start: int = 0) -> int:
        """Walk down from ``start`` by UCT to a node that is terminal or not yet expanded."""
        idx = start
        while True:
            n = self.nodes[idx]
            if n.terminal or not n.expanded or not n.children:
                return idx
            idx = self.best_child(idx)

    def needs_expansion(self, idx: int) -> bool:
        """Not expanded yet — or expanded with no candidate that ran: sample again (the dead end
        was backed up as −1, so UCT only comes back here when the alternatives look no better)."""
        n = self.nodes[idx]
        return not n.terminal and not n.children and n.depth < self.max_depth

    def expand(self, idx: int, candidates: list[Candidate]) -> list[int]:
        """Attach the candidates that ran as children of ``idx`` (identical steps kept once)."""
        parent = self.nodes[idx]
        parent.expanded = True
        seen = {self.nodes[c].text for c in parent.children}
        added = []
        for c in candidates:
            if c.text in seen:
                continue
            seen.add(c.text)
            child = TreeNode(
                idx=len(self.nodes),
                parent=idx,
                depth=parent.depth + 1,
                text=c.text,
                code_output=c.code_output,
                ppm_score=c.ppm_score,
                terminal=c.terminal,
                correct=c.correct,
                answer=c.answer,
                policy_version=c.policy_version,
                ppm_version=c.ppm_version,
                gen_tokens=c.gen_tokens,
            )
            self.nodes.append(child)
            parent.children.append(child.idx)
            added.append(child.idx)
        return added

    def leaf_value(self, idx: int) -> float:
        """The value a rollout that ended at ``idx`` backs up."""
        n = self.nodes[idx]
        if not n.terminal:
            return -1.0  # dead end: nothing ran, or the depth limit
        if n.correct is not None:
            return 1.0 if n.correct else -1.0
        return n.ppm_score if n.ppm_score is not None else 0.0

    def backup(self, idx: int, value: float) -> None:
        node: TreeNode | None = self.nodes[idx]
        while node is not None:
            node.visits += 1
            node.value_sum += value
            node = self.nodes[node.parent] if node.parent is not None else None
        self.rollouts += 1

    # --- reading the tree ----------------------------------------------------------------
    def path(self, idx: int) -> list[int]:
        """Node indices from the first step down to ``idx`` (the root excluded)."""
        out = []
        while idx:
            out.append(idx)
            parent = self.nodes[idx].parent
            assert parent is not None  # only the root, index 0, has no parent
            idx = parent
        return out[::-1]

    def steps(self, idx: int) -> list[str]:
        return [self.nodes[i].text for i in self.path(idx)]

    def terminals(self) -> list[int]:
        return [n.idx for n in self.nodes if n.terminal]

    def max_depth_reached(self) -> int:
        return max(n.depth for n in self.nodes)

    def solved(self) -> bool:
        return any(self.nodes[i].correct for i in self.terminals())

    def mean_q(self, idx: int) -> float:
        path = self.path(idx)
        return sum(self.q(i) for i in path) / len(path) if path else 0.0

    def best_terminal(self) -> int | None:
        """The answer the search gives without a reference.

        With PPM scores: the terminal with the highest PPM score. Without: a majority vote over
        terminal answers, ties broken by the higher mean Q of the trajectory.
        """
        terms = [i for i in self.terminals() if self.nodes[i].answer is not None]
        if not terms:
            return None
        if all(self.nodes[i].ppm_score is not None for i in terms):
            return max(terms, key=lambda i: (self.nodes[i].ppm_score, self.mean_q(i)))
        votes = Counter(self.nodes[i].answer for i in terms)
        return max(terms, key=lambda i: (votes[self.nodes[i].answer], self.mean_q(i)))

    def answer_node(self) -> int | None:
        """The terminal whose answer the tree gives: the best verified one (highest mean Q) when
        some terminal was graded correct, else ``best_terminal``."""
        correct = [i for i in self.terminals() if self.nodes[i].correct]
        return max(correct, key=self.mean_q) if correct else self.best_terminal()

    def to_nodes(self) -> list[Node]:
        return [
            Node(
                idx=n.idx,
                parent=n.parent,
                depth=n.depth,
                text=n.text,
                code_output=n.code_output,
                visits=n.visits,
                q=round(self.q(n.idx), 6),
                ppm_score=n.ppm_score,
                terminal=n.terminal,
                correct=n.correct,
                answer=n.answer,
                policy_version=n.policy_version,
                ppm_version=n.ppm_version,
                gen_tokens=n.gen_tokens,
            )
            for n in self.nodes
        ]
