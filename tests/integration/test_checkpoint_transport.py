"""Checkpoints through a real NATS: Object Store put/fetch and the KV model pointer."""

import asyncio

import pytest

from broker.checkpoints import fetch_checkpoint, get_pointer, put_checkpoint, set_pointer, watch_pointer
from broker.client import open_broker
from rstar.checkpoints import CheckpointError, atomic_dir, commit_dir
from rstar.schemas import ModelPointer, ModelRef

pytestmark = pytest.mark.timeout(60)


def ckpt(tmp_path, name, payload):
    out = tmp_path / name
    tmp = atomic_dir(out)
    (tmp / "model.safetensors").write_bytes(payload)
    (tmp / "config.json").write_text("{}")
    commit_dir(tmp, out)
    return out


async def test_put_fetch_round_trip_and_pointer(broker_cfg, tmp_path):
    payload = bytes(range(256)) * 8000  # 2 MB: several object-store chunks
    src = ckpt(tmp_path, "src", payload)
    async with open_broker(broker_cfg, "t") as b:
        assert await get_pointer(b) is None
        ref = await put_checkpoint(b, src, "policy-r1")
        assert ref == await put_checkpoint(b, src, "policy-r1")  # idempotent re-publish
        await set_pointer(b, ModelPointer(round=1, policy=ref))
        got = await get_pointer(b)
        assert got.policy.sha256 == ref.sha256 and got.round == 1
        out = await fetch_checkpoint(b, got.policy, tmp_path / "dl")
        assert (out / "model.safetensors").read_bytes() == payload


async def test_fetch_refuses_missing_and_mismatched(broker_cfg, tmp_path):
    src = ckpt(tmp_path, "src", b"weights")
    async with open_broker(broker_cfg, "t") as b:
        ref = await put_checkpoint(b, src, "v1")
        with pytest.raises(CheckpointError, match="not in the store"):
            await fetch_checkpoint(b, ModelRef(version="v9", object="v9", sha256=ref.sha256), tmp_path / "a")
        with pytest.raises(CheckpointError, match="does not match"):
            await fetch_checkpoint(b, ModelRef(version="v1", object="v1", sha256="0" * 64), tmp_path / "b")
        assert not (tmp_path / "b").exists()


async def test_watch_sees_current_then_updates_and_skips_garbage(broker_cfg, tmp_path):
    src = ckpt(tmp_path, "src", b"w")
    async with open_broker(broker_cfg, "t") as b:
        ref = await put_checkpoint(b, src, "v1")
        await set_pointer(b, ModelPointer(round=1, policy=ref))
        seen = []

        async def watch():
            async for p in watch_pointer(b):
                seen.append(p.round)
                if len(seen) == 3:
                    return

        task = asyncio.create_task(watch())
        await asyncio.sleep(0.3)
        kv = await b.js.key_value("models")
        await kv.put("current", b"not a pointer")
        await set_pointer(b, ModelPointer(round=2, policy=ref))
        await set_pointer(b, ModelPointer(round=3, policy=ref))
        await asyncio.wait_for(task, 10)
        assert seen == [1, 2, 3]
