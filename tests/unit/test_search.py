"""The search driver with the real sandbox and batching worker.

The policy here is a scripted backend (a table of candidate steps by depth) so the tree's shape
is known; the tiny random model runs the same path in ``test_search_runs_on_the_tiny_model``.
"""

import random

import pytest

from actors.backends.base import Backend, Generation
from actors.batcher import ModelWorker
from actors.sandbox import SandboxPool
from actors.search import SearchContext, majority_answer, search_many, search_tree, usable_step
from rstar.config import load_config
from rstar.schemas import Problem
from rstar.steps import STEP_END

pytestmark = pytest.mark.timeout(120)

SCRIPT = {  # depth -> candidate continuations (text before the delimiter)
    0: ["# two apples\nx = 2\n", "# broken\nx = 1/0\n", "# just a thought\n", "x = 2"],
    1: ["# add two more\nanswer = x + 2\n", "# triple\nanswer = x * 3\n"],
}


class ScriptedBackend(Backend):
    name = "scripted"

    def __init__(self, script=SCRIPT, version="v1"):
        self.script, self.version, self.calls = script, version, []

    def generate(self, prompts, params, seeds=None):
        self.calls.append(len(prompts))
        out = []
        for p in prompts:
            depth = p.split("Solution:")[-1].count(STEP_END)
            texts = self.script.get(depth, ["# lost\n"])
            out.append([Generation(text=texts[i % len(texts)], tokens=5, stopped=True) for i in range(params.n)])
        return out


def cfg(**over):
    sets = ["generation.few_shot=false", "search.n_children=4", "search.rollouts=4", "sandbox.workers=2"] + [
        f"{k}={v}" for k, v in over.items()
    ]
    return load_config(overrides=sets, env={})


async def run_search(problems, c, backend, k=4, use_reference=True):
    async with SandboxPool(c.sandbox) as sandbox, ModelWorker(backend, max_batch=64) as worker:
        ctx = SearchContext(worker=worker, sandbox=sandbox, search=c.search, generation=c.generation)
        trees = [t async for t in search_many(problems, ctx, k, use_reference=use_reference)]
        return trees, worker.stats


def problem(i=0, answer="4"):
    return Problem(id=f"p{i}", source="t", question=f"Two apples and two more ({i})?", answer=answer)


async def test_only_steps_that_run_become_nodes_and_terminals_are_graded():
    (tree,), _ = await run_search([problem()], cfg(), ScriptedBackend(), k=1)
    texts = [n.text for n in tree.nodes[1:]]
    assert "# two apples\nx = 2\n" in texts
    assert not any("1/0" in t or t == "# just a thought\n" for t in texts)  # raised / no code
    assert texts.count("# two apples\nx = 2\n") == 1  # duplicate candidate merged
    terms = {n.answer: n.correct for n in tree.nodes if n.terminal}
    assert terms == {"4": True, "6": False}
    assert tree.solved and tree.best_answer == "4" and tree.rollouts == 4
    assert all(n.policy_version == "v1" for n in tree.nodes[1:])
    root = tree.nodes[0]
    first = [n for n in tree.nodes if n.parent == 0]
    assert {n.text for n in first} == {"# two apples\nx = 2\n", "x = 2\n"}
    assert root.visits == 4 and sum(n.visits for n in first) == 4


async def test_without_reference_nothing_is_graded_and_majority_picks():
    (tree,), _ = await run_search([problem()], cfg(), ScriptedBackend(), k=1, use_reference=False)
    assert all(n.correct is None for n in tree.nodes)
    assert not tree.solved and tree.best_answer in {"4", "6"}


async def test_expansions_of_concurrent_trees_share_backend_calls():
    backend = ScriptedBackend()
    trees, stats = await run_search([problem(i) for i in range(8)], cfg(), backend, k=8)
    assert len(trees) == 8 and all(t.solved for t in trees)
    expansions = sum(sum(1 for n in t.nodes if n.text and not n.terminal) + 1 for t in trees)
    assert stats.gen_calls == len(backend.calls) < expansions
    assert max(backend.calls) > 1  # several trees' prompts in one generate() call


async def test_majority_and_greedy_chains():
    c = cfg()
    async with SandboxPool(c.sandbox) as sandbox, ModelWorker(ScriptedBackend()) as worker:
        ctx = SearchContext(worker=worker, sandbox=sandbox, search=c.search, generation=c.generation)
        answer, chains = await majority_answer(problem(), ctx, 4)
    # Chain i gets candidate 0 at every depth (n=1): x = 2 then answer = x + 2.
    assert answer == "4" and all(ch.answer == "4" for ch in chains) and len(chains) == 4


class SeededBackend(ScriptedBackend):
    """Draws each prompt's candidates with the prompt's seed (a shared generator without one)."""

    shared = random.Random()

    def generate(self, prompts, params, seeds=None):
        self.calls.append(len(prompts))
        out = []
        for i, p in enumerate(prompts):
            rng = random.Random(seeds[i]) if seeds is not None else self.shared
            texts = SCRIPT.get(p.split("Solution:")[-1].count(STEP_END), ["# lost\n"])
            out.append([Generation(text=rng.choice(texts), tokens=5, stopped=True) for _ in range(params.n)])
        return out


async def test_a_tree_is_the_same_alone_or_searched_beside_others():
    def shape(tree):
        return [(n.parent, n.text, n.visits) for n in tree.nodes]

    c = cfg(**{"search.n_children": 2, "search.rollouts": 6})
    (alone,), _ = await run_search([problem(3)], c, SeededBackend(), k=1)
    backend = SeededBackend()
    trees, _ = await run_search([problem(i) for i in range(6)], c, backend, k=6)
    assert max(backend.calls) > 1  # it shared calls with other trees
    assert shape(next(t for t in trees if t.problem.id == "p3")) == shape(alone)
    (reseeded,), _ = await run_search(
        [problem(3)], cfg(**{"search.n_children": 2, "search.rollouts": 6, "search.seed": 1}), SeededBackend(), k=1
    )
    assert shape(reseeded) != shape(alone)  # the search seed matters


def test_usable_step_rules():
    assert usable_step(Generation("x = 1", 3, stopped=True)) == "x = 1\n"
    assert usable_step(Generation("x = 1", 3, stopped=False)) is None  # cut by the token limit
    assert usable_step(Generation("answer = 1", 3, stopped=False, eos=True)) == "answer = 1\n"
    assert usable_step(Generation("x = 1", 3, stopped=False, eos=True)) is None
    assert usable_step(Generation("# only words", 3, stopped=True)) is None


async def test_search_runs_on_the_tiny_model(tiny_model_dir):
    from actors.runtime import setup_search

    c = load_config(
        overrides=[
            f'model.policy="{tiny_model_dir}"',
            "search.rollouts=2",
            "search.n_children=2",
            "generation.max_step_tokens=16",
        ],
        env={},
    )
    async with setup_search(c) as ctx:
        tree = await search_tree(problem(), ctx)
        stats = ctx.worker.stats.snapshot()
    assert tree.rollouts == 2 and tree.nodes[0].visits == 2
    assert stats["gen_tokens"] > 0 and stats["gen_calls"] >= 1


def test_prompt_head_follows_the_few_shot_switch():
    c = cfg()
    ctx = SearchContext(
        worker=None, sandbox=None, search=c.search, generation=c.generation.model_copy(update={"few_shot": True})
    )
    assert "Lena buys" in ctx.prompt("Q?", [])
    ctx.generation = ctx.generation.model_copy(update={"few_shot": False})
    assert "Lena buys" not in ctx.prompt("Q?", [])
