"""The JetStream layout of rstar, and ``ensure_broker`` that creates or updates it idempotently.

| name | kind | what |
|---|---|---|
| PROBLEMS | stream, work queue | ``rstar.problems.>``; a message leaves when an actor acks it |
| TREES | stream, limits | ``rstar.trees``; kept ``trees_max_age_s`` after ingest as a replay window |
| DLQ | stream, limits | ``rstar.dlq.>``; poison messages, original bytes, error in ``Rstar-Error*`` headers |
| EXHAUSTED | stream, work queue | the server's max-deliveries advisories for ``actors``, kept until the learner moves their problem to the DLQ |
| actors | pull consumer on PROBLEMS | ack_wait ``problems_ack_wait_s``, max_deliver ``problems_max_deliver`` |
| dlq-mover | pull consumer on EXHAUSTED | the learner's; an advisory is acked once its problem is in the DLQ |
| ingest | pull consumer on TREES | ack_wait ``trees_ack_wait_s``, redelivers without limit (a DB outage loses nothing) |
| models | KV | key ``current``: the ModelPointer (history kept for rollback) |
| actors | KV | one key per actor: its Heartbeat, gone ``heartbeat_ttl_s`` after the last |
| problems | KV | problem ids ever queued by ``rstar problems add`` (the long-lived dedup guard) |
| checkpoints | Object Store | safetensors + config of each policy/PPM version |

Deduplication of problems is two-layered: ``Nats-Msg-Id`` = problem id drops a retried publish
within ``dedup_window_s``; the ``problems`` KV bucket remembers every id forever, so adding the same
file next week queues nothing. Re-queueing a problem on purpose (more rollouts for an unsolved one)
publishes with another message id (see ``broker.client.requeue_problem``) and skips the KV guard.

``ensure_broker`` may run in every process at start: creating what exists with the same settings is
a no-op, and changed settings (e.g. a new ack_wait) update the stream or consumer in place, keeping
its messages and ack state.
"""

from __future__ import annotations

import hashlib
import re

from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, BucketNotFoundError, NotFoundError

from rstar.config import BrokerConfig
from rstar.log import get_logger

log = get_logger(__name__)

PROBLEMS_STREAM = "PROBLEMS"
PROBLEMS_SUBJECT = "rstar.problems.new"
PROBLEMS_REQUEUE_SUBJECT = "rstar.problems.requeue"
TREES_STREAM = "TREES"
TREES_SUBJECT = "rstar.trees"
DLQ_STREAM = "DLQ"
DLQ_TREES_SUBJECT = "rstar.dlq.trees"
ACTORS_CONSUMER = "actors"
EXHAUSTED_STREAM = "EXHAUSTED"
EXHAUSTED_SUBJECT = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{PROBLEMS_STREAM}.{ACTORS_CONSUMER}"
DLQ_MOVER_CONSUMER = "dlq-mover"
INGEST_CONSUMER = "ingest"
MODELS_BUCKET = "models"
MODELS_KEY = "current"
ACTORS_BUCKET = "actors"
SEEN_PROBLEMS_BUCKET = "problems"
CHECKPOINTS_BUCKET = "checkpoints"

_STREAM_CONFLICT = 10058  # "stream name already in use with a different configuration"
_KV_KEY_OK = re.compile(r"^[-/_=.a-zA-Z0-9]+$")


def kv_key(name: str) -> str:
    """A KV key for an arbitrary id: the id itself when it is a legal key, else a hash of it."""
    if _KV_KEY_OK.match(name) and not name.startswith(".") and not name.endswith("."):
        return name
    return "h-" + hashlib.sha256(name.encode()).hexdigest()[:40]


def _stream_configs(cfg: BrokerConfig) -> list[api.StreamConfig]:
    return [
        api.StreamConfig(
            name=PROBLEMS_STREAM,
            subjects=["rstar.problems.>"],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            duplicate_window=cfg.dedup_window_s,
            description="problems waiting for an actor (work queue)",
        ),
        api.StreamConfig(
            name=TREES_STREAM,
            subjects=[TREES_SUBJECT],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            duplicate_window=cfg.dedup_window_s,
            max_age=cfg.trees_max_age_s or None,
            max_msg_size=-1,
            description="finished search trees (TreeResult), ingested by the learner",
        ),
        api.StreamConfig(
            name=DLQ_STREAM,
            subjects=["rstar.dlq.>"],
            retention=api.RetentionPolicy.LIMITS,
            storage=api.StorageType.FILE,
            duplicate_window=cfg.dedup_window_s,
            max_age=cfg.dlq_max_age_s or None,
            description="poison messages with their error in Rstar-Error headers",
        ),
        # Advisories are plain messages the server sends once; captured here, one that comes while
        # no learner runs waits for the next instead of being missed.
        api.StreamConfig(
            name=EXHAUSTED_STREAM,
            subjects=[EXHAUSTED_SUBJECT],
            retention=api.RetentionPolicy.WORK_QUEUE,
            storage=api.StorageType.FILE,
            max_age=cfg.dlq_max_age_s or None,
            description="max-deliveries advisories of problems no actor finished (for the DLQ)",
        ),
    ]


def _consumer_configs(cfg: BrokerConfig) -> list[tuple[str, api.ConsumerConfig]]:
    return [
        (
            PROBLEMS_STREAM,
            api.ConsumerConfig(
                durable_name=ACTORS_CONSUMER,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=cfg.problems_ack_wait_s,
                max_deliver=cfg.problems_max_deliver,
                deliver_policy=api.DeliverPolicy.ALL,
                max_ack_pending=10_000,
                description="actors pull problems; ack once the tree is published",
            ),
        ),
        (
            TREES_STREAM,
            api.ConsumerConfig(
                durable_name=INGEST_CONSUMER,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=cfg.trees_ack_wait_s,
                max_deliver=-1,
                deliver_policy=api.DeliverPolicy.ALL,
                max_ack_pending=20_000,
                description="learner ingest; ack after the SQL commit",
            ),
        ),
        (
            EXHAUSTED_STREAM,
            api.ConsumerConfig(
                durable_name=DLQ_MOVER_CONSUMER,
                ack_policy=api.AckPolicy.EXPLICIT,
                ack_wait=60.0,
                max_deliver=-1,
                deliver_policy=api.DeliverPolicy.ALL,
                description="learner; ack once the advisory's problem is in the DLQ",
            ),
        ),
    ]


async def _ensure_stream(js: JetStreamContext, sc: api.StreamConfig) -> None:
    try:
        await js.add_stream(sc)
    except BadRequestError as e:
        if e.err_code != _STREAM_CONFLICT:
            raise
        log.info("stream %s exists with other settings: updating it", sc.name)
        await js.update_stream(sc)


async def _ensure_kv(
    js: JetStreamContext, bucket: str, *, history: int, ttl: float | None, max_value_size: int, description: str
) -> None:
    try:
        await js.create_key_value(
            bucket=bucket, history=history, ttl=ttl, max_value_size=max_value_size, description=description
        )
    except BadRequestError as e:
        if e.err_code != _STREAM_CONFLICT:
            raise
        # Same bucket, other limits: change only what we own, keep what nats-py set up.
        si = await js.stream_info(f"KV_{bucket}")
        c = si.config
        c.max_msgs_per_subject, c.max_age, c.max_msg_size, c.description = history, ttl, max_value_size, description
        log.info("KV bucket %s exists with other settings: updating it", bucket)
        await js.update_stream(c)


async def ensure_broker(js: JetStreamContext, cfg: BrokerConfig) -> None:
    """Create (or bring up to date) every stream, consumer and bucket rstar uses. Idempotent."""
    for sc in _stream_configs(cfg):
        await _ensure_stream(js, sc)
    for stream, cc in _consumer_configs(cfg):
        # Create-or-update on the server side: an existing durable keeps its ack floor.
        await js.add_consumer(stream, cc)
    await _ensure_kv(
        js,
        MODELS_BUCKET,
        history=16,
        ttl=None,
        max_value_size=64 * 1024,
        description="current policy+PPM pointer (ModelPointer)",
    )
    await _ensure_kv(
        js, ACTORS_BUCKET, history=1, ttl=cfg.heartbeat_ttl_s, max_value_size=64 * 1024, description="actor heartbeats"
    )
    await _ensure_kv(
        js,
        SEEN_PROBLEMS_BUCKET,
        history=1,
        ttl=None,
        max_value_size=1024,
        description="problem ids ever queued by `rstar problems add`",
    )
    try:
        await js.object_store(CHECKPOINTS_BUCKET)
    except (BucketNotFoundError, NotFoundError):
        await js.create_object_store(CHECKPOINTS_BUCKET, description="policy and PPM checkpoints")
