"""Drive MCTS (and the greedy / majority baselines) with the model worker and the sandbox.

Every tree is a coroutine. Its expansions go to ``ModelWorker.generate``, which batches the
expansions of all trees in flight into one backend call; its candidate steps run concurrently in
the sandbox pool; PPM scores come from the same worker. ``search_many`` keeps ``K`` trees in
flight and yields each as it finishes, so a slow tree never holds the batch back.

Reference answers: with ``use_reference=True`` (training rollouts) terminal nodes are graded
against the problem's answer and the search is terminal-guided. Evaluation and ``rstar solve``
use ``use_reference=False``: the reference never reaches the search, answers are picked by PPM
score or majority (``Tree.best_terminal``) and graded afterwards.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from actors.backends.base import Generation, GenParams
from actors.batcher import ModelWorker
from actors.mcts import Candidate, Tree
from rstar import steps as fmt
from rstar.config import GenerationConfig, SearchConfig
from rstar.schemas import Problem, TreeResult

if TYPE_CHECKING:
    from actors.sandbox import SandboxPool


@dataclass
class SearchContext:
    """What a search needs besides the problem: the worker, the sandbox and their settings."""

    worker: ModelWorker
    sandbox: SandboxPool
    search: SearchConfig
    generation: GenerationConfig
    chat_template: Callable[[list[dict]], str] | None = None
    ppm_template: Callable[[str, list[str]], str] | None = None
    actor_id: str = "local"
    round: int = 0
    grade: Callable[[str | None, str], bool] | None = None
    use_ppm: bool = True  # False: never score candidates, even when the worker has a PPM
    _heads: dict[tuple[str, bool], str] = field(default_factory=dict)

    def prompt(self, question: str, steps: list[str]) -> str:
        # The chat-formatted head (with few-shot examples) is the same for every node of a tree.
        key = (question, self.generation.few_shot)  # a swap to a trained policy drops few-shot
        head = self._heads.get(key)
        if head is None:
            head = fmt.build_prompt(question, [], self.chat_template, self.generation.few_shot)
            if len(self._heads) > 4096:
                self._heads.clear()
            self._heads[key] = head
        return head + fmt.render_steps(steps)

    def params(self, n: int, temperature: float | None = None) -> GenParams:
        g = self.generation
        return GenParams(
            n=n,
            max_tokens=g.max_step_tokens,
            temperature=g.temperature if temperature is None else temperature,
            top_p=g.top_p,
            stop=tuple(fmt.STOP),
        )

    def seed(self, problem: Problem, steps: list[str], stream: str = "tree") -> int:
        """The sampling seed of the expansion after ``steps`` (62 bits): a hash of the search seed,
        the problem, the round and the steps, so a tree (or a ``stream`` of samples) is the same
        whatever else the worker batched beside it."""
        key = "\x1f".join([str(self.search.seed), problem.id, problem.question, str(self.round), stream, *steps])
        return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 2

    async def is_correct(self, answer: str | None, gold: str | None) -> bool | None:
        if gold is None:
            return None
        if answer is None:
            return False
        grade = self.grade
        if grade is None:
            from rstar.grading import grade as default_grade

            grade = default_grade
        # math-verify may take a while on odd input: keep the event loop free.
        return await asyncio.to_thread(grade, answer, gold)


def usable_step(g: Generation) -> str | None:
    """The canonical step text of a generation, or None when it cannot be a step.

    Kept: text that ended at the delimiter, or at end-of-sequence when it binds the answer.
    Dropped: a step cut by the token limit, an empty step, a step with no code.
    """
    if not g.stopped and not g.eos:
        return None
    try:
        text = fmt.normalize_step(g.text)
    except fmt.StepFormatError:
        return None
    if not fmt.has_code(text) or (g.eos and not g.stopped and not fmt.is_terminal(text)):
        return None
    return text


async def _run_candidates(
    ctx: SearchContext,
    problem: Problem,
    prefix: list[str],
    gens: list[Generation],
    policy_version: str,
    use_reference: bool,
) -> list[Candidate]:
    texts, tokens = [], {}
    for g in gens:
        t = usable_step(g)
        if t is not None and t not in tokens:
            texts.append(t)
            tokens[t] = g.tokens
        elif t is not None:
            tokens[t] += g.tokens
    results = await asyncio.gather(*(ctx.sandbox.run(prefix + [t]) for t in texts))
    ok = [(t, r) for t, r in zip(texts, results) if r.ok]
    gold = problem.answer if use_reference else None
    cands = []
    for t, r in ok:
        terminal = fmt.is_terminal(t)
        answer = r.answer if terminal else None
        correct = await ctx.is_correct(answer, gold) if terminal else None
        cands.append(
            Candidate(
                text=t,
                code_output=r.stdout,
                terminal=terminal,
                answer=answer,
                correct=correct,
                ppm_score=None,
                gen_tokens=tokens[t],
                policy_version=policy_version,
                ppm_version="",
            )
        )
    if cands and ctx.use_ppm and ctx.worker.scorer is not None:
        tmpl = ctx.ppm_template or (lambda q, s: fmt.build_prompt(q, s, ctx.chat_template, False))
        scores, ppm_version = await ctx.worker.score([tmpl(problem.question, prefix + [c.text]) for c in cands])
        for c, s in zip(cands, scores):
            c.ppm_score, c.ppm_version = s, ppm_version
    return cands


async def expand(tree: Tree, idx: int, ctx: SearchContext, use_reference: bool) -> list[int]:
    prefix = tree.steps(idx)
    gens, version = await ctx.worker.generate(
        ctx.prompt(tree.problem.question, prefix), ctx.params(ctx.search.n_children), ctx.seed(tree.problem, prefix)
    )
    cands = await _run_candidates(ctx, tree.problem, prefix, gens, version, use_reference)
    return tree.expand(idx, cands)


async def rollout(tree: Tree, ctx: SearchContext, use_reference: bool = True) -> None:
    """Select, expand down to a terminal node or a dead end, back up."""
    idx = tree.select()
    while tree.needs_expansion(idx):
        if not await expand(tree, idx, ctx, use_reference):
            break
        idx = tree.select(idx)
    tree.backup(idx, tree.leaf_value(idx))


async def search_tree(
    problem: Problem,
    ctx: SearchContext,
    rollouts: int | None = None,
    use_reference: bool = True,
    on_rollout: Callable[[Tree], None] | None = None,
) -> TreeResult:
    s = ctx.search
    tree = Tree(problem, c_uct=s.c_uct, max_depth=s.max_depth, ppm_init=s.ppm_init, seed=s.seed)
    started = time.time()
    async with ctx.worker.client():
        for _ in range(rollouts or s.rollouts):
            await rollout(tree, ctx, use_reference)
            if on_rollout is not None:
                on_rollout(tree)
    return tree_result(tree, ctx, started)


def tree_result(tree: Tree, ctx: SearchContext, started: float) -> TreeResult:
    best = tree.answer_node()
    return TreeResult(
        tree_id=uuid.uuid4().hex,
        problem=tree.problem,
        actor_id=ctx.actor_id,
        policy_version=ctx.worker.policy_version,
        ppm_version=ctx.worker.ppm_version,
        started_at=started,
        finished_at=time.time(),
        nodes=tree.to_nodes(),
        solved=tree.solved(),
        best_answer=tree.nodes[best].answer if best is not None else None,
        round=ctx.round,
        rollouts=tree.rollouts,
    )


async def search_many(
    problems: Iterable[Problem],
    ctx: SearchContext,
    trees_in_flight: int,
    rollouts: int | None = None,
    use_reference: bool = True,
) -> AsyncIterator[TreeResult]:
    """Search every problem with ``trees_in_flight`` trees at once; yield trees as they finish."""
    pending: set[asyncio.Task] = set()
    it = iter(problems)
    exhausted = False
    try:
        while True:
            while not exhausted and len(pending) < trees_in_flight:
                p = next(it, None)
                if p is None:
                    exhausted = True
                    break
                pending.add(asyncio.create_task(search_tree(p, ctx, rollouts, use_reference), name=f"tree-{p.id}"))
            if not pending:
                return
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for t in done:
                yield t.result()
    finally:  # the consumer stopped early or a tree failed: do not leave trees running
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


# --- baselines: independent chains, no tree ----------------------------------------------------
@dataclass
class Chain:
    steps: list[str]
    answer: str | None
    tokens: int


async def sample_chain(problem: Problem, ctx: SearchContext, temperature: float, index: int = 0) -> Chain:
    """One trajectory, step by step, each step executed; a step that fails ends the chain.
    ``index`` tells the chains of one problem apart (each samples under its own seeds)."""
    async with ctx.worker.client():
        return await _chain(problem, ctx, temperature, index)


async def _chain(problem: Problem, ctx: SearchContext, temperature: float, index: int) -> Chain:
    steps: list[str] = []
    tokens = 0
    for _ in range(ctx.search.max_depth):
        gens, _ = await ctx.worker.generate(
            ctx.prompt(problem.question, steps), ctx.params(1, temperature), ctx.seed(problem, steps, f"chain-{index}")
        )
        tokens += gens[0].tokens
        text = usable_step(gens[0])
        if text is None:
            break
        res = await ctx.sandbox.run(steps + [text])
        if not res.ok:
            break
        steps.append(text)
        if fmt.is_terminal(text):
            return Chain(steps, res.answer, tokens)
    return Chain(steps, None, tokens)


async def majority_answer(
    problem: Problem, ctx: SearchContext, k: int, temperature: float | None = None
) -> tuple[str | None, list[Chain]]:
    """k sampled chains; the most frequent answer (greedy when k == 1 and temperature 0)."""
    temp = ctx.generation.temperature if temperature is None else temperature
    chains = await asyncio.gather(*(sample_chain(problem, ctx, temp, i) for i in range(k)))
    votes = Counter(c.answer for c in chains if c.answer is not None)
    return (votes.most_common(1)[0][0] if votes else None), list(chains)
