"""Key/value storage for shared-prefix decoding: per-row slabs, prefix KV and its LRU, masks.

- ``SlabCache``: per-row keys/values in buffers allocated once per call at their final length and
  filled in place, so a decode step copies nothing (``DynamicCache`` concatenates, rewriting the
  whole cache every step). Rows can be dropped (finished) or repeated (``n`` samples of a prompt).
- ``prefix_for``: the KV of the common token prefix of a batch, as a ``SharedPrefix`` (batch 1),
  taken from ``PrefixLRU`` when cached and extended there when the batch shares more.
- ``forward_kwargs``: a forward's cache and shared-prefix keywords (``cache_kwarg``: the name the
  installed transformers takes the cache under).
- ``left_pad``, ``causal_mask``, ``additive``: inputs for a forward over the rows' own tokens;
  masks are 4-D additive tensors, which transformers passes to the attention untouched.

Used by the transformers backend's decode loop and by the PPM scorer.
"""

from __future__ import annotations

import functools
import inspect
from collections import OrderedDict
from collections.abc import Callable

import torch
from transformers.cache_utils import Cache, CacheLayerMixin

from actors.backends.shared_prefix import SharedPrefix


@functools.cache
def cache_kwarg(module_type: type[torch.nn.Module]) -> str:
    """``"cache"`` where ``module_type.forward`` takes it (transformers 5.25 on, where
    ``past_key_values`` is deprecated and warns), else ``"past_key_values"`` (older releases)."""
    return "cache" if "cache" in inspect.signature(module_type.forward).parameters else "past_key_values"


def forward_kwargs(module: torch.nn.Module, cache: Cache | None, prefix: SharedPrefix | None) -> dict:
    """The keywords of a forward over ``module`` that carry the KV ``cache`` and, when it is not
    empty, the batch's ``shared_prefix``."""
    kw: dict = {cache_kwarg(type(module)): cache}  # type: ignore[arg-type]  # a class hashes; the stubs see instance __hash__
    if prefix is not None and prefix.length:
        kw["shared_prefix"] = prefix
    return kw


class _SlabLayer(CacheLayerMixin):
    """One layer's per-row keys/values in a buffer of fixed capacity, filled left to right."""

    is_sliding = False

    def __init__(self, capacity: int):
        super().__init__()
        self.capacity = capacity
        self.length = 0

    def lazy_initialization(self, key_states, value_states) -> None:
        B, H, _, D = key_states.shape
        self.keys = key_states.new_empty(B, H, self.capacity, D)
        self.values = value_states.new_empty(B, H, self.capacity, D)
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[2]
        if end > self.capacity:
            raise RuntimeError(f"slab cache overflow: {end} > {self.capacity}")
        self.keys[:, :, self.length : end] = key_states
        self.values[:, :, self.length : end] = value_states
        self.length = end
        # Views, not copies: [B, H] stay collapsible, so the matmuls read them in place.
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity

    def kv(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values buffers (they exist from the first ``update`` on)."""
        if self.keys is None or self.values is None:
            raise RuntimeError("slab cache layer read before its first update")
        return self.keys, self.values


class SlabCache(Cache):
    """Per-row KV for one call: ``layers`` slabs of ``capacity`` tokens each."""

    def __init__(self, num_layers: int, capacity: int):
        self.slabs = [_SlabLayer(capacity) for _ in range(num_layers)]  # the same layers, typed as slabs
        super().__init__(layers=list(self.slabs))

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep only the rows in ``index`` (finished rows leave the batch)."""
        for layer in self.slabs:
            keys, values = layer.kv()
            layer.keys, layer.values = keys[index], values[index]

    def repeat_rows(self, n: torch.Tensor) -> None:
        """Row i becomes ``n[i]`` consecutive rows (samples share their prefilled prompt)."""
        if bool((n != 1).any()):
            for layer in self.slabs:
                keys, values = layer.kv()
                layer.keys = keys.repeat_interleave(n, dim=0)
                layer.values = values.repeat_interleave(n, dim=0)

    @staticmethod
    def concat(parts: list[SlabCache]) -> SlabCache:
        """Stack caches of the same length along the batch (prefill ran in groups)."""
        out = parts[0]
        if len(parts) > 1:
            for i, layer in enumerate(out.slabs):
                layer.keys = torch.cat([p.slabs[i].kv()[0] for p in parts])
                layer.values = torch.cat([p.slabs[i].kv()[1] for p in parts])
        return out


def extend_prefix(base: SharedPrefix, rows: SlabCache, tokens: tuple[int, ...]) -> SharedPrefix:
    """``base`` followed by the single row held in ``rows`` (which continued it)."""
    keys, values = [], []
    for i, layer in enumerate(rows.slabs):
        layer_keys, layer_values = layer.kv()
        k, v = layer_keys[0, :, : layer.length], layer_values[0, :, : layer.length]
        if base.length:
            k, v = torch.cat([base.keys[i], k], dim=1), torch.cat([base.values[i], v], dim=1)
        keys.append(k.contiguous())
        values.append(v.contiguous())
    return SharedPrefix(tokens, keys, values)


class PrefixLRU:
    """Prefix KV kept across calls, least recently used evicted past ``max_entries``."""

    def __init__(self, max_entries: int = 4):
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[int, ...], SharedPrefix] = OrderedDict()
        self.hits = self.misses = 0

    def longest(self, tokens: tuple[int, ...]) -> SharedPrefix | None:
        """The longest cached prefix of ``tokens`` (marked as used), or None."""
        best = None
        for key, entry in self._entries.items():
            if len(key) <= len(tokens) and tokens[: len(key)] == key and (best is None or len(key) > best.length):
                best = entry
        if best is not None:
            self._entries.move_to_end(best.tokens)
            self.hits += 1
        else:
            self.misses += 1
        return best

    def put(self, entry: SharedPrefix) -> None:
        self._entries[entry.tokens] = entry
        self._entries.move_to_end(entry.tokens)
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def clear(self) -> None:
        self._entries.clear()


Forward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, "SlabCache | None", "SharedPrefix | None"], object]
"""``forward(input_ids, positions, additive_mask, cache, prefix)`` of the model at hand."""


def common_prefix_len(ids: list[list[int]]) -> int:
    """Length of the token prefix shared by all rows, leaving every row at least one own token."""
    first, lcp = ids[0], min(len(x) for x in ids) - 1
    for other in ids[1:]:
        lcp = min(lcp, next((j for j, (a, b) in enumerate(zip(first, other)) if a != b), lcp))
    return max(lcp, 0)


def prefix_for(
    ids: list[list[int]], lru: PrefixLRU, forward: Forward, num_layers: int, device, dtype, min_new: int = 16
) -> SharedPrefix | None:
    """KV of the rows' common prefix: the longest cached one, extended and cached when the rows
    share at least ``min_new`` more tokens (fewer are left to the rows: not worth an entry)."""
    lcp = common_prefix_len(ids)
    if lcp == 0:
        return None
    key = tuple(ids[0][:lcp])
    base = lru.longest(key) or SharedPrefix((), [], [])
    if lcp - base.length < min_new:
        return base if base.length else None
    delta = key[base.length :]
    rows = SlabCache(num_layers, len(delta))
    forward(
        torch.tensor([delta], device=device),
        torch.arange(base.length, lcp, device=device)[None],
        causal_mask(torch.ones(1, len(delta), dtype=torch.bool, device=device), dtype),
        rows,
        base,
    )
    entry = extend_prefix(base, rows, key)
    lru.put(entry)
    return entry


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(input_ids, valid)`` of shape ``[len(rows), longest]``, padded on the left."""
    S = max(len(r) for r in rows)
    inp = torch.full((len(rows), S), pad_id, dtype=torch.long, device=device)
    valid = torch.zeros(len(rows), S, dtype=torch.bool, device=device)
    for i, r in enumerate(rows):
        inp[i, S - len(r) :] = torch.tensor(r, device=device)
        valid[i, S - len(r) :] = True
    return inp, valid


def additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """0 where ``allowed``, the dtype's most negative value elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill_(~allowed, torch.finfo(dtype).min)


def causal_mask(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive ``[B, 1, S, S]`` mask: causal, pads never attended (a pad query sees itself)."""
    S = valid.shape[1]
    tri = torch.ones(S, S, dtype=torch.bool, device=valid.device).tril()
    allowed = tri[None] & valid[:, None, :]
    allowed |= torch.eye(S, dtype=torch.bool, device=valid.device)[None]  # no all-masked rows
    return additive(allowed[:, None], dtype)
