"""Connect to NATS and talk JetStream the rstar way: retried publishes, trees, problems, dead letters.

    async with open_broker(cfg, "actor-1") as b:        # embedded server if broker.url is None
        await publish_tree(b, tree)                     # compressed / chunked to fit

The PROBLEMS queue (add, fetch, requeue) is in ``broker.problems``, dead letters in
``broker.dead_letters``.

Guaranteed: the connection reconnects forever (disconnects and reconnects are logged); every
publish carries a ``Nats-Msg-Id`` and is retried on timeouts, no-responders and 503s for
``publish_retry_s``, so a retry after a lost ack is deduplicated by the server within
``dedup_window_s``. Not guaranteed: a publish still failing after ``publish_retry_s`` raises
``BrokerUnavailableError`` and the caller decides (an actor keeps its problem unacked).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api

from broker.codec import encode_tree
from broker.server import embedded_server
from broker.streams import TREES_SUBJECT, ensure_broker
from rstar.config import BrokerConfig, Config
from rstar.log import get_logger
from rstar.schemas import TreeResult

log = get_logger(__name__)

# Errors that mean "the server is away or busy for a moment": retry the same publish.
RETRYABLE = (
    nats.errors.TimeoutError,
    nats.js.errors.NoStreamResponseError,
    nats.js.errors.ServiceUnavailableError,
    nats.errors.ConnectionReconnectingError,
    nats.errors.OutboundBufferLimitError,
    nats.errors.StaleConnectionError,
    asyncio.TimeoutError,
)


class BrokerUnavailableError(RuntimeError):
    """The broker did not accept a publish (or a connection) within the configured time."""


@dataclass
class Broker:
    """A live connection: the NATS client, its JetStream context and the broker settings."""

    nc: NATS
    js: JetStreamContext
    cfg: BrokerConfig

    @property
    def max_payload(self) -> int:
        # The connected server's limit rules, whatever the config says.
        return self.nc.max_payload


async def connect(url: str, name: str, cfg: BrokerConfig) -> NATS:
    """Connect with endless reconnects; retry the first connection for ``connect_timeout_s``."""

    async def disconnected():
        if not (nc.is_closed or nc.is_draining):  # a disconnect we asked for is no news
            log.warning("%s: disconnected from NATS %s", name, url)

    async def reconnected():
        log.info("%s: reconnected to NATS %s", name, nc.connected_url.netloc if nc.connected_url else url)

    async def error(e: Exception):
        log.warning("%s: NATS error: %s: %s", name, type(e).__name__, e)

    async def closed():
        log.debug("%s: NATS connection closed", name)

    deadline = time.monotonic() + cfg.connect_timeout_s
    while True:
        nc = NATS()
        try:
            await nc.connect(
                url,
                name=name,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,  # type: ignore[arg-type]  # nats-py annotates int; it sleeps on any float
                connect_timeout=min(2.0, cfg.connect_timeout_s),  # type: ignore[arg-type]  # same: a float timeout
                allow_reconnect=True,
                disconnected_cb=disconnected,
                reconnected_cb=reconnected,
                error_cb=error,
                closed_cb=closed,
            )
            return nc
        except (TimeoutError, nats.errors.NoServersError, OSError) as e:
            if time.monotonic() > deadline:
                raise BrokerUnavailableError(
                    f"cannot connect to NATS at {url} within {cfg.connect_timeout_s:.0f}s: {e}"
                ) from e
            await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def open_broker(cfg: Config, name: str, setup: bool = True) -> AsyncIterator[Broker]:
    """Connect (starting the embedded server when ``broker.url`` is None), ensure the layout, yield.

    On exit the connection is drained (pending publishes and acks are flushed).
    """
    with contextlib.ExitStack() as stack:
        url = await asyncio.to_thread(stack.enter_context, embedded_server(cfg))
        nc = await connect(url, name, cfg.broker)
        try:
            b = Broker(nc, nc.jetstream(timeout=cfg.broker.publish_timeout_s), cfg.broker)
            if setup:
                await ensure_broker(b.js, cfg.broker)
            yield b
        finally:
            if not nc.is_closed:
                try:
                    await asyncio.wait_for(nc.drain(), 10)
                except (TimeoutError, nats.errors.Error) as e:
                    log.warning("%s: drain failed (%s); closing", name, e)
                    await nc.close()


async def publish(b: Broker, subject: str, data: bytes, headers: dict[str, str]) -> api.PubAck:
    """JetStream publish, retried while the server is away. ``headers`` should hold a Nats-Msg-Id."""
    deadline = time.monotonic() + b.cfg.publish_retry_s
    delay = 0.1
    while True:
        try:
            return await b.js.publish(subject, data, timeout=b.cfg.publish_timeout_s, headers=dict(headers))
        except RETRYABLE as e:
            if time.monotonic() + delay > deadline:
                raise BrokerUnavailableError(
                    f"publish to {subject} failed for {b.cfg.publish_retry_s:.0f}s: {type(e).__name__}: {e}"
                ) from e
            log.info("publish to %s: %s; retrying in %.1fs", subject, type(e).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 2.0)


async def publish_tree(b: Broker, tree: TreeResult) -> list[api.PubAck]:
    """Publish a finished tree to TREES (compressed or chunked to fit); returns one ack per message.

    Safe to call again after a failure: every message is deduplicated by its id.
    """
    acks = []
    for f in encode_tree(tree, b.max_payload, b.cfg.compress_min_bytes):
        acks.append(await publish(b, TREES_SUBJECT, f.data, f.headers))
    return acks
