"""``rstar problems add`` as a real process against a real nats-server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from cli_helpers import last_json, problems_add

from broker.client import open_broker
from broker.streams import PROBLEMS_STREAM
from rstar.config import load_config
from rstar.schemas import Problem, decode

pytestmark = pytest.mark.timeout(120)


def _queued(server) -> list[Problem]:
    async def run():
        cfg = load_config(overrides=[f'broker.url="{server.url}"'], env={})
        async with open_broker(cfg, "test-probe") as b:
            n = (await b.js.stream_info(PROBLEMS_STREAM)).state.messages
            return [decode((await b.js.get_msg(PROBLEMS_STREAM, seq)).data, Problem) for seq in range(1, n + 1)]

    return asyncio.run(run())


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


GOOD = [json.dumps({"question": f"What is {i} times 3?", "answer": str(3 * i)}) for i in range(5)]


def test_adding_a_file_twice_queues_it_once(nats_server, tmp_path):
    f = _write(tmp_path / "p.jsonl", GOOD)
    none_left_out = {"held_out": 0, "teacher": 0}
    assert last_json(problems_add(nats_server.url, str(f), "--json")) == {
        "published": 5,
        "duplicates": 0,
        "invalid": 0,
        **none_left_out,
        "total": 5,
    }
    assert last_json(problems_add(nats_server.url, str(f), "--json")) == {
        "published": 0,
        "duplicates": 5,
        "invalid": 0,
        **none_left_out,
        "total": 5,
    }
    queued = _queued(nats_server)
    assert sorted(p.question for p in queued) == sorted(json.loads(g)["question"] for g in GOOD)
    assert len({p.id for p in queued}) == 5


def test_a_malformed_file_is_refused_whole_with_its_line(nats_server, tmp_path):
    f = _write(tmp_path / "bad.jsonl", [*GOOD[:2], "{not json", *GOOD[2:]])
    proc = problems_add(nats_server.url, str(f), "--json")
    assert proc.returncode == 2
    assert f"{f}:3: not a JSON object" in proc.stderr
    assert _queued(nats_server) == []
    counts = last_json(problems_add(nats_server.url, str(f), "--skip-invalid", "--json"))
    assert counts == {"published": 5, "duplicates": 0, "invalid": 1, "held_out": 0, "teacher": 0, "total": 6}


def test_a_builtin_set_with_a_limit(nats_server):
    counts = last_json(problems_add(nats_server.url, "--dataset", "synthetic", "--limit", "20", "--json"))
    assert counts["published"] == 20 and counts["invalid"] == 0
    again = last_json(problems_add(nats_server.url, "--dataset", "synthetic", "--limit", "30", "--json"))
    assert (again["published"], again["duplicates"]) == (10, 20)  # limit 20 is a prefix of limit 30
    assert len(_queued(nats_server)) == 30
    # the teacher's problems (the same generator and seed) are left out, so 30 are still queued
    assert again["teacher"] > 0 and again["total"] == 30 + again["teacher"]


def test_neither_or_both_sources_is_a_usage_error(nats_server, tmp_path):
    assert problems_add(nats_server.url).returncode == 2
    f = _write(tmp_path / "p.jsonl", GOOD)
    assert problems_add(nats_server.url, str(f), "--dataset", "synthetic").returncode == 2
