"""The per-round evaluation: held-out problems that training never sees, up to four methods.

    sets = eval_sets(cfg)                         # {"synthetic": [...], "svamp": [...]}
    figures = await evaluate_round(cfg, sets, policy_dir, ppm_dir, round_no=2)   # a Figures
    figures.sets["synthetic"]["greedy"]           # MethodRecord(accuracy=0.4, n=30, correct=12,
                                                  #   by_level={"1": LevelCount(5, 4), ...}, ...)

Held-out sets (``learner.eval_*``): the synthetic curriculum's ``heldout`` split (disjoint from
its train split by construction) at ``eval_levels``, and the held-out part of a real set
(``split_pool_heldout`` by ``eval_seed``); the round controller passes their ids to data
selection as ``exclude``, so none of them ever becomes a training example even if an actor
searched it. Methods (``learner.evaluate``, ``learner.eval_methods``): greedy, majority@k, MCTS@k
(no PPM: answer by majority over the tree's terminal answers) and, when the round has a PPM,
MCTS+PPM@k (PPM-augmented Q, answer by PPM score), both MCTS methods at the same rollout budget k.

The policy is evaluated without few-shot examples: after the bootstrap it writes the step format
on its own (and that is the prompt it was fine-tuned on).

The record of a set and method (``record``, a ``rstar.schemas.MethodRecord``) holds the counts, so a script can recheck it and put
an interval on it (``rstar.stats.wilson``): ``n`` problems, ``correct`` answers, ``accuracy`` =
correct / n (4 decimals), ``by_level`` — the same counts per curriculum level (``problem.meta
["level"]``, keys as strings) for the problems that have one, an empty dict for a set without
levels — ``correct_ids``, the ids of the problems answered correctly (sorted), so two rounds
or methods on the same set can be compared problem by problem (``paired_p``), and ``seconds``,
the method's wall time. The round's ``Figures`` are stored as ``eval.accuracy``. Readers take them
typed, through ``rstar.schemas.RoundEval.of(row["eval"]).records()`` (``MethodRecord``), which
also reads documents stored before these records, whose figures were bare floats (``n`` and
``correct`` None).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

from rstar.config import Config
from rstar.log import get_logger
from rstar.schemas import Figures, LevelCount, MethodRecord, Problem, level_key

if TYPE_CHECKING:
    from learner.evaluate import Method

log = get_logger(__name__)


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
        sets[Path(lc.eval_real).stem if lc.eval_real.endswith(".jsonl") else lc.eval_real] = held[: lc.eval_real_n]
    return sets


def eval_ids(sets: dict[str, list[Problem]]) -> frozenset[str]:
    return frozenset(p.id for ps in sets.values() for p in ps)


def method_label(method: str, k: int) -> str:
    """The label of a method's figures: ``greedy``, ``majority@k``, ``mcts@k``, ``mcts+ppm@k``."""
    return "greedy" if method == "greedy" else f"{method}@{k}"


def method_rank(label: str) -> int:
    """Display order of a method label: greedy, majority, MCTS, MCTS+PPM (anything else last)."""
    return next((i for i, m in enumerate(("greedy", "majority@", "mcts@", "mcts+ppm@")) if label.startswith(m)), 4)


def record(problems: list[Problem], outcomes, seconds: float | None = None) -> MethodRecord:
    """The record of one set and method from its per-problem outcomes (objects with
    ``problem_id`` and ``correct``, e.g. ``learner.evaluate.ProblemOutcome``) and its wall time."""
    level = {p.id: p.meta.get("level") for p in problems}
    by_level: dict[str, dict[str, int]] = {}
    n = correct = 0
    for o in outcomes:
        n += 1
        correct += bool(o.correct)
        lv = level.get(o.problem_id)
        if lv is not None:
            b = by_level.setdefault(str(lv), {"n": 0, "correct": 0})
            b["n"] += 1
            b["correct"] += bool(o.correct)
    return MethodRecord(
        accuracy=round(correct / n, 4) if n else 0.0,
        n=n,
        correct=correct,
        by_level={k: LevelCount(**by_level[k]) for k in sorted(by_level, key=level_key)},
        correct_ids=sorted(o.problem_id for o in outcomes if o.correct),
        seconds=seconds,
    )


def paired_p(a: MethodRecord, b: MethodRecord) -> float | None:
    """McNemar's exact two-sided p value between two records of the same set (two rounds, or two
    methods), from their ``correct_ids``; None when either lacks them or their ``n`` differ."""
    from rstar.stats import mcnemar_exact_counts

    if a.correct_ids is None or b.correct_ids is None or a.n != b.n:
        return None
    sa, sb = set(a.correct_ids), set(b.correct_ids)
    return mcnemar_exact_counts(len(sa - sb), len(sb - sa))


def eval_config(cfg: Config, policy_dir: Path, ppm_dir: Path | None) -> Config:
    """The search settings of an evaluation: the round's models, no few-shot, the PPM loaded when
    there is one (``learner.evaluate.method_context`` decides per method whether it is used)."""
    return cfg.model_copy(
        update={
            "model": cfg.model.model_copy(
                update={"policy": str(policy_dir), "backend": "transformers", "ppm": str(ppm_dir) if ppm_dir else None}
            ),
            "generation": cfg.generation.model_copy(update={"few_shot": False}),
            "search": cfg.search.model_copy(update={"ppm_init": ppm_dir is not None}),
        }
    )


def round_methods(cfg: Config, with_ppm: bool) -> list[Method]:
    """The methods a round evaluates: ``learner.eval_methods``, without ``mcts+ppm`` when the
    round has no PPM."""
    return [m for m in cfg.learner.eval_methods if with_ppm or m != "mcts+ppm"]


async def evaluate_round(
    cfg: Config,
    sets: dict[str, list[Problem]],
    policy_dir: Path,
    ppm_dir: Path | None,
    round_no: int,
    done: Figures | None = None,
    on_figure=None,
) -> Figures:
    """The round's ``Figures``: per set its ``n`` and a ``record`` per method label (``greedy``,
    ``majority@k``, ``mcts@k``, ``mcts+ppm@k``), and the evaluation's seconds.

    ``done`` holds figures an interrupted evaluation already stored: those are kept as they are
    (read by ``Figures.of``: a bare float from an older document is a record without counts), not
    recomputed.
    ``await on_figure(figures)`` runs after each new figure, so a caller can store progress
    (``learner.round_stages.evaluate_published`` does).
    """
    from actors.runtime import setup_search
    from learner.evaluate import evaluate

    t0 = time.perf_counter()
    lc = cfg.learner
    prior = done.seconds if done else 0.0
    out: dict[str, dict[str, MethodRecord | int]] = {
        name: dict(figs) for name, figs in (done.sets if done else {}).items()
    }

    def figures() -> Figures:  # the figures of round ``round_no`` so far
        return Figures(
            {name: dict(figs) for name, figs in out.items()}, float(f"{prior + time.perf_counter() - t0:.2f}")
        )

    todo = [
        (name, m)
        for name in sets
        for m in round_methods(cfg, ppm_dir is not None)
        if method_label(m, lc.eval_k) not in out.get(name, {})
    ]
    if not todo:
        return figures()
    async with setup_search(eval_config(cfg, policy_dir, ppm_dir), actor_id="learner-eval", round_no=round_no) as ctx:
        for name, method in todo:
            label = method_label(method, lc.eval_k)
            problems = sets[name] if method == "greedy" or not lc.eval_sampled_n else sets[name][: lc.eval_sampled_n]
            res = await evaluate(problems, ctx, method, lc.eval_k, dataset=name)
            out.setdefault(name, {})["n"] = len(sets[name])
            out[name][label] = record(problems, res.outcomes, res.seconds)
            log.info("round %d eval: %s %s = %d/%d (%.0fs)", round_no, name, label, res.correct, res.n, res.seconds)
            if on_figure is not None:
                await on_figure(figures())
    return figures()
