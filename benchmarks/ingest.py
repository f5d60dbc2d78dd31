"""Trees through NATS into the store: publish rate, raw consume rate, and ingest rate per backend.

    .venv/bin/python benchmarks/ingest.py --json
    .venv/bin/python benchmarks/ingest.py --trees 1000 --nodes 200 --batch-size 256 --json

One run: a nats-server of its own (temp store), ``--trees`` sample trees (``store.sample_trees``,
``--nodes`` nodes each, code-step texts padded to ``--step-chars``, ~200 characters) published to TREES with 64 publishes in
flight; then three durable consumers read the same messages: a raw one that only fetches and acks
(the NATS ceiling), and ``learner.ingest.ingest_loop`` into a fresh SQLite file and into a scratch
PostgreSQL database (created and dropped). Each ingest is timed from start until every tree is
committed and acked; ``*_decode_s`` and ``*_write_s`` split its time (decoding in the event loop,
``upsert_trees`` in a worker thread, the two overlapped). Prints one JSON object, starting with
``benchmarks.run_info`` (command, date, machine with its load average).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import msgspec  # noqa: E402
from nats.js import api  # noqa: E402

from benchmarks.run_info import run_info  # noqa: E402
from broker.client import open_broker, publish_tree  # noqa: E402
from broker.server import start_server  # noqa: E402
from broker.streams import INGEST_CONSUMER, TREES_STREAM  # noqa: E402
from learner.ingest import IngestStats, ingest_loop  # noqa: E402
from rstar.config import load_config  # noqa: E402
from rstar.schemas import encode  # noqa: E402
from store.db import open_store  # noqa: E402
from store.sample_trees import sample_tree  # noqa: E402
from store.scratch import DEFAULT_ADMIN_URL, scratch_postgres  # noqa: E402

_WORDS = (
    "so",
    "the",
    "total",
    "is",
    "what",
    "we",
    "had",
    "plus",
    "the",
    "new",
    "ones",
    "minus",
    "those",
    "given",
    "away",
    "and",
    "each",
    "box",
    "holds",
    "twelve",
    "then",
    "check",
    "it",
    "again",
)


def _pad_steps(tree, chars: int, rng: random.Random):
    """Lengthen each step to ~``chars`` characters with a second reasoning comment line."""
    nodes = []
    for n in tree.nodes:
        if n.text and len(n.text) < chars:
            line = "#"
            while len(n.text) + len(line) + 1 < chars:
                line += " " + rng.choice(_WORDS)
            first, _, rest = n.text.partition("\n")
            n = msgspec.structs.replace(n, text=f"{first}\n{line}\n{rest}")
        nodes.append(n)
    return msgspec.structs.replace(tree, nodes=nodes)


async def _consumer(b, name: str) -> None:
    info = await b.js.consumer_info(TREES_STREAM, INGEST_CONSUMER)
    c = info.config
    await b.js.add_consumer(
        TREES_STREAM,
        api.ConsumerConfig(
            durable_name=name,
            ack_policy=c.ack_policy,
            ack_wait=c.ack_wait,
            max_deliver=-1,
            deliver_policy=api.DeliverPolicy.ALL,
            max_ack_pending=c.max_ack_pending,
        ),
    )


async def _publish(b, trees) -> float:
    gate = asyncio.Semaphore(64)

    async def one(t):
        async with gate:
            await publish_tree(b, t)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(t) for t in trees))
    return time.perf_counter() - t0


async def _raw_consume(b, n: int, batch: int) -> float:
    await _consumer(b, "bench-raw")
    sub = await b.js.pull_subscribe_bind(durable="bench-raw", stream=TREES_STREAM)
    t0, got = time.perf_counter(), 0
    while got < n:
        msgs = await sub.fetch(batch, timeout=5)
        for m in msgs:
            await m.ack()
        got += len(msgs)
    return time.perf_counter() - t0


async def _ingest(b, url: str, n: int, batch: int, name: str) -> tuple[float, IngestStats]:
    engine = open_store(url)
    try:
        await _consumer(b, name)
        stop, stats = asyncio.Event(), IngestStats()
        t0 = time.perf_counter()
        task = asyncio.create_task(
            ingest_loop(b, engine, stop, batch, max_wait_s=0.2, stats=stats, log_every_s=3600, consumer=name)
        )
        while stats.trees < n and not task.done():
            await asyncio.sleep(0.005)
        wall = time.perf_counter() - t0
        stop.set()
        await task
        return wall, stats
    finally:
        engine.dispose()


async def main(args) -> dict:
    rng = random.Random(args.seed)
    trees = [_pad_steps(sample_tree(rng, args.nodes), args.step_chars, rng) for _ in range(args.trees)]
    n_nodes = sum(len(t.nodes) for t in trees)
    texts = [len(n.text) for t in trees for n in t.nodes if n.text]
    with tempfile.TemporaryDirectory() as tmp:
        srv = start_server(Path(tmp) / "nats")
        try:
            cfg = load_config(overrides=[f'broker.url="{srv.url}"'], env={})
            async with open_broker(cfg, "bench-ingest") as b:
                publish_s = await _publish(b, trees)
                msgs = (await b.js.stream_info(TREES_STREAM)).state.messages
                raw_s = await _raw_consume(b, msgs, args.batch_size)
                out = {
                    **run_info(),
                    "trees": args.trees,
                    "nodes_per_tree": args.nodes,
                    "nodes": n_nodes,
                    "mean_step_chars": round(sum(texts) / len(texts)),
                    "batch_size": args.batch_size,
                    "compress_min_bytes": cfg.broker.compress_min_bytes,
                    "mean_json_bytes": round(sum(len(encode(t)) for t in trees) / len(trees)),
                    "messages": msgs,
                    "stream_bytes": (await b.js.stream_info(TREES_STREAM)).state.bytes,
                    "cpus": os.cpu_count(),
                    "publish_msgs_per_s": round(msgs / publish_s),
                    "consume_msgs_per_s": round(msgs / raw_s),
                }
                backends = []
                if "sqlite" in args.backends:
                    backends.append(("sqlite", f"sqlite:///{Path(tmp) / 'bench.db'}", None))
                if "postgres" in args.backends:
                    backends.append(("postgres", None, args.pg_admin_url))
                for name, url, admin in backends:
                    if admin:
                        with scratch_postgres(admin, tag="bench_ingest") as pg:
                            wall, st = await _ingest(b, pg, args.trees, args.batch_size, f"bench-{name}")
                    else:
                        wall, st = await _ingest(b, url, args.trees, args.batch_size, f"bench-{name}")
                    out.update(
                        {
                            f"{name}_nodes_per_s": round(st.nodes / wall),
                            f"{name}_trees_per_s": round(st.trees / wall),
                            f"{name}_wall_s": round(wall, 3),
                            f"{name}_decode_s": round(st.decode_s, 3),
                            f"{name}_write_s": round(st.write_s, 3),
                            f"{name}_dead_lettered": st.dead_lettered,
                        }
                    )
        finally:
            srv.stop()
    return out


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trees", type=int, default=500)
    p.add_argument("--nodes", type=int, default=200)
    p.add_argument("--step-chars", type=int, default=200, help="pad step texts to about this length")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--backends", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    p.add_argument("--pg-admin-url", default=DEFAULT_ADMIN_URL)
    p.add_argument("--json", action="store_true", help="print JSON only (the default output is also JSON, indented)")
    a = p.parse_args()
    result = asyncio.run(main(a))
    print(json.dumps(result) if a.json else json.dumps(result, indent=2))
