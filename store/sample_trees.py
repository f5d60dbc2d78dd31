"""Random but well-formed search trees, for store benchmarks, tests and trying the explorer.

    from store.sample_trees import sample_tree
    tree = sample_tree(random.Random(0), n_nodes=200, round=1)

The shape imitates an MCTS tree: a root (the question), children expanded breadth-first with up to
``branching`` candidates each, depth capped at ``max_depth``; leaves at the cap or drawn at random
are terminal, some correct. Step texts are code-step-shaped (comment + code + ``<end_of_step>``,
~150 characters). Nothing here is a real search result: Q and PPM scores are random numbers in
[-1, 1], and "correct" is a coin flip.
"""

from __future__ import annotations

import random
import time
import uuid

from rstar.schemas import Node, Problem, TreeResult, problem_id

_WORDS = ("apples", "pears", "boxes", "cars", "coins", "pages", "trains", "hours", "miles", "cookies")


def sample_problem(rng: random.Random, source: str = "sample") -> Problem:
    a, b, w = rng.randint(2, 99), rng.randint(2, 99), rng.choice(_WORDS)
    question = f"Sam has {a} {w} and buys {b} more, then gives away {a // 2}. How many {w} are left?"
    return Problem(id=problem_id(source, question), source=source, question=question, answer=str(a + b - a // 2))


def _step_text(rng: random.Random, depth: int, terminal: bool) -> str:
    v = rng.randint(1, 999)
    comment = (
        f"# Step {depth}: work out the running total of the {rng.choice(_WORDS)} so far, "
        f"adding what was bought and taking away what was given."
    )
    code = f"x{depth} = {v} + {rng.randint(1, 99)} - {rng.randint(1, 50)}\nprint(x{depth})"
    if terminal:
        code += f"\nanswer = x{depth}"
    return f"{comment}\n{code}\n<end_of_step>"


def sample_tree(
    rng: random.Random,
    n_nodes: int = 200,
    *,
    round: int = 0,
    branching: int = 5,
    max_depth: int = 8,
    problem: Problem | None = None,
    policy_version: str = "p0",
    ppm_version: str = "m0",
    tree_id: str | None = None,
) -> TreeResult:
    """A tree of exactly ``n_nodes`` nodes (root included) in breadth-first idx order."""
    problem = problem or sample_problem(rng)
    nodes = [Node(idx=0, parent=None, depth=0, visits=rng.randint(1, 64))]
    frontier = [0]
    while len(nodes) < n_nodes:
        if not frontier:  # every open node expanded once: expand them again (the root never closes)
            frontier = [n.idx for n in nodes if not n.terminal]
        parent = nodes[frontier.pop(0)]
        for _ in range(rng.randint(1, branching)):
            if len(nodes) >= n_nodes:
                break
            depth = parent.depth + 1
            terminal = depth >= max_depth or rng.random() < 0.15
            correct = (rng.random() < 0.4) if terminal else None
            node = Node(
                idx=len(nodes),
                parent=parent.idx,
                depth=depth,
                text=_step_text(rng, depth, terminal),
                code_output=str(rng.randint(1, 9999)),
                visits=rng.randint(0, 16),
                q=rng.uniform(-1, 1),
                ppm_score=rng.uniform(-1, 1),
                terminal=terminal,
                correct=correct,
                answer=(problem.answer if correct else str(rng.randint(1, 999))) if terminal else None,
                policy_version=policy_version,
                ppm_version=ppm_version,
                gen_tokens=rng.randint(20, 120),
            )
            nodes.append(node)
            if not terminal:
                frontier.append(node.idx)
    solved = any(n.correct for n in nodes)
    now = time.time()
    return TreeResult(
        tree_id=tree_id or str(uuid.UUID(int=rng.getrandbits(128))),
        problem=problem,
        actor_id="sample-actor",
        policy_version=policy_version,
        ppm_version=ppm_version,
        started_at=now - 30.0,
        finished_at=now,
        nodes=nodes,
        solved=solved,
        best_answer=problem.answer if solved else None,
        round=round,
        rollouts=16,
    )
