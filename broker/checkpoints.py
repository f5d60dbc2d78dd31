"""Checkpoints through the broker: Object Store for the weights, one KV key for the pointer.

Publish order is the contract (DESIGN §4): ``put_checkpoint`` for the policy and the PPM first,
``set_pointer`` last — a reader that sees the pointer always finds both objects. Readers
``fetch_checkpoint`` (download into a file, check the sha256 of the packed tar, unpack atomically,
verify every file's digest) and ``watch_pointer`` for changes.

Objects are named by version; putting a version that already exists with the same digest is a
no-op, so a learner that restarts mid-publish can simply publish again.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import nats.errors
import nats.js.api
import nats.js.errors
from nats.js.kv import KeyValue

from broker.client import Broker
from broker.streams import CHECKPOINTS_BUCKET, MODELS_BUCKET, MODELS_KEY
from rstar.checkpoints import CheckpointError, pack, unpack
from rstar.log import get_logger, timed
from rstar.schemas import ModelPointer, ModelRef, SchemaError, decode, encode

log = get_logger(__name__)


async def put_checkpoint(b: Broker, model_dir: Path, version: str) -> ModelRef:
    """Upload a checkpoint directory (verified against its manifest) as object ``version``."""
    obs = await b.js.object_store(CHECKPOINTS_BUCKET)
    model_dir = Path(model_dir)
    with tempfile.TemporaryFile(dir=model_dir.parent) as f:  # the tar streams through a file
        digest = await asyncio.to_thread(pack, model_dir, f)
        try:
            info = await obs.get_info(version)
            if info.headers and info.headers.get("Rstar-Sha256") == digest:
                return ModelRef(version=version, object=version, sha256=digest)
        except nats.js.errors.ObjectNotFoundError:
            pass
        size = f.seek(0, 2)
        f.seek(0)
        with timed(log, f"put checkpoint {version} ({size / 1e6:.0f} MB)"):
            await obs.put(version, f, meta=nats.js.api.ObjectMeta(name=version, headers={"Rstar-Sha256": digest}))
    return ModelRef(version=version, object=version, sha256=digest)


FETCH_CHUNKS = 8  # Object Store chunks held at once while downloading (128 KiB each by default)


async def _download(b: Broker, name: str, f) -> None:
    """Object ``name`` of the checkpoints bucket into file ``f``, ``FETCH_CHUNKS`` at a time.

    ``ObjectStore.get`` reads through an ordered push consumer: the server sends every chunk at
    once and the client holds those not yet written, so a fast link fills memory with the whole
    checkpoint. A pull consumer asks for the next few chunks only when the last ones are on disk.
    The chunks' integrity is checked by the caller (the sha256 of the packed tar).
    """
    obs = await b.js.object_store(CHECKPOINTS_BUCKET)
    info = await obs.get_info(name)
    if not info.size:
        return
    chunks = info.chunks
    if chunks is None:
        raise CheckpointError(f"checkpoint object {name!r}: the object store gives no chunk count")
    sub = await b.js.pull_subscribe(
        f"$O.{CHECKPOINTS_BUCKET}.C.{info.nuid}",
        stream=f"OBJ_{CHECKPOINTS_BUCKET}",
        config=nats.js.api.ConsumerConfig(ack_policy=nats.js.api.AckPolicy.ALL, inactive_threshold=60.0),
    )
    got = 0
    try:
        while got < chunks:
            try:
                msgs = await sub.fetch(min(FETCH_CHUNKS, chunks - got), timeout=30)
            except nats.errors.TimeoutError:
                raise CheckpointError(
                    f"checkpoint object {name!r}: no chunk for 30 s after {got} of {chunks}"
                ) from None
            for msg in msgs:
                await asyncio.to_thread(f.write, msg.data)
            got += len(msgs)
            await msgs[-1].ack()
    finally:
        await sub.unsubscribe()


async def fetch_checkpoint(b: Broker, ref: ModelRef, out_dir: Path) -> Path:
    """Download ``ref`` into ``out_dir``; CheckpointError if it is missing, partial or altered."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=out_dir.parent) as f:
        try:
            await _download(b, ref.object, f)
        except nats.js.errors.ObjectNotFoundError:
            raise CheckpointError(f"checkpoint object {ref.object!r} is not in the store") from None
        f.seek(0)
        return await asyncio.to_thread(unpack, f, ref.sha256, out_dir)


async def _models_kv(b: Broker) -> KeyValue:
    return await b.js.key_value(MODELS_BUCKET)


async def set_pointer(b: Broker, pointer: ModelPointer) -> int:
    """Announce the current pair (after both objects are in). Returns the KV revision."""
    kv = await _models_kv(b)
    return await kv.put(MODELS_KEY, encode(pointer))


async def get_pointer(b: Broker) -> ModelPointer | None:
    kv = await _models_kv(b)
    try:
        entry = await kv.get(MODELS_KEY)
    except nats.js.errors.KeyNotFoundError:
        return None
    return decode(entry.value, ModelPointer) if entry.value else None


async def watch_pointer(b: Broker) -> AsyncIterator[ModelPointer]:
    """Yield the current pointer (if any), then every new one. A malformed value is logged, skipped."""
    kv = await _models_kv(b)
    watcher = await kv.watch(MODELS_KEY)
    try:
        async for entry in watcher:
            if entry is None or not entry.value:  # None marks "caught up with history"
                continue
            try:
                yield decode(entry.value, ModelPointer)
            except SchemaError as e:
                log.error("ignoring a malformed model pointer (revision %s): %s", entry.revision, e)
    finally:
        await watcher.stop()
