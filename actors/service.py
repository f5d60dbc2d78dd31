"""The actor service: pull problems, keep K trees in flight, publish trees, swap models live.

    rstar actor [--set actor.trees_in_flight=8] [--set broker.url=nats://…]
    report = await run_actor(cfg, stop)          # in-process (tests, benchmarks)

One process, one model worker: every tree in flight is a coroutine whose expansions the worker
batches into one backend call. Problems come from the durable ``actors`` consumer on PROBLEMS,
never more than there are free tree slots. A finished tree is published to TREES and only once the
server acknowledged it is the problem acked; while a tree runs, ``in_progress()`` extends its
ack_wait. ``actors.watcher`` swaps the policy+PPM pair in between backend calls; heartbeats go to
the ``actors`` KV bucket.

Tree ids are deterministic per queued problem message, so a retried publish or a second search
of the same message is deduplicated (``actors.jobs`` explains). Problems may carry
``meta["rollouts"]``, the bigger budget of a re-queued unsolved problem; it is honoured.

Provenance: every node records the policy and PPM versions that produced it. ``TreeResult.round``,
``policy_version`` and ``ppm_version`` name the pair that was serving when the tree *started* (the
oldest model that can be in it); a node whose versions differ shows a swap mid-tree. The learner
tells a tree's staleness as ``current pointer round - tree.round``.

Guaranteed: a problem is acked only after its tree is stored in TREES; a tree whose publish fails
(broker away) is kept and retried until it goes through or the actor stops, in which case the
problem stays unacked and is redelivered. Stopping (SIGTERM -> ``stop``) stops fetching, lets
in-flight trees finish for ``actor.grace_s``, naks the rest and any problem delivered but not yet
started (all available to other actors at once), deletes the heartbeat and drains the connection.
A background task (watcher, heartbeat) or the model worker dying fails the actor (exit != 0); its
problems are nak'ed on the way out. ``kill -9`` loses nothing: unacked problems come back after
``broker.problems_ack_wait_s``. The process (``rstar actor``) exits within ``actor.grace_s`` + 30 s
of SIGTERM on any load, typically ``grace_s`` + 1-3 s; past that bound, or on a second signal, it
is ended like ``kill -9`` (``rstar.stopping``).
Not guaranteed: a problem is searched only once (a redelivery after a crash searches it again).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nats.aio.msg import Msg

from actors.heartbeat import Rates, delete_heartbeat, heartbeat_loop
from actors.jobs import Job, nak, run_job, tree_id_for
from actors.swap import ModelPair
from actors.watcher import TRANSIENT, ModelWatcher, SwapEvent, initial_models
from broker.client import Broker, open_broker
from broker.problems import fetch_problems, problems_subscription
from rstar.config import Config
from rstar.log import get_logger
from rstar.schemas import Heartbeat, Problem

if TYPE_CHECKING:
    from actors.batcher import WorkerStats
    from actors.search import SearchContext

log = get_logger(__name__)


@dataclass
class ActorReport:
    """What one actor run did (returned by ``run_actor``)."""

    actor_id: str
    published: int = 0
    failed: int = 0  # searches that raised (problem nak'ed)
    returned: int = 0  # problems nak'ed at shutdown
    swaps: list[SwapEvent] = field(default_factory=list)
    model_stats: WorkerStats | None = None  # live while the actor runs
    worker: dict = field(default_factory=dict)  # its final snapshot


class Actor:
    def __init__(self, b: Broker, cfg: Config, ctx: SearchContext, watcher: ModelWatcher, report: ActorReport):
        self.b, self.cfg, self.ctx, self.watcher, self.report = b, cfg, ctx, watcher, report
        self.k = cfg.actor.trees_in_flight or cfg.search.trees_in_flight
        self.keep_alive_s = cfg.actor.in_progress_s or cfg.broker.problems_ack_wait_s / 3
        self.jobs: dict[int, Job] = {}  # by stream sequence of the problem message
        self.rates = Rates()

    def heartbeat(self) -> Heartbeat:
        w = self.ctx.worker
        tok_s, busy = self.rates.model_rates(w.stats)
        return Heartbeat(
            actor_id=self.report.actor_id,
            host=socket.gethostname(),
            backend=w.backend.name,
            policy_version=w.policy_version,
            ppm_version=w.ppm_version,
            trees_per_min=self.rates.trees_per_min(),
            tokens_per_s=tok_s,
            busy_fraction=busy,
            trees_in_flight=len(self.jobs),
        )

    def start(self, problem: Problem, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream
        if seq in self.jobs:  # redelivered while we still work on it: ack through the newest
            self.jobs[seq].msg = msg
            return
        if msg.metadata.num_delivered > 1:
            log.info(
                "problem %s redelivered (delivery %d): an earlier holder died or returned it",
                problem.id,
                msg.metadata.num_delivered,
            )
        job = Job(problem, msg, tree_id_for(problem, msg), self.watcher.current)
        job.task = asyncio.create_task(
            run_job(job, self.b, self.ctx, self.keep_alive_s, self.cfg.broker.publish_timeout_s, self._finished),
            name=f"tree-{problem.id}",
        )
        self.jobs[seq] = job

    def _finished(self, published: bool) -> None:
        if published:
            self.report.published += 1
            self.rates.tree_done()
        else:
            self.report.failed += 1

    def reap(self) -> None:
        for seq, job in list(self.jobs.items()):
            task = job.started()
            if task.done():
                del self.jobs[seq]
                if not task.cancelled():
                    task.result()  # a failure here is a bug (publish/ack errors are handled)

    async def fetch(self, sub) -> None:
        if self.cfg.actor.wait_for_model and not self.watcher.current.policy_sha256:
            await asyncio.sleep(self.cfg.actor.fetch_timeout_s)  # no published model yet
            return
        free = self.k - len(self.jobs)
        try:
            got = await fetch_problems(
                self.b, sub, min(free, self.cfg.actor.fetch_batch), self.cfg.actor.fetch_timeout_s
            )
        except TRANSIENT as e:
            log.info("fetch while the broker is away (%s); waiting", type(e).__name__)
            await asyncio.sleep(self.cfg.actor.fetch_timeout_s)
            return
        for problem, msg in got:
            self.start(problem, msg)

    async def return_unstarted(self, sub) -> None:
        """Nak problems delivered to us but never started, then stop the subscription.

        A pull request can outlive the client's fetch timeout on the server by a moment, so a
        problem may land in the subscription's queue after the last fetch; without this it would
        wait out ack_wait before another actor could have it.
        """
        await asyncio.sleep(self.cfg.actor.fetch_timeout_s + 0.2)  # orphaned pull requests expire
        with contextlib.suppress(*TRANSIENT):
            for _ in range(3):  # each sweep may itself leave a late arrival behind
                if not sub.pending_msgs:
                    break
                try:
                    msgs = await sub.fetch(sub.pending_msgs, timeout=0.2)
                except TimeoutError:
                    break
                for m in msgs:
                    await nak(m)
                    self.report.returned += 1
            await sub.unsubscribe()
            await self.b.nc.flush(timeout=5)  # every nak is on the server before we go

    async def drain(self) -> None:
        """Give in-flight trees ``grace_s`` to finish, then return (nak) the problems of the rest."""
        tasks = [j.started() for j in self.jobs.values()]
        if tasks:
            log.info("stopping: %d trees in flight, %.0fs grace", len(tasks), self.cfg.actor.grace_s)
            await asyncio.wait(tasks, timeout=self.cfg.actor.grace_s)
        for seq, job in list(self.jobs.items()):
            task = job.started()
            if not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                await nak(job.msg)
                self.report.returned += 1
                del self.jobs[seq]
        self.reap()


def follow_pointer(ctx: SearchContext, pair: ModelPair) -> None:
    """Search settings that go with a published pair (the contract in ``learner.rounds``).

    A published policy was fine-tuned on the bare prompt, so the few-shot examples go; the search
    is PPM-augmented exactly when the pointer carries a PPM. Models named in the config (no
    pointer) keep the configured settings. Trees in flight switch at their next expansion, which
    runs on the new policy anyway (one batch already queued may still carry the old prompt).
    """
    if not pair.policy_sha256:
        return
    ctx.search = ctx.search.model_copy(update={"ppm_init": bool(pair.ppm_version)})
    if ctx.generation.few_shot:  # prompt heads are cached per few-shot setting: no stale ones
        ctx.generation = ctx.generation.model_copy(update={"few_shot": False})


async def _start_search(
    stack: contextlib.AsyncExitStack, b: Broker, cfg: Config, actor_id: str, cache_dir
) -> tuple[SearchContext, ModelPair, dict]:
    """The search context on the current pointer's pair, else on the configured models."""
    from actors.runtime import setup_search

    run_cfg, pair, refused = await initial_models(b, cfg, cache_dir)
    try:
        ctx = await stack.enter_async_context(setup_search(run_cfg, actor_id))
    except Exception as e:  # deliberate: the pointer's weights do not load; serve the configured ones
        if pair is None:
            raise
        log.error("refusing round %d (%s: %s); starting on %s", pair.round, type(e).__name__, e, cfg.model.policy)
        refused[pair.key], pair = f"cannot load: {e}", None
        ctx = await stack.enter_async_context(setup_search(cfg, actor_id))
    w = ctx.worker
    if pair is None:
        return ctx, ModelPair(0, w.policy_version, w.ppm_version), refused
    w.backend.version = pair.policy_version
    if w.scorer is not None:
        w.scorer.version = pair.ppm_version
    follow_pointer(ctx, pair)
    return ctx, pair, refused


async def _serve(actor: Actor, sub, stop: asyncio.Event, bg: list[asyncio.Task]) -> None:
    """Keep K trees in flight until ``stop``; a dead background task or worker fails the actor."""
    while not stop.is_set():
        for t in bg:
            if t.done():
                t.result()
                raise RuntimeError(f"{t.get_name()} stopped")
        actor.ctx.worker.check()
        actor.reap()
        if len(actor.jobs) < actor.k:
            await actor.fetch(sub)
            continue
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait(
            [j.started() for j in actor.jobs.values()] + [stopper], timeout=5.0, return_when=asyncio.FIRST_COMPLETED
        )
        stopper.cancel()


async def run_actor(
    cfg: Config, stop: asyncio.Event, ready: asyncio.Event | None = None, report: ActorReport | None = None
) -> ActorReport:
    """Serve until ``stop`` is set, then drain; returns ``report`` (filled in as it goes).

    ``ready`` is set once problems are being pulled.
    """
    actor_id = cfg.actor.id or f"{socket.gethostname()}-{os.getpid()}"
    report = report or ActorReport(actor_id)
    report.actor_id = actor_id
    cache_dir = cfg.actor.checkpoint_dir or cfg.data_dir / "checkpoints"
    async with open_broker(cfg, f"rstar-actor-{actor_id}") as b, contextlib.AsyncExitStack() as stack:
        # A stop while the models load (seconds to minutes on a loaded CPU) ends the start: the
        # actor holds no problem yet.
        starting = asyncio.create_task(_start_search(stack, b, cfg, actor_id, cache_dir), name="actor-start")
        stopper = asyncio.create_task(stop.wait())
        await asyncio.wait({starting, stopper}, return_when=asyncio.FIRST_COMPLETED)
        stopper.cancel()
        if not starting.done():
            starting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await starting
            log.info("actor %s stopped while loading its models", actor_id)
            return report
        ctx, pair, refused = starting.result()
        watcher = ModelWatcher(b, cfg, ctx.worker, pair, cache_dir, refused, on_swap=lambda p: follow_pointer(ctx, p))
        report.swaps, report.model_stats = watcher.events, ctx.worker.stats
        actor = Actor(b, cfg, ctx, watcher, report)
        bg = [
            asyncio.create_task(watcher.run(), name="model-watcher"),
            asyncio.create_task(heartbeat_loop(b, actor.heartbeat, cfg.actor.heartbeat_s), name="heartbeat"),
        ]
        log.info(
            "actor %s serving %s (round %d) with %d trees in flight", actor_id, pair.policy_version, pair.round, actor.k
        )
        try:
            sub = await problems_subscription(b)
            if ready is not None:
                ready.set()
            await _serve(actor, sub, stop, bg)
            # Side by side: the grace of the trees in flight and the wait for late deliveries.
            await asyncio.gather(actor.drain(), actor.return_unstarted(sub))
        finally:
            for t in bg:
                t.cancel()
            await asyncio.gather(*bg, return_exceptions=True)
            for job in actor.jobs.values():  # only on an error path: return what we hold
                job.started().cancel()
                await nak(job.msg)
            with contextlib.suppress(*TRANSIENT):
                await delete_heartbeat(b, actor_id)
            report.worker = ctx.worker.stats.snapshot()
    log.info("actor %s stopped: %d trees published, %d problems returned", actor_id, report.published, report.returned)
    return report
