"""End to end: the compose cluster's own service commands, run as plain processes.

``deploy/docker-compose.yml`` is read, and its learner, two actor replicas, api and seed services
are started with their commands and the env file, pointed at a real nats-server and a scratch
PostgreSQL database on this machine (no Docker engine runs here). The policy is the tiny test
model. The run must show two full rounds: round 0 bootstrapped from the curriculum teacher,
round 1 collected by the actors and trained, a checkpoint swap observed in the actors, the
rounds table filled, and the store's counts equal to what went through the queues.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]
ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def compose_services() -> dict[str, dict]:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())["services"]


def interpolate(text: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR:-default}`` substitution (enough for our file)."""
    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}", lambda m: env.get(m[1]) or (m[2] or ""), text)


def env_file(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            k, v = line.split("=", 1)
            out[k.strip()] = v.strip()
    return out


def test_compose_file_is_valid(tmp_path):
    exe = shutil.which("docker-compose")
    if exe is None:
        pytest.skip("docker-compose is not installed (.ci/run installs Debian's docker-compose)")
    work = tmp_path / "deploy"
    shutil.copytree(DEPLOY, work)
    shutil.copy(work / "rstar.env.example", work / "rstar.env")
    for files in (["docker-compose.yml"], ["docker-compose.yml", "docker-compose.gpu.yml"]):
        args = [a for f in files for a in ("-f", str(work / f))]
        res = subprocess.run([exe, *args, "config", "-q"], capture_output=True, text=True, cwd=work)
        assert res.returncode == 0, res.stderr
    services = compose_services()
    assert {"nats", "postgres", "learner", "actor", "api", "seed"} <= set(services)
    for name in ("nats", "postgres", "api"):
        assert "healthcheck" in services[name]


@pytest.fixture
def scratch_pg():
    from store.scratch import scratch_postgres

    with scratch_postgres(tag="e2e") as url:
        yield url


def _wait(pred, timeout, what, procs):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, p in procs.items():
            if name != "seed" and p.poll() is not None:
                raise AssertionError(f"{name} exited with {p.returncode} while waiting for {what}")
        got = pred()
        if got:
            return got
        time.sleep(1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def test_services_run_two_rounds_with_a_swap(tmp_path, nats_server, scratch_pg, tiny_model_dir):
    import asyncio

    from store.db import open_store
    from store.queries import list_rounds, stats

    services = compose_services()
    env = dict(os.environ)
    env = {k: v for k, v in env.items() if not k.startswith("RSTAR_")}
    env.update(env_file(DEPLOY / "rstar.env.example"))
    env.update(
        {  # the compose hosts → this machine; the tiny model and a tiny schedule
            "RSTAR_BROKER__URL": nats_server.url,
            "RSTAR_STORE__URL": scratch_pg,
            "RSTAR_DATA_DIR": str(tmp_path / "data"),
            "RSTAR_API__TOKEN": "t0ken",
            "RSTAR_MODEL__POLICY": str(tiny_model_dir),
            "RSTAR_MODEL__CACHE_DIR": str(tmp_path / "cache"),
            "RSTAR_MODEL__THREADS": "1",
            "RSTAR_TRAIN__THREADS": "1",
            "RSTAR_LEARNER__TEACHER_PROBLEMS": "6",
            "RSTAR_LEARNER__TEACHER_LEVELS": "[1]",
            "RSTAR_LEARNER__ROUND_QUOTA": "3",
            "RSTAR_LEARNER__MAX_ROUNDS": "1",
            "RSTAR_LEARNER__EVAL_SYNTHETIC_N": "2",
            "RSTAR_LEARNER__EVAL_REAL_N": "0",
            "RSTAR_LEARNER__EVAL_METHODS": '["greedy", "mcts"]',
            "RSTAR_LEARNER__EVAL_K": "2",
            "RSTAR_LEARNER__POLL_S": "1",
            "RSTAR_TRAIN__EPOCHS": "1",
            "RSTAR_SEARCH__ROLLOUTS": "2",
            "RSTAR_SEARCH__N_CHILDREN": "2",
            "RSTAR_SEARCH__MAX_DEPTH": "3",
            "RSTAR_SEARCH__TREES_IN_FLIGHT": "2",
            "RSTAR_GENERATION__MAX_STEP_TOKENS": "12",
            "RSTAR_GENERATION__FEW_SHOT": "false",
            "RSTAR_ACTOR__WAIT_FOR_MODEL": "true",
            "RSTAR_ACTOR__HEARTBEAT_S": "1",
            "RSTAR_SEED_LIMIT": "40",
        }
    )
    rstar = [sys.executable, "-m", "app"]
    logs = tmp_path / "logs"
    logs.mkdir()
    procs: dict[str, subprocess.Popen] = {}
    files = []

    def start(name: str, service: str, extra: dict[str, str] | None = None):
        cmd = [interpolate(str(a), env) for a in services[service]["command"]]
        if service == "api":  # the container port is published by compose; here take any free one
            cmd = [c for c in cmd if c not in ("--port", "8321")] + ["--port", str(free_port())]
        out = open(logs / f"{name}.log", "wb")
        files.append(out)
        procs[name] = subprocess.Popen(
            rstar + cmd, env={**env, **(extra or {})}, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path
        )
        return cmd

    try:
        seed_cmd = start("seed", "seed")
        assert seed_cmd[:3] == ["problems", "add", "--dataset"]
        assert procs["seed"].wait(120) == 0, (logs / "seed.log").read_text()
        start("learner", "learner")
        start("actor-1", "actor", {"RSTAR_ACTOR__ID": "actor-1"})
        start("actor-2", "actor", {"RSTAR_ACTOR__ID": "actor-2"})
        api_cmd = start("api", "api")
        engine = open_store(scratch_pg)

        def published(r):
            return any(x["round"] == r and x["state"] == "published" for x in list_rounds(engine))

        _wait(lambda: published(0), 180, "round 0 (bootstrap) to be published", procs)
        _wait(lambda: published(1), 180, "round 1 to be trained and published", procs)

        def round2_trees():
            return (
                stats(engine)["by_round"]
                if any(r.get("round") == 2 and r.get("trees", 0) > 0 for r in stats(engine)["by_round"])
                else None
            )

        _wait(round2_trees, 120, "trees searched on the round-1 policy", procs)
        port = int(api_cmd[-1])
        api = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/stats", timeout=10).read())
    finally:
        # Actors first; then let ingest take what they published; then the learner and API.
        stop(procs, [n for n in procs if n.startswith("actor")])
        try:
            if "learner" in procs and procs["learner"].poll() is None:
                drained(nats_server.url)
        finally:
            stop(procs, list(procs))
            for f in files:
                f.close()
    for name, p in procs.items():  # every service stops cleanly on SIGTERM
        assert p.returncode == 0, f"{name} exited {p.returncode}:\n{(logs / f'{name}.log').read_text()[-3000:]}"

    rounds = {r["round"]: r for r in list_rounds(engine)}
    assert rounds[0]["state"] == rounds[1]["state"] == "published"
    assert rounds[0]["policy_version"] and rounds[1]["policy_version"]
    assert rounds[0]["policy_version"] != rounds[1]["policy_version"]
    for r in (0, 1):
        assert "accuracy" in (rounds[r]["eval"] or {}), rounds[r]["eval"]
    from sqlalchemy import text

    with engine.connect() as c:
        versions = dict(
            c.execute(
                text("select round, count(distinct policy_version) from trees where source = 'search' group by round")
            ).all()
        )
        by_round_policy = c.execute(
            text("select distinct round, policy_version from trees where source = 'search'")
        ).all()
        search_trees = c.execute(text("select count(*) from trees where source = 'search'")).scalar()
        teacher = c.execute(text("select count(*) from trees where source = 'teacher'")).scalar()
    # Trees from both published policies: round 1 on round 0's, round 2 on round 1's (the swap).
    assert {r: v for r, v in by_round_policy} == {1: rounds[0]["policy_version"], 2: rounds[1]["policy_version"]}
    assert versions == {1: 1, 2: 1}
    assert teacher == 6

    async def queue_counts():
        from broker.client import open_broker
        from broker.streams import TREES_STREAM
        from rstar.config import load_config

        cfg = load_config(overrides=[f'broker.url="{nats_server.url}"'], env={})
        async with open_broker(cfg, "e2e-check", setup=False) as b:
            return (await b.js.stream_info(TREES_STREAM)).state.messages

    assert asyncio.run(queue_counts()) == search_trees  # every published tree stored, once
    assert teacher <= api["trees"] <= search_trees + teacher  # read while actors still ran


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(procs: dict[str, subprocess.Popen], names: list[str]) -> None:
    for n in names:
        if procs[n].poll() is None:
            procs[n].send_signal(signal.SIGTERM)
    for n in names:
        try:
            procs[n].wait(90)
        except subprocess.TimeoutExpired:
            procs[n].kill()
            procs[n].wait()


def drained(url: str, timeout: float = 60) -> None:
    """Wait until the ingest consumer has nothing pending or unacked."""
    import asyncio

    from broker.client import open_broker
    from broker.streams import INGEST_CONSUMER, TREES_STREAM
    from rstar.config import load_config

    async def check():
        cfg = load_config(overrides=[f'broker.url="{url}"'], env={})
        async with open_broker(cfg, "e2e-drain", setup=False) as b:
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                info = await b.js.consumer_info(TREES_STREAM, INGEST_CONSUMER)
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    return
                await asyncio.sleep(0.5)
            raise AssertionError(f"ingest still has {info.num_pending} pending, {info.num_ack_pending} unacked")

    asyncio.run(check())
