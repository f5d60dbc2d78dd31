"""The sandbox's ancestor cache: the state after a program prefix, keyed by the prefix's text.

MCTS runs every new step after all of its ancestors' code, so without a cache a node at depth d
re-executes d steps. The pool keeps, per prefix ``program(steps[:k])``, either

- a ``Snapshot``: the pickled global namespace after those k steps (made by the sandbox child
  only when that is a faithful copy, see ``actors/sandbox_exec.py``), from which a later call
  runs only the remaining steps; or
- a ``Failure``: the prefix's step k failed in a deterministic way (an exception, a forbidden
  operation, too much output), so every program starting with it fails the same way without
  running. Timeouts, memory and crashes are not cached: they depend on the machine's load.

Entries come from the sandbox child, which the code controls: the pool validates them and files
each only under a program containing every step that could have written it (``actors/
sandbox.py``), so an entry answers only programs that would run that code themselves.

Keys are a 128-bit BLAKE2b of the program text, so two step splits of the same code share an
entry. The cache is a plain LRU bounded by entry count; with snapshots capped in size
(``SandboxConfig.snapshot_kb``) that bounds its memory. It lives in the pool's process, so any
worker can continue any cached prefix.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Literal

import msgspec

ErrorKind = Literal["exception", "timeout", "memory", "crash", "output_limit", "forbidden"]
CACHEABLE_FAILURES = frozenset({"exception", "forbidden", "output_limit"})


class Snapshot(msgspec.Struct, frozen=True):
    data: str  # base64 pickle, opaque to this process: only a sandbox child ever unpickles it
    cost_ms: float = 0.0  # time the steps behind it took to run: what a hit saves


class Failure(msgspec.Struct, frozen=True):
    step: int  # 1-based index of the step that failed
    error: str
    error_kind: ErrorKind
    stdout: str = ""  # what that step printed before failing
    stderr: str = ""


def prefix_keys(steps: list[str]) -> list[bytes]:
    """``keys[k - 1]`` identifies ``program(steps[:k])`` (steps already normalized)."""
    h = hashlib.blake2b(digest_size=16)
    keys = []
    for step in steps:
        h.update(step.encode())
        keys.append(h.copy().digest())
    return keys


class PrefixCache:
    def __init__(self, entries: int):
        self.entries = entries
        self._data: OrderedDict[bytes, Snapshot | Failure] = OrderedDict()

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: bytes) -> bool:
        return key in self._data

    def put(self, key: bytes, entry: Snapshot | Failure) -> None:
        if self.entries == 0:
            return
        self._data[key] = entry
        self._data.move_to_end(key)
        while len(self._data) > self.entries:
            self._data.popitem(last=False)

    def lookup(self, keys: list[bytes]) -> tuple[int, Snapshot | Failure | None]:
        """The longest useful cached prefix of a program with ``len(keys)`` steps.

        Returns ``(k, entry)``: a Failure at any k ≤ n decides the call; a Snapshot is useful only
        for k < n (the last step must run to produce its output). ``(0, None)`` on a miss.
        """
        n = len(keys)
        for k in range(n, 0, -1):
            entry = self._data.get(keys[k - 1])
            if entry is None or (k == n and isinstance(entry, Snapshot)):
                continue
            self._data.move_to_end(keys[k - 1])
            return k, entry
        return 0, None
