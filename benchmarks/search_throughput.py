"""Does the search keep the model busy? Raw backend vs batched MCTS vs one tree at a time.

    python benchmarks/search_throughput.py --json [--problems 24] [--k 16] [--n 4]
    python benchmarks/search_throughput.py --json --preset nano \
        --set model.policy=DATA/learner/round-0/policy --set generation.few_shot=false

One run, one loaded model, three measurements:

- ``raw_tokens_per_s``: the backend alone, ``generate()`` on B/n root prompts × ``n`` samples
  (batch B = ``--batch`` sequences, the worker's ``max_batch``).
- ``search_tokens_per_s``: generated tokens per wall second of ``search_many`` with ``k`` trees in
  flight — expansions batched by ``actors.batcher.ModelWorker`` into calls of at most B
  sequences, candidates executed in the sandbox, grading, all concurrently. ``k`` defaults to
  2·B/n: while some trees run their candidates in the sandbox, the others fill the batch.
- ``lockstep_tokens_per_s``: the same search on the same problems, one tree at a time (k = 1).
- ``model_busy_fraction``: share of the search's wall time the model thread was computing.

Prompts are built by ``rstar.steps.build_prompt`` with the config's ``generation.few_shot`` (the
base policy needs worked examples; a trained round's policy, as actors serve it, has none); the
problems come from the synthetic curriculum. Absolute figures depend on the machine and its
load (``machine.loadavg_1m`` in the output): compare the ratios, which come from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.backends import GenParams, setup_backend  # noqa: E402
from actors.batcher import ModelWorker  # noqa: E402
from actors.runtime import chat_template_for  # noqa: E402
from actors.sandbox import SandboxPool  # noqa: E402
from actors.search import SearchContext, search_many  # noqa: E402
from app.up import preset_path  # noqa: E402
from benchmarks.run_info import run_info  # noqa: E402
from rstar import steps as fmt  # noqa: E402
from rstar.config import load_config  # noqa: E402
from rstar.curriculum import synthetic_problems  # noqa: E402


async def run_search(cfg, backend, problems, k: int, rollouts: int) -> dict:
    async with SandboxPool(cfg.sandbox) as sandbox, ModelWorker(backend, max_batch=cfg.model.max_batch) as worker:
        ctx = SearchContext(
            worker=worker,
            sandbox=sandbox,
            search=cfg.search,
            generation=cfg.generation,
            chat_template=chat_template_for(backend.tokenizer),
        )
        t0 = time.perf_counter()
        trees = [t async for t in search_many(problems, ctx, k, rollouts=rollouts)]
        wall = time.perf_counter() - t0
        s = worker.stats
        return {
            "trees": len(trees),
            "nodes": sum(len(t.nodes) for t in trees),
            "wall_s": round(wall, 2),
            "gen_tokens": s.gen_tokens,
            "tokens_per_s": round(s.gen_tokens / wall, 2),
            "busy_fraction": round(s.busy_s / wall, 4),
            "gen_calls": s.gen_calls,
            "mean_batch_sequences": round(s.gen_sequences / max(s.gen_calls, 1), 2),
        }


def run_raw(cfg, backend, problems, batch: int, n: int, repeats: int) -> dict:
    template = chat_template_for(backend.tokenizer)
    g = cfg.generation
    params = GenParams(
        n=n, max_tokens=g.max_step_tokens, temperature=g.temperature, top_p=g.top_p, stop=tuple(fmt.STOP)
    )
    backend.generate([fmt.build_prompt(problems[0].question, [], template)], GenParams(n=1, max_tokens=4))
    tokens, wall = 0, 0.0
    k = max(1, batch // n)
    for r in range(repeats):
        batch = problems[r * k : (r + 1) * k] or problems[:k]
        prompts = [fmt.build_prompt(p.question, [], template, g.few_shot) for p in batch]
        t0 = time.perf_counter()
        outs = backend.generate(prompts, params)
        wall += time.perf_counter() - t0
        tokens += sum(o.tokens for out in outs for o in out)
    return {
        "batch_sequences": k * n,
        "gen_tokens": tokens,
        "wall_s": round(wall, 2),
        "tokens_per_s": round(tokens / wall, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="print only the JSON figures")
    ap.add_argument("--problems", type=int, default=24)
    ap.add_argument("--preset", default=None, help="a built-in preset (e.g. nano) under the overrides")
    ap.add_argument("--batch", type=int, default=32, help="B: sequences per backend call")
    ap.add_argument("--k", type=int, default=0, help="trees in flight (default 2·B/n)")
    ap.add_argument("--n", type=int, default=4, help="candidates per expansion")
    ap.add_argument("--rollouts", type=int, default=2)
    ap.add_argument("--max-step-tokens", type=int, default=48)
    ap.add_argument("--raw-repeats", type=int, default=2)
    ap.add_argument("--set", action="append", default=[], help="config override section.field=value")
    a = ap.parse_args()
    a.k = a.k or max(1, 2 * a.batch // a.n)
    cfg = load_config(
        preset=preset_path(a.preset) if a.preset else None,
        overrides=[
            f"search.n_children={a.n}",
            f"generation.max_step_tokens={a.max_step_tokens}",
            f"model.max_batch={a.batch}",
            *a.set,
        ],
    )
    problems = synthetic_problems(a.problems, "heldout", (1, 2), seed=1)
    t0 = time.perf_counter()
    backend = setup_backend(cfg)
    load_s = time.perf_counter() - t0
    raw = run_raw(cfg, backend, problems, a.batch, a.n, a.raw_repeats)
    search = asyncio.run(run_search(cfg, backend, problems, a.k, a.rollouts))
    lock = asyncio.run(run_search(cfg, backend, problems, 1, a.rollouts))
    out = {
        **run_info(),
        "preset": a.preset,
        "model": cfg.model.policy,
        "backend": backend.name,
        "load_s": round(load_s, 2),
        "batch": a.batch,
        "k": a.k,
        "n": a.n,
        "rollouts": a.rollouts,
        "max_step_tokens": a.max_step_tokens,
        "raw_tokens_per_s": raw["tokens_per_s"],
        "search_tokens_per_s": search["tokens_per_s"],
        "lockstep_tokens_per_s": lock["tokens_per_s"],
        "model_busy_fraction": search["busy_fraction"],
        "search_vs_raw": round(search["tokens_per_s"] / raw["tokens_per_s"], 3),
        "search_vs_lockstep": round(search["tokens_per_s"] / lock["tokens_per_s"], 3),
        "raw": raw,
        "search": search,
        "lockstep": lock,
    }
    print(json.dumps(out, indent=None if a.json else 2))


if __name__ == "__main__":
    main()
