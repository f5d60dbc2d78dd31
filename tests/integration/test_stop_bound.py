"""The documented stop bound, checked on a saturated machine: a busy ``rstar actor`` beside a CPU hog
(one spinning process per core) exits within ``actor.grace_s`` + 30 s of SIGTERM
(``rstar.stopping.actor_stop_bound_s``), by its orderly path (exit 0, the problems it held returned),
not by its watchdog (exit 124). ``benchmarks/stop_time.py`` measures the same stop, repeated.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from stop_helpers import CpuHog, exit_note, stop_wait_s

from actors.heartbeat import read_fleet
from broker.client import open_broker
from broker.problems import add_problems
from rstar.config import load_config
from rstar.curriculum import synthetic_problems
from rstar.stopping import actor_stop_bound_s

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
ROOT = Path(__file__).resolve().parents[2]
BUSY_WITHIN_S = 300.0  # start (imports, model, sandbox) with every core taken by the hog


async def _busy(b, actor_id: str, p: subprocess.Popen, err: Path) -> None:
    deadline = time.monotonic() + BUSY_WITHIN_S
    while time.monotonic() < deadline:
        assert p.poll() is None, f"actor exited with {p.returncode}: {err.read_text()[-3000:]}"
        h = next((x for x in await read_fleet(b) if x.actor_id == actor_id), None)
        if h is not None and h.trees_in_flight > 0:
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"actor not searching within {BUSY_WITHIN_S:.0f}s")


async def test_a_busy_actor_beside_a_cpu_hog_stops_within_its_bound(nats_server, tiny_model_dir, tmp_path):
    overrides = [
        f'broker.url="{nats_server.url}"',
        f'data_dir="{tmp_path}"',
        f'model.policy="{tiny_model_dir}"',
        "model.device=cpu",
        "model.threads=1",
        "generation.max_step_tokens=32",
        "search.rollouts=64",  # trees that outlast the wait below
        "search.n_children=4",
        "sandbox.workers=1",
        "actor.trees_in_flight=4",
        "actor.heartbeat_s=0.5",
        "actor.grace_s=0",
    ]
    cfg = load_config(overrides=overrides, env={})
    bound = actor_stop_bound_s(cfg)
    err, out = tmp_path / "actor.err", tmp_path / "actor.out"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSTAR_")} | {"RSTAR_LOG_JSON": "1"}
    cmd = [sys.executable, "-m", "app", "actor", "--id", "hogged", "--json"]
    with CpuHog(os.cpu_count() or 2), open(out, "w") as fout, open(err, "w") as ferr:
        p = subprocess.Popen(
            [*cmd, *(x for o in overrides for x in ("--set", o))], cwd=ROOT, env=env, stdout=fout, stderr=ferr
        )
        try:
            async with open_broker(cfg, "test") as b:
                await add_problems(b, synthetic_problems(16, "train", (2, 3), 0))
                await _busy(b, "hogged", p, err)
            await asyncio.sleep(1.0)  # into the search: generate() calls under way
            t0 = time.monotonic()
            p.send_signal(signal.SIGTERM)
            code = p.wait(stop_wait_s(bound))
            took = time.monotonic() - t0
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    assert code == 0, f"exit {code} {exit_note(code)}: {err.read_text()[-3000:]}"
    assert took <= bound, f"stopped in {took:.1f}s, bound {bound:.0f}s"
    assert json.loads(out.read_text().strip().splitlines()[-1])["returned"] >= 1
