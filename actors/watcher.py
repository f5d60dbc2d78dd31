"""Follow the KV model pointer and hot-swap the policy+PPM pair into a running actor.

    cfg, pair, refused = await initial_models(b, cfg, cache_dir)   # before the models load
    watcher = ModelWatcher(b, cfg, worker, pair, cache_dir, refused, on_swap=...)
    task = asyncio.create_task(watcher.run(), name="model-watcher")

A new pointer is downloaded, verified and loaded in the background (``actors.swap``) while the
trees in flight keep generating on the current pair; the pair is installed between two backend
calls (``ModelWorker.run_between_calls``), so each expansion runs wholly on one model and every
node records the versions that produced it. Policy and PPM always change together.

Guaranteed: the newest pointer wins — pointers that arrive while a swap is being prepared are
coalesced, and only the latest is loaded next (never more than the serving pair plus one being
loaded). A pointer whose checkpoint is missing, fails its digest or manifest, whose PPM does not
match the policy's base, or whose weights fail to load is refused with a logged reason, remembered
(not retried) and the actor keeps its pair. A download that fails because the broker is away is
retried every ``actor.swap_retry_s``. A pointer that only changes the round relabels new trees
without reloading anything. Besides the KV watch, the pointer is polled every
``actor.heartbeat_s``, so a watch lost in a reconnect delays a swap, never misses one.
Not guaranteed: a swap while the actor is shutting down completes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nats.errors

from actors.swap import (
    ModelPair,
    SwapRefused,
    can_swap,
    check_pair,
    install,
    load_pair,
    materialize,
    prune,
    with_models,
)
from broker.checkpoints import get_pointer, watch_pointer
from broker.client import Broker, BrokerUnavailableError
from rstar.checkpoints import CheckpointError
from rstar.config import Config
from rstar.log import get_logger
from rstar.schemas import ModelPointer

log = get_logger(__name__)

# "The broker is away": retry the same pointer later rather than refusing it.
TRANSIENT = (BrokerUnavailableError, nats.errors.Error, asyncio.TimeoutError, OSError)


@dataclass
class SwapEvent:
    """One pointer the actor acted on, with wall-clock times (``time.time()``)."""

    round: int
    policy_version: str
    ppm_version: str
    seen_at: float
    fetched_at: float | None = None  # both checkpoints local and verified, pair checked
    ready_at: float | None = None  # and loaded (off the model thread)
    swapped_at: float | None = None  # installed between two backend calls
    first_call_at: float | None = None  # the first generate() call on the new pair finished
    refused: str | None = None


async def _prepare(b: Broker, p: ModelPointer, cache_dir: Path) -> tuple[Path, Path | None]:
    """Both checkpoints downloaded (side by side) and verified, and checked as a pair."""
    jobs = [materialize(b, p.policy, cache_dir, "policy")]
    if p.ppm:
        jobs.append(materialize(b, p.ppm, cache_dir, "ppm"))
    dirs = await asyncio.gather(*jobs)
    policy_dir, ppm_dir = dirs[0], (dirs[1] if p.ppm else None)
    await asyncio.to_thread(check_pair, policy_dir, ppm_dir)
    return policy_dir, ppm_dir


async def initial_models(b: Broker, cfg: Config, cache_dir: Path) -> tuple[Config, ModelPair | None, dict[tuple, str]]:
    """The config to load at start: the current pointer's pair when there is a usable one.

    Returns ``(cfg, pair, refused)``: ``pair`` is None when the config's own models are to be
    served (no pointer, a refused one, or the openai backend, which serves a remote model).
    """
    p = await get_pointer(b)
    if p is None or cfg.model.backend == "openai":
        return cfg, None, {}
    pair = ModelPair.of(p)
    try:
        policy_dir, ppm_dir = await _prepare(b, p, cache_dir)
    except (CheckpointError, SwapRefused) as e:
        log.error(
            "refusing the current pointer (round %d, policy %s): %s; starting on %s",
            p.round,
            p.policy.version,
            e,
            cfg.model.policy,
        )
        return cfg, None, {pair.key: str(e)}
    return with_models(cfg, policy_dir, ppm_dir), pair, {}


class ModelWatcher:
    def __init__(
        self,
        b: Broker,
        cfg: Config,
        worker,
        current: ModelPair,
        cache_dir: Path,
        refused: dict[tuple, str] | None = None,
        on_swap: Callable[[ModelPair], None] | None = None,
    ):
        self.b, self.cfg, self.worker, self.cache_dir = b, cfg, worker, Path(cache_dir)
        self.current = current
        self.refused = dict(refused or {})
        self.on_swap = on_swap
        self.events: list[SwapEvent] = []
        self._wanted: tuple[ModelPointer, float] | None = None
        self._wake = asyncio.Event()
        self._notes: set[asyncio.Task] = set()  # strong references to fire-and-forget tasks

    def offer(self, p: ModelPointer) -> None:
        """A pointer was seen; the newest offered is the one applied next."""
        pair = ModelPair.of(p)
        if pair == self.current or pair.key in self.refused:
            return
        if self._wanted is None or ModelPair.of(self._wanted[0]) != pair:
            self._wanted = (p, time.time())
        self._wake.set()

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self._watch(), name="pointer-watch"),
            asyncio.create_task(self._poll(), name="pointer-poll"),
            asyncio.create_task(self._apply(), name="pointer-apply"),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()
        finally:
            tasks += list(self._notes)
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self) -> None:
        while True:
            try:
                async for p in watch_pointer(self.b):
                    self.offer(p)
            except TRANSIENT as e:
                log.info("pointer watch interrupted (%s: %s); watching again", type(e).__name__, e)
            await asyncio.sleep(1.0)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.actor.heartbeat_s)
            try:
                p = await get_pointer(self.b)
            except TRANSIENT as e:
                log.info("cannot read the model pointer (%s: %s)", type(e).__name__, e)
                continue
            if p is not None:
                self.offer(p)

    async def _apply(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._wanted is None:
                continue
            p, seen = self._wanted
            pair = ModelPair.of(p)
            if pair.key == self.current.key:  # same weights, new round: relabel only
                if pair.round != self.current.round:
                    self._serve(pair)
                continue
            if pair.key in self.refused:
                continue
            try:
                await self._swap(p, pair, seen)
            except TRANSIENT as e:
                log.warning(
                    "cannot fetch checkpoint round %d yet (%s: %s); retrying in %.0fs",
                    p.round,
                    type(e).__name__,
                    e,
                    self.cfg.actor.swap_retry_s,
                )
                await asyncio.sleep(self.cfg.actor.swap_retry_s)
                self._wake.set()

    def _serve(self, pair: ModelPair) -> None:
        self.current = pair
        if self.on_swap is not None:
            self.on_swap(pair)

    def _refuse(self, ev: SwapEvent, pair: ModelPair, reason: str) -> None:
        ev.refused = reason
        self.refused[pair.key] = reason
        log.error(
            "refusing checkpoint round %d (policy %s, PPM %s): %s; still serving %s",
            pair.round,
            pair.policy_version,
            pair.ppm_version or "-",
            reason,
            self.current.policy_version,
        )

    async def _swap(self, p: ModelPointer, pair: ModelPair, seen: float) -> None:
        ev = SwapEvent(pair.round, pair.policy_version, pair.ppm_version, seen)
        if not can_swap(self.worker.backend):
            self.events.append(ev)
            return self._refuse(ev, pair, f"the {self.worker.backend.name} backend cannot load weights")
        try:
            policy_dir, ppm_dir = await _prepare(self.b, p, self.cache_dir)
        except (CheckpointError, SwapRefused) as e:
            self.events.append(ev)
            return self._refuse(ev, pair, str(e))
        self.events.append(ev)
        ev.fetched_at = time.time()
        try:
            loaded = await asyncio.to_thread(load_pair, self.cfg, pair, policy_dir, ppm_dir, self.worker.backend)
        except Exception as e:  # deliberate: weights that fail to load, whatever the error
            return self._refuse(ev, pair, f"cannot load: {type(e).__name__}: {e}")
        ev.ready_at = time.time()
        try:
            calls = await self._install(loaded)
        except Exception as e:  # an in-place reload failed; the engine kept its old weights
            return self._refuse(ev, pair, f"cannot load in place: {type(e).__name__}: {e}")
        del loaded  # the old pair is gone with the worker's references; don't keep the new twice
        ev.swapped_at = time.time()
        self._serve(pair)
        log.info(
            "serving round %d: policy %s, PPM %s (ready %.2fs, installed %.2fs after the pointer)",
            pair.round,
            pair.policy_version,
            pair.ppm_version or "-",
            ev.ready_at - seen,
            ev.swapped_at - seen,
        )
        note = asyncio.create_task(self._note_first_call(ev, calls), name="swap-first-call")
        self._notes.add(note)
        note.add_done_callback(self._notes.discard)
        await asyncio.to_thread(prune, self.cache_dir, [policy_dir] + ([ppm_dir] if ppm_dir else []))

    async def _install(self, loaded) -> int:
        """Install between two calls; returns the worker's call count at that moment."""
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        def deliver(ok: bool, value) -> None:
            if not fut.done():
                (fut.set_result if ok else fut.set_exception)(value)

        def swap_now() -> None:  # in the model thread: it must never raise into the dispatcher
            try:
                calls = self.worker.stats.gen_calls
                install(self.worker, loaded)
            except Exception as e:
                loop.call_soon_threadsafe(deliver, False, e)
                return
            loop.call_soon_threadsafe(deliver, True, calls)

        self.worker.run_between_calls(swap_now)
        return await fut

    async def _note_first_call(self, ev: SwapEvent, calls: int) -> None:
        while self.worker.stats.gen_calls <= calls:
            await asyncio.sleep(0.01)
        ev.first_call_at = time.time()
