"""Ingest: move finished trees from the TREES stream into the SQL store, effectively once.

    stats = await run_ingest(cfg, engine, stop)      # the learner embeds this
    rstar ingest [--batch-size 256] [--set store.url=…]   # or a process of its own

The durable pull consumer ``ingest`` hands out batches; each message is decoded (decompressed,
chunk sets reassembled), the batch is written with ``store.writer.upsert_trees`` in a worker
thread, and only after that commit are its messages acked. Decoding the next batch overlaps the
current write.

Guaranteed: a tree is acked only once it is committed, so a crash (SIGKILL) at any moment loses
nothing: unacked messages come back after ``broker.trees_ack_wait_s`` and the upsert, keyed by tree
id, stores each tree once however often it arrives. A poison message (bad bytes, unknown schema
version, bad framing, a tree the writer refuses) is copied to ``rstar.dlq.trees`` with its error in
``Rstar-Error`` headers and then terminated; ingest goes on. A batch the writer refuses is retried
tree by tree to find the poison one. A database that is down (connection errors, locks) is not
poison: the batch is nak'ed with a delay and retried, for as long as it takes.
Not guaranteed: order of trees in the store; a tree dead-lettered because of a writer bug is in the
DLQ, not the store, until someone replays it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc

from broker.client import Broker, BrokerUnavailableError, open_broker
from broker.codec import ChunkError, Reassembler, decode_tree, is_part
from broker.dead_letters import dead_letter
from broker.streams import INGEST_CONSUMER, TREES_STREAM
from rstar.config import Config
from rstar.log import get_logger
from rstar.schemas import SchemaError, TreeResult
from rstar.stopping import learner_stop_bound_s, run_until_signal
from store.writer import upsert_trees

log = get_logger(__name__)

# Errors that say "the database is unavailable right now", not "this tree is bad".
TRANSIENT_DB_ERRORS = (sa_exc.OperationalError, sa_exc.InterfaceError, sa_exc.TimeoutError, sa_exc.DisconnectionError)
_RETRY_DELAY_S = 2.0


@dataclass
class IngestStats:
    """Counters of one ingest run; ``gauges()`` gives them namespaced for metrics."""

    messages: int = 0
    trees: int = 0  # committed (new or already stored)
    new_trees: int = 0
    nodes: int = 0  # nodes of committed trees
    dead_lettered: int = 0
    batches: int = 0
    isolations: int = 0  # batches the writer refused, retried tree by tree
    db_retries: int = 0
    decode_s: float = 0.0
    write_s: float = 0.0
    started: float = field(default_factory=time.monotonic)

    def nodes_per_s(self) -> float:
        return self.nodes / max(time.monotonic() - self.started, 1e-9)

    def gauges(self) -> dict[str, float]:
        g = {f"ingest/{k}": float(v) for k, v in vars(self).items() if k != "started"}
        g["ingest/nodes_per_s"] = self.nodes_per_s()
        return g


@dataclass
class _Batch:
    trees: list[TreeResult] = field(default_factory=list)
    msgs: list[list[Msg]] = field(default_factory=list)  # per tree: the message(s) that carried it


def _is_transient(e: BaseException) -> bool:
    return isinstance(e, TRANSIENT_DB_ERRORS) or (isinstance(e, sa_exc.DBAPIError) and e.connection_invalidated)


async def _poison(b: Broker, msgs: list[Msg], error: BaseException | str, stats: IngestStats) -> None:
    """Dead-letter then terminate; if the DLQ publish fails the message stays unacked (redelivered)."""
    for m in msgs:
        try:
            await dead_letter(b, m, error)
        except BrokerUnavailableError as e:
            log.error("cannot dead-letter a poison tree message (%s); it will be redelivered", e)
            continue
        await m.term()
        stats.dead_lettered += 1


async def _decode(b: Broker, msgs: list[Msg], asm: Reassembler, stats: IngestStats) -> _Batch:
    batch = _Batch()
    t0 = time.perf_counter()
    now = time.monotonic()
    for m in msgs:
        stats.messages += 1
        carriers = [m]
        try:
            headers, data = m.headers, m.data
            if headers is not None and is_part(headers):
                whole = asm.add(headers, data, m, now)
                if whole is None:
                    continue  # more parts to come; this one stays unacked until the set is written
                headers, data, carriers = whole.headers, whole.payload, whole.tokens
            batch.trees.append(decode_tree(headers, data, b.cfg.max_tree_bytes))
            batch.msgs.append(carriers)
        except ChunkError as e:
            await _poison(b, e.tokens, e, stats)
        except SchemaError as e:
            await _poison(b, carriers, e, stats)
    stats.decode_s += time.perf_counter() - t0
    return batch


async def _ack(msgs: list[Msg]) -> None:
    for m in msgs:
        await m.ack()


async def _write(b: Broker, engine: Engine, batch: _Batch, stats: IngestStats) -> None:
    """Commit the batch, then ack it; fall back to one tree at a time when the writer refuses it."""
    if not batch.trees:
        return
    t0 = time.perf_counter()
    try:
        stats.new_trees += await asyncio.to_thread(upsert_trees, engine, batch.trees)
        ok = list(range(len(batch.trees)))
    except Exception as e:
        if _is_transient(e):
            raise
        log.warning(
            "batch of %d trees refused (%s: %s); writing them one by one",
            len(batch.trees),
            type(e).__name__,
            str(e)[:300],
        )
        stats.isolations += 1
        ok = []
        for i, tree in enumerate(batch.trees):
            try:
                stats.new_trees += await asyncio.to_thread(upsert_trees, engine, [tree])
                ok.append(i)
            except Exception as e1:
                if _is_transient(e1):
                    raise
                await _poison(b, batch.msgs[i], e1, stats)
    stats.write_s += time.perf_counter() - t0
    stats.batches += 1
    for i in ok:  # committed: now, and only now, ack
        await _ack(batch.msgs[i])
        stats.trees += 1
        stats.nodes += len(batch.trees[i].nodes)


async def _write_or_nak(b: Broker, engine: Engine, batch: _Batch, stats: IngestStats) -> None:
    try:
        await _write(b, engine, batch, stats)
    except Exception as e:
        if not _is_transient(e):
            raise
        stats.db_retries += 1
        log.error(
            "store unavailable (%s: %s); batch of %d trees will be retried",
            type(e).__name__,
            str(e)[:300],
            len(batch.trees),
        )
        for carriers in batch.msgs:
            for m in carriers:
                with contextlib.suppress(nats.errors.MsgAlreadyAckdError):  # dead-lettered before the outage
                    await m.nak(delay=_RETRY_DELAY_S)
        await asyncio.sleep(_RETRY_DELAY_S)


async def _tend_partials(b: Broker, asm: Reassembler, stats: IngestStats) -> None:
    """Keep held chunk parts from timing out; dead-letter sets that will never complete."""
    now = time.monotonic()
    for m in asm.stale_tokens(now, b.cfg.trees_ack_wait_s / 3):
        await m.in_progress()
    for key, tokens, reason in asm.expired(now, b.cfg.partial_ttl_s):
        await _poison(b, tokens, f"chunked tree {key}: {reason}", stats)


async def _fetch(sub: Any, batch_size: int, max_wait_s: float) -> list[Msg]:
    try:
        return await sub.fetch(batch_size, timeout=max_wait_s)
    except TimeoutError:  # nats' own TimeoutError is one; _fetch_n raises the plain kind
        return []
    except (
        nats.errors.ConnectionReconnectingError,
        nats.errors.ConnectionClosedError,
        nats.errors.StaleConnectionError,
        nats.errors.NoRespondersError,
        nats.js.errors.ServiceUnavailableError,
    ) as e:
        log.info("fetch while NATS is away (%s); waiting", type(e).__name__)
        await asyncio.sleep(max_wait_s)
        return []


async def ingest_loop(
    b: Broker,
    engine: Engine,
    stop: asyncio.Event,
    batch_size: int = 256,
    max_wait_s: float = 0.5,
    stats: IngestStats | None = None,
    log_every_s: float = 30.0,
    consumer: str = INGEST_CONSUMER,
) -> IngestStats:
    """Consume TREES into the store until ``stop`` is set, on an open broker connection.

    ``consumer`` names the durable pull consumer on TREES (another name fills a second store).
    """
    stats = stats or IngestStats()
    sub = await b.js.pull_subscribe_bind(durable=consumer, stream=TREES_STREAM)
    asm = Reassembler(b.cfg.max_tree_bytes)
    writing: asyncio.Task | None = None
    last_log = time.monotonic()
    try:
        while not stop.is_set():
            msgs = await _fetch(sub, batch_size, max_wait_s)
            batch = await _decode(b, msgs, asm, stats)
            if writing is not None:  # one write in flight: decoding the next batch overlapped it
                await writing
            writing = asyncio.create_task(_write_or_nak(b, engine, batch, stats), name="ingest-write")
            await _tend_partials(b, asm, stats)
            if time.monotonic() - last_log >= log_every_s:
                last_log = time.monotonic()
                log.info(
                    "ingest: %d trees (%d new), %d nodes, %.0f nodes/s, %d dead-lettered, %d held parts sets",
                    stats.trees,
                    stats.new_trees,
                    stats.nodes,
                    stats.nodes_per_s(),
                    stats.dead_lettered,
                    len(asm),
                )
    finally:
        if writing is not None:
            await writing  # finish (commit and ack) what was started; parts held stay unacked
        with contextlib.suppress(nats.errors.Error):  # a closed connection has no subscription to end
            await sub.unsubscribe()
    return stats


async def run_ingest(
    cfg: Config,
    engine: Engine,
    stop: asyncio.Event,
    batch_size: int = 256,
    max_wait_s: float = 0.5,
    stats: IngestStats | None = None,
) -> IngestStats:
    """Connect to the broker of ``cfg`` and ingest until ``stop`` is set; returns the counters."""
    async with open_broker(cfg, "rstar-ingest") as b:
        return await ingest_loop(b, engine, stop, batch_size, max_wait_s, stats)


def serve(cfg: Config, batch_size: int = 256) -> IngestStats:
    """A standalone ingest process: open (and migrate) the store, ingest until SIGINT/SIGTERM."""
    from store.db import open_store

    engine = open_store(cfg.store_url)

    log.info("ingest: consuming %s into %s", TREES_STREAM, engine.url.render_as_string(hide_password=True))
    try:
        return run_until_signal(lambda stop: run_ingest(cfg, engine, stop, batch_size), learner_stop_bound_s(cfg))
    finally:
        engine.dispose()
