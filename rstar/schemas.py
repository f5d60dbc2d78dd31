"""Wire types shared by actors, broker and learner (msgspec Structs).

Every message carries ``schema``: the version of its layout. A consumer that meets a version it
does not know refuses the message with ``SchemaError`` (it goes to the dead-letter subject) instead
of guessing. Decoding is strict: unknown or missing fields and wrong types raise ``SchemaError``
that names the message type and the field, never a bare exception from deep in a consumer.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, TypeVar

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


# The message types that travel on their own (each carries ``schema``): what ``decode`` takes.
Message = TypeVar("Message", Problem, TreeResult, ModelPointer, Heartbeat)


def decode(data: bytes, type_: type[Message]) -> Message:
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


# --- a round's evaluation document (the store's ``rounds.eval``) ---------------------------------


class LevelCount(msgspec.Struct, frozen=True):
    n: int
    correct: int


class MethodRecord(msgspec.Struct, frozen=True):
    """One figure: a method on a set in a round. ``n``, ``correct`` and ``correct_ids`` are None
    for a figure stored before the records existed (a bare accuracy)."""

    accuracy: float
    n: int | None = None
    correct: int | None = None
    by_level: dict[str, LevelCount] = {}
    correct_ids: list[str] | None = None
    seconds: float | None = None  # the method's wall time on the set, when stored


class CollectCounts(msgspec.Struct, frozen=True):
    trees: int = 0
    solved_trees: int = 0
    problems: int = 0
    solved_problems: int = 0
    solve_rate: float | None = None


class DataCounts(msgspec.Struct, frozen=True):
    sft_examples: int = 0
    ppm_pairs: int = 0
    problems: int = 0
    solved_problems: int = 0


def level_key(level: str) -> tuple[int, int, str]:
    """Sort key of ``by_level`` keys: numeric levels in numeric order, then any others."""
    return (0, int(level), "") if level.isdigit() else (1, 0, level)


def method_record(value: Any) -> MethodRecord | None:
    """A stored figure as a ``MethodRecord``, whichever shape it was stored in: a record (its
    accuracy recomputed from the counts when they hold), or a bare float (before the records);
    None for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return MethodRecord(accuracy=float(value))
    if not isinstance(value, dict):
        return None
    n, correct, acc = value.get("n"), value.get("correct"), value.get("accuracy")
    counted = isinstance(n, int) and isinstance(correct, int) and 0 <= correct <= n
    if counted and n:
        acc = round(correct / n, 4)
    if not isinstance(acc, int | float) or isinstance(acc, bool):
        return None
    levels = {
        str(k): LevelCount(int(v["n"]), int(v["correct"]))
        for k, v in (value.get("by_level") or {}).items()
        if isinstance(v, dict) and isinstance(v.get("n"), int) and isinstance(v.get("correct"), int)
    }
    ids, seconds = value.get("correct_ids"), value.get("seconds")
    return MethodRecord(
        accuracy=float(acc),
        n=n if counted else None,
        correct=correct if counted else None,
        by_level={k: levels[k] for k in sorted(levels, key=level_key)},
        correct_ids=sorted(map(str, ids)) if isinstance(ids, list) else None,
        seconds=float(seconds) if isinstance(seconds, int | float) and not isinstance(seconds, bool) else None,
    )


class RequeueLeftOut(msgspec.Struct, frozen=True):
    """Problems a round left unsolved that its re-queue left out (``learner.pool``): held-out
    evaluation problems, and the teacher's unless ``learner.pool_include_teacher``."""

    held_out: int = 0
    teacher: int = 0


class Figures(msgspec.Struct, frozen=True):
    """A round's held-out figures (``eval.accuracy``; ``eval.accuracy_partial`` while the
    evaluation runs): per set, ``"n"`` (the set's problems) beside a record per method label,
    and the evaluation's wall time in seconds."""

    sets: dict[str, dict[str, MethodRecord | int]] = {}
    seconds: float = 0.0

    @classmethod
    def of(cls, doc: Any) -> Figures | None:
        """Stored figures, whichever shape: each record through ``method_record`` (a bare float
        included; one it cannot read is left out), a set's ``n`` kept when it is an int; None for
        anything but a dict."""
        if not isinstance(doc, dict):
            return None
        sets: dict[str, dict[str, MethodRecord | int]] = {}
        stored = doc.get("sets")
        for name, figs in stored.items() if isinstance(stored, dict) else ():
            if not isinstance(figs, dict):
                continue
            out = sets[str(name)] = {}
            for label, value in figs.items():
                if label == "n":
                    if isinstance(value, int) and not isinstance(value, bool):
                        out["n"] = value
                elif (rec := method_record(value)) is not None:
                    out[str(label)] = rec
        secs = doc.get("seconds")
        return cls(sets, float(secs) if isinstance(secs, int | float) and not isinstance(secs, bool) else 0.0)

    def sizes(self) -> dict[str, int | None]:
        """Problems per set (its ``n``; None when not stored)."""
        return {name: n if isinstance(n := figs.get("n"), int) else None for name, figs in self.sets.items()}

    def records(self) -> dict[str, dict[str, MethodRecord]]:
        """``{set: {method label: record}}``; a set without any record is left out."""
        out = {name: {k: v for k, v in figs.items() if isinstance(v, MethodRecord)} for name, figs in self.sets.items()}
        return {name: recs for name, recs in out.items() if recs}


class RoundEval(msgspec.Struct, frozen=True):
    """A round's ``eval`` document as every reader sees it (``RoundEval.of(row["eval"])``).

    A part missing (not written yet) or unreadable is None, keys this version does not know are
    ignored, so an old or newer document never breaks a reader.

    The learner's stages write through the same struct: each builds a ``RoundEval`` with only its
    own parts set (the collect and data counts, the training reports, the PPM's held-out pair
    accuracy, the re-queue, the held-out figures) and ``store.learner_tables.merge_eval`` stores
    those parts (``parts()``, each checked against its type), leaving every other part as stored.
    The training reports (``bootstrap``, ``sft``, ``ppm``) stay free-form: they are the trainers'
    own report files, kept as written, read by people and passed on as checkpoint metrics; the one
    figure a reader takes from them is a part of its own (``ppm_pairwise_acc``).
    """

    collect: CollectCounts | None = None
    data: DataCounts | None = None
    ppm_pairwise_acc: float | None = None
    requeued: int | None = None
    requeue_left_out: RequeueLeftOut | None = None
    bootstrap: dict[str, Any] | None = None
    sft: dict[str, Any] | None = None
    ppm: dict[str, Any] | None = None
    accuracy: Figures | None = None
    accuracy_partial: Figures | None = None  # the figures of an evaluation still running

    @classmethod
    def of(cls, doc: dict[str, Any] | None) -> RoundEval:
        parts: dict[str, Any] = {}
        for name, value in (doc or {}).items():
            if name in _FIGURES:  # read record by record: one damaged record leaves the others
                parts[name] = Figures.of(value)
            elif name in cls.__struct_fields__:
                try:  # each part on its own: one damaged part leaves the others readable
                    parts[name] = msgspec.convert(value, _PART_TYPES[name])
                except msgspec.ValidationError:
                    continue
        return cls(**parts)

    def parts(self) -> dict[str, Any]:
        """The parts this record sets (its fields that are not None) as they are stored (JSON
        builtins). A part not of its declared type raises ``TypeError``: a stage cannot store,
        say, its data counts as the collect counts."""
        out = {}
        for name, typ in _PART_TYPES.items():
            value = getattr(self, name)
            if value is None:
                continue
            try:  # of its type (a struct part that struct, not a dict), and stored it reads back as that
                typed = msgspec.convert(value, typ, strict=True)
                if isinstance(typed, msgspec.Struct) and not isinstance(value, type(typed)):
                    raise TypeError(f"got a {type(value).__name__}")
                out[name] = msgspec.to_builtins(value)
                msgspec.convert(out[name], typ)
            except (msgspec.ValidationError, TypeError) as e:
                raise TypeError(f"RoundEval.{name} must be {typ}: {e}") from None
        return out

    @property
    def evaluated(self) -> bool:
        return self.accuracy is not None

    def set_sizes(self) -> dict[str, int | None]:
        """Problems per evaluation set (``n`` of each set)."""
        return self.accuracy.sizes() if self.accuracy else {}

    def records(self) -> dict[str, dict[str, MethodRecord]]:
        """``{set: {method label: record}}`` of the held-out figures; empty before any."""
        return self.accuracy.records() if self.accuracy else {}


# Each part's declared type, for converting it on its own (``RoundEval.of``) and checking a write
# (``RoundEval.parts``); the figures are read leniently (``Figures.of``).
_PART_TYPES: dict[str, Any] = {f.name: f.type for f in msgspec.structs.fields(RoundEval)}
_FIGURES = ("accuracy", "accuracy_partial")
