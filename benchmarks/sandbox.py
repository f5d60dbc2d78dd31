"""How fast the code sandbox answers: latency of one call, sustained runs/s, what the cache saves.

    .venv/bin/python benchmarks/sandbox.py            # human-readable JSON
    .venv/bin/python benchmarks/sandbox.py --calls 200 --workers 2 --json

Three figures, on a pool with strict isolation (needs root with CAP_SYS_ADMIN) and the default
``sandbox`` config but ``--workers`` (the config used is printed under ``config``):

- ``latency_ms``: one 3-step program (``x, y → z → answer``) at a time on a warm pool, as the
  caller sees it (median, p90, min), and ``child_ms``, the fork-to-result time inside the worker;
- ``runs_per_s``: ``--calls`` programs submitted at once (siblings under one parent, as an MCTS
  expansion does), completed per second of wall time;
- both again under ``sympy_loaded``: after a program imported sympy, which the workers then keep;
- ``cache``: steps executed and seconds taken to replay an 8-deep chain node by node (each with
  3 sibling leaves), with the config's ancestor cache and without it (``cache_entries = 0``), for
  cheap steps (a few lines of arithmetic: below ``snapshot_min_ms``, so re-run rather than cached)
  and dear ones (~1-10 ms of work per step: cached).

Every run is checked: it must succeed with the expected answer. ``failures`` counts those that
did not, per phase, with the first few errors; a run with any failure prints its JSON and exits
with status 1, so a broken pool cannot pass for a fast one.

The output starts with ``benchmarks.run_info`` (command, date, machine with its load average):
figures swing with the machine's load (the workers share its cores with everything else), so
compare only figures of one run; ``loadavg_after`` is the load average when it ended.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.sandbox import ExecResult, SandboxPool  # noqa: E402
from benchmarks.run_info import run_info  # noqa: E402
from rstar.config import SandboxConfig  # noqa: E402

STEPS = ["# two numbers\nx = 3\ny = 4\n", "# their product\nz = x * y\nprint(z)\n", "# one more\nanswer = z + 1\n"]


class Failures:
    """Runs that failed or answered wrongly, per phase; the first few errors kept to print."""

    def __init__(self) -> None:
        self.by_phase: dict[str, int] = {}
        self.runs = 0
        self.first: list[dict] = []

    def check(self, phase: str, r: ExecResult, answer: str | None = None) -> ExecResult:
        self.runs += 1
        if r.ok and (answer is None or r.answer == answer):
            return r
        self.by_phase[phase] = self.by_phase.get(phase, 0) + 1
        if len(self.first) < 5:
            self.first.append(
                {
                    "phase": phase,
                    "ok": r.ok,
                    "error_kind": r.error_kind,
                    "error": r.error,
                    "answer": r.answer,
                    "expected": answer,
                }
            )
        return r

    @property
    def count(self) -> int:
        return sum(self.by_phase.values())

    def report(self) -> dict:
        return {"count": self.count, "runs": self.runs, "by_phase": self.by_phase, "first": self.first}


async def latency(pool: SandboxPool, calls: int, fails: Failures, phase: str) -> dict:
    for _ in range(20):  # warm: spare children forked, parent prefix cached
        fails.check(f"{phase}/warm", await pool.run(STEPS), "13")
    wall, child = [], []
    for _ in range(calls):
        t0 = time.perf_counter()
        r = await pool.run(STEPS)
        wall.append(time.perf_counter() - t0)
        child.append(fails.check(phase, r, "13").duration_s)
    wall.sort()
    ms = lambda v: round(v * 1e3, 2)  # noqa: E731
    return {
        "median": ms(statistics.median(wall)),
        "p90": ms(wall[int(0.9 * len(wall))]),
        "min": ms(wall[0]),
        "child_ms_median": ms(statistics.median(child)),
    }


async def throughput(pool: SandboxPool, calls: int, fails: Failures, phase: str) -> float:
    t0 = time.perf_counter()
    results = await asyncio.gather(*(pool.run(STEPS[:2] + [f"answer = z + {i}\n"]) for i in range(calls)))
    wall = time.perf_counter() - t0
    for i, r in enumerate(results):
        fails.check(phase, r, str(12 + i))
    return round(calls / wall, 1)


CHEAP = ["v = 0\n"] + [f"v = v + {i}\n" for i in range(1, 8)]
DEAR = ["v = 0\n"] + [f"v = v + sum(range({i} * 100000))\n" for i in range(1, 8)]


def _value(steps: list[str]) -> int:
    ns: dict = {}
    exec("".join(steps), ns)  # our own constant arithmetic, to know the answer to expect
    return ns["v"]


async def replay_chain(cfg: SandboxConfig, chain: list[str], fails: Failures, phase: str) -> dict:
    """Each node of the chain, then 3 sibling leaves under it (an MCTS-like expansion)."""
    async with SandboxPool(cfg) as pool:
        t0 = time.perf_counter()
        for depth in range(1, len(chain) + 1):
            fails.check(phase, await pool.run(chain[:depth]))
            v = _value(chain[:depth])
            leaves = await asyncio.gather(*(pool.run(chain[:depth] + [f"answer = v + {k}\n"]) for k in range(3)))
            for k, r in enumerate(leaves):
                fails.check(phase, r, str(v + k))
        return {"steps_run": int(pool.gauges()["sandbox/steps_run"]), "seconds": round(time.perf_counter() - t0, 3)}


async def cache_effect(cfg: SandboxConfig, fails: Failures) -> dict:
    off = cfg.model_copy(update={"cache_entries": 0})
    out = {}
    for name, chain in (("cheap_chain", CHEAP), ("dear_chain", DEAR)):
        out[name] = {
            "cached": await replay_chain(cfg, chain, fails, f"cache/{name}/cached"),
            "uncached": await replay_chain(off, chain, fails, f"cache/{name}/uncached"),
        }
    return out


async def main(args) -> dict:
    cfg = SandboxConfig(workers=args.workers)
    fails = Failures()
    async with SandboxPool(cfg) as pool:
        lat = await latency(pool, args.calls, fails, "latency")
        rps = await throughput(pool, args.calls, fails, "throughput")
        # Once a program has named sympy, the workers hold it (~100 MB) and every fork costs more.
        for r in await asyncio.gather(
            *(pool.run(["import sympy\nanswer = sympy.Rational(1, 3)\n"]) for _ in range(2 * args.workers))
        ):
            fails.check("sympy_import", r)
        lat_sympy = await latency(pool, args.calls, fails, "sympy_loaded/latency")
        rps_sympy = await throughput(pool, args.calls, fails, "sympy_loaded/throughput")
    return {
        **run_info(),
        "config": cfg.model_dump(mode="json"),
        "workers": args.workers,
        "calls": args.calls,
        "latency_ms": lat,
        "runs_per_s": rps,
        "sympy_loaded": {"latency_ms": lat_sympy, "runs_per_s": rps_sympy},
        "cache": await cache_effect(cfg, fails),
        "failures": fails.report(),
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=300, help="timed calls per latency and throughput figure")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="one line of JSON (default: indented)")
    args = ap.parse_args()
    out = asyncio.run(main(args))
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
    if out["failures"]["count"]:
        sys.exit(
            f"sandbox benchmark: {out['failures']['count']} of {out['failures']['runs']} runs failed "
            f"or answered wrongly ({out['failures']['by_phase']}): the figures above are not valid"
        )
