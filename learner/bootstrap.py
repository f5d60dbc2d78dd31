"""Round 0, the bootstrap: verified trajectories from a teacher, stored like any other tree.

    report = await run_bootstrap(cfg, engine, exclude=eval_ids)

The base SmolLM2-135M cannot write the step format (DESIGN §6), so, as the paper used a far larger
model for its first round, round 0 takes its data from a teacher (``learner.teacher``):

- ``curriculum``: the synthetic curriculum's reference solutions (``meta["reference_steps"]``),
  each step executed in the sandbox after its ancestors exactly as a searched step would be; a
  solution is stored only when every step ran and the final ``answer`` grades correct. It becomes
  a linear tree (root + steps, Q = 1, one visit, the last node terminal and correct).
- ``openai``: an OpenAI-compatible endpoint (``model.openai_url``, ``model.openai_model``) driven
  through the same MCTS code as the actors (``actors.search.search_many``, few-shot prompt,
  ``teacher_rollouts`` rollouts, terminal-guided); its trees may hold wrong branches too, and then
  also yield PPM pairs.

Trees are stored with ``source="teacher"``, ``round=0`` and the id ``teacher-<problem id>``, so a
restarted bootstrap skips what it already stored and never stores a problem twice. Which problems:
``teacher_problems`` from ``teacher_source`` (the curriculum's train split at ``teacher_levels``,
or a named set / JSONL file minus its evaluation hold-out), never one in ``exclude``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import asdict, dataclass

import msgspec
from sqlalchemy import Engine, select

from rstar.config import Config
from rstar.log import get_logger
from rstar.schemas import Node, Problem, TreeResult
from rstar.steps import is_terminal, normalize_step
from store.models import TreeRow
from store.writer import upsert_trees

log = get_logger(__name__)
_WRITE_BATCH = 32


class BootstrapError(RuntimeError):
    """The teacher cannot run as configured (the message names the setting)."""


@dataclass
class BootstrapReport:
    teacher: str
    problems: int
    stored: int  # new teacher trees written by this call
    already: int  # problems whose teacher tree was stored before
    failed: int  # problems the teacher did not solve (nothing stored)
    seconds: float

    def as_dict(self) -> dict:
        return asdict(self)


def teacher_tree_id(problem: Problem) -> str:
    return f"teacher-{problem.id}"


def teacher_problems(cfg: Config, exclude: frozenset[str] | set[str] = frozenset()) -> list[Problem]:
    lc = cfg.learner
    if lc.teacher_source == "synthetic":
        from rstar.curriculum import synthetic_problems

        problems = synthetic_problems(
            lc.teacher_problems + len(exclude), "train", tuple(lc.teacher_levels), lc.teacher_seed
        )
    else:
        from rstar.problems import load_problems, split_pool_heldout

        problems = load_problems(lc.teacher_source, seed=lc.teacher_seed)
        problems = split_pool_heldout(problems, lc.eval_real_fraction, lc.eval_seed)[0]
    return [p for p in problems if p.id not in exclude][: lc.teacher_problems]


def linear_tree(problem: Problem, steps: list[str], outputs: list[str], answer: str | None, version: str) -> TreeResult:
    """A verified solution as a tree: root, then one node per step, Q = 1 along the path."""
    nodes = [Node(idx=0, parent=None, depth=0, visits=1, q=1.0, policy_version=version)]
    for i, (text, out) in enumerate(zip(steps, outputs), 1):
        last = i == len(steps)
        nodes.append(
            Node(
                idx=i,
                parent=i - 1,
                depth=i,
                text=text,
                code_output=out,
                visits=1,
                q=1.0,
                terminal=last,
                correct=True if last else None,
                answer=answer if last else None,
                policy_version=version,
            )
        )
    now = time.time()
    return TreeResult(
        tree_id=teacher_tree_id(problem),
        problem=problem,
        actor_id="learner-teacher",
        policy_version=version,
        ppm_version="",
        started_at=now,
        finished_at=now,
        nodes=nodes,
        solved=True,
        best_answer=answer,
        round=0,
        source="teacher",
        rollouts=1,
    )


async def verify_reference(problem: Problem, sandbox) -> TreeResult | None:
    """The problem's reference solution as a linear tree, or None if any step fails or the answer is wrong."""
    from rstar.grading import grade

    raw = problem.meta.get("reference_steps")
    if not raw or problem.answer is None:
        raise BootstrapError(
            f"problem {problem.id} has no meta['reference_steps'] and answer: the curriculum "
            "teacher needs synthetic problems (learner.teacher_source = 'synthetic')"
        )
    steps = [normalize_step(s) for s in raw]
    if not is_terminal(steps[-1]):
        return None
    results = await asyncio.gather(*(sandbox.run(steps[:i]) for i in range(1, len(steps) + 1)))
    if not all(r.ok for r in results) or not await asyncio.to_thread(grade, results[-1].answer, problem.answer):
        return None
    return linear_tree(problem, steps, [r.stdout for r in results], results[-1].answer, "teacher:curriculum")


def _stored_ids(engine: Engine, ids: list[str]) -> set[str]:
    out: set[str] = set()
    with engine.connect() as c:
        for a in range(0, len(ids), 500):
            out |= set(c.execute(select(TreeRow.id).where(TreeRow.id.in_(ids[a : a + 500]))).scalars())
    return out


async def _curriculum(cfg: Config, todo: list[Problem], store) -> int:
    from actors.sandbox import SandboxPool

    failed = 0
    async with SandboxPool(cfg.sandbox) as sandbox:
        for a in range(0, len(todo), _WRITE_BATCH):
            trees = await asyncio.gather(*(verify_reference(p, sandbox) for p in todo[a : a + _WRITE_BATCH]))
            failed += sum(t is None for t in trees)
            await store([t for t in trees if t is not None])
    return failed


async def _openai(cfg: Config, todo: list[Problem], store) -> int:
    from actors.runtime import setup_search
    from actors.search import search_many

    if not cfg.model.openai_model:
        raise BootstrapError("learner.teacher = 'openai' needs model.openai_model (and model.openai_url)")
    tcfg = cfg.model_copy(
        update={
            "model": cfg.model.model_copy(update={"backend": "openai"}),
            "generation": cfg.generation.model_copy(update={"few_shot": True}),
        }
    )
    failed, batch = 0, []
    async with setup_search(tcfg, actor_id="learner-teacher", round_no=0) as ctx:
        async for tree in search_many(todo, ctx, cfg.search.trees_in_flight, cfg.learner.teacher_rollouts):
            failed += not tree.solved
            batch.append(
                msgspec.structs.replace(
                    tree,
                    tree_id=teacher_tree_id(tree.problem),
                    source="teacher",
                    policy_version=f"teacher:{cfg.model.openai_model}",
                )
            )
            if len(batch) >= _WRITE_BATCH:
                await store(batch)
                batch = []
    await store(batch)
    return failed


async def run_bootstrap(
    cfg: Config, engine: Engine, exclude: frozenset[str] | set[str] = frozenset()
) -> BootstrapReport:
    """Collect and store the teacher's trees for round 0 (resumes: stored problems are skipped)."""
    t0 = time.perf_counter()
    kind = cfg.learner.teacher
    if kind == "none":
        return BootstrapReport(kind, 0, 0, 0, 0, 0.0)
    problems = teacher_problems(cfg, exclude)
    done = _stored_ids(engine, [teacher_tree_id(p) for p in problems])
    todo = [p for p in problems if teacher_tree_id(p) not in done]
    stored = 0

    async def store(trees: list[TreeResult]) -> None:
        nonlocal stored
        if trees:
            stored += await asyncio.to_thread(upsert_trees, engine, trees)
            log.info(
                "bootstrap: %d teacher trees stored (%d of %d problems to go)",
                stored + len(done),
                len(todo) - stored,
                len(problems),
            )

    log.info("bootstrap with the %s teacher: %d problems, %d already stored", kind, len(problems), len(done))
    failed = await (_curriculum if kind == "curriculum" else _openai)(cfg, todo, store)
    return BootstrapReport(kind, len(problems), stored, len(done), failed, round(time.perf_counter() - t0, 2))
