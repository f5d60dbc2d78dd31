"""What answer grading costs per pair, by path, and whether math-verify's hard timeout holds.

    .venv/bin/python benchmarks/grading.py --json [--pairs 2000] [--mv-pairs 80] [--timeout 1.0]

Every pair is new to ``rstar.grading``'s verdict cache (each differs in a number), except where
``cached`` says otherwise:

- ``numeric``: ``verify`` on plain numbers in many spellings (fractions, decimals, units,
  thousands separators, spelled-out numbers, lists, rational arithmetic): per-pair latency in
  microseconds, p50 and p99; ``cached_us``, the same pairs asked again.
- ``math_verify``: pairs that need sympy (radicals, polynomials, intervals, sets, complex
  numbers, matrices with a radical), on a warm worker: per-pair latency in milliseconds, p50 and
  p99, overall and per kind; ``worker_start_s``, what ``mathverify_worker.warm_up()`` took (a
  worker's import and warm-up of sympy, paid once per worker).
- ``timeout``: pathological answers (power towers sympy would expand for minutes) with
  ``timeout_s``; each must come back as method ``timeout`` within ``timeout_s + slack_s``.
  ``honoured`` says whether all did; ``next_call_s`` is the first comparison after each, which
  pays for a fresh worker (the killed one's replacement).

Figures swing with the machine's load; ``machine.loadavg_1m`` is the load when it ran.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.run_info import run_info  # noqa: E402
from rstar import mathverify_worker  # noqa: E402
from rstar.grading import verify  # noqa: E402

NUMERIC = [  # (pred, gold) templates for k = 1, 2, …: equal and unequal pairs
    lambda k: (f"{k}.50", f"{2 * k + 1}/2"),
    lambda k: (f"\\frac{{{k}}}{{{k + 1}}}", f"{k}/{k + 1}"),
    lambda k: (f"\\${k:,}.25", f"{k}.25"),
    lambda k: (f"{k} cm", f"{k + 1}"),
    lambda k: (f"x = {k}", f"{k}"),
    lambda k: (f"{k}, {k + 1}", f"\\{{{k + 1}, {k}\\}}"),
    lambda k: (f"{k}\\%", f"{k}"),
    lambda k: (f"{k}\\frac{{1}}{{2}}", f"{2 * k + 1}/2"),
    lambda k: (f"\\frac{{1}}{{2^{{{k % 60}}}}}", f"2^{{-{k % 60}}}"),
    lambda k: (f"{k} + 0.1", f"{k}.1"),
]
MATH_VERIFY = {  # kind -> template, all sent to math-verify
    "radical": lambda k: (f"{k}\\sqrt{{2}}", f"\\sqrt{{{2 * k * k}}}"),
    "polynomial": lambda k: (f"(x+{k})^2", f"x^2+{2 * k}x+{k * k}"),
    "interval": lambda k: (f"[{k}, {k}.5)", f"\\left[ {k}, \\frac{{{2 * k + 1}}}{{2}} \\right)"),
    "set": lambda k: (f"\\{{{k}+\\sqrt{{3}}, {k}-\\sqrt{{3}}\\}}", f"{k} \\pm \\sqrt{{3}}"),
    "complex": lambda k: (f"({k}+i)^2", f"{k * k - 1}+{2 * k}i"),
    "matrix": lambda k: (
        f"\\begin{{pmatrix}}{k}\\sqrt{{2}}\\\\{k}\\end{{pmatrix}}",
        f"\\begin{{pmatrix}}\\sqrt{{{2 * k * k}}}\\\\{k}\\end{{pmatrix}}",
    ),
}


def _percentiles(samples: list[float], scale: float, digits: int) -> dict:
    s = sorted(samples)
    return {
        "p50": round(statistics.median(s) * scale, digits),
        "p99": round(s[min(len(s) - 1, int(0.99 * len(s)))] * scale, digits),
    }


def _timed(pred: str, gold: str, timeout_s: float):
    t0 = time.perf_counter()
    v = verify(pred, gold, timeout_s)
    return time.perf_counter() - t0, v


def numeric(pairs: int) -> dict:
    todo = [NUMERIC[i % len(NUMERIC)](i // len(NUMERIC) + 1) for i in range(pairs)]
    first = [_timed(p, g, 2.0) for p, g in todo]
    methods = {v.method for _, v in first}
    assert methods == {"numeric"}, methods
    again = [_timed(p, g, 2.0)[0] for p, g in todo]
    return {
        "pairs": pairs,
        "us_per_pair": _percentiles([t for t, _ in first], 1e6, 1),
        "cached_us": _percentiles(again, 1e6, 2),
    }


def math_verify(pairs: int) -> dict:
    t0 = time.perf_counter()
    mathverify_worker.warm_up()
    start = time.perf_counter() - t0
    by_kind: dict[str, list[float]] = {kind: [] for kind in MATH_VERIFY}
    for i in range(pairs):
        kind = list(MATH_VERIFY)[i % len(MATH_VERIFY)]
        dt, v = _timed(*MATH_VERIFY[kind](i // len(MATH_VERIFY) + 2), 10.0)
        assert v.method == "math_verify" and v.equivalent, v
        by_kind[kind].append(dt)
    everything = [t for ts in by_kind.values() for t in ts]
    return {
        "pairs": pairs,
        "worker_start_s": round(start, 2),
        "ms_per_pair": _percentiles(everything, 1e3, 1),
        "p50_ms_by_kind": {k: round(statistics.median(ts) * 1e3, 1) for k, ts in by_kind.items()},
    }


def timeout(timeout_s: float, slack_s: float, trials: int) -> dict:
    elapsed, after = [], []
    for k in range(2, 2 + trials):
        tower = f"{k}^{{{k}^{{{k}^{{{k}^{{{k}^{{{k}}}}}}}}}}}"
        dt, v = _timed(tower, "7", timeout_s)
        assert v.method == "timeout", v
        elapsed.append(dt)
        after.append(_timed(f"{k}\\sqrt{{3}}", f"\\sqrt{{{3 * k * k}}}", 30.0)[0])
    return {
        "timeout_s": timeout_s,
        "slack_s": slack_s,
        "trials": trials,
        "elapsed_s": [round(t, 3) for t in elapsed],
        "honoured": max(elapsed) <= timeout_s + slack_s,
        "next_call_s": [round(t, 2) for t in after],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pairs", type=int, default=2000, help="numeric pairs")
    ap.add_argument("--mv-pairs", type=int, default=80, help="math-verify pairs")
    ap.add_argument("--timeout", type=float, default=1.0, help="timeout_s for the pathological pairs")
    ap.add_argument("--slack", type=float, default=0.5, help="allowed seconds past the timeout")
    ap.add_argument("--trials", type=int, default=3, help="pathological pairs")
    ap.add_argument("--json", action="store_true", help="one line of JSON (default: indented)")
    a = ap.parse_args()
    res = {
        **run_info(),
        "numeric": numeric(a.pairs),
        "math_verify": math_verify(a.mv_pairs),
        "timeout": timeout(a.timeout, a.slack, a.trials),
    }
    print(json.dumps(res) if a.json else json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
