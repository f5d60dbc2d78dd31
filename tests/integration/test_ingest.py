"""Ingest end to end: real nats-server, real SQLite file and PostgreSQL, ingest as a real process.

Each test starts its own nats-server (free port, temp store) and its own database: a SQLite file,
or a fresh PostgreSQL database created for the test and dropped after it.
"""

from __future__ import annotations

import asyncio
import base64
import inspect
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
from sqlalchemy import create_engine, text
from stop_helpers import exit_note, stop_wait_s

from broker.client import open_broker, publish, publish_tree
from broker.codec import ENCODING, encode_tree
from broker.server import start_server
from broker.streams import DLQ_STREAM, INGEST_CONSUMER, TREES_STREAM, TREES_SUBJECT
from learner.ingest import IngestStats, run_ingest
from rstar.config import load_config
from rstar.schemas import Node, TreeResult, encode
from rstar.stopping import learner_stop_bound_s
from store.db import open_store
from store.sample_trees import sample_tree
from store.scratch import scratch_postgres
from store.writer import upsert_trees

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]

PG_ADMIN_URL = os.environ.get("RSTAR_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
ROOT = Path(__file__).resolve().parents[2]
ACK_WAIT = "broker.trees_ack_wait_s=2"  # so a killed consumer's messages come back quickly


@pytest.fixture
def server(tmp_path):
    srv = start_server(tmp_path / "nats")
    yield srv
    srv.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path):
    """A SQLite file, or a PostgreSQL database of this test's own (dropped after it)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'rstar.db'}"
        return
    with scratch_postgres(PG_ADMIN_URL, tag="ingest") as url:
        yield url


def _cfg(nats_url: str, store_url: str, *extra: str):
    return load_config(overrides=[f'broker.url="{nats_url}"', f'store.url="{store_url}"', ACK_WAIT, *extra], env={})


def _counts(url: str) -> tuple[int, int]:
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return (
                c.execute(text("SELECT count(*) FROM trees")).scalar_one(),
                c.execute(text("SELECT count(*) FROM nodes")).scalar_one(),
            )
    finally:
        engine.dispose()


def _trees(n: int, nodes: int = 40, seed: int = 0) -> list[TreeResult]:
    rng = random.Random(seed)
    return [sample_tree(rng, nodes) for _ in range(n)]


async def _publish_all(cfg, trees) -> None:
    async with open_broker(cfg, "test-publisher") as b:
        gate = asyncio.Semaphore(32)

        async def one(t):
            async with gate:
                await publish_tree(b, t)

        await asyncio.gather(*(one(t) for t in trees))


async def _consumer_state(cfg) -> tuple[int, int]:
    async with open_broker(cfg, "test-probe", setup=False) as b:
        info = await b.js.consumer_info(TREES_STREAM, INGEST_CONSUMER)
        return info.num_pending, info.num_ack_pending


async def _dlq(cfg) -> list:
    async with open_broker(cfg, "test-dlq", setup=False) as b:
        n = (await b.js.stream_info(DLQ_STREAM)).state.messages
        if not n:
            return []
        sub = await b.js.pull_subscribe("rstar.dlq.>", stream=DLQ_STREAM)
        return await sub.fetch(n, timeout=5)


async def _until(pred, timeout: float, what: str, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        got = pred()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)


def _spawn_ingest(cfg, tmp_path: Path, tag: str, batch_size: int = 16) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "app",
        "ingest",
        "--set",
        f'broker.url="{cfg.broker.url}"',
        "--set",
        f'store.url="{cfg.store.url}"',
        "--set",
        ACK_WAIT,
        "--batch-size",
        str(batch_size),
        "--json",
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSTAR_")}
    out = open(tmp_path / f"ingest-{tag}.out", "w")
    err = open(tmp_path / f"ingest-{tag}.err", "w")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=err)


def _alive(proc: subprocess.Popen, tmp_path: Path, tag: str) -> None:
    if proc.poll() is not None:
        raise AssertionError(
            f"ingest {tag} exited with {proc.returncode}: {(tmp_path / f'ingest-{tag}.err').read_text()[-3000:]}"
        )


def _stop(proc: subprocess.Popen, tmp_path: Path, tag: str) -> dict:
    proc.send_signal(signal.SIGTERM)
    rc = proc.wait(stop_wait_s(learner_stop_bound_s(load_config(env={}))))  # rstar ingest: the learner's bound
    err = (tmp_path / f"ingest-{tag}.err").read_text()
    assert rc == 0, f"exit {rc} {exit_note(rc)}: {err[-3000:]}"
    return json.loads((tmp_path / f"ingest-{tag}.out").read_text().strip().splitlines()[-1])


async def test_sigkill_mid_batch_then_restart_stores_each_tree_once(server, store_url, tmp_path):
    cfg = _cfg(server.url, store_url)
    trees = _trees(240)
    await _publish_all(cfg, trees)
    engine = open_store(store_url)
    # As if an earlier ingest committed these and died before acking: must be skipped, not doubled.
    upsert_trees(engine, trees[:10])
    engine.dispose()

    # Batches of 2: ~95 commits between 10 and 200 trees, so the poll below catches the ingest
    # mid-run even on a quiet machine (with 16 it could commit past 200 between two polls).
    first = _spawn_ingest(cfg, tmp_path, "first", batch_size=2)
    try:
        at_kill = await _until(
            lambda: _alive(first, tmp_path, "first") or 10 < _counts(store_url)[0] < 200 and _counts(store_url),
            60,
            "the first batches to commit",
            every=0.01,
        )
    finally:
        first.kill()  # SIGKILL: no cleanup, no acks of the batch in hand
        first.wait()
    assert first.returncode == -signal.SIGKILL
    committed = _counts(store_url)[0]  # what the killed process had committed
    pending, ack_pending = await _consumer_state(cfg)
    # Killed mid-batch: messages delivered but not acked; they must come back, and be stored once.
    assert ack_pending > 0 and at_kill[0] <= committed < len(trees)

    second = _spawn_ingest(cfg, tmp_path, "second")
    try:
        await _until(
            lambda: _alive(second, tmp_path, "second") or _counts(store_url)[0] == len(trees),
            60,
            "all trees in the store",
        )
        await _until(_all_acked(cfg), 30, "every message acked", every=0.2)
    finally:
        stats = _stop(second, tmp_path, "second")
    assert _counts(store_url) == (len(trees), sum(len(t.nodes) for t in trees))
    assert stats["ingest/dead_lettered"] == 0
    assert stats["ingest/trees"] >= len(trees) - committed
    assert await _dlq(cfg) == []


def _all_acked(cfg):
    async def check():
        return await _consumer_state(cfg) == (0, 0)

    return check


async def _ingest_until(cfg, store_url: str, n_trees: int, timeout: float = 60, **kw) -> IngestStats:
    """Run ingest in this process until the store holds ``n_trees`` and all is acked."""
    engine = open_store(store_url)
    stop, stats = asyncio.Event(), IngestStats()
    task = asyncio.create_task(run_ingest(cfg, engine, stop, stats=stats, **kw))
    try:
        await _until(lambda: task.done() or (_counts(store_url)[0] >= n_trees), timeout, f"{n_trees} trees")
        await _until(_all_acked(cfg), timeout, "every message acked", every=0.2)
    finally:
        stop.set()
        await task
        engine.dispose()
    return stats


async def test_nats_restart_between_publish_and_ingest(server, store_url, tmp_path):
    cfg = _cfg(server.url, store_url)
    trees = _trees(60, seed=1) + [_big_tree(3.0, "big-after-restart")]
    await _publish_all(cfg, trees)
    server.stop()
    restarted = start_server(server.store_dir, server.port)
    try:
        stats = await _ingest_until(cfg, store_url, len(trees))
    finally:
        restarted.stop()
    assert _counts(store_url) == (len(trees), sum(len(t.nodes) for t in trees))
    assert stats.trees == len(trees) and stats.dead_lettered == 0


async def test_nats_crash_during_ingest_reconnects_and_loses_nothing(server, tmp_path):
    store_url = f"sqlite:///{tmp_path / 'rstar.db'}"
    cfg = _cfg(server.url, store_url)
    trees = _trees(300, seed=2)
    await _publish_all(cfg, trees)
    open_store(store_url).dispose()  # migrated before polling it
    proc = _spawn_ingest(cfg, tmp_path, "crash", batch_size=8)
    restarted = None
    try:
        await _until(
            lambda: _alive(proc, tmp_path, "crash") or _counts(store_url)[0] > 0, 60, "ingest to start", every=0.01
        )
        server.kill()
        time.sleep(1.0)
        restarted = start_server(server.store_dir, server.port)
        await _until(
            lambda: _alive(proc, tmp_path, "crash") or _counts(store_url)[0] == len(trees),
            90,
            "all trees after the restart",
        )
        await _until(_all_acked(cfg), 30, "every message acked", every=0.2)
        stats = _stop(proc, tmp_path, "crash")
    finally:
        if proc.poll() is None:
            proc.kill()
        if restarted is not None:
            restarted.stop()
    assert _counts(store_url) == (len(trees), sum(len(t.nodes) for t in trees))
    assert stats["ingest/dead_lettered"] == 0
    logs = (tmp_path / "ingest-crash.out").read_text() + (tmp_path / "ingest-crash.err").read_text()
    assert "disconnected" in logs and "reconnected" in logs


def _big_tree(mb: float, tree_id: str) -> TreeResult:
    """A valid tree of ``mb`` megabytes of hardly compressible node text: it must be chunked."""
    rng = random.Random(tree_id)
    n = int(mb * 1024 * 1024 / 3000)
    base = sample_tree(rng, 2, tree_id=tree_id)
    nodes = [Node(idx=0, parent=None, depth=0)] + [
        Node(idx=i, parent=0, depth=1, text=base64.b64encode(rng.randbytes(2250)).decode()) for i in range(1, n + 1)
    ]
    return msgspec.structs.replace(base, nodes=nodes)


async def test_poison_messages_go_to_the_dlq_and_ingest_goes_on(server, store_url, tmp_path):
    cfg = _cfg(server.url, store_url, "broker.partial_ttl_s=1")
    good = _trees(30, seed=3)
    big = _big_tree(3.0, "big-ok")
    bad_tree = msgspec.structs.replace(
        good[0], tree_id="orphan-node", nodes=[*good[0].nodes, Node(idx=999, parent=555, depth=3)]
    )
    future = msgspec.json.decode(encode(good[1]))
    future.update(tree_id="from-the-future", schema=2)
    unfinished = encode_tree(_big_tree(3.0, "never-finished"), 1024 * 1024)
    async with open_broker(cfg, "test-publisher") as b:
        for t in good[:10]:
            await publish_tree(b, t)
        await publish(b, TREES_SUBJECT, b"\x00\xffnot a tree", {"Nats-Msg-Id": "garbage"})
        await publish(b, TREES_SUBJECT, msgspec.json.encode(future), {"Nats-Msg-Id": "future"})
        await publish(b, TREES_SUBJECT, b"not zlib", {"Nats-Msg-Id": "bad-zlib", ENCODING: "zlib"})
        await publish_tree(b, bad_tree)  # decodes, but the writer refuses it
        for t in good[10:20]:
            await publish_tree(b, t)
        await publish_tree(b, big)
        for f in unfinished[:-1]:  # a publisher that died mid-tree
            await publish(b, TREES_SUBJECT, f.data, f.headers)
        for t in good[20:]:
            await publish_tree(b, t)

    stats = await _ingest_until(cfg, store_url, len(good) + 1, batch_size=64)
    want_dead = 4 + len(unfinished) - 1
    dead = await _dlq(cfg)
    assert len(dead) == want_dead, [d.headers.get("Rstar-Error") for d in dead]
    by_id = {}
    for d in dead:
        by_id.setdefault(d.headers.get("Rstar-Tree-Id") or d.data[:20], []).append(d.headers["Rstar-Error"])
    errors = " | ".join(d.headers["Rstar-Error"] for d in dead)
    assert "not valid JSON" in errors and "unknown schema version 2" in errors
    assert "corrupt zlib" in errors and "orphan-node" in errors and "parent 555" in errors
    assert (
        all("incomplete" in e for e in by_id["never-finished"]) and len(by_id["never-finished"]) == len(unfinished) - 1
    )
    assert all(d.headers["Rstar-Dlq-Stream"] == TREES_STREAM for d in dead)
    assert stats.dead_lettered == want_dead and stats.isolations >= 1  # the refused tree shared a batch
    assert _counts(store_url) == (len(good) + 1, sum(len(t.nodes) for t in good) + len(big.nodes))


async def test_a_database_outage_is_waited_out_not_dead_lettered(server, tmp_path):
    with scratch_postgres(PG_ADMIN_URL, tag="outage") as url:
        cfg = _cfg(server.url, url)
        trees = _trees(40, seed=4)
        await _publish_all(cfg, trees)
        engine = open_store(url)
        name = engine.url.database
        admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")

        def allow(on: bool) -> None:
            with admin.connect() as c:
                c.exec_driver_sql(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {str(on).lower()}')
                if not on:
                    c.exec_driver_sql(
                        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{name}'"
                    )

        allow(False)  # the database goes away before ingest starts
        stop, stats = asyncio.Event(), IngestStats()
        task = asyncio.create_task(run_ingest(cfg, engine, stop, stats=stats))
        try:
            await _until(lambda: stats.db_retries >= 2, 30, "ingest to hit the outage twice")
            assert stats.trees == 0 and stats.dead_lettered == 0
            allow(True)
            await _until(lambda: stats.trees == len(trees), 60, "ingest to catch up after the outage")
            await _until(_all_acked(cfg), 30, "every message acked", every=0.2)
        finally:
            allow(True)
            stop.set()
            await task
            engine.dispose()
            admin.dispose()
        assert _counts(url) == (len(trees), sum(len(t.nodes) for t in trees))
        assert await _dlq(cfg) == []
