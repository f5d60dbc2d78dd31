"""Wire types shared by actors, broker and learner (msgspec Structs).

Every message carries ``schema``: the version of its layout. A consumer that meets a version it
does not know refuses the message with ``SchemaError`` (it goes to the dead-letter subject) instead
of guessing. Decoding is strict: unknown or missing fields and wrong types raise ``SchemaError``
that names the message type and the field, never a bare exception from deep in a consumer.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

import msgspec

SCHEMA_VERSION = 1


class SchemaError(ValueError):
    """Bytes that are not a valid message of the expected type and version."""


class Problem(msgspec.Struct, forbid_unknown_fields=True):
    """A question to search. ``id`` is stable: ``problem_id(source, question)``."""

    id: str
    source: str
    question: str
    answer: str | None = None  # reference answer; None in inference mode
    meta: dict[str, Any] = {}
    schema: int = SCHEMA_VERSION


class Node(msgspec.Struct, forbid_unknown_fields=True):
    """One step of a search tree. ``idx`` 0 is the root (the question, no text)."""

    idx: int
    parent: int | None
    depth: int
    text: str = ""  # the step: Python with reasoning comments
    code_output: str = ""  # stdout of running this step after its ancestors
    visits: int = 0
    q: float = 0.0  # mean backed-up value
    ppm_score: float | None = None  # PPM score in [-1, 1], None without a PPM
    terminal: bool = False
    correct: bool | None = None  # terminal nodes with a known reference answer
    answer: str | None = None  # value of `answer` for terminal nodes
    policy_version: str = ""
    ppm_version: str = ""
    gen_tokens: int = 0


class TreeResult(msgspec.Struct, forbid_unknown_fields=True):
    """A finished search over one problem (all nodes, never truncated).

    It carries its Problem so the store can be filled from TREES alone.
    """

    tree_id: str
    problem: Problem
    actor_id: str
    policy_version: str
    ppm_version: str
    started_at: float
    finished_at: float
    nodes: list[Node]
    solved: bool
    best_answer: str | None = None
    round: int = 0
    source: str = "search"  # "search" (MCTS) or "teacher" (bootstrap demonstrations)
    rollouts: int = 0
    schema: int = SCHEMA_VERSION


class ModelRef(msgspec.Struct, forbid_unknown_fields=True):
    version: str
    object: str  # object-store name (or URI on shared storage)
    sha256: str


class ModelPointer(msgspec.Struct, forbid_unknown_fields=True):
    """The current policy+PPM pair: one KV value, so actors always swap to a matching pair."""

    round: int
    policy: ModelRef
    ppm: ModelRef | None = None
    schema: int = SCHEMA_VERSION


class Heartbeat(msgspec.Struct, forbid_unknown_fields=True):
    actor_id: str
    host: str
    backend: str
    policy_version: str
    ppm_version: str
    trees_per_min: float = 0.0
    tokens_per_s: float = 0.0
    busy_fraction: float = 0.0
    trees_in_flight: int = 0
    at: float = msgspec.field(default_factory=time.time)
    schema: int = SCHEMA_VERSION


def problem_id(source: str, question: str) -> str:
    """Stable id: the same source and question always give the same id."""
    h = hashlib.sha256(f"{source}\n{question.strip()}".encode()).hexdigest()
    return f"{source}-{h[:16]}"


_encoder = msgspec.json.Encoder()


def encode(msg: msgspec.Struct) -> bytes:
    return _encoder.encode(msg)


def decode(data: bytes, type_: type[msgspec.Struct]):
    """Decode ``data`` as ``type_``; any problem becomes a ``SchemaError`` naming the cause."""
    try:
        msg = msgspec.json.decode(data, type=type_)
    except msgspec.ValidationError as e:
        # Say "unknown version" rather than "unknown field" when that is the real cause.
        # A missing "schema" means the default version; a payload that is not even a JSON object
        # (a ValidationError here too) is reported by the first error.
        try:
            version = msgspec.json.decode(data, type=dict[str, Any]).get("schema", SCHEMA_VERSION)
        except msgspec.MsgspecError:
            version = SCHEMA_VERSION
        if version != SCHEMA_VERSION:
            raise SchemaError(f"{type_.__name__}: unknown schema version {version!r} (know {SCHEMA_VERSION})") from None
        raise SchemaError(f"{type_.__name__}: {e}") from None
    except msgspec.DecodeError as e:
        raise SchemaError(f"{type_.__name__}: not valid JSON: {e}") from None
    if msg.schema != SCHEMA_VERSION:
        raise SchemaError(f"{type_.__name__}: unknown schema version {msg.schema!r} (know {SCHEMA_VERSION})")
    return msg
