"""How long does a learner round take? SFT and PPM training speed on the real policy, and an estimate.

    python benchmarks/train_speed.py --json [--examples 16] [--pairs 16] [--threads 1] [--method full]
                                           [--autocast off|bf16] [--preset nano]
                                           [--eval-problems 3] [--solve-rate 0.5] [--pairs-per-tree 8]
                                           [--trees-per-min T]

Measured on the configured policy (default: the built-in SmolLM2-135M; ``--preset nano`` takes
the nano preset's policy and training settings), with the default (or the preset's)
``train`` settings except ``autocast = --autocast``, ``epochs = ppm_epochs = 1`` and ``--threads``
torch threads for training and generation (default 1: on a CPU shared with other work, torch's default of one
thread per core can be several times slower; ``--threads 0`` keeps torch's default):

- ``sft_s_per_example``: wall seconds of the training loop per example seen (forward, backward,
  optimizer; model load and save excluded, reported apart as ``sft_overhead_s``), on synthetic
  reference solutions (levels 1-3), the bootstrap round's data.
- ``ppm_s_per_pair``: the same for the PPM (the pairs the loop ran, counted exactly), on pairs of
  a reference solution against the same solution with a wrong last step, the PPM initialised
  from the policy just trained.
- ``eval``: seconds (and generated tokens) per problem of greedy, majority@k, MCTS@k and
  MCTS+PPM@k (with the PPM just trained) with that policy on ``--eval-problems`` held-out problems
  searched together (a policy trained on a few examples only: its chains differ from a trained
  policy's, and a bigger set batches more).

``estimate`` scales these to one round at the config a round runs with (defaults, ``$RSTAR_CONFIG``
and ``RSTAR_*`` variables; not the measurement's overrides above): SFT on ``sft_per_problem`` ×
``round_quota`` × ``--solve-rate`` examples for ``epochs`` (or ``steps`` × batch when set); PPM on
``--pairs-per-tree`` × ``round_quota`` pairs less the held-out share, capped by ``ppm_max_pairs``,
for ``ppm_epochs``; evaluation as the measured seconds per problem of each method times the
held-out set sizes; collection at ``--trees-per-min`` (the actors' rate, e.g. from
``benchmarks/loop_rates.py`` on a run's store) when given, else one actor spending
``search.rollouts / eval_k`` times the measured MCTS@k per tree. Every assumption is printed with
the figures, after ``benchmarks.run_info`` (command, date, machine with its load average):
absolute numbers depend on the machine and on what else shares its cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.up import preset_path  # noqa: E402
from benchmarks.run_info import run_info  # noqa: E402
from learner.ppm_train import PPMPair, train_ppm  # noqa: E402
from learner.sft import SFTExample, train_sft  # noqa: E402
from rstar.config import load_config  # noqa: E402
from rstar.curriculum import synthetic_problems  # noqa: E402
from rstar.models import resolve_model_dir  # noqa: E402


def sft_examples(n: int) -> list[SFTExample]:
    return [SFTExample(p.question, tuple(p.meta["reference_steps"])) for p in synthetic_problems(n, levels=(1, 2, 3))]


def ppm_pairs(n: int) -> list[PPMPair]:
    out = []
    for i, p in enumerate(synthetic_problems(n, levels=(1, 2, 3), seed=1)):
        steps = tuple(p.meta["reference_steps"])
        wrong = steps[:-1] + ("# Take the last value as it is.\nanswer = 0\n",)
        out.append(PPMPair(f"bench-{i}", p.question, (), steps, wrong))
    return out


async def eval_seconds(cfg, policy_dir: Path, n: int, ppm_dir: Path | None = None) -> dict[str, float]:
    """Wall seconds per problem of each evaluation method on ``n`` held-out problems at once
    (MCTS+PPM@k too when ``ppm_dir`` is given)."""
    from actors.runtime import setup_search
    from learner.evaluate import evaluate
    from learner.round_eval import eval_config

    problems = synthetic_problems(n, "heldout", (1, 2, 3))
    out: dict[str, float] = {}
    async with setup_search(eval_config(cfg, policy_dir, ppm_dir)) as ctx:
        for method in ("greedy", "majority", "mcts") + (("mcts+ppm",) if ppm_dir is not None else ()):
            res = await evaluate(problems, ctx, method, cfg.learner.eval_k)
            out[f"{method}_s_per_problem"] = round(res.seconds / n, 2)
            out[f"{method}_tokens_per_problem"] = round(res.gen_tokens / n, 1)
            out[f"{method}_accuracy"] = res.accuracy
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--examples", type=int, default=16)
    ap.add_argument("--pairs", type=int, default=16)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for training and generation (0: torch's default, one per core)",
    )
    ap.add_argument("--method", choices=["full", "lora"], default="full")
    ap.add_argument("--autocast", choices=["off", "bf16"], default="off", help="train.autocast for both trainers")
    ap.add_argument("--preset", default=None, help="a preset under app/presets (e.g. nano: the nano policy)")
    ap.add_argument("--eval-problems", type=int, default=3)
    ap.add_argument("--solve-rate", type=float, default=0.5, help="assumed share of a round's trees solved")
    ap.add_argument("--pairs-per-tree", type=float, default=8.0, help="assumed PPM pairs per tree")
    ap.add_argument("--trees-per-min", type=float, default=None, help="actors' collection rate, if known")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    preset = preset_path(args.preset) if args.preset else None
    cfg = load_config(
        preset=preset,
        overrides=[
            f"train.autocast={args.autocast!r}",
            f"train.threads={args.threads}",
            "train.epochs=1",
            "train.ppm_epochs=1",
            f'train.method="{args.method}"',
            f"model.threads={args.threads}",
        ],
    )
    base = resolve_model_dir(cfg.model.policy, cfg.model.cache_dir)
    with tempfile.TemporaryDirectory(prefix="rstar-train-speed-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        sft = train_sft(sft_examples(args.examples), base, tmp / "policy", cfg.train, tmp / "sft-work", progress=False)
        sft_wall = time.perf_counter() - t0
        t0 = time.perf_counter()
        ppm = train_ppm(ppm_pairs(args.pairs), tmp / "policy", tmp / "ppm", cfg.train, tmp / "ppm-work", progress=False)
        ppm_wall = time.perf_counter() - t0
        ev = (
            asyncio.run(eval_seconds(cfg, tmp / "policy", args.eval_problems, tmp / "ppm"))
            if args.eval_problems
            else {}
        )

    # The estimate is for a round at the config a round runs with, not the measurement's overrides.
    t, lc, s = load_config(preset=preset).train, cfg.learner, cfg.search
    solved = lc.round_quota * args.solve_rate
    sft_n = t.steps * t.batch_size * t.grad_accum if t.steps else t.sft_per_problem * solved * t.epochs
    pairs_n = args.pairs_per_tree * lc.round_quota * (1 - t.ppm_heldout_fraction)
    if t.ppm_max_pairs:
        pairs_n = min(pairs_n, t.ppm_max_pairs)
    pairs_n *= t.ppm_epochs
    eval_problems = lc.eval_synthetic_n + (lc.eval_real_n if lc.eval_real else 0)
    per_problem = sum(ev.get(f"{m}_s_per_problem", 0.0) for m in lc.eval_methods)
    est = {
        "sft_s": round(sft_n * sft.seconds_per_example, 0),
        "ppm_s": round(pairs_n * ppm.seconds_per_pair, 0),
        "eval_s": round(eval_problems * per_problem, 0),
    }
    # A training tree: search.rollouts rollouts, against eval_k for MCTS@k, on one actor.
    tree_s = ev.get("mcts_s_per_problem", 0.0) * s.rollouts / lc.eval_k
    est["collect_s"] = round(
        60 * lc.round_quota / args.trees_per_min if args.trees_per_min else lc.round_quota * tree_s, 0
    )
    est["total_h"] = round(sum(est.values()) / 3600, 2)
    out = {
        **run_info(),
        "model": str(base),
        "method": args.method,
        "threads": args.threads,
        "sft_s_per_example": sft.seconds_per_example,
        "sft_examples": sft.examples,
        "sft_steps": sft.steps,
        "sft_overhead_s": round(sft_wall - sft.seconds_per_example * sft.examples, 1),
        "ppm_s_per_pair": ppm.seconds_per_pair,
        "ppm_pairs": ppm.train_pairs + ppm.heldout_pairs,
        "ppm_overhead_s": round(ppm_wall - ppm.seconds_per_pair * ppm.train_pairs, 1),
        "eval": ev,
        "sft_report": asdict(sft),
        "ppm_report": asdict(ppm),
        "assumptions": {
            "round_quota": lc.round_quota,
            "solve_rate": args.solve_rate,
            "sft_examples": sft_n,
            "sft_epochs": t.epochs,
            "sft_steps": t.steps,
            "pairs_per_tree": args.pairs_per_tree,
            "ppm_pairs": pairs_n,
            "ppm_epochs": t.ppm_epochs,
            "ppm_heldout_fraction": t.ppm_heldout_fraction,
            "ppm_max_pairs": t.ppm_max_pairs,
            "rollouts": s.rollouts,
            "eval_problems": eval_problems,
            "eval_k": lc.eval_k,
            "trees_per_min": args.trees_per_min or "one actor, a tree costed as MCTS@k x rollouts/k",
        },
        "estimate": est,
    }
    if args.json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>22}: {v}")


if __name__ == "__main__":
    main()
