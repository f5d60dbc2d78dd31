"""Actor heartbeats in the ``actors`` KV bucket, and reading the fleet back.

    task = asyncio.create_task(heartbeat_loop(b, probe, every_s=10), name="heartbeat")
    fleet = await read_fleet(b)          # list[Heartbeat], newest first; what `rstar status` shows

One key per actor (``kv_key(actor_id)``), rewritten every ``actor.heartbeat_s``; the bucket's TTL
(``broker.heartbeat_ttl_s``) makes an actor that died without a word (``kill -9``, a lost host)
vanish on its own, and a clean exit deletes its key at once. Rates (tokens/s, busy fraction) are
measured over the interval since the previous heartbeat, trees/min over the last ten minutes.
Heartbeats are best effort: one that cannot be written is logged and the actor keeps working.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import nats.errors
import nats.js.errors

from broker.client import Broker, BrokerUnavailableError
from broker.streams import ACTORS_BUCKET, kv_key
from rstar.log import get_logger
from rstar.schemas import Heartbeat, SchemaError, decode, encode

log = get_logger(__name__)
TREES_WINDOW_S = 600.0


@dataclass
class Rates:
    """Turns the worker's cumulative counters and finished-tree times into current rates."""

    finished: deque = field(default_factory=deque)  # time.monotonic() of each finished tree
    started: float = field(default_factory=time.monotonic)
    _last: tuple[float, float, float] | None = None  # (monotonic, gen_tokens, busy_s)

    def tree_done(self) -> None:
        self.finished.append(time.monotonic())

    def trees_per_min(self) -> float:
        now = time.monotonic()
        while self.finished and self.finished[0] < now - TREES_WINDOW_S:
            self.finished.popleft()
        window = min(TREES_WINDOW_S, max(now - self.started, 1.0))
        return round(len(self.finished) * 60.0 / window, 2)

    def model_rates(self, stats) -> tuple[float, float]:
        """(tokens/s, busy fraction) since the previous call (``stats``: a ``WorkerStats``)."""
        now = time.monotonic()
        last, self._last = self._last, (now, stats.gen_tokens, stats.busy_s)
        if last is None:
            snap = stats.snapshot()
            return snap["tokens_per_s"], snap["busy_fraction"]
        dt = max(now - last[0], 1e-6)
        return round((stats.gen_tokens - last[1]) / dt, 2), round(min((stats.busy_s - last[2]) / dt, 1.0), 4)


async def put_heartbeat(b: Broker, hb: Heartbeat) -> None:
    kv = await b.js.key_value(ACTORS_BUCKET)
    await kv.put(kv_key(hb.actor_id), encode(hb))


async def delete_heartbeat(b: Broker, actor_id: str) -> None:
    kv = await b.js.key_value(ACTORS_BUCKET)
    await kv.purge(kv_key(actor_id))


async def heartbeat_loop(b: Broker, probe: Callable[[], Heartbeat], every_s: float) -> None:
    """Write ``probe()`` every ``every_s`` seconds until cancelled."""
    while True:
        try:
            await put_heartbeat(b, probe())
        except (TimeoutError, BrokerUnavailableError, nats.errors.Error) as e:
            log.info("heartbeat not written (%s: %s)", type(e).__name__, e)
        await asyncio.sleep(every_s)


async def read_fleet(b: Broker) -> list[Heartbeat]:
    """Every live actor's last heartbeat, newest first; undecodable entries are logged, skipped."""
    kv = await b.js.key_value(ACTORS_BUCKET)
    try:
        keys = await kv.keys()
    except nats.js.errors.NoKeysError:
        return []
    out = []
    for k in keys:
        try:
            entry = await kv.get(k)
        except nats.js.errors.KeyNotFoundError:  # expired or deleted between keys() and get()
            continue
        if not entry.value:
            continue
        try:
            out.append(decode(entry.value, Heartbeat))
        except SchemaError as e:
            log.warning("ignoring heartbeat %s: %s", k, e)
    return sorted(out, key=lambda h: -h.at)
