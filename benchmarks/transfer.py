"""Does a run's policy transfer beyond its training distribution? Greedy accuracy of every round.

    python benchmarks/transfer.py --json --data-dir DATA [--dataset mawps] [--limit 200] [--rounds 0,1,5]

Runs ``rstar eval --round R --dataset D --limit N --json`` (greedy) for each round of the run in
``DATA`` (``RSTAR_DATA_DIR``), the way a user checks a nano run on word problems outside the
curriculum's templates. Prints one JSON object after ``benchmarks.run_info``: per round the
``correct`` of ``n`` with the Wilson 95 % interval and the eval's wall seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.run_info import run_info  # noqa: E402
from rstar.config import load_config  # noqa: E402
from rstar.stats import wilson  # noqa: E402
from store.db import open_store  # noqa: E402
from store.queries import list_rounds  # noqa: E402


def published_rounds(data_dir: Path) -> list[int]:
    """The run's published rounds, from its store (a round still training has no whole policy)."""
    cfg = load_config(env={**os.environ, "RSTAR_DATA_DIR": str(data_dir)})
    engine = open_store(cfg.store_url)
    try:
        return [r["round"] for r in list_rounds(engine) if r["state"] == "published"]
    finally:
        engine.dispose()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, required=True)
    ap.add_argument("--dataset", default="mawps")
    ap.add_argument("--limit", type=int, default=200)
    ap.add_argument("--rounds", default=None, help="comma-separated rounds (default: every published round)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    info = run_info()
    data_dir = args.data_dir.resolve()
    rounds = [int(r) for r in args.rounds.split(",")] if args.rounds else published_rounds(data_dir)
    if not rounds:
        sys.exit(f"no published round in the store of {data_dir}")
    env = {**os.environ, "RSTAR_DATA_DIR": str(data_dir), "PYTHONPATH": str(ROOT)}
    rows = []
    for r in rounds:
        cmd = [sys.executable, "-m", "app", "eval", "--round", str(r), "--dataset", args.dataset]
        cmd += ["--limit", str(args.limit), "--json"]
        t0 = time.perf_counter()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
        if done.returncode != 0:
            sys.exit(f"round {r}: {' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        res = json.loads(done.stdout.strip().splitlines()[-1])
        lo, hi = wilson(res["correct"], res["n"])
        rows.append(
            {
                "round": r,
                "correct": res["correct"],
                "n": res["n"],
                "wilson95": [round(lo, 4), round(hi, 4)],
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
        print(f"round {r}: {res['correct']}/{res['n']}", file=sys.stderr)
    out = {**info, "data_dir": str(data_dir), "dataset": args.dataset, "method": "greedy", "rounds": rows}
    print(json.dumps(out, indent=2 if args.json else None))


if __name__ == "__main__":
    main()
