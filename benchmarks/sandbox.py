"""How fast the code sandbox answers: latency of one call, sustained runs/s, what the cache saves.

    .venv/bin/python benchmarks/sandbox.py            # human-readable JSON
    .venv/bin/python benchmarks/sandbox.py --calls 200 --workers 2 --json

Three figures, on a pool with strict isolation (needs root with CAP_SYS_ADMIN):

- ``latency_ms``: one 3-step program (``x, y → z → answer``) at a time on a warm pool, as the
  caller sees it (median, p90, min), and ``child_ms``, the fork-to-result time inside the worker;
- ``runs_per_s``: ``--calls`` programs submitted at once (siblings of one cached parent, as an
  MCTS expansion does), completed per second of wall time;
- both again under ``sympy_loaded``: after a program imported sympy, which the workers then keep;
- ``cache``: steps executed and seconds taken to replay an 8-deep chain node by node (each with
  3 sibling leaves), with and without the ancestor cache, for cheap steps (a few lines of
  arithmetic: below ``snapshot_min_ms``, so re-run rather than cached) and dear ones (~1-10 ms of
  work per step: cached).

Figures swing with the machine's load (the workers share its cores with everything else): report
the load average printed with them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

from actors.sandbox import SandboxPool
from rstar.config import SandboxConfig

STEPS = ["# two numbers\nx = 3\ny = 4\n", "# their product\nz = x * y\nprint(z)\n",
         "# one more\nanswer = z + 1\n"]


async def latency(pool: SandboxPool, calls: int) -> dict:
    for _ in range(20):  # warm: spare children forked, parent prefix cached
        await pool.run(STEPS)
    wall, child = [], []
    for _ in range(calls):
        t0 = time.perf_counter()
        r = await pool.run(STEPS)
        wall.append(time.perf_counter() - t0)
        child.append(r.duration_s)
    wall.sort()
    ms = lambda v: round(v * 1e3, 2)  # noqa: E731
    return {"median": ms(statistics.median(wall)), "p90": ms(wall[int(0.9 * len(wall))]),
            "min": ms(wall[0]), "child_ms_median": ms(statistics.median(child))}


async def throughput(pool: SandboxPool, calls: int) -> float:
    t0 = time.perf_counter()
    results = await asyncio.gather(*(pool.run(STEPS[:2] + [f"answer = z + {i}\n"])
                                     for i in range(calls)))
    assert all(r.ok for r in results)
    return round(calls / (time.perf_counter() - t0), 1)


CHEAP = ["v = 0\n"] + [f"v = v + {i}\n" for i in range(1, 8)]
DEAR = ["v = 0\n"] + [f"v = v + sum(range({i} * 100000))\n" for i in range(1, 8)]


async def replay_chain(cfg: SandboxConfig, chain: list[str]) -> dict:
    """Each node of the chain, then 3 sibling leaves under it (an MCTS-like expansion)."""
    async with SandboxPool(cfg) as pool:
        t0 = time.perf_counter()
        for depth in range(1, len(chain) + 1):
            await pool.run(chain[:depth])
            await asyncio.gather(*(pool.run(chain[:depth] + [f"answer = v + {k}\n"])
                                   for k in range(3)))
        return {"steps_run": int(pool.gauges()["sandbox/steps_run"]),
                "seconds": round(time.perf_counter() - t0, 3)}


async def cache_effect(cfg: SandboxConfig) -> dict:
    off = cfg.model_copy(update={"cache_entries": 0})
    out = {}
    for name, chain in (("cheap_chain", CHEAP), ("dear_chain", DEAR)):
        out[name] = {"cached": await replay_chain(cfg, chain),
                     "uncached": await replay_chain(off, chain)}
    return out


async def main(args) -> dict:
    cfg = SandboxConfig(workers=args.workers)
    async with SandboxPool(cfg) as pool:
        lat = await latency(pool, args.calls)
        rps = await throughput(pool, args.calls)
        # Once a program has named sympy, the workers hold it (~100 MB) and every fork costs more.
        await asyncio.gather(*(pool.run(["import sympy\nanswer = sympy.Rational(1, 3)\n"])
                               for _ in range(2 * args.workers)))
        lat_sympy = await latency(pool, args.calls)
        rps_sympy = await throughput(pool, args.calls)
    return {
        "workers": args.workers, "calls": args.calls, "latency_ms": lat, "runs_per_s": rps,
        "sympy_loaded": {"latency_ms": lat_sympy, "runs_per_s": rps_sympy},
        "cache": await cache_effect(cfg),
        "loadavg": [round(x, 2) for x in os.getloadavg()], "cpus": os.cpu_count(),
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--json", action="store_true", help="one line of JSON (default: indented)")
    args = ap.parse_args()
    out = asyncio.run(main(args))
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))
