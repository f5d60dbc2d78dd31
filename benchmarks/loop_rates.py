"""How fast the loop turns, read from a run's store: wall time per round and phase, trees/min, rounds/hour.

    .venv/bin/python benchmarks/loop_rates.py --store sqlite:///data/rstar.db --json

Per round, from the ``rounds`` table and the trees: ``wall_s`` (opened -> published), the training
phases the learner timed (``sft_s``, ``ppm_s``; round 0 also ``bootstrap_s``, the teacher's
verified demonstrations), ``collect_s`` (what is left of the wall time: waiting for the round's
quota of trees, and publishing), the evaluation (``eval_s``, per method in ``eval_methods_s``;
it runs beside the next round, so it is not part of ``wall_s``), and the trees tagged with the
round: ``trees``, ``trees_per_min`` (between the first and the last tree's finish). Overall:
``rounds_per_hour`` over the self-evolution rounds (R >= 1) and the run's total wall time
(first round opened -> last evaluation stored, or last round published).

No run of its own: it reads what a run (``rstar up``) left, so the figures are the run's.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, select  # noqa: E402

from benchmarks.run_info import run_info  # noqa: E402
from rstar.schemas import RoundEval  # noqa: E402
from store.db import open_store  # noqa: E402
from store.models import TreeRow  # noqa: E402
from store.queries import list_rounds  # noqa: E402


def _secs(doc: dict | None, key: str = "seconds") -> float | None:
    return (doc or {}).get(key) if isinstance(doc, dict) else None


def round_rates(engine) -> dict:
    from datetime import datetime

    rows = list_rounds(engine)
    out, ts = [], []
    with engine.connect() as c:
        tree_times = {
            r: (n, lo, hi)
            for r, n, lo, hi in c.execute(
                select(
                    TreeRow.round, func.count(), func.min(TreeRow.finished_at), func.max(TreeRow.finished_at)
                ).group_by(TreeRow.round)
            )
        }
    for r in rows:
        ev = RoundEval.of(r["eval"])
        start = datetime.fromisoformat(r["started_at"]) if r["started_at"] else None
        end = datetime.fromisoformat(r["closed_at"]) if r["closed_at"] else None
        wall = (end - start).total_seconds() if start and end else None
        sft, ppm, boot = _secs(ev.sft), _secs(ev.ppm), _secs(ev.bootstrap)
        methods = {f"{name}/{label}": rec.seconds for name, recs in ev.records().items() for label, rec in recs.items()}
        n, lo, hi = tree_times.get(r["round"], (0, None, None))
        span = (hi - lo).total_seconds() if lo is not None and hi is not None else 0.0
        out.append(
            {
                "round": r["round"],
                "state": r["state"],
                "wall_s": wall,
                "bootstrap_s": boot,
                "sft_s": sft,
                "ppm_s": ppm,
                "collect_s": None if wall is None else round(wall - sum(x or 0 for x in (sft, ppm, boot)), 1),
                "eval_s": ev.accuracy.seconds if ev.accuracy else None,
                "eval_methods_s": methods,
                "trees": n,
                # a bootstrap round's trees are the teacher's demonstrations, stored, not searched
                "trees_per_min": round(60 * n / span, 1) if span > 0 and boot is None else None,
            }
        )
        ts += [t for t in (start, end) if t]
    evolved = [x for x in out if x["round"] >= 1 and x["wall_s"]]
    total = (max(ts) - min(ts)).total_seconds() if ts else None
    return {
        "rounds": out,
        "total_wall_s": total,
        "rounds_per_hour": round(3600 * len(evolved) / sum(x["wall_s"] for x in evolved), 2) if evolved else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--store", required=True, help="SQLAlchemy URL of the run's store")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    engine = open_store(a.store)
    res = {**run_info(), **round_rates(engine)}
    engine.dispose()
    print(json.dumps(res) if a.json else json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
