"""Publish a round's policy+PPM pair: Object Store first, checkpoints rows, the KV pointer last.

    pub = await publish_pair(b, engine, round_no=2, policy_dir=..., ppm_dir=..., announce_ppm=False,
                             base="smollm2-135m", policy_metrics={...}, ppm_metrics={...})
    pub.pointer, pub.policy, pub.ppm

Order is the contract (DESIGN §4): both objects are put (``broker.checkpoints.put_checkpoint``,
which verifies each directory against its MANIFEST first), then a ``checkpoints`` row per model
(round, object, sha256, metrics and lineage: the policy's ``base`` is the model it was fine-tuned
from — every round starts from the base, as the paper — and the PPM's ``parent_id`` is that
policy's row, ``base`` its version), and only then ``set_pointer`` with
``ModelPointer{round: round + 1, policy, ppm}``: the round the actors collect next. An actor that
sees the pointer always finds both objects.

Versions are ``policy-r<round>-<8 hex of the MANIFEST's sha256>`` (and ``ppm-…``): a retrained
model gets a new name, the same one re-published keeps its name, so a learner that crashed
mid-publish simply publishes again (puts and rows are idempotent).

``announce_ppm``: the pointer carries the PPM only when the next round searches PPM-augmented
(see ``learner.rounds``); the PPM is uploaded and recorded either way.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import Engine

from rstar.checkpoints import MANIFEST, file_sha256
from rstar.log import get_logger
from rstar.schemas import ModelPointer, ModelRef
from store import learner_tables as lt

log = get_logger(__name__)


@dataclass(frozen=True)
class Published:
    pointer: ModelPointer
    policy: ModelRef
    ppm: ModelRef | None  # uploaded and recorded, even when the pointer does not announce it


def model_version(kind: str, round_no: int, model_dir: Path) -> str:
    return f"{kind}-r{round_no}-{file_sha256(Path(model_dir) / MANIFEST)[:8]}"


async def publish_pair(
    b,
    engine: Engine,
    *,
    round_no: int,
    policy_dir: Path,
    ppm_dir: Path | None,
    announce_ppm: bool,
    base: str,
    policy_metrics: dict | None = None,
    ppm_metrics: dict | None = None,
) -> Published:
    from broker.checkpoints import put_checkpoint, set_pointer

    policy = await put_checkpoint(b, policy_dir, model_version("policy", round_no, policy_dir))
    ppm: ModelRef | None = None
    if ppm_dir is not None:
        ppm = await put_checkpoint(b, ppm_dir, model_version("ppm", round_no, ppm_dir))

    def rows() -> None:
        with lt.begin(engine) as conn:
            pid = lt.add_checkpoint(
                conn, policy, round_no=round_no, kind="policy", metrics=policy_metrics or {}, base=base
            )
            if ppm is not None:
                lt.add_checkpoint(
                    conn,
                    ppm,
                    round_no=round_no,
                    kind="ppm",
                    metrics=ppm_metrics or {},
                    parent_id=pid,
                    base=policy.version,
                )

    await asyncio.to_thread(rows)
    pointer = ModelPointer(round=round_no + 1, policy=policy, ppm=ppm if announce_ppm else None)
    revision = await set_pointer(b, pointer)
    log.info(
        "published round %d: %s%s -> pointer round %d (revision %d)",
        round_no,
        policy.version,
        f" + {ppm.version}" + ("" if announce_ppm else " (not announced)") if ppm else "",
        pointer.round,
        revision,
    )
    return Published(pointer, policy, ppm)
