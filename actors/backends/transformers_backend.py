"""The default generation backend: a hand-written batched decode loop over a transformers model.

Why not ``model.generate()``: ``benchmarks/backend_throughput.py --json`` times this loop
against it in one process (tokens generated per second of wall time, prefill included, at 1-64
rows and on the search shape; README "Figures" has the result). ``generate()`` re-prefills every one of the ``n`` copies of a prompt, re-prefills the shared
few-shot head on every call, keeps finished rows in the batch until the longest one stops, and
grows a ``DynamicCache`` by concatenation (each decode step rewrites the whole cache; with
grouped-query attention SDPA also reads every row's copy of the prompt). This loop instead

- holds the prompts' common token prefix **once** (``shared_prefix``), keeps it across calls in
  an LRU (``PrefixLRU``), and lets every row attend to it without copying it;
- prefills each distinct prompt once and expands its KV to its ``n`` samples;
- writes per-row KV into buffers pre-allocated at their final length (no concatenation);
- detects stop strings per row on the decoded tail and drops finished rows from the batch.

What is left is mostly the model's own matmuls.

Contract (``actors.backends.base``): ``n`` continuations per prompt, cut before the first stop
string, ``tokens`` counts generated tokens up to and including the one completing the stop
string (or the EOS token), ``stopped``/``eos`` say why it ended. Each prompt has a seed (``seeds``,
else derived from ``params.seed``, else drawn from torch's global generator) and every sampled row
draws its uniforms from its own counter (``row_seeds``): a prompt's samples depend on the prompt,
its seed, the params and the weights, not on the other prompts in the call. Sampling is temperature
plus nucleus (top-p) within the 256 most likely tokens (``_sample``); temperature 0 is greedy.
Not guaranteed: identical samples to ``generate()`` for the same seed (different RNG use).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from actors.backends import kv_cache as kv
from actors.backends import row_seeds as rs
from actors.backends import shared_prefix as sp
from actors.backends.base import Backend, BackendError, Generation, GenParams, prompt_seeds
from rstar.log import get_logger
from rstar.models import load_causal_lm, load_tokenizer

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

log = get_logger(__name__)


class TransformersBackend(Backend):
    name = "transformers"
    tokenizer: PreTrainedTokenizerBase  # always local here (set by _load)

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "auto",
        dtype: str = "float32",
        threads: int = 0,
        max_batch: int = 64,
        prefix_entries: int = 4,
        prefill_tokens: int = 4096,
        version: str = "",
    ):
        if threads > 0:
            torch.set_num_threads(threads)
        self.device, self.dtype, self.max_batch = device, dtype, max_batch
        self.prefill_tokens = prefill_tokens
        """Most padded tokens in one prefill forward (bounds the transient score matrices)."""
        self.prefixes = kv.PrefixLRU(prefix_entries)
        self._lock = threading.Lock()  # generate() and load_weights() never overlap
        self._load(Path(model_dir))
        self.version = version or Path(model_dir).name

    def _load(self, model_dir: Path) -> None:
        """Load tokenizer and model, then switch to them (nothing changes if loading fails)."""
        tokenizer = load_tokenizer(model_dir)
        model = load_causal_lm(model_dir, self.device, self.dtype)
        self.shared = sp.supports(model)
        if self.shared:
            model.set_attn_implementation(sp.ATTN)
        gen_eos = model.generation_config.eos_token_id
        eos = {tokenizer.eos_token_id} | set(gen_eos if isinstance(gen_eos, list) else [gen_eos])
        self.tokenizer, self.model = tokenizer, model
        self.eos_ids = {e for e in eos if e is not None}
        self.pad_id = tokenizer.pad_token_id
        self.prefixes.clear()  # prefix KV was computed by the old weights

    def load_weights(self, path: str, version: str) -> None:
        """Replace policy and tokenizer with the HF model dir ``path`` (prefix KV is dropped).

        The new model is built beside the old one and swapped in by reference, so a failed load
        (missing or corrupt directory) raises ``BackendError`` and the old weights keep serving.
        """
        with self._lock:
            try:
                self._load(Path(path))
            except Exception as e:
                raise BackendError(f"cannot load weights from {path}: {e}") from e
            self.version = version
            log.info("policy swapped to %s (%s)", version, path)

    # --- generation ------------------------------------------------------------------------
    def generate(self, prompts: list[str], params: GenParams, seeds: list[int] | None = None) -> list[list[Generation]]:
        if params.n < 1 or params.max_tokens < 1 or any(not s for s in params.stop):
            raise ValueError(f"need n >= 1, max_tokens >= 1 and non-empty stops, got {params}")
        out: list[list[Generation]] = [[] for _ in prompts]
        if not prompts:
            return out
        with self._lock, torch.inference_mode():
            seeds = prompt_seeds(len(prompts), params, seeds)
            ids = self.tokenizer(list(prompts)).input_ids
            for chunk in _chunks([params.n] * len(prompts), self.max_batch):
                gens = self._decode(
                    [ids[i] for i, _ in chunk],
                    [c for _, c in chunk],
                    params,
                    [seeds[i] for i, _ in chunk],
                    [len(out[i]) for i, _ in chunk],  # a prompt split over chunks goes on from there
                )
                for (i, _), g in zip(chunk, gens):
                    out[i].extend(g)
        return out

    def _forward(self, input_ids, positions, mask, cache, prefix):
        out = self.model(
            input_ids=input_ids,
            position_ids=positions,
            attention_mask=mask,
            use_cache=True,
            logits_to_keep=1,
            **kv.forward_kwargs(self.model, cache, prefix),
        )
        return out.logits[:, -1]

    def _decode(
        self, ids: list[list[int]], counts: list[int], params: GenParams, seeds: list[int], first: list[int]
    ) -> list[list[Generation]]:
        """``counts[i]`` samples of ``ids[i]``: its samples ``first[i]`` onwards under ``seeds[i]``."""
        model, dev = self.model, self.model.device
        n_layers = model.config.get_text_config(decoder=True).num_hidden_layers
        prefix = None
        if self.shared:
            prefix = kv.prefix_for(ids, self.prefixes, self._forward, n_layers, dev, model.dtype)
        lp = prefix.length if prefix else 0
        # Left padding: every row's last prompt token sits at S-1, new tokens append in step.
        inp, valid = kv.left_pad([x[lp:] for x in ids], self.pad_id, dev)
        S = inp.shape[1]
        cap = S + params.max_tokens
        pos = lp + (valid.cumsum(1) - 1).clamp(min=0)
        caches: list[kv.SlabCache] = []
        group_logits: list[torch.Tensor] = []
        step = max(1, self.prefill_tokens // S)
        for a in range(0, len(ids), step):  # prefill in groups: bounded transient memory
            cache = kv.SlabCache(n_layers, cap)
            mask = kv.causal_mask(valid[a : a + step], model.dtype)
            group_logits.append(self._forward(inp[a : a + step], pos[a : a + step], mask, cache, prefix))
            caches.append(cache)
        cache = kv.SlabCache.concat(caches)
        reps = torch.tensor(counts, device=dev)
        cache.repeat_rows(reps)
        logits = torch.cat(group_logits).repeat_interleave(reps, 0)
        del group_logits  # the prefill's own logits are not needed past this point
        keys = torch.zeros(int(reps.sum()), cap, dtype=torch.bool, device=dev)
        keys[:, :S] = valid.repeat_interleave(reps, 0)
        pos = pos[:, -1].repeat_interleave(reps, 0) + 1

        B = keys.shape[0]
        rows = list(range(B))  # original row of each batch slot
        streams = rs.row_seeds(seeds, counts, first)
        toks: list[list[int]] = [[] for _ in range(B)]
        why = ["" for _ in range(B)]  # "", "stop", "eos"
        window = max(len(s) for s in params.stop) + 4 if params.stop else 0
        fast = self.tokenizer.backend_tokenizer
        for t in range(params.max_tokens):
            u = None if params.temperature <= 0 else torch.from_numpy(rs.uniforms(streams[rows], t))
            nxt = _sample(logits, params.temperature, params.top_p, u)
            live = []
            for slot, tok in enumerate(nxt.tolist()):
                r = rows[slot]
                if why[r]:
                    continue
                toks[r].append(tok)
                if tok in self.eos_ids:
                    why[r] = "eos"
                else:
                    live.append(slot)
            if window and live:
                tails = fast.decode_batch([toks[rows[s]][-window:] for s in live], skip_special_tokens=False)
                for s, tail in zip(live, tails):
                    if any(stop in tail for stop in params.stop):
                        why[rows[s]] = "stop"
            alive = [s for s in range(len(rows)) if not why[rows[s]]]
            if not alive or t == params.max_tokens - 1:
                break
            if len(rows) - len(alive) >= max(1, len(rows) // 8):
                idx = torch.tensor(alive, device=dev)
                cache.select_rows(idx)
                keys, pos, nxt = keys[idx], pos[idx], nxt[idx]
                rows = [rows[s] for s in alive]
            keys[:, S + t] = True
            mask = kv.additive(keys[:, None, None, : S + t + 1], model.dtype)
            logits = self._forward(nxt[:, None], pos[:, None], mask, cache, prefix)
            pos = pos + 1

        texts = fast.decode_batch([[x for x in tk if x not in self.eos_ids] for tk in toks], skip_special_tokens=False)
        res: list[list[Generation]] = []
        r = 0
        for c in counts:
            res.append([_finish(texts[r + j], len(toks[r + j]), why[r + j], params.stop) for j in range(c)])
            r += c
        return res


def _finish(text: str, tokens: int, why: str, stops: tuple[str, ...]) -> Generation:
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if why == "stop" and cut >= 0:
        text = text[:cut]
    return Generation(text=text, tokens=tokens, stopped=why == "stop", eos=why == "eos")


def _chunks(counts: list[int], max_batch: int) -> list[list[tuple[int, int]]]:
    """Pack (prompt, samples) into calls of at most ``max_batch`` sequences; big n is split."""
    chunks: list[list[tuple[int, int]]] = []
    cur: list[tuple[int, int]] = []
    size = 0
    for i, n in enumerate(counts):
        while n > 0:
            take = min(n, max_batch)
            if size + take > max_batch:
                chunks.append(cur)
                cur, size = [], 0
            cur.append((i, take))
            size += take
            n -= take
    if cur:
        chunks.append(cur)
    return chunks


TOP_K = 256
"""Sampling candidates per step: the nucleus is taken within the TOP_K most likely tokens."""


def _sample(logits: torch.Tensor, temperature: float, top_p: float, u: torch.Tensor | None) -> torch.Tensor:
    """One token per row: greedy at temperature 0, else temperature + nucleus (top-p) sampling.

    Departure from textbook top-p, as llama.cpp's default top-k-then-top-p: candidates are the
    ``TOP_K`` most likely tokens and the nucleus is computed on their renormalised mass. A full
    vocabulary sort plus ``torch.multinomial``, and even a full softmax, cost many times what
    ``topk`` on the logits does at 64 rows of a 49k vocabulary on a CPU; the mass left outside the top 256 of a language model's next-token distribution is negligible.
    With ``top_p >= 1`` sampling is over the full vocabulary (exact). ``u``: one uniform per row.
    """
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float()
    if top_p >= 1.0:
        return _inverse_cdf((logits / temperature).softmax(-1), u)
    top, order = logits.topk(min(TOP_K, logits.shape[-1]), dim=-1)  # sorted, descending
    probs = (top / temperature).softmax(-1)
    # Keep a token while the tokens before it hold less than top_p (the top one always stays).
    keep = probs.cumsum(-1) - probs < top_p
    picked = _inverse_cdf(probs * keep, u)
    return order.gather(-1, picked[:, None]).squeeze(-1)


def _inverse_cdf(weights: torch.Tensor, u: torch.Tensor | None) -> torch.Tensor:
    """Index drawn with probability proportional to ``weights`` (per row), via the row's uniform ``u``."""
    cdf = weights.cumsum(-1)
    if u is None:
        u = torch.rand(weights.shape[0], dtype=torch.float64)
    x = u.to(device=weights.device, dtype=cdf.dtype)[:, None] * cdf[:, -1:]
    return torch.searchsorted(cdf, x, right=True).squeeze(-1).clamp_(max=weights.shape[-1] - 1)
