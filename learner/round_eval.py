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


def has_eval_sets(cfg: Config) -> bool:
    """Whether ``eval_sets`` has anything to evaluate on (without loading the sets)."""
    lc = cfg.learner
    return bool(lc.eval_synthetic_n or (lc.eval_real and lc.eval_real_n))


def eval_sets(cfg: Config) -> dict[str, list[Problem]]:
    lc = cfg.learner
    sets: dict[str, list[Problem]] = {}
    if not has_eval_sets(cfg):
        return sets
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


def method_column(label: str) -> str:
    """One name for a method across rounds: MCTS@k and MCTS+PPM@k become ``mcts(+ppm)@k`` (the
    round's PPM, or its absence, says which ran); greedy and majority@k stay as they are."""
    return "mcts(+ppm)@" + label.split("@")[1] if label.startswith("mcts") else label


def method_rank(label: str) -> int:
    """Display order of a method label: greedy, majority, MCTS (anything else last)."""
    return next((i for i, m in enumerate(("greedy", "majority", "mcts")) if label.startswith(m)), 3)


def eval_config(cfg: Config, policy_dir: Path, ppm_dir: Path | None) -> Config:
    """The search settings of an evaluation: the round's models, no few-shot, PPM-augmented with a PPM."""
    return cfg.model_copy(update={
        "model": cfg.model.model_copy(update={"policy": str(policy_dir), "backend": "transformers",
                                              "ppm": str(ppm_dir) if ppm_dir else None}),
        "generation": cfg.generation.model_copy(update={"few_shot": False}),
        "search": cfg.search.model_copy(update={"ppm_init": ppm_dir is not None})})


async def evaluate_round(cfg: Config, sets: dict[str, list[Problem]], policy_dir: Path,
                         ppm_dir: Path | None, round: int, done: dict | None = None,
                         on_figure=None) -> dict:
    """``{"sets": {name: {"n": n, "greedy": acc, "majority@k": acc, "mcts(+ppm)@k": acc}}, "seconds": s}``.

    ``done`` (the same shape) holds figures an interrupted evaluation already stored: those are
    kept, not recomputed. ``await on_figure(figures)`` runs after each new figure, so a caller
    can store progress (``learner.round_stages.evaluate_published`` does).
    """
    from actors.runtime import setup_search
    from learner.evaluate import evaluate

    t0 = time.perf_counter()
    lc = cfg.learner
    prior = float((done or {}).get("seconds", 0.0))
    out: dict[str, dict] = {name: dict(figs) for name, figs in ((done or {}).get("sets") or {}).items()}

    def figures() -> dict:
        return {"sets": out, "seconds": float(f"{prior + time.perf_counter() - t0:.2f}")}  # `round` is the round here

    todo = [(name, m) for name in sets for m in lc.eval_methods
            if method_label(m, lc.eval_k, ppm_dir is not None) not in out.get(name, {})]
    if not todo:
        return figures()
    async with setup_search(eval_config(cfg, policy_dir, ppm_dir), actor_id="learner-eval", round=round) as ctx:
        for name, method in todo:
            label = method_label(method, lc.eval_k, ppm_dir is not None)
            res = await evaluate(sets[name], ctx, method, lc.eval_k, dataset=name)
            out.setdefault(name, {})["n"] = len(sets[name])
            out[name][label] = res.accuracy
            log.info("round %d eval: %s %s = %.3f (%d problems, %.0fs)", round, name, label, res.accuracy,
                     res.n, res.seconds)
            if on_figure is not None:
                await on_figure(figures())
    return figures()
