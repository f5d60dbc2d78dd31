"""The broker layer against a real nats-server (one per test, free port, temp store dir)."""

from __future__ import annotations

import asyncio
import base64
import json
import random
import socket

import pytest
from nats.js import api

from broker.client import open_broker, publish, publish_tree
from broker.codec import PARTS, Reassembler, decode_tree
from broker.dead_letters import list_dead_letters, replay, watch_exhausted_problems
from broker.problems import add_problems, fetch_problems, problems_subscription, requeue_problem
from broker.server import embedded_server, start_server
from broker.streams import (
    ACTORS_BUCKET,
    ACTORS_CONSUMER,
    CHECKPOINTS_BUCKET,
    DLQ_STREAM,
    EXHAUSTED_STREAM,
    INGEST_CONSUMER,
    MODELS_BUCKET,
    PROBLEMS_STREAM,
    PROBLEMS_SUBJECT,
    TREES_STREAM,
    TREES_SUBJECT,
)
from rstar.config import load_config
from rstar.schemas import Node, Problem, TreeResult, problem_id

pytestmark = pytest.mark.timeout(60)


def _cfg(url: str, *extra: str):
    return load_config(overrides=[f'broker.url="{url}"', *extra], env={})


def _problems(n: int, source: str = "it") -> list[Problem]:
    return [
        Problem(
            id=problem_id(source, f"What is {i} + {i}?"),
            source=source,
            question=f"What is {i} + {i}?",
            answer=str(2 * i),
        )
        for i in range(n)
    ]


def _big_tree(mb: float, tree_id: str = "big-1") -> TreeResult:
    rng = random.Random(7)
    n = int(mb * 1024 * 1024 / 3000)
    nodes = [Node(idx=0, parent=None, depth=0)] + [
        Node(idx=i, parent=0, depth=1, text=base64.b64encode(rng.randbytes(2250)).decode()) for i in range(1, n + 1)
    ]
    return TreeResult(
        tree_id=tree_id,
        problem=_problems(1)[0],
        actor_id="a",
        policy_version="p",
        ppm_version="",
        started_at=1.0,
        finished_at=2.0,
        nodes=nodes,
        solved=False,
    )


async def test_ensure_broker_creates_the_layout_and_is_idempotent(nats_server):
    cfg = _cfg(nats_server.url)
    async with open_broker(cfg, "t1") as b:
        problems = await b.js.stream_info(PROBLEMS_STREAM)
        assert problems.config.retention == api.RetentionPolicy.WORK_QUEUE
        assert problems.config.subjects == ["rstar.problems.>"]
        trees = await b.js.stream_info(TREES_STREAM)
        assert trees.config.subjects == [TREES_SUBJECT] and trees.config.duplicate_window == cfg.broker.dedup_window_s
        assert (await b.js.stream_info(DLQ_STREAM)).config.subjects == ["rstar.dlq.>"]
        actors = await b.js.consumer_info(PROBLEMS_STREAM, ACTORS_CONSUMER)
        assert actors.config.ack_wait == cfg.broker.problems_ack_wait_s
        assert actors.config.max_deliver == cfg.broker.problems_max_deliver
        ingest = await b.js.consumer_info(TREES_STREAM, INGEST_CONSUMER)
        assert ingest.config.max_deliver == -1
        assert (await b.js.stream_info(f"KV_{ACTORS_BUCKET}")).config.max_age == cfg.broker.heartbeat_ttl_s
        await b.js.key_value(MODELS_BUCKET)
        await b.js.object_store(CHECKPOINTS_BUCKET)
        await publish_tree(b, _big_tree(0.01, "t-1"))
        sub = await b.js.pull_subscribe_bind(durable=INGEST_CONSUMER, stream=TREES_STREAM)
        [msg] = await sub.fetch(1, timeout=2)
        await msg.ack_sync()
    # Again, with a new ack_wait: the consumer is updated in place and keeps its ack floor.
    async with open_broker(_cfg(nats_server.url, "broker.trees_ack_wait_s=7"), "t2") as b:
        ingest = await b.js.consumer_info(TREES_STREAM, INGEST_CONSUMER)
        assert ingest.config.ack_wait == 7 and ingest.ack_floor.stream_seq == 1 and ingest.num_pending == 0
        assert (await b.js.stream_info(TREES_STREAM)).state.messages == 1


async def test_problems_are_queued_once_even_after_the_dedup_window(nats_server):
    ps = _problems(50)
    async with open_broker(_cfg(nats_server.url, "broker.dedup_window_s=1"), "t") as b:
        first = await add_problems(b, ps + ps[:5])  # repeats inside one input count as duplicates
        assert (first.published, first.duplicates) == (50, 5)
        await asyncio.sleep(1.5)  # past the stream's dedup window: only the KV guard remains
        again = await add_problems(b, ps)
        assert (again.published, again.duplicates) == (0, 50)
        assert (await b.js.stream_info(PROBLEMS_STREAM)).state.messages == 50
        await requeue_problem(b, ps[0], "r1")
        await requeue_problem(b, ps[0], "r1")  # same attempt: deduplicated
        assert (await b.js.stream_info(PROBLEMS_STREAM)).state.messages == 51


async def test_fetch_problems_dead_letters_bad_ones(nats_server):
    async with open_broker(_cfg(nats_server.url), "t") as b:
        await add_problems(b, _problems(3))
        await publish(b, PROBLEMS_SUBJECT, b'{"id": 1, "oops": true}', {"Nats-Msg-Id": "bad-1"})
        sub = await problems_subscription(b)
        got = await fetch_problems(b, sub, batch=10, timeout=2)
        assert sorted(p.id for p, _ in got) == sorted(p.id for p in _problems(3))
        for _, m in got:
            await m.ack()
        dlq = await b.js.pull_subscribe("rstar.dlq.>", stream=DLQ_STREAM)
        [dead] = await dlq.fetch(1, timeout=2)
        assert dead.subject == "rstar.dlq.problems.new" and dead.data == b'{"id": 1, "oops": true}'
        assert dead.headers["Rstar-Error-Type"] == "SchemaError" and "Problem" in dead.headers["Rstar-Error"]
        assert dead.headers["Rstar-Dlq-Stream"] == PROBLEMS_STREAM
        info = await b.js.consumer_info(PROBLEMS_STREAM, ACTORS_CONSUMER)
        assert info.num_ack_pending == 0 and info.num_pending == 0


async def test_a_problem_no_actor_finishes_goes_to_the_dlq_and_replays(nats_server):
    """No learner runs while the problem is given up on: the stored advisory waits for the next."""
    cfg = _cfg(nats_server.url, "broker.problems_max_deliver=2", "broker.problems_ack_wait_s=0.5")
    async with open_broker(cfg, "t") as b:
        doomed, fine = _problems(2)
        await add_problems(b, [doomed, fine])
        sub = await problems_subscription(b)
        for attempt in (1, 2):  # an actor takes the problem and dies, twice
            got = await fetch_problems(b, sub, batch=2, timeout=3)
            for p, m in got:
                if p.id == fine.id:
                    await m.ack()
            assert doomed.id in [p.id for p, _ in got], attempt
            await asyncio.sleep(0.7)
        for _ in range(20):  # the server gives up (and announces it) on an actor's next fetch
            assert await fetch_problems(b, sub, batch=2, timeout=0.2) == []
            if (await b.js.stream_info(EXHAUSTED_STREAM)).state.messages:
                break
        assert (await b.js.stream_info(PROBLEMS_STREAM)).state.messages == 1  # still there, undelivered
        assert await list_dead_letters(b, limit=10) == (0, [])
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_exhausted_problems(b, stop))  # a learner starts
        for _ in range(50):
            total, rows = await list_dead_letters(b, limit=10)
            if total:
                break
            await asyncio.sleep(0.1)
        [row] = rows
        assert row["subject"] == "rstar.dlq.problems.new" and row["Rstar-Dlq-Delivered"] == "2"
        assert "delivered 2 times without an ack" in row["Rstar-Error"]
        assert (await b.js.stream_info(PROBLEMS_STREAM)).state.messages == 0  # moved, not copied
        for _ in range(50):  # the advisory is acked (gone from the work queue) after the move
            if not (await b.js.stream_info(EXHAUSTED_STREAM)).state.messages:
                break
            await asyncio.sleep(0.1)
        assert (await b.js.stream_info(EXHAUSTED_STREAM)).state.messages == 0

        with pytest.raises(LookupError, match="no dead letter #999"):
            await replay(b, [999])
        assert await replay(b, [row["seq"]]) == [(row["seq"], PROBLEMS_SUBJECT)]
        assert await list_dead_letters(b, limit=10) == (0, [])
        [(p, m)] = await fetch_problems(b, sub, batch=2, timeout=3)  # back in the queue, intact
        assert p == doomed
        await m.ack()
        stop.set()
        assert await watcher == 1


async def test_a_tree_of_megabytes_is_chunked_under_max_payload_and_reassembles(nats_server):
    tree = _big_tree(4.0)
    async with open_broker(_cfg(nats_server.url), "t") as b:
        assert b.max_payload == 1024 * 1024
        acks = await publish_tree(b, tree)
        assert len(acks) >= 3
        again = await publish_tree(b, tree)  # a retried publish: every part deduplicated
        assert all(a.duplicate for a in again)
        sub = await b.js.pull_subscribe_bind(durable=INGEST_CONSUMER, stream=TREES_STREAM)
        msgs = await sub.fetch(len(acks), timeout=2)
        assert {m.headers[PARTS] for m in msgs} == {str(len(acks))}
        asm, whole = Reassembler(), None
        for m in msgs:
            whole = asm.add(m.headers, m.data, m, now=0.0) or whole
        assert decode_tree(whole.headers, whole.payload) == tree


async def test_publish_retries_across_a_server_restart(nats_server, tmp_path):
    cfg = _cfg(nats_server.url, "broker.publish_timeout_s=0.5")
    restarted = None
    try:
        async with open_broker(cfg, "t") as b:
            await publish_tree(b, _big_tree(0.01, "before"))
            nats_server.kill()  # crash, not a clean stop
            pending = asyncio.create_task(publish_tree(b, _big_tree(0.01, "during")))
            await asyncio.sleep(1.0)
            assert not pending.done()
            restarted = await asyncio.to_thread(start_server, nats_server.store_dir, nats_server.port)
            await asyncio.wait_for(pending, 30)
            info = await b.js.stream_info(TREES_STREAM)
            assert info.state.messages == 2  # the stream and its first tree survived the crash
            assert (await b.js.consumer_info(TREES_STREAM, INGEST_CONSUMER)).num_pending == 2
    finally:
        if restarted is not None:
            restarted.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_embedded_server_starts_once_and_is_shared(tmp_path):
    port = _free_port()
    cfg = load_config(overrides=[f"broker.embedded_port={port}", f'data_dir="{tmp_path}"'], env={})
    with embedded_server(cfg) as url:
        assert url == f"nats://127.0.0.1:{port}"
        assert (tmp_path / "nats" / "run" / "nats-server.log").exists()
        with embedded_server(cfg) as url2:  # already listening: shared, not started again
            assert url2 == url
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:  # inner exit kept it
            assert s.recv(4) == b"INFO"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)


def test_rstar_broker_up_runs_until_sigterm_and_dlq_lists_dead_letters(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    rstar = str(Path(sys.executable).parent / "rstar")
    port = _free_port()
    sets = ["--set", f"broker.embedded_port={port}", "--set", f'data_dir="{tmp_path}"']
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSTAR_")}
    proc = subprocess.Popen([rstar, "broker", "up", *sets], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        lines = iter(proc.stdout.readline, b"")
        assert any(b"NATS JetStream at" in line for line in lines)  # after the log lines
        url = f"nats://127.0.0.1:{port}"

        async def poison():
            async with open_broker(_cfg(url), "t", setup=False) as b:  # the layout is already there
                await publish(b, PROBLEMS_SUBJECT, b"\xff", {"Nats-Msg-Id": "x"})
                await fetch_problems(b, await problems_subscription(b), batch=1, timeout=2)

        asyncio.run(poison())
        out = subprocess.run(
            [rstar, "broker", "dlq", "--json", *sets], env=env, capture_output=True, text=True, timeout=60
        )
        [row] = [json.loads(line) for line in out.stdout.splitlines()]
        assert row["subject"] == "rstar.dlq.problems.new" and "not valid JSON" in row["Rstar-Error"]
        out = subprocess.run(
            [rstar, "broker", "dlq", "--replay", "99", *sets], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 2 and "no dead letter #99" in out.stderr
        out = subprocess.run(
            [rstar, "broker", "dlq", "--replay-all", "--json", *sets],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert [json.loads(line) for line in out.stdout.splitlines()] == [
            {"replayed": row["seq"], "subject": PROBLEMS_SUBJECT}
        ]
        out = subprocess.run(
            [rstar, "broker", "dlq", "--json", *sets], env=env, capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0 and out.stdout == ""
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0, proc.stderr.read().decode()
    time.sleep(0.1)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1)
