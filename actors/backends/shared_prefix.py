"""KV caching for the decode loop: one shared prompt prefix, per-row slabs, an LRU of prefixes.

Prompts in one call (and across calls) share a long head: the chat template, instructions and,
before the bootstrap, ~300 tokens of worked examples. Instead of copying that head's keys and
values into every row of the batch, it is held **once** (batch 1) and every row attends to it
plus to its own keys/values:

    scores = [ q · K_prefix (shared, one matmul for all rows) | q · K_row (per row, masked) ]
    softmax over both, then  P_prefix · V_prefix + P_row · V_row

This is registered as a transformers attention implementation (``shared_prefix_attention``), so
the stock model forward runs unchanged; it gets the prefix through a forward kwarg and falls back
to SDPA when none is given (so ``generate()`` and training on the same model still work).

Per-row keys/values live in ``SlabCache``: buffers allocated once per call at their final length
and filled in place, so a decode step copies nothing (``DynamicCache`` concatenates, rewriting
the whole cache each step). ``PrefixLRU`` keeps prefix KV across calls, keyed by token ids.

Guaranteed: for the same weights the logits equal a plain forward over prefix+row tokens up to
float rounding (tests compare them). Not supported: sliding-window or linear-attention layers
(checked: ``supports()``), attention soft-capping, output_attentions.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import torch
from transformers import AttentionInterface
from transformers.cache_utils import Cache, CacheLayerMixin
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

ATTN = "rstar_shared_prefix"


@dataclass
class SharedPrefix:
    """Keys/values of a token prefix, per layer ``[kv_heads, length, head_dim]``, batch 1."""

    tokens: tuple[int, ...]
    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return len(self.tokens)

    def nbytes(self) -> int:
        return sum(k.nbytes + v.nbytes for k, v in zip(self.keys, self.values))


def shared_prefix_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                            scaling: float | None = None, shared_prefix: SharedPrefix | None = None,
                            **kwargs):
    """Attention of ``query`` over a shared prefix plus the rows' own ``key``/``value``.

    query ``[B, Hq, q, D]``; key/value ``[B, Hkv, L, D]``; attention_mask additive ``[B, 1, q, L]``
    covering the row part only (the prefix is visible to every query). Returns ``[B, q, Hq, D]``.

    The two parts are computed separately and merged by their log-sum-exp. Grouped-query heads
    are folded into the query length (query head h reads kv head h // g, as ``repeat_kv`` does), so
    no key/value is ever repeated; for the prefix, all rows' queries fold into one batch-1 call.
    """
    if shared_prefix is None or shared_prefix.length == 0:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout,
                                      scaling=scaling, **kwargs)
    B, Hq, q, D = query.shape
    Hkv, L = key.shape[1], key.shape[2]
    g = Hq // Hkv
    pk, pv = shared_prefix.keys[module.layer_idx], shared_prefix.values[module.layer_idx]
    scale = scaling if scaling is not None else D ** -0.5
    qg = query.reshape(B, Hkv, g * q, D)
    mask = None
    if attention_mask is not None:  # [B, 1, q, L] -> the same rows for each of the g heads
        mask = attention_mask[..., -L:].repeat(1, 1, g, 1) if g > 1 else attention_mask[..., -L:]
    qp = qg.transpose(0, 1).reshape(1, Hkv, B * g * q, D)
    o_r, lse_r = _attend(qg, key, value, mask, scale)
    o_p, lse_p = _attend(qp, pk[None], pv[None], None, scale)
    o_p = o_p.view(Hkv, B, g * q, D).transpose(0, 1)
    lse_p = lse_p.view(Hkv, B, g * q).transpose(0, 1)
    w = torch.sigmoid(lse_p - lse_r).unsqueeze(-1).to(query.dtype)  # the prefix's share of mass
    out = o_r + w * (o_p - o_r)
    return out.reshape(B, Hq, q, D).transpose(1, 2).contiguous(), None


def _attend(q, k, v, mask, scale):
    """Softmax attention and its log-sum-exp per query (float32), without repeating k/v."""
    if q.device.type == "cpu" and _CPU_FLASH is not None:
        # The fused CPU kernel returns the log-sum-exp we need; batched tiny matmuls (the
        # portable path below) ran ~2x slower than SDPA over the whole expanded cache here.
        out, lse = _CPU_FLASH(q, k, v, 0.0, False, attn_mask=mask, scale=scale)
        return out, lse.float()
    scores = torch.matmul(q, k.transpose(-1, -2)).float() * scale
    if mask is not None:
        scores = scores + mask
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.matmul(torch.exp(scores - lse.unsqueeze(-1)).to(v.dtype), v)
    return out, lse


_CPU_FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


AttentionInterface.register(ATTN, shared_prefix_attention)
# Without a prefix the implementation is plain SDPA, masks included.
ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN, sdpa_mask)


def supports(model) -> bool:
    """True when every layer is plain full attention (what the shared-prefix path handles)."""
    cfg = model.config.get_text_config(decoder=True)
    types = getattr(cfg, "layer_types", None) or ["full_attention"]
    return all(t == "full_attention" for t in types) and not getattr(cfg, "sliding_window", None)


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
        self.keys[:, :, self.length:end] = key_states
        self.values[:, :, self.length:end] = value_states
        self.length = end
        # Views, not copies: [B, H] stay collapsible, so the matmuls read them in place.
        return self.keys[:, :, :end], self.values[:, :, :end]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def get_seq_length(self) -> int:
        return self.length

    def get_max_length(self) -> int:
        return self.capacity


class SlabCache(Cache):
    """Per-row KV for one call: ``layers`` slabs of ``capacity`` tokens each."""

    def __init__(self, num_layers: int, capacity: int):
        super().__init__(layers=[_SlabLayer(capacity) for _ in range(num_layers)])

    def select_rows(self, index: torch.Tensor) -> None:
        """Keep only the rows in ``index`` (finished rows leave the batch)."""
        for layer in self.layers:
            layer.keys, layer.values = layer.keys[index], layer.values[index]

    def repeat_rows(self, n: torch.Tensor) -> None:
        """Row i becomes ``n[i]`` consecutive rows (samples share their prefilled prompt)."""
        if bool((n != 1).any()):
            for layer in self.layers:
                layer.keys = layer.keys.repeat_interleave(n, dim=0)
                layer.values = layer.values.repeat_interleave(n, dim=0)

    @staticmethod
    def concat(parts: list["SlabCache"]) -> "SlabCache":
        """Stack caches of the same length along the batch (prefill ran in groups)."""
        out = parts[0]
        if len(parts) > 1:
            for i, layer in enumerate(out.layers):
                layer.keys = torch.cat([p.layers[i].keys for p in parts])
                layer.values = torch.cat([p.layers[i].values for p in parts])
        return out


def extend_prefix(base: SharedPrefix, rows: SlabCache, tokens: tuple[int, ...]) -> SharedPrefix:
    """``base`` followed by the single row held in ``rows`` (which continued it)."""
    keys, values = [], []
    for i, layer in enumerate(rows.layers):
        k, v = layer.keys[0, :, :layer.length], layer.values[0, :, :layer.length]
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
            if len(key) <= len(tokens) and tokens[:len(key)] == key and \
                    (best is None or len(key) > best.length):
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
