"""Accuracy of the current policy (+PPM) on a problem set, by method.

- ``greedy``: one chain at temperature 0.
- ``majority``: k sampled chains, the most frequent answer (majority@k).
- ``mcts``: MCTS with k rollouts, no reference answer and no PPM even when one is loaded: a
  rollout backs up −1 from a dead end and 0 from a terminal answer, and the answer is the
  majority over the tree's terminal answers (MCTS@k).
- ``mcts+ppm``: the same search with the context's PPM: PPM-augmented Q (``search.ppm_init``)
  and the answer by PPM score (MCTS+PPM@k); an error without a PPM.

Both MCTS methods share one loaded policy+PPM (``method_context``), so a round evaluates them at
the same rollout budget in one session. Answers are graded against the reference only after the
search. Problems are evaluated concurrently (``trees_in_flight`` at once) so their generation
shares batched backend calls.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Literal

import msgspec

from actors.search import SearchContext, majority_answer, search_tree
from rstar.schemas import Problem

Method = Literal["greedy", "majority", "mcts", "mcts+ppm"]
METHODS: tuple[str, ...] = ("greedy", "majority", "mcts", "mcts+ppm")


class ProblemOutcome(msgspec.Struct):
    problem_id: str
    answer: str | None
    gold: str | None
    correct: bool


class EvalResult(msgspec.Struct):
    dataset: str
    method: str
    k: int
    n: int
    correct: int
    accuracy: float
    seconds: float
    gen_tokens: int
    outcomes: list[ProblemOutcome] = []


def eval_result(
    dataset: str, method: str, k: int, outcomes: list[ProblemOutcome], seconds: float, gen_tokens: int
) -> EvalResult:
    """The totals of ``outcomes`` (``k`` is 1 for greedy, which samples once)."""
    n_correct = sum(o.correct for o in outcomes)
    return EvalResult(
        dataset=dataset,
        method=method,
        k=1 if method == "greedy" else k,
        n=len(outcomes),
        correct=n_correct,
        accuracy=round(n_correct / len(outcomes), 4) if outcomes else 0.0,
        seconds=round(seconds, 2),
        gen_tokens=gen_tokens,
        outcomes=outcomes,
    )


def method_context(ctx: SearchContext, method: Method) -> SearchContext:
    """The context ``method`` searches with: for ``mcts`` one that never scores with the PPM
    (``ppm_init`` off), for ``mcts+ppm`` one that does (``ppm_init`` on); else ``ctx`` itself."""
    if method == "mcts":
        return dataclasses.replace(ctx, search=ctx.search.model_copy(update={"ppm_init": False}), use_ppm=False)
    if method == "mcts+ppm":
        if ctx.worker.scorer is None:
            raise ValueError("method mcts+ppm needs a PPM (model.ppm)")
        return dataclasses.replace(ctx, search=ctx.search.model_copy(update={"ppm_init": True}), use_ppm=True)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} ({', '.join(METHODS)})")
    return ctx


async def answer_one(problem: Problem, ctx: SearchContext, method: Method, k: int) -> str | None:
    """The answer ``method`` gives; ``ctx`` as ``method_context`` returns it for the method."""
    # The reference answer never reaches the search: strip it before searching.
    blind = msgspec.structs.replace(problem, answer=None)
    if method == "greedy":
        return (await majority_answer(blind, ctx, 1, temperature=0.0))[0]
    if method == "majority":
        return (await majority_answer(blind, ctx, k))[0]
    if method in ("mcts", "mcts+ppm"):
        return (await search_tree(blind, ctx, rollouts=k, use_reference=False)).best_answer
    raise ValueError(f"unknown method {method!r} ({', '.join(METHODS)})")


async def evaluate(
    problems: list[Problem],
    ctx: SearchContext,
    method: Method,
    k: int = 8,
    dataset: str = "",
    concurrency: int | None = None,
    on_done: Callable[[ProblemOutcome], None] | None = None,
) -> EvalResult:
    ctx = method_context(ctx, method)
    sem = asyncio.Semaphore(concurrency or ctx.search.trees_in_flight)
    tokens0 = ctx.worker.stats.gen_tokens
    t0 = time.perf_counter()

    async def one(p: Problem) -> ProblemOutcome:
        async with sem:
            ans = await answer_one(p, ctx, method, k)
        correct = bool(await ctx.is_correct(ans, p.answer)) if p.answer is not None else False
        out = ProblemOutcome(problem_id=p.id, answer=ans, gold=p.answer, correct=correct)
        if on_done is not None:
            on_done(out)
        return out

    outcomes = await asyncio.gather(*(one(p) for p in problems))
    return eval_result(
        dataset, method, k, list(outcomes), time.perf_counter() - t0, ctx.worker.stats.gen_tokens - tokens0
    )
