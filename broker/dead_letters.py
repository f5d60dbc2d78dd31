"""The DLQ stream's life cycle: dead-letter a poison message, catch problems no actor ever
finished, list dead letters, replay them once the cause is fixed.

    await dead_letter(b, msg, error); await msg.term()        # a message that cannot be used
    await watch_exhausted_problems(b, stop)                   # in the learner: max_deliver reached
    rows = await list_dead_letters(b, limit=50)               # rstar broker dlq
    await replay(b, [12, 13])                                 # rstar broker dlq --replay 12 --replay 13

A dead letter keeps the original bytes and headers (its ``Nats-Msg-Id`` aside) on
``rstar.dlq.<subject>``, with the reason in ``Rstar-Error`` and its origin in ``Rstar-Dlq-*``.
A problem delivered ``broker.problems_max_deliver`` times without an ack (every actor that took
it died or timed out) is never delivered again; the server announces it with a max-deliveries
advisory, which the EXHAUSTED stream keeps, and ``watch_exhausted_problems`` moves the problem
from PROBLEMS to the DLQ so it is not lost silently, then acks the advisory. An advisory that
comes while no learner runs waits in EXHAUSTED for the next one. Replay publishes the original bytes and headers to the
original subject under a new message id, then deletes the dead letter.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js import api
from nats.js.errors import NotFoundError

from broker.client import Broker, publish
from broker.streams import DLQ_MOVER_CONSUMER, DLQ_STREAM, EXHAUSTED_STREAM, EXHAUSTED_SUBJECT, PROBLEMS_STREAM
from rstar.log import get_logger

log = get_logger(__name__)

_DLQ_HEADER_PREFIXES = ("Rstar-Error", "Rstar-Dlq-")  # what dead-lettering adds to a message


def _header_safe(text: str, limit: int = 2000) -> str:
    return " ".join(text.split())[:limit]


def _source(msg: Msg) -> tuple[str, int, int]:
    try:
        md = msg.metadata
        return md.stream, md.sequence.stream, md.num_delivered
    except (nats.errors.NotJSMessageError, AttributeError, ValueError):
        return "core", 0, 0


async def _publish_dead(
    b: Broker,
    subject: str,
    data: bytes | None,
    headers: Mapping[str, str] | None,
    source: tuple[str, int, int],
    error: BaseException | str,
) -> api.PubAck:
    stream, seq, delivered = source
    out: dict[str, str] = {k: v for k, v in (headers or {}).items() if k != "Nats-Msg-Id"}
    reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    out.update(
        {
            "Rstar-Error": _header_safe(reason),
            "Rstar-Error-Type": "str" if isinstance(error, str) else type(error).__name__,
            "Rstar-Dlq-Subject": subject,
            "Rstar-Dlq-Stream": stream,
            "Rstar-Dlq-Seq": str(seq),
            "Rstar-Dlq-Delivered": str(delivered),
            "Nats-Msg-Id": f"dlq:{stream}:{seq}" if seq else f"dlq:{uuid.uuid4().hex}",
        }
    )
    log.warning("dead-lettering %s #%s: %s", stream, seq, out["Rstar-Error"][:300])
    return await publish(b, "rstar.dlq." + subject.removeprefix("rstar."), data or b"", out)


async def dead_letter(b: Broker, msg: Msg, error: BaseException | str) -> api.PubAck:
    """Copy ``msg`` (data and headers) to the DLQ with the error in its headers.

    The caller then acks or terms the original; a retried dead-letter is deduplicated.
    """
    return await _publish_dead(b, msg.subject, msg.data, msg.headers, _source(msg), error)


def dlq_headers(headers: Mapping[str, Any] | None) -> dict[str, str]:
    """The ``Rstar-Error``/``Rstar-Dlq-*`` headers of a dead-lettered message (for tools and tests)."""
    return {k: v for k, v in (headers or {}).items() if k.startswith(_DLQ_HEADER_PREFIXES)}


async def dead_letter_exhausted(b: Broker, advisory: Mapping[str, Any]) -> bool:
    """Move the problem a max-deliveries advisory names from PROBLEMS to the DLQ; False when it
    is gone already (acked after all, or handled by another learner)."""
    seq, deliveries = int(advisory["stream_seq"]), int(advisory.get("deliveries", 0))
    try:
        m = await b.js.get_msg(PROBLEMS_STREAM, seq)
    except NotFoundError:
        return False
    assert m.subject is not None  # a message read back from a stream always has its subject
    reason = (
        f"delivered {deliveries} times without an ack (each actor that took it died or ran past "
        "broker.problems_ack_wait_s); not delivered again"
    )
    await _publish_dead(b, m.subject, m.data, m.headers, (PROBLEMS_STREAM, seq, deliveries), reason)
    try:
        await b.js.delete_msg(PROBLEMS_STREAM, seq)
    except NotFoundError:
        pass
    return True


async def watch_exhausted_problems(b: Broker, stop: asyncio.Event) -> int:
    """Dead-letter every problem the actors' consumer gave up on, stored advisories first, until
    ``stop``; returns how many were moved. An advisory is acked only after its move."""
    sub = await b.js.pull_subscribe(EXHAUSTED_SUBJECT, durable=DLQ_MOVER_CONSUMER, stream=EXHAUSTED_STREAM)
    moved = 0
    try:
        while not stop.is_set():
            try:
                msgs = await sub.fetch(16, timeout=1.0)
            except (TimeoutError, nats.errors.TimeoutError):
                continue
            for msg in msgs:
                try:
                    moved += await dead_letter_exhausted(b, json.loads(msg.data))
                except (ValueError, KeyError, TypeError) as e:
                    log.warning("ignoring a malformed max-deliveries advisory: %s", e)
                await msg.ack()
    finally:
        with contextlib.suppress(nats.errors.ConnectionClosedError, nats.errors.BadSubscriptionError):
            await sub.unsubscribe()
    return moved


async def list_dead_letters(b: Broker, limit: int) -> tuple[int, list[dict[str, Any]]]:
    """(messages in the DLQ, the newest ``limit`` of them as rows: seq, subject, bytes, headers)."""
    state = (await b.js.stream_info(DLQ_STREAM)).state
    rows: list[dict[str, Any]] = []
    if not state.messages:
        return 0, rows
    for seq in range(max(state.first_seq, state.last_seq - limit + 1), state.last_seq + 1):
        try:
            m = await b.js.get_msg(DLQ_STREAM, seq)
        except NotFoundError:  # aged out, replayed or deleted
            continue
        rows.append({"seq": seq, "subject": m.subject, "bytes": len(m.data or b""), **dlq_headers(m.headers)})
    return state.messages, rows


async def replay(b: Broker, seqs: Iterable[int] | None = None) -> list[tuple[int, str]]:
    """Publish dead letters (all when ``seqs`` is None) back to their original subject, then delete
    them from the DLQ. Returns (dlq seq, subject) per replayed message; an unknown seq raises."""
    if seqs is None:
        state = (await b.js.stream_info(DLQ_STREAM)).state
        seqs = range(state.first_seq, state.last_seq + 1) if state.messages else []
        missing_ok = True
    else:
        missing_ok = False
    done = []
    for seq in seqs:
        try:
            m = await b.js.get_msg(DLQ_STREAM, seq)
        except NotFoundError:
            if missing_ok:
                continue
            raise LookupError(f"no dead letter #{seq} (see `rstar broker dlq`)") from None
        headers = {
            k: v for k, v in (m.headers or {}).items() if k != "Nats-Msg-Id" and not k.startswith(_DLQ_HEADER_PREFIXES)
        }
        assert m.subject is not None  # a message read back from a stream always has its subject
        subject = (m.headers or {}).get("Rstar-Dlq-Subject") or "rstar." + m.subject.removeprefix("rstar.dlq.")
        headers["Nats-Msg-Id"] = f"replay:{seq}:{uuid.uuid4().hex[:8]}"
        await publish(b, subject, m.data or b"", headers)
        await b.js.delete_msg(DLQ_STREAM, seq)
        log.info("replayed dead letter #%d to %s", seq, subject)
        done.append((seq, subject))
    return done
