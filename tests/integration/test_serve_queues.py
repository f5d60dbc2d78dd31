"""``rstar serve`` run for real: problems posted to the API are queued for the actors.

Found by the chaos run (benchmarks/chaos.py): ``rstar serve`` stored posted problems but never
published them to PROBLEMS, so no actor ever searched a problem that arrived over the API. With
``broker.url`` set, a post is stored, then queued once; with the broker down the post is a 502
(stored, not queued) and posting it again once the broker is back queues it.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from broker.server import start_server
from rstar.config import load_config

pytestmark = [pytest.mark.slow, pytest.mark.timeout(240)]
ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t0ken"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(port: int, problems: list[dict]) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/api/problems",
        data=json.dumps(problems).encode(),
        headers={"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def _queued(url: str) -> list[str]:
    """Problem ids waiting in PROBLEMS, read without consuming them."""
    from broker.client import open_broker
    from broker.streams import PROBLEMS_STREAM
    from rstar.schemas import Problem, decode

    async def read() -> list[str]:
        cfg = load_config(overrides=[f'broker.url="{url}"'], env={})
        async with open_broker(cfg, "test-serve", setup=False) as b:
            info = (await b.js.stream_info(PROBLEMS_STREAM)).state
            out = []
            for seq in range(info.first_seq, info.last_seq + 1) if info.messages else ():
                msg = await b.js.get_msg(PROBLEMS_STREAM, seq)
                out.append(decode(msg.data, Problem).id)
            return out

    return asyncio.run(read())


def test_posted_problems_are_queued_and_a_broker_outage_is_a_502_then_a_retry_queues(tmp_path):
    srv = start_server(tmp_path / "nats")
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSTAR_")} | {
        "RSTAR_BROKER__URL": srv.url,
        "RSTAR_STORE__URL": f"sqlite:///{tmp_path / 'rstar.db'}",
        "RSTAR_API__TOKEN": TOKEN,
        "RSTAR_BROKER__PUBLISH_RETRY_S": "3",
        "RSTAR_BROKER__CONNECT_TIMEOUT_S": "2",
    }
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    api = subprocess.Popen(
        [sys.executable, "-m", "app", "serve", "--port", str(port)], env=env, cwd=ROOT, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
                break
            except OSError:
                assert api.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, "the API did not come up"
                time.sleep(0.5)
        status, body = _post(port, [{"question": "What is 2 + 3?", "answer": "5", "source": "t"}])
        assert status == 200, body
        first = body["ids"][0]
        assert _queued(srv.url) == [first]
        assert _post(port, [{"question": "What is 2 + 3?", "answer": "5", "source": "t"}])[0] == 200
        assert _queued(srv.url) == [first]  # queued once, however often it is posted

        srv.kill()
        status, body = _post(port, [{"question": "What is 4 + 4?", "answer": "8", "source": "t"}])
        assert status == 502, body
        assert "stored but not published" in body["error"]
        srv = start_server(srv.store_dir, port=srv.port)
        status, body = _post(port, [{"question": "What is 4 + 4?", "answer": "8", "source": "t"}])
        assert status == 200, body
        assert _queued(srv.url) == [first, body["ids"][0]]
    finally:
        api.terminate()
        api.wait(30)
        log.close()
        srv.stop()
