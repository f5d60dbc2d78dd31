"""One problem from fetch to ack: search its tree, publish it, then ack (``actors.service`` runs many).

Tree ids are deterministic per queued problem message: ``sha256(problem id, stream, stream
sequence, stored timestamp)`` — the same for every redelivery of that message, different for a
re-queue (a new message) or a recreated stream. So a publish retried after a lost ack, or a second
search of a problem whose ack was lost or whose actor died after publishing, carries the same
``Nats-Msg-Id`` (TREES drops it within ``broker.dedup_window_s``) and the same tree id (the store
keeps the first tree with an id, so even past the window a problem message yields one stored tree).

Guaranteed: the problem is acked only after every message of its tree was acknowledged by TREES;
a publish that fails because the broker is away is retried (backoff up to 30 s) for as long as
the job runs, the tree kept in memory; ``in_progress()`` is sent every ``keep_alive_s`` while the
job runs, so a long search (or a long broker outage) does not hit ack_wait. A search that raises
is logged and its problem nak'ed (redelivered; the consumer's max_deliver bounds the retries).
Not guaranteed: an unconfirmed ack is retried three times and then left to redelivery, which the
deterministic tree id makes harmless.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
import nats.errors
from nats.aio.msg import Msg

from actors.swap import ModelPair
from broker.client import Broker, BrokerUnavailableError, publish_tree
from rstar.log import get_logger
from rstar.schemas import Problem, TreeResult

log = get_logger(__name__)


@dataclass
class Job:
    problem: Problem
    msg: Msg
    tree_id: str
    pair: ModelPair
    task: asyncio.Task | None = None  # set as the job starts (the task needs the job)

    def started(self) -> asyncio.Task:
        """The task running this job."""
        if self.task is None:
            raise RuntimeError(f"job for tree {self.tree_id} has no task: it was never started")
        return self.task


def tree_id_for(problem: Problem, msg: Msg) -> str:
    md = msg.metadata
    key = f"{problem.id}\n{md.stream}\n{md.sequence.stream}\n{md.timestamp.timestamp():.6f}"
    return hashlib.sha256(key.encode()).hexdigest()[:32]


def rollout_budget(problem: Problem) -> int | None:
    """``meta["rollouts"]`` (a re-queued unsolved problem's bigger budget), or None for the default."""
    r = problem.meta.get("rollouts")
    if r is None:
        return None
    if isinstance(r, int) and not isinstance(r, bool) and r >= 1:
        return r
    log.warning("problem %s: ignoring meta.rollouts=%r (not a positive integer)", problem.id, r)
    return None


async def keep_alive(job: Job, every_s: float) -> None:
    while True:
        await asyncio.sleep(every_s)
        try:
            await job.msg.in_progress()  # job.msg: the newest delivery of the problem
        except (TimeoutError, nats.errors.Error) as e:
            log.info("in_progress not sent (%s); the problem may be redelivered", type(e).__name__)


async def publish_until_done(b: Broker, tree: TreeResult) -> None:
    delay = 1.0
    while True:
        try:
            await publish_tree(b, tree)
            return
        except BrokerUnavailableError as e:  # keep the tree; try again (same id: deduplicated)
            log.warning("tree %s not published yet (%s); retrying in %.0fs", tree.tree_id, e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 30.0)


async def ack(msg: Msg, timeout: float) -> None:
    for attempt in range(3):
        try:
            await msg.ack_sync(timeout=timeout)
            return
        except nats.errors.MsgAlreadyAckdError:
            return
        except (TimeoutError, nats.errors.Error) as e:
            log.info("ack not confirmed (%s), attempt %d", type(e).__name__, attempt + 1)
    # The tree is in TREES: a redelivery makes a tree with the same id, which dedup drops.
    log.warning("ack of %s never confirmed; the problem may be searched again", msg.subject)


async def nak(msg: Msg) -> None:
    with contextlib.suppress(nats.errors.Error, asyncio.TimeoutError):
        await msg.nak()


async def run_job(
    job: Job, b: Broker, ctx, keep_alive_s: float, ack_timeout_s: float, done: Callable[[bool], None]
) -> None:
    """Search, publish, ack; ``done(True)`` once acked, ``done(False)`` if the search failed.

    The tree is labelled with the pair that served when the job started (``job.pair``); its
    nodes carry the versions that actually produced them.
    """
    from actors.search import search_tree

    alive = asyncio.create_task(keep_alive(job, keep_alive_s), name="in-progress")
    try:
        try:
            tree = await search_tree(job.problem, ctx, rollouts=rollout_budget(job.problem))
        except asyncio.CancelledError:
            raise
        except Exception:  # deliberate: one bad problem must not stop the actor
            log.exception("search of problem %s failed; returning it", job.problem.id)
            await nak(job.msg)
            done(False)
            return
        p = job.pair
        tree = msgspec.structs.replace(
            tree, tree_id=job.tree_id, round=p.round, policy_version=p.policy_version, ppm_version=p.ppm_version
        )
        await publish_until_done(b, tree)
        await ack(job.msg, ack_timeout_s)
        done(True)
    finally:
        alive.cancel()
