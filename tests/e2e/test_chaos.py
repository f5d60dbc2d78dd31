"""End to end: the chaos run, short (benchmarks/chaos.py on SQLite, about 90 s of faults).

The real processes (nats-server, learner, two actors, the API) on the sized-down nano preset,
SIGKILLed at random moments (one or two at a time) and restarted, while problems are posted and
read over the API; then drained and reconciled. Nothing accepted may be lost, no tree stored
twice or in part, every component must come back, and every round, checkpoint and model pointer
must check out. The full run (both stores, 20 min of faults) is ``benchmarks/chaos.py --json``;
its figures are in docs/bench/chaos.json.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
ROOT = Path(__file__).resolve().parents[2]


def test_short_chaos_run_loses_nothing_and_recovers(tmp_path):
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / "chaos.py"),
        "--json",
        "--passes",
        "sqlite",
        "--duration",
        "90",
        "--gap",
        "8,18",
        "--pair-p",
        "0.3",
        "--post-every",
        "2",
        "--drain-s",
        "60",
        "--set",
        "train.bootstrap_steps=40",
        "--keep",
        str(tmp_path / "logs"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=840)
    assert res.returncode == 0, res.stderr[-4000:]
    p = json.loads(res.stdout)["passes"]["sqlite"]
    why = json.dumps({k: v for k, v in p.items() if k != "faults"}, indent=1)[:6000]
    assert sum(p["faults_injected"].values()) >= 4, why
    assert len(p["faults_injected"]) >= 3, why  # several kinds of component, not one
    assert p["never_recovered"] == [], why
    assert p["problems"]["accepted"] > 0 and p["trees"]["published"] > 0, why
    assert p["problems_lost"] == 0, why
    assert p["problems"]["not_stored"] == p["problems"]["not_queued"] == 0, why
    assert p["trees_lost"] == 0 and p["trees_duplicated"] == 0, why
    assert p["rounds_completed"] >= 1, why  # the bootstrap; later rounds if the faults let them finish
    assert p["rounds_consistent"], why
    ck = p["checkpoints"]
    assert ck["pointers"] >= 1 and ck["pointers_ok"] == ck["pointers"] and ck["verified"] == ck["published"], why
    assert p["reader"]["ok"] > 0 and p["reader"]["5xx_while_up"] == 0, why
