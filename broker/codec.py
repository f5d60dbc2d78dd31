"""Message framing for trees: compress big ones, split what still does not fit, put them back together.

A TreeResult is msgspec JSON. Framing, decided per tree by ``frame_payload``:

- fits and is small: one message, the JSON as is;
- bigger than ``compress_min_bytes``: zlib-compressed, header ``Rstar-Encoding: zlib``;
- still over the server's max_payload: the (compressed) bytes are cut into parts, each a message
  with ``Rstar-Tree-Id``, ``Rstar-Part`` (0-based), ``Rstar-Parts`` and ``Rstar-Digest`` (sha256 of
  the whole), and ``Nats-Msg-Id`` = ``<tree id>:<part>/<parts>`` so a retried part is deduplicated.

Nothing is ever truncated. The consumer side (``Reassembler``) holds parts, unacked, until the set is
complete: a crash loses nothing because every part is redelivered; a redelivered part replaces its
twin; a set that never completes is handed back by ``expired`` so it can be dead-lettered. The joined
bytes must match the digest, so parts of two different payloads under one tree id never mix.

Every malformed input raises ``CodecError``, a ``SchemaError``: consumers catch one class.
"""

from __future__ import annotations

import hashlib
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rstar.schemas import SchemaError, TreeResult, decode, encode

ENCODING = "Rstar-Encoding"
TREE_ID = "Rstar-Tree-Id"
PART = "Rstar-Part"
PARTS = "Rstar-Parts"
DIGEST = "Rstar-Digest"
MSG_ID = "Nats-Msg-Id"
ZLIB = "zlib"
# Room left in each message for headers the server and client add around ours.
_HEADER_SLACK = 512


class CodecError(SchemaError):
    """Message bytes or framing headers that cannot be turned back into a payload."""


class ChunkError(CodecError):
    """A chunk set that cannot be reassembled; ``tokens`` are the messages that carried it."""

    def __init__(self, msg: str, tree_id: str, tokens: list[Any]):
        super().__init__(msg)
        self.tree_id, self.tokens = tree_id, tokens


@dataclass(frozen=True)
class Frame:
    """One message to publish: its headers and data."""

    headers: dict[str, str]
    data: bytes


def _headers_size(h: Mapping[str, str]) -> int:
    return 12 + sum(len(k) + len(v) + 4 for k, v in h.items())


def frame_payload(payload: bytes, key: str, max_payload: int, compress_min_bytes: int = 16 * 1024) -> list[Frame]:
    """Frames for ``payload``, each within ``max_payload`` bytes (headers included); ``key`` is its id."""
    headers: dict[str, str] = {MSG_ID: key}
    if len(payload) > compress_min_bytes or len(payload) + _headers_size(headers) + _HEADER_SLACK > max_payload:
        payload = zlib.compress(payload, 3)  # level 3: most of the higher levels' ratio on trees, faster
        headers[ENCODING] = ZLIB
    if len(payload) + _headers_size(headers) + _HEADER_SLACK <= max_payload:
        return [Frame(headers, payload)]
    digest = hashlib.sha256(payload).hexdigest()
    probe = {**headers, TREE_ID: key, PART: "999999", PARTS: "999999", DIGEST: digest, MSG_ID: f"{key}:999999/999999"}
    size = max_payload - _headers_size(probe) - _HEADER_SLACK
    if size < 1024:
        raise ValueError(f"max_payload {max_payload} leaves no room for data next to the headers of {key!r}")
    n = -(-len(payload) // size)
    frames = []
    for i in range(n):
        h = {**headers, TREE_ID: key, PART: str(i), PARTS: str(n), DIGEST: digest, MSG_ID: f"{key}:{i}/{n}"}
        frames.append(Frame(h, payload[i * size : (i + 1) * size]))
    return frames


def encode_tree(tree: TreeResult, max_payload: int, compress_min_bytes: int = 16 * 1024) -> list[Frame]:
    """The messages that carry ``tree``: one in the common case, several parts for a huge tree."""
    return frame_payload(encode(tree), tree.tree_id, max_payload, compress_min_bytes)


def unwrap(headers: Mapping[str, str] | None, data: bytes, max_bytes: int) -> bytes:
    """The payload of a complete message (or joined parts): undo ``Rstar-Encoding``."""
    enc = (headers or {}).get(ENCODING)
    if enc is None:
        if len(data) > max_bytes:
            raise CodecError(f"payload of {len(data)} bytes exceeds the limit of {max_bytes}")
        return data
    if enc != ZLIB:
        raise CodecError(f"unknown {ENCODING} {enc!r} (know {ZLIB!r})")
    d = zlib.decompressobj()
    try:
        out = d.decompress(data, max_bytes + 1)
    except zlib.error as e:
        raise CodecError(f"corrupt zlib payload: {e}") from None
    if len(out) > max_bytes or d.unconsumed_tail:
        raise CodecError(f"payload decompresses to more than the limit of {max_bytes} bytes")
    if not d.eof:
        raise CodecError("truncated zlib payload")
    if d.unused_data:
        raise CodecError(f"{len(d.unused_data)} bytes after the end of the zlib payload")
    return out


def decode_tree(headers: Mapping[str, str] | None, data: bytes, max_bytes: int = 256 * 1024 * 1024) -> TreeResult:
    """A TreeResult from one complete message (or joined parts); ``CodecError``/``SchemaError`` if bad."""
    return decode(unwrap(headers, data, max_bytes), TreeResult)


def is_part(headers: Mapping[str, str] | None) -> bool:
    return headers is not None and PARTS in headers


@dataclass
class _Partial:
    digest: str
    total: int
    first_seen: float
    headers: dict[str, str]
    parts: dict[int, bytes] = field(default_factory=dict)
    tokens: list[Any] = field(default_factory=list)
    touched: float = 0.0


@dataclass(frozen=True)
class Assembled:
    """A complete chunk set: the joined payload (digest checked) and every message that carried it."""

    tree_id: str
    headers: dict[str, str]
    payload: bytes
    tokens: list[Any]


class Reassembler:
    """Collects parts of chunked payloads; ``add`` returns the whole once the last part arrives.

    ``token`` is an opaque handle per message (the NATS message, to ack later). Parts of one key
    with different digests are different payloads: the newer digest replaces the older set, whose
    tokens come back from ``expired`` (as they would otherwise never be acked).
    """

    def __init__(self, max_bytes: int = 256 * 1024 * 1024):
        self.max_bytes = max_bytes
        self._sets: dict[str, _Partial] = {}
        self._orphans: list[tuple[str, list[Any], str]] = []

    def __len__(self) -> int:
        return len(self._sets)

    def add(self, headers: Mapping[str, str], data: bytes, token: Any, now: float) -> Assembled | None:
        try:
            key, i, n, digest = headers[TREE_ID], int(headers[PART]), int(headers[PARTS]), headers[DIGEST]
        except (KeyError, ValueError) as e:
            raise ChunkError(f"bad part headers ({e}): {dict(headers)}", headers.get(TREE_ID, "?"), [token]) from None
        if not 0 <= i < n:
            raise ChunkError(f"part {i} of {n} is out of range", key, [token])
        p = self._sets.get(key)
        if p is not None and (p.digest != digest or p.total != n):
            self._orphans.append((key, p.tokens, f"superseded by another payload with tree id {key}"))
            p = None
        if p is None:
            p = self._sets[key] = _Partial(
                digest, n, now, {k: v for k, v in headers.items() if k == ENCODING}, touched=now
            )
        p.parts[i] = data
        p.tokens.append(token)
        if sum(map(len, p.parts.values())) > self.max_bytes:
            del self._sets[key]
            raise ChunkError(f"chunked payload exceeds the limit of {self.max_bytes} bytes", key, p.tokens)
        if len(p.parts) < n:
            return None
        del self._sets[key]
        payload = b"".join(p.parts[j] for j in range(n))
        if hashlib.sha256(payload).hexdigest() != digest:
            raise ChunkError(f"reassembled {n} parts do not match digest {digest[:12]}", key, p.tokens)
        return Assembled(key, p.headers, payload, p.tokens)

    def expired(self, now: float, ttl: float) -> list[tuple[str, list[Any], str]]:
        """Remove and return (key, tokens, reason) of sets older than ``ttl`` and superseded sets."""
        out, self._orphans = self._orphans, []
        for key, p in list(self._sets.items()):
            if now - p.first_seen > ttl:
                del self._sets[key]
                out.append((key, p.tokens, f"incomplete: {len(p.parts)} of {p.total} parts after {ttl:.0f}s"))
        return out

    def stale_tokens(self, now: float, every: float) -> list[Any]:
        """Tokens of sets not touched for ``every`` seconds (marks them touched): extend their ack wait."""
        out = []
        for p in self._sets.values():
            if now - p.touched >= every:
                p.touched = now
                out.extend(p.tokens)
        return out
