"""The PROBLEMS work queue: add problems once, fetch them in actors, re-queue on purpose.

    async with open_broker(cfg, "actor-1") as b:
        sub = await problems_subscription(b)
        for problem, msg in await fetch_problems(b, sub, batch=8):
            ...search...; await publish_tree(b, tree); await msg.ack()

Guaranteed: ``add_problems`` queues a problem id at most once ever (the ``problems`` KV bucket
remembers every queued id; ``Nats-Msg-Id`` = problem id covers retries within the dedup window);
it publishes before recording the id, so a crash in between can re-queue a problem, never lose
one. ``fetch_problems`` never returns an undecodable problem: it is dead-lettered and terminated.
Not guaranteed: order between problems, or that a problem is searched only once (an actor that
dies mid-search has its problem redelivered after ``problems_ack_wait_s``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext, api
from nats.js.kv import KeyValue

from broker.client import Broker, publish
from broker.dead_letters import dead_letter
from broker.streams import (
    ACTORS_CONSUMER,
    PROBLEMS_REQUEUE_SUBJECT,
    PROBLEMS_STREAM,
    PROBLEMS_SUBJECT,
    SEEN_PROBLEMS_BUCKET,
    kv_key,
)
from rstar.schemas import Problem, SchemaError, decode, encode


@dataclass
class AddCounts:
    published: int = 0
    duplicates: int = 0


async def _add_one(b: Broker, kv: KeyValue, problem: Problem) -> bool:
    key = kv_key(problem.id)
    try:
        await kv.get(key)
        return False
    except nats.js.errors.KeyNotFoundError:
        pass
    ack = await publish(b, PROBLEMS_SUBJECT, encode(problem), {"Nats-Msg-Id": problem.id})
    await kv.put(key, str(ack.seq).encode())
    return not ack.duplicate


async def add_problems(
    b: Broker, problems: Iterable[Problem], concurrency: int = 32, progress: Callable[[bool], None] | None = None
) -> AddCounts:
    """Queue each problem whose id was never queued; ``progress(queued)`` is called per problem."""
    kv = await b.js.key_value(SEEN_PROBLEMS_BUCKET)
    counts = AddCounts()
    seen: set[str] = set()
    pending: set[asyncio.Task] = set()

    def count(queued: bool) -> None:
        counts.published += queued
        counts.duplicates += not queued
        if progress:
            progress(queued)

    async def reap(return_when: str) -> None:
        done, _ = await asyncio.wait(pending, return_when=return_when)
        for t in done:
            pending.discard(t)
            count(t.result())  # re-raises a failed publish: the command fails loudly

    try:
        for p in problems:
            if p.id in seen:  # twice in one input: a duplicate without asking the server
                count(False)
                continue
            seen.add(p.id)
            if len(pending) >= concurrency:  # bounded in flight, so a huge input streams through
                await reap(asyncio.FIRST_COMPLETED)
            pending.add(asyncio.create_task(_add_one(b, kv, p), name=f"add-problem-{p.id}"))
        if pending:
            await reap(asyncio.ALL_COMPLETED)
    finally:
        for t in pending:
            t.cancel()
    return counts


async def requeue_problem(b: Broker, problem: Problem, attempt: str) -> api.PubAck:
    """Queue a problem again on purpose (more rollouts for an unsolved one), bypassing the guard.

    ``attempt`` names this re-queue (e.g. ``"r2"``): the same attempt twice is deduplicated.
    """
    return await publish(b, PROBLEMS_REQUEUE_SUBJECT, encode(problem), {"Nats-Msg-Id": f"{problem.id}:{attempt}"})


async def problems_subscription(b: Broker) -> JetStreamContext.PullSubscription:
    """A pull subscription bound to the durable ``actors`` consumer on PROBLEMS."""
    return await b.js.pull_subscribe_bind(durable=ACTORS_CONSUMER, stream=PROBLEMS_STREAM)


async def fetch_problems(
    b: Broker, sub: JetStreamContext.PullSubscription, batch: int, timeout: float = 1.0
) -> list[tuple[Problem, Msg]]:
    """Up to ``batch`` problems with their messages; ``[]`` when none come within ``timeout``.

    Ack a message once its tree is published; call ``msg.in_progress()`` during long searches.
    """
    try:
        msgs = await sub.fetch(batch, timeout=timeout)
    except TimeoutError:  # nats' own TimeoutError is one; _fetch_n raises the plain kind
        return []
    out = []
    for m in msgs:
        try:
            out.append((decode(m.data, Problem), m))
        except SchemaError as e:
            await dead_letter(b, m, e)
            await m.term()
    return out
