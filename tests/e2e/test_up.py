"""``rstar up`` as a user runs it: one command, a bounded run, then the same command resumes.

The real command in a subprocess (embedded processes: learner, actor; the test's NATS server,
SQLite under a scratch data dir, the tiny model): round 0 from the curriculum teacher, round 1
from the actor's trees, a checkpoint swap, evaluation, and a clean stop at ``--rounds 1``.
Run again, it resumes from the store and the broker: nothing is trained or queued again, and
the old pointer and trees are not reported as this run's milestones.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from stop_helpers import stop_wait_s

pytestmark = pytest.mark.slow


def _up(tmp_path, env) -> tuple[subprocess.CompletedProcess, list[dict]]:
    cmd = [sys.executable, "-m", "app", "up", "--rounds", "1", "--no-api", "--dataset", "synthetic", "--limit", "30"]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400, cwd=tmp_path)
    logs = [json.loads(line) for line in res.stderr.splitlines() if line.startswith("{")]
    return res, logs


def _msgs(logs: list[dict]) -> str:
    return "\n".join(str(x.get("msg", x.get("message", ""))) for x in logs)


def test_up_runs_a_round_with_a_swap_then_resumes(tmp_path, nats_server, tiny_model_dir):
    from store.db import open_store
    from store.queries import list_rounds, stats

    env = {k: v for k, v in os.environ.items() if not k.startswith("RSTAR_")} | {
        "RSTAR_LOG_JSON": "1",
        "RSTAR_BROKER__URL": nats_server.url,
        "RSTAR_DATA_DIR": str(tmp_path / "data"),
        "RSTAR_MODEL__POLICY": str(tiny_model_dir),
        "RSTAR_MODEL__CACHE_DIR": str(tmp_path / "cache"),
        "RSTAR_MODEL__THREADS": "1",
        "RSTAR_TRAIN__THREADS": "1",
        "RSTAR_TRAIN__EPOCHS": "1",
        "RSTAR_LEARNER__TEACHER_PROBLEMS": "6",
        "RSTAR_LEARNER__TEACHER_LEVELS": "[1]",
        "RSTAR_LEARNER__ROUND_QUOTA": "3",
        "RSTAR_LEARNER__MAX_ROUNDS": "1",
        "RSTAR_LEARNER__POLL_S": "1",
        "RSTAR_LEARNER__EVAL_SYNTHETIC_N": "2",
        "RSTAR_LEARNER__EVAL_REAL_N": "0",
        "RSTAR_LEARNER__EVAL_METHODS": '["greedy"]',
        "RSTAR_ACTOR__NICE": "3",
        "RSTAR_SEARCH__ROLLOUTS": "2",
        "RSTAR_SEARCH__N_CHILDREN": "2",
        "RSTAR_SEARCH__MAX_DEPTH": "3",
        "RSTAR_SEARCH__TREES_IN_FLIGHT": "2",
        "RSTAR_GENERATION__MAX_STEP_TOKENS": "12",
        "RSTAR_ACTOR__HEARTBEAT_S": "1",
    }
    res, logs = _up(tmp_path, env)
    text = _msgs(logs)
    assert res.returncode == 0, res.stderr[-4000:]
    assert "first tree stored after" in text and "first checkpoint swap observed after" in text, text
    assert "round 1 published and evaluated: stopping" in text
    engine = open_store(f"sqlite:///{tmp_path / 'data' / 'rstar.db'}")
    rows = list_rounds(engine)
    assert [r["round"] for r in rows] == [0, 1]
    assert all(r["state"] == "published" and "accuracy" in r["eval"] for r in rows)
    assert rows[1]["eval"]["collect"]["trees"] >= 3
    before = stats(engine)["trees"]
    logs_dir = tmp_path / "data" / "run" / "logs"
    assert {p.name for p in logs_dir.iterdir()} >= {"learner.log", "actor-0.log"}

    again, logs2 = _up(tmp_path, env)
    text2 = _msgs(logs2)
    assert again.returncode == 0, again.stderr[-4000:]
    assert "round 1 published and evaluated: stopping" in text2
    assert "first checkpoint swap observed" not in text2  # the actor starts on the old pointer
    assert [r["round"] for r in list_rounds(engine)] == [0, 1]  # nothing trained again
    assert stats(engine)["trees"] >= before
    engine.dispose()


def test_detach_then_down(tmp_path, nats_server):
    """``rstar up --detach`` returns at once and the run goes on; ``rstar down`` stops it and every
    process it started; a second run is refused while one is up; ``down`` with none says so."""
    import time

    from app.background import _children, running_pid

    env = {k: v for k, v in os.environ.items() if not k.startswith("RSTAR_")} | {
        "RSTAR_BROKER__URL": nats_server.url,
        "RSTAR_DATA_DIR": str(tmp_path / "data"),
        "RSTAR_LEARNER__TEACHER": "none",
        "RSTAR_LEARNER__POLL_S": "1",
    }
    up = [sys.executable, "-m", "app", "up", "--detach", "--actors", "0", "--dataset", "synthetic:1", "--limit", "3"]

    from rstar.config import load_config
    from rstar.stopping import up_stop_bound_s

    stop_s = stop_wait_s(up_stop_bound_s(load_config(env=env)))  # what rstar up documents, and slack

    def run(*cmd, timeout: float = 120):
        return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout, cwd=tmp_path)

    res = run(*up)
    assert res.returncode == 0 and "runs in the background" in res.stdout, res.stderr
    run_dir = tmp_path / "data" / "run"
    pid = running_pid(run_dir)
    assert pid is not None
    again = run(*up)
    assert again.returncode == 2 and "already runs here" in again.stderr
    deadline = time.monotonic() + 60
    while not (run_dir / "logs" / "learner.log").exists() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _children(run_dir), "the learner and the API should run under the detached rstar up"
    down = run(sys.executable, "-m", "app", "down", "--timeout", str(stop_s), timeout=stop_s + 30)
    assert down.returncode == 0 and f"(pid {pid}) stopped" in down.stdout, down.stdout + down.stderr
    assert running_pid(run_dir) is None and _children(run_dir) == []
    assert "stopping" in (run_dir / "up.log").read_text()
    none = run(sys.executable, "-m", "app", "down")
    assert none.returncode == 1 and "no detached rstar up" in none.stderr
