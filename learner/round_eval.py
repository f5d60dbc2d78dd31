"""The per-round evaluation: held-out problems that training never sees, three methods.

    sets = eval_sets(cfg)                         # {"synthetic": [...], "svamp": [...]}
    figures = await evaluate_round(cfg, sets, policy_dir, ppm_dir, round=2)

Held-out sets (``learner.eval_*``): the synthetic curriculum's ``heldout`` split (disjoint from
its train split by construction) at ``eval_levels``, and the held-out part of a real set
(``split_pool_heldout`` by ``eval_seed``); the round controller passes their ids to data
selection as ``exclude``, so none of them ever becomes a training example even if an actor
searched it. Methods (``learner.evaluate``): greedy, majority@k and MCTS@k — MCTS+PPM@k when the
round has a PPM (PPM-augmented Q, answer by PPM score), else answer by majority over the tree.

The policy is evaluated without few-shot examples: after the bootstrap it writes the step format
on its own (and that is the prompt it was fine-tuned on). Figures are accuracies in [0, 1].
"""

from __future__ import annotations

import time
from pathlib import Path

from rstar.config import Config
from rstar.log import get_logger
from rstar.schemas import Problem

log = get_logger("learner.round_eval")


def eval_sets(cfg: Config) -> dict[str, list[Problem]]:
    lc = cfg.learner
    sets: dict[str, list[Problem]] = {}
    if lc.eval_synthetic_n:
        from rstar.curriculum import synthetic_problems

        sets["synthetic"] = synthetic_problems(lc.eval_synthetic_n, "heldout", tuple(lc.eval_levels), lc.eval_seed)
    if lc.eval_real and lc.eval_real_n:
        from rstar.problems import load_problems, split_pool_heldout

        held = split_pool_heldout(load_problems(lc.eval_real), lc.eval_real_fraction, lc.eval_seed)[1]
        sets[Path(lc.eval_real).stem if lc.eval_real.endswith(".jsonl") else lc.eval_real] = held[:lc.eval_real_n]
    return sets


def eval_ids(sets: dict[str, list[Problem]]) -> frozenset[str]:
    return frozenset(p.id for ps in sets.values() for p in ps)


def method_label(method: str, k: int, with_ppm: bool) -> str:
    if method == "greedy":
        return "greedy"
    if method == "majority":
        return f"majority@{k}"
    return f"mcts+ppm@{k}" if with_ppm else f"mcts@{k}"


def eval_config(cfg: Config, policy_dir: Path, ppm_dir: Path | None) -> Config:
    """The search settings of an evaluation: the round's models, no few-shot, PPM-augmented with a PPM."""
    return cfg.model_copy(update={
        "model": cfg.model.model_copy(update={"policy": str(policy_dir), "backend": "transformers",
                                              "ppm": str(ppm_dir) if ppm_dir else None}),
        "generation": cfg.generation.model_copy(update={"few_shot": False}),
        "search": cfg.search.model_copy(update={"ppm_init": ppm_dir is not None})})


async def evaluate_round(cfg: Config, sets: dict[str, list[Problem]], policy_dir: Path,
                         ppm_dir: Path | None, round: int) -> dict:
    """``{"sets": {name: {"n": n, "greedy": acc, "majority@k": acc, "mcts(+ppm)@k": acc}}, "seconds": s}``."""
    from actors.runtime import setup_search
    from learner.evaluate import evaluate

    t0 = time.perf_counter()
    lc = cfg.learner
    out: dict[str, dict] = {}
    async with setup_search(eval_config(cfg, policy_dir, ppm_dir), actor_id="learner-eval", round=round) as ctx:
        for name, problems in sets.items():
            out[name] = {"n": len(problems)}
            for method in lc.eval_methods:
                res = await evaluate(problems, ctx, method, lc.eval_k, dataset=name)
                out[name][method_label(method, lc.eval_k, ppm_dir is not None)] = res.accuracy
                log.info("round %d eval: %s %s = %.3f (%d problems, %.0fs)", round, name,
                         method_label(method, lc.eval_k, ppm_dir is not None), res.accuracy, res.n, res.seconds)
    return {"sets": out, "seconds": float(f"{time.perf_counter() - t0:.2f}")}  # `round` is the round here
