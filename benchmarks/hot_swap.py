"""Hot swap under load: one actor against a real NATS server while the model pointer changes.

    .venv/bin/python benchmarks/hot_swap.py --json [--swaps 3] [--steady-s 30]

One run: a nats-server of its own (temp store); the policy (``--policy``: SmolLM2-135M by default,
``nano``, or a trained round's policy directory) and a PPM on it
serve round 0, on the bare prompt (no few-shot examples: what a published policy gets, so the
workload is the same before and after the swaps); ``--swaps`` "fine-tuned" pairs (weights perturbed by 1e-3 of each tensor's std,
saved with ``rstar.checkpoints.save_model_dir``; a fresh PPM on each) are put in the Object Store
up front. An in-process actor (``actors.service.run_actor``) searches synthetic problems with a
small config; after ``--steady-s`` seconds without swaps, the pointer is set to each new pair in
turn, waiting for the previous swap to finish plus ``--steady-s``. Then the actor is stopped
with a long grace (in-flight trees finish) and TREES and PROBLEMS are counted.

Figures (one JSON object):
- ``swap_latency_s``: pointer update -> the first generate() call on the new pair finished,
  ``median`` / ``max``; ``swap_phases_s``: medians of download+verify, load (off the model thread),
  install (wait for the call in progress to end) and that first call.
- ``trees_lost``: problems queued - distinct problems with a tree in TREES - problems still queued;
  ``duplicate_trees``: TREES messages beyond one per problem.
- ``tokens_per_s_steady`` (before any swap), ``tokens_per_s_between_swaps`` (after each swap) vs
  ``tokens_per_s_during_swaps`` (pointer -> first call on the new pair: download, load, install).
- ``busy_s_per_generate_call``: model-thread seconds per generate() call (PPM scoring included):
  a swap waits for the call in progress, then one call on the new pair.
- ``peak_rss_gb``: the process's peak resident memory (old pair + download + new pair).

The output starts with ``benchmarks.run_info`` (command, date, machine with its load average);
the figures of a run worth keeping go to ``docs/bench/`` as that JSON (see README "Figures").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nats.js.errors

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.service import ActorReport, run_actor  # noqa: E402
from benchmarks.run_info import run_info  # noqa: E402
from broker.checkpoints import put_checkpoint, set_pointer  # noqa: E402
from broker.client import open_broker  # noqa: E402
from broker.problems import add_problems  # noqa: E402
from broker.server import start_server  # noqa: E402
from broker.streams import PROBLEMS_STREAM, TREES_STREAM, TREES_SUBJECT  # noqa: E402
from rstar.config import load_config  # noqa: E402
from rstar.curriculum import synthetic_problems  # noqa: E402


def make_pairs(base: Path, root: Path, rounds: int) -> list[tuple[Path, Path]]:
    """Round 0: (base, fresh PPM); rounds 1..: (perturbed base, fresh PPM on it)."""
    import torch
    from transformers import AutoModelForCausalLM

    from actors.ppm import ppm_from_policy, save_ppm
    from rstar.checkpoints import save_model_dir, write_manifest
    from rstar.models import load_tokenizer

    tok = load_tokenizer(base)
    pairs = []
    for r in range(rounds + 1):
        policy = base
        if r:
            model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
            gen = torch.Generator().manual_seed(r)
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn(p.shape, generator=gen) * (1e-3 * float(p.std()) if p.numel() > 1 else 0))
            policy = save_model_dir(model, tok, root / f"policy-r{r}")
            del model
        ppm_dir = save_ppm(ppm_from_policy(policy, "cpu", seed=r), root / f"ppm-r{r}", tok)
        write_manifest(ppm_dir)
        pairs.append((policy, ppm_dir))
    return pairs


def tokens_between(samples: list[tuple[float, int]], a: float, b: float) -> float | None:
    """Generated tokens per second between wall times a and b.

    The worker's token counter moves only when a generate() call ends (calls last seconds on a
    CPU), so the rate is taken between the first and the last call ends inside the window;
    None when fewer than two calls ended in it.
    """
    ends, last = [], None
    for t, n in samples:
        if n != last:
            ends.append((t, n))
            last = n
    inside = [(t, n) for t, n in ends if a <= t <= b]
    if len(inside) < 2:
        return None
    return round((inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]), 2)


def mean(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(statistics.mean(xs), 2) if xs else None


async def count(b) -> tuple[int, set[str], set[str]]:
    """(TREES messages, problem ids with a tree, problem ids still queued) after the run."""
    from broker.codec import decode_tree
    from rstar.schemas import Problem, decode

    n = (await b.js.stream_info(TREES_STREAM)).state.messages
    trees = []
    if n:
        sub = await b.js.pull_subscribe(TREES_SUBJECT, stream=TREES_STREAM)  # ephemeral reader
        while len(trees) < n:
            trees += await sub.fetch(n - len(trees), timeout=10)
        await sub.unsubscribe()
    # PROBLEMS is a work queue (one consumer per subject): read what is left by sequence instead.
    st = (await b.js.stream_info(PROBLEMS_STREAM)).state
    queued = set()
    for seq in range(st.first_seq, st.last_seq + 1) if st.messages else ():
        try:
            queued.add(decode((await b.js.get_msg(PROBLEMS_STREAM, seq)).data, Problem).id)
        except nats.js.errors.NotFoundError:  # acked and removed
            continue
    return len(trees), {decode_tree(m.headers, m.data).problem.id for m in trees}, queued


async def run(args, work: Path) -> dict:
    from rstar.models import resolve_model_dir

    t0 = time.perf_counter()
    base = resolve_model_dir(args.policy, load_config(env={}).model.cache_dir)
    pairs = make_pairs(base, work / "models", args.swaps)
    make_s = time.perf_counter() - t0
    srv = start_server(work / "nats")
    cfg = load_config(
        overrides=[
            f'broker.url="{srv.url}"',
            f'data_dir="{work}"',
            f'model.policy="{base}"',
            f'model.ppm="{pairs[0][1]}"',
            f"model.threads={args.threads}",
            "model.device=cpu",
            f"generation.max_step_tokens={args.max_step_tokens}",
            "generation.few_shot=false",
            "search.max_depth=6",
            "search.rollouts=2",
            "search.n_children=4",
            f"actor.trees_in_flight={args.k}",
            "sandbox.workers=1",
            "actor.heartbeat_s=2",
            f"actor.grace_s={args.grace_s}",
        ],
        env={},
    )
    samples: list[tuple[float, int]] = []
    report = ActorReport("bench")
    try:
        async with open_broker(cfg, "bench") as b:
            t0 = time.perf_counter()
            pointers = []
            for r, (policy, ppm) in enumerate(pairs[1:], start=1):
                from rstar.schemas import ModelPointer

                pointers.append(
                    ModelPointer(
                        round=r,
                        policy=await put_checkpoint(b, policy, f"policy-r{r}"),
                        ppm=await put_checkpoint(b, ppm, f"ppm-r{r}"),
                    )
                )
            put_s = time.perf_counter() - t0
            problems = synthetic_problems(args.problems, "train", (1, 2), 0)
            await add_problems(b, problems)
            stop, ready = asyncio.Event(), asyncio.Event()
            actor = asyncio.create_task(run_actor(cfg, stop, ready, report))
            await asyncio.wait_for(ready.wait(), 300)

            async def sample():
                while True:
                    if report.model_stats is not None:
                        samples.append((time.time(), report.model_stats.gen_tokens))
                    await asyncio.sleep(0.2)

            sampler = asyncio.create_task(sample())
            while not report.model_stats or report.model_stats.gen_calls < 2:  # warm: prefix cached
                await asyncio.sleep(0.2)
            steady = (time.time(), time.time() + args.steady_s)
            await asyncio.sleep(args.steady_s)
            set_at, after = [], []
            for p in pointers:
                set_at.append(time.time())
                await set_pointer(b, p)
                while not any(e.round == p.round and (e.first_call_at or e.refused) for e in report.swaps):
                    if actor.done():
                        actor.result()
                    await asyncio.sleep(0.05)
                after.append((time.time(), time.time() + args.steady_s))
                await asyncio.sleep(args.steady_s)
            stop.set()
            await asyncio.wait_for(actor, 900)
            sampler.cancel()
            trees, with_tree, left = await count(b)
    finally:
        srv.stop()
    events = {e.round: e for e in report.swaps if e.first_call_at}
    lat = [events[p.round].first_call_at - t for p, t in zip(pointers, set_at) if p.round in events]

    def phase(a: str, z: str) -> float:
        return round(statistics.median(getattr(e, z) - getattr(e, a) for e in events.values()), 3)

    return {
        **run_info(),
        "model": args.policy,
        "swaps": len(pointers),
        "swaps_done": len(lat),
        "refused": [e.refused for e in report.swaps if e.refused],
        "swap_latency_s": {
            "median": round(statistics.median(lat), 3),
            "max": round(max(lat), 3),
            "each": [round(x, 3) for x in lat],
        },
        "swap_phases_s": {
            "download_verify": phase("seen_at", "fetched_at"),
            "load": phase("fetched_at", "ready_at"),
            "install_wait": phase("ready_at", "swapped_at"),
            "first_call": phase("swapped_at", "first_call_at"),
        },
        "problems": len(problems),
        "trees_published": report.published,
        "trees_in_stream": trees,
        "trees_lost": len({p.id for p in problems} - with_tree - left),
        "duplicate_trees": trees - len(with_tree),
        "problems_left_in_queue": len(left),
        "problems_returned_at_stop": report.returned,
        "tokens_per_s_steady": tokens_between(samples, *steady),
        "tokens_per_s_between_swaps": mean(tokens_between(samples, *w) for w in after),
        "tokens_per_s_during_swaps": mean(
            tokens_between(samples, t, events[p.round].first_call_at)
            for p, t in zip(pointers, set_at)
            if p.round in events
        ),
        "busy_s_per_generate_call": round(report.worker["busy_s"] / max(report.worker["gen_calls"], 1), 2),
        "tokens_per_s_overall": report.worker.get("tokens_per_s"),
        "busy_fraction": report.worker.get("busy_fraction"),
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
        "setup_s": {"make_variants": round(make_s, 1), "put_checkpoints": round(put_s, 1)},
        "config": {
            "trees_in_flight": args.k,
            "max_step_tokens": args.max_step_tokens,
            "rollouts": 2,
            "n_children": 4,
            "max_depth": 6,
            "few_shot": False,
            "threads": args.threads,
            "steady_s": args.steady_s,
        },
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument(
        "--policy",
        default="smollm2-135m",
        help="base policy: a built-in name (smollm2-135m, nano) "
        "or a model directory, e.g. a trained nano round's data/learner/round-R/policy",
    )
    ap.add_argument("--swaps", type=int, default=3)
    ap.add_argument("--steady-s", type=float, default=30.0)
    ap.add_argument("--problems", type=int, default=400)
    ap.add_argument("--k", type=int, default=4, help="trees in flight")
    ap.add_argument("--max-step-tokens", type=int, default=48)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--grace-s", type=float, default=120.0, help="stop: trees in flight finish within this")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--workdir", type=Path, default=None, help="keep files here (default: a temp dir)")
    args = ap.parse_args()
    work = args.workdir or Path(tempfile.mkdtemp(prefix="rstar-hot-swap-"))

    def interrupted(*_):  # SIGTERM like Ctrl-C: unwind, so the nats-server and temp dir go too
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupted)
    try:
        out = asyncio.run(run(args, work))
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
