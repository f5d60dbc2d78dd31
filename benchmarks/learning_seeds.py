"""How often does the learning test pass? Run ``tests/e2e/test_learning.py`` once per seed.

    python benchmarks/learning_seeds.py --seeds 0-9 --out docs/bench/learning_seeds.json

Each seed is a separate ``pytest -m learning`` process with ``RSTAR_LEARNING_SEED`` set (the seed
of the teacher's problems, training and search); the test prints one JSON line with its round-0
and round-1 greedy counts. The output lists, per seed, those counts, pass or fail and the wall
time, then the pass count. Seeds run one after another (each run uses about a core and a half),
or ``--jobs N`` at a time (their wall times then include each other's load: only a run alone
times the test). ``--out FILE`` is rewritten after every seed, and a seed already in it is not
run again, so an interrupted sweep resumes where it stopped.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.run_info import run_info  # noqa: E402


def seed_list(spec: str) -> list[int]:
    """``"0-9"`` or ``"1,4,7"`` (or both mixed) as a list of ints."""
    out: list[int] = []
    for part in spec.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def run_seed(seed: int) -> dict:
    env = os.environ | {"RSTAR_LEARNING_SEED": str(seed)}
    t0 = time.perf_counter()
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/e2e/test_learning.py",
            "-m",
            "learning",
            "-q",
            "-s",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    wall = round(time.perf_counter() - t0, 1)
    lines = [x for x in res.stdout.splitlines() if x.startswith('{"seed"')]
    figures = json.loads(lines[-1]) if lines else {"error": res.stdout[-1500:] + res.stderr[-1500:]}
    return {**figures, "seed": seed, "passed": res.returncode == 0, "wall_s": wall}


def learning_test_settings() -> dict:
    """The learning test's ``SETTINGS`` (from the module itself), so a result names what it ran."""
    spec = importlib.util.spec_from_file_location("learning_test", ROOT / "tests/e2e/test_learning.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return dict(module.SETTINGS) | {"EVAL_N": module.EVAL_N}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", default="0-9")
    ap.add_argument("--jobs", type=int, default=1, help="seeds run at the same time")
    ap.add_argument("--out", type=Path, default=None, help="write the results here after each seed; resume from it")
    a = ap.parse_args()
    done = {int(r["seed"]): r for r in json.loads(a.out.read_text())["runs"]} if a.out and a.out.exists() else {}
    runs = [done[s] for s in seed_list(a.seeds) if s in done]
    todo = [s for s in seed_list(a.seeds) if s not in done]

    def summary() -> dict:
        return {
            **run_info(),
            "settings": learning_test_settings(),
            "jobs": a.jobs,
            "runs": runs,
            "passed": sum(r["passed"] for r in runs),
            "of": len(runs),
        }

    with ThreadPoolExecutor(a.jobs) as pool:
        for fut in as_completed([pool.submit(run_seed, s) for s in todo]):
            runs.append(fut.result())
            runs.sort(key=lambda r: r["seed"])
            print(json.dumps(fut.result()), file=sys.stderr, flush=True)
            if a.out:
                a.out.write_text(json.dumps(summary(), indent=1) + "\n")
    print(json.dumps(summary(), indent=2))


if __name__ == "__main__":
    main()
