"""How strong is round 0? Train a preset's policy on the teacher's demonstrations, evaluate it.

    python benchmarks/bootstrap_round.py --json [--preset nano] [--out DIR] [--set key=value ...]

Round 0 of a run as the learner trains it (``learner.round_stages.round_train_config``: the
``bootstrap_lr`` / ``bootstrap_steps`` settings) on the teacher's problems
(``learner.bootstrap.teacher_problems``, never one of the held-out set), then evaluated greedily
on the round's held-out synthetic set (``learner.round_eval.evaluate_round``, the numbers a run's
round 0 reports). It skips what a run does around that — the sandbox check of each reference
solution (the curriculum's references all pass it), the store, the broker — so settings of the
bootstrap (steps, batch, learning rate, precision) can be compared alone. With the nano preset
this trains from scratch: the question is when the policy learns to copy the question's numbers.

Prints one JSON object after ``benchmarks.run_info``: the overrides, the SFT report (examples,
steps, first and last loss, seconds), the training and evaluation wall seconds, and the held-out
greedy ``correct`` of ``n`` with the Wilson 95 % interval and the count per level. The trained
policy stays in ``--out`` (a temp dir by default).
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
from learner.bootstrap import teacher_problems  # noqa: E402
from learner.round_eval import eval_ids, eval_sets, evaluate_round  # noqa: E402
from learner.round_stages import round_train_config  # noqa: E402
from learner.sft import SFTExample, train_sft  # noqa: E402
from rstar.config import load_config  # noqa: E402
from rstar.models import resolve_model_dir  # noqa: E402
from rstar.schemas import MethodRecord  # noqa: E402
from rstar.stats import wilson  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="nano")
    ap.add_argument("--out", type=Path, default=None, help="keep the trained policy here")
    ap.add_argument("--set", dest="overrides", action="append", default=[], help="a config override")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    info = run_info()
    cfg = load_config(preset=preset_path(args.preset), overrides=['learner.eval_methods=["greedy"]', *args.overrides])
    sets = eval_sets(cfg)
    if "synthetic" not in sets:
        sys.exit("the config has no held-out synthetic set (learner.eval_synthetic_n)")
    examples = [SFTExample(p.question, tuple(p.meta["reference_steps"])) for p in teacher_problems(cfg, eval_ids(sets))]
    if not examples:
        sys.exit("the teacher has no problems (learner.teacher_problems)")
    with tempfile.TemporaryDirectory(prefix="rstar-bootstrap-") as tmp:
        out = args.out or Path(tmp)
        t0 = time.perf_counter()
        base = resolve_model_dir(cfg.learner.base_model or cfg.model.policy, cfg.model.cache_dir)
        sft = train_sft(
            examples, base, out / "policy", round_train_config(cfg, 0), out / "work", progress=not args.json
        )
        t1 = time.perf_counter()
        figures = asyncio.run(evaluate_round(cfg, sets, out / "policy", None, 0))
        t2 = time.perf_counter()
    greedy = figures.sets["synthetic"]["greedy"]
    assert isinstance(greedy, MethodRecord) and greedy.correct is not None and greedy.n is not None
    lo, hi = wilson(greedy.correct, greedy.n)
    doc = info | {
        "preset": args.preset,
        "overrides": args.overrides,
        "sft": asdict(sft),
        "train_s": round(t1 - t0, 1),
        "eval_s": round(t2 - t1, 1),
        "greedy": {
            "correct": greedy.correct,
            "n": greedy.n,
            "wilson95": [round(lo, 4), round(hi, 4)],
            "by_level": {k: v.correct for k, v in sorted(greedy.by_level.items())},
        },
    }
    if args.json:
        print(json.dumps(doc, indent=1))
    else:
        print(
            f"round 0 greedy {greedy.correct}/{greedy.n} [{lo:.1%}, {hi:.1%}] after {sft.steps} steps in {t1 - t0:.0f}s"
        )


if __name__ == "__main__":
    main()
