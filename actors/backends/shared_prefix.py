"""Attention over a prompt prefix held once for the whole batch, plus each row's own keys/values.

Prompts in one call (and across calls) share a long head: the chat template, instructions and,
before the bootstrap, ~300 tokens of worked examples. Instead of copying that head's keys and
values into every row of the batch, it is held **once** (batch 1) and every row attends to it
plus to its own keys/values:

    scores = [ q · K_prefix (shared, one matmul for all rows) | q · K_row (per row, masked) ]
    softmax over both, then  P_prefix · V_prefix + P_row · V_row

This is registered as a transformers attention implementation (``shared_prefix_attention``), so
the stock model forward runs unchanged; it gets the prefix through a forward kwarg and falls back
to SDPA when none is given (so ``generate()`` and training on the same model still work).

The per-row keys/values, the prefix KV and its cache across calls live in ``kv_cache``.

Guaranteed: for the same weights the logits equal a plain forward over prefix+row tokens up to
float rounding (tests compare them). Not supported: sliding-window or linear-attention layers
(checked: ``supports()``), attention soft-capping, output_attentions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AttentionInterface
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


def shared_prefix_attention(
    module,
    query,
    key,
    value,
    attention_mask,
    dropout: float = 0.0,
    scaling: float | None = None,
    shared_prefix: SharedPrefix | None = None,
    **kwargs,
):
    """Attention of ``query`` over a shared prefix plus the rows' own ``key``/``value``.

    query ``[B, Hq, q, D]``; key/value ``[B, Hkv, L, D]``; attention_mask additive ``[B, 1, q, L]``
    covering the row part only (the prefix is visible to every query). Returns ``[B, q, Hq, D]``.

    The two parts are computed separately and merged by their log-sum-exp. Grouped-query heads
    are folded into the query length (query head h reads kv head h // g, as ``repeat_kv`` does), so
    no key/value is ever repeated; for the prefix, all rows' queries fold into one batch-1 call.
    """
    if shared_prefix is None or shared_prefix.length == 0:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    B, Hq, q, D = query.shape
    Hkv, L = key.shape[1], key.shape[2]
    g = Hq // Hkv
    pk, pv = shared_prefix.keys[module.layer_idx], shared_prefix.values[module.layer_idx]
    scale = scaling if scaling is not None else D**-0.5
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
        # portable path below) ran slower than SDPA over the whole expanded cache on a CPU.
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
