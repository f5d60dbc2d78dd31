"""The loop learns: a shortened nano run through the whole system, and its held-out accuracy.

``rstar up --preset nano --rounds 1`` as a user runs it (the test's NATS server, SQLite under a
scratch data dir, the built-in nano policy built in a scratch cache): round 0 trains the policy
from scratch on the curriculum teacher's demonstrations (level 1 here, to fit minutes), the
actor searches a pool of level 1 with it, round 1 trains the published policy further on the
teacher's data and the verified trajectories, and both rounds are evaluated greedily on the same
held-out problems. The assertion is the README's: round 1's accuracy is above round 0's by more
than their 95 % Wilson intervals allow (the lower bound of one above the upper bound of the other).

The whole run takes several minutes of CPU: ``-m "not learning"`` skips it. ``RSTAR_LEARNING_SEED``
picks the seed of the teacher's problems, training and search (the pass rate over seeds is in the
README).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from rstar.stats import wilson

pytestmark = [pytest.mark.learning, pytest.mark.slow, pytest.mark.timeout(900)]

# Round 0 stops early (200 steps), before the policy has learned to copy the question's numbers, and
# round 1 trains 500 more at round 0's learning rate: at 400 + 200 some seeds crossed that threshold
# in neither round, at 600 + 200 round 0 was already near its ceiling, at 300 + 300 (lr 1e-3) a slow
# seed crossed in neither (results in docs/bench/learning_seeds_*.json). With 1,200 demonstrations
# round 1 crossed by only a few problems on some seeds (seed 0: 6 -> 24 of 400, twice): 700 steps
# of 16 are ~9 epochs of them. With 4,000 it is far past on every seed tried (docs/bench/
# learning_seeds.json: the narrowest 1 -> 80 of 400).
EVAL_N = 400
POOL = 48  # problems queued: once searched, the actor idles and round 1 trains at full speed
SETTINGS = {
    "LEARNER__TEACHER_PROBLEMS": "4000",
    "LEARNER__TEACHER_LEVELS": "[1]",
    "LEARNER__POOL": "synthetic:1",
    "TRAIN__BOOTSTRAP_STEPS": "200",
    "TRAIN__STEPS": "500",
    "TRAIN__LR": "2e-3",
    "TRAIN__BATCH_SIZE": "16",  # pinned, with the precision, to what the pass rate over seeds measured
    "TRAIN__AUTOCAST": "off",
    "LEARNER__ROUND_QUOTA": str(POOL),
    "LEARNER__EVAL_SYNTHETIC_N": str(EVAL_N),
    "LEARNER__EVAL_LEVELS": "[1]",
    "LEARNER__EVAL_METHODS": '["greedy"]',
    "LEARNER__MAX_ROUNDS": "1",
    "TRAIN__THREADS": "1",
    "MODEL__THREADS": "1",
}


def test_round_one_beats_round_zero_beyond_the_intervals(tmp_path, nats_server):
    from store.db import open_store
    from store.queries import list_rounds

    seed = os.environ.get("RSTAR_LEARNING_SEED", "0")
    env = (
        {k: v for k, v in os.environ.items() if not k.startswith("RSTAR_")}
        | {
            "RSTAR_LOG_JSON": "1",
            "RSTAR_BROKER__URL": nats_server.url,
            "RSTAR_DATA_DIR": str(tmp_path / "data"),
            "RSTAR_MODEL__CACHE_DIR": str(tmp_path / "cache"),
            "RSTAR_TRAIN__SEED": seed,
            "RSTAR_SEARCH__SEED": seed,
            "RSTAR_LEARNER__TEACHER_SEED": seed,
        }
        | {f"RSTAR_{k}": v for k, v in SETTINGS.items()}
    )
    cmd = [sys.executable, "-m", "app", "up", "--preset", "nano", "--rounds", "1", "--no-api", "--limit", str(POOL)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=840, cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-4000:]
    engine = open_store(f"sqlite:///{tmp_path / 'data' / 'rstar.db'}")
    rows = list_rounds(engine)
    engine.dispose()
    greedy = [r["eval"]["accuracy"]["sets"]["synthetic"]["greedy"] for r in rows]
    assert [r["round"] for r in rows] == [0, 1] and all(g["n"] == EVAL_N for g in greedy)
    (lo0, hi0), (lo1, hi1) = (wilson(g["correct"], g["n"]) for g in greedy)
    summary = json.dumps(
        {
            "seed": seed,
            "round0": greedy[0]["correct"],
            "round1": greedy[1]["correct"],
            "n": EVAL_N,
            "solve_rate_1": rows[1]["eval"]["collect"]["solve_rate"],
        }
    )
    print(summary)
    assert lo1 > hi0, f"round 1 [{lo1:.3f}, {hi1:.3f}] does not clear round 0 [{lo0:.3f}, {hi0:.3f}]: {summary}"
