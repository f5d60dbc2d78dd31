"""The process preference model (PPM): the policy's backbone with a scalar value head.

As in rStar-Math, the PPM scores a *partial trajectory* — the question plus the steps so far —
with one number in [-1, 1]: the backbone's hidden state at the last real (non-pad) token goes
through a linear head, then ``tanh``. ``ppm_text`` builds the exact text that is scored (the
chat-formatted question *without* few-shot examples, then ``render_steps(steps)``), so the
search and the trainer cannot disagree about it.

Training (the learner's job): ``PPM.reward(ids, mask)`` returns the pre-``tanh`` reward ``r``;
the pairwise loss is ``-logsigmoid(r_pos - r_neg)`` (Bradley-Terry), and ``forward`` is
``tanh(reward)``. Left or right padding are both handled (positions come from the mask).

On disk (``save_ppm``): the backbone as a standard HF model directory (``config.json``,
``model.safetensors``), ``value_head.safetensors``, ``ppm.json`` and the tokenizer; written into
a temporary sibling and renamed into place, so a reader never sees half a PPM.

    scorer = PPMScorer(*load_ppm(path, "cpu"), max_batch=64)
    scorer.score([ppm_text(question, steps, scorer.tokenizer)])
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from actors.backends import kv_cache as kv
from actors.backends import shared_prefix as sp
from rstar.log import get_logger
from rstar.models import ModelError, load_tokenizer, one_build_at_a_time, pick_device
from rstar.steps import build_prompt

if TYPE_CHECKING:
    from transformers import PreTrainedModel

log = get_logger(__name__)
FORMAT = "rstar-ppm/1"
HEAD_FILE, META_FILE = "value_head.safetensors", "ppm.json"


class PPMError(ModelError):
    """A PPM directory that is missing, incomplete or of another format; ``path`` names it."""


class PPM(torch.nn.Module):
    """Backbone (a transformers base model, e.g. ``LlamaModel``) + linear value head."""

    backbone: PreTrainedModel  # while LoRA-training, a peft wrapper that forwards these attributes
    head: torch.nn.Linear
    source_dir: Path  # the directory it was loaded from: set by ``load_ppm`` only

    def __init__(self, backbone: PreTrainedModel, head: torch.nn.Linear | None = None):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.get_text_config(decoder=True).hidden_size
        self.head = head if head is not None else torch.nn.Linear(hidden, 1)

    def reward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Pre-``tanh`` reward per row, read at the last non-pad token (shape ``[batch]``)."""
        # Positions count real tokens only, so a left-padded row reads like an unpadded one.
        positions = (attention_mask.long().cumsum(1) - 1).clamp(min=0)
        hidden = self.backbone(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=positions
        ).last_hidden_state
        idx = torch.arange(attention_mask.shape[1], device=attention_mask.device)
        last = (attention_mask.long() * idx).argmax(1)  # last 1 in the mask, left or right padded
        return self.value(hidden[torch.arange(hidden.shape[0], device=hidden.device), last])

    def value(self, last_hidden: torch.Tensor) -> torch.Tensor:
        """Pre-``tanh`` reward from the backbone's hidden state at the last token ``[B, H]``."""
        return self.head(last_hidden.to(self.head.weight.dtype)).squeeze(-1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Scores in [-1, 1] (``tanh`` of ``reward``)."""
        return torch.tanh(self.reward(input_ids, attention_mask))


@one_build_at_a_time
def ppm_from_policy(policy_dir: str | Path, device: str = "cpu", dtype: str = "float32", seed: int = 0) -> PPM:
    """A fresh PPM on the policy's backbone; the head starts tiny, so every score starts near 0."""
    from transformers import AutoModel

    backbone = AutoModel.from_pretrained(str(policy_dir), dtype=getattr(torch, dtype))
    hidden = backbone.config.get_text_config(decoder=True).hidden_size
    head = torch.nn.Linear(hidden, 1, dtype=getattr(torch, dtype))
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        # Small rather than zero: a zero head would stop gradients reaching the backbone.
        head.weight.copy_(torch.randn(head.weight.shape, generator=gen) * 1e-3 / hidden**0.5)
        head.bias.zero_()
    return PPM(backbone, head).to(pick_device(device))


def save_ppm(ppm: PPM, out_dir: str | Path, tokenizer) -> Path:
    """Write ``ppm`` and ``tokenizer`` to ``out_dir`` atomically (replacing an old one)."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}-", dir=out_dir.parent))
    tmp.chmod(0o755)
    try:
        ppm.backbone.save_pretrained(tmp, safe_serialization=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in ppm.head.state_dict().items()}, str(tmp / HEAD_FILE))
        (tmp / META_FILE).write_text(
            json.dumps({"format": FORMAT, "hidden_size": ppm.head.in_features, "squash": "tanh"}) + "\n"
        )
        tokenizer.save_pretrained(tmp)
        old = None
        if out_dir.exists():  # rename can't replace a non-empty dir: move the old one aside
            old = out_dir.with_name(f".old-{out_dir.name}-{os.getpid()}")
            os.replace(out_dir, old)
        os.replace(tmp, out_dir)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


@one_build_at_a_time
def load_ppm(path: str | Path, device: str = "auto", dtype: str = "float32"):
    """``(PPM, tokenizer)`` from a directory written by ``save_ppm``; the PPM is in eval mode."""
    from transformers import AutoModel

    path = Path(path)
    meta_file = path / META_FILE
    if not meta_file.is_file() or not (path / HEAD_FILE).is_file():
        raise PPMError(f"{path} is not a PPM directory (needs {META_FILE} and {HEAD_FILE})", path=path)
    meta = json.loads(meta_file.read_text())
    if meta.get("format") != FORMAT:
        raise PPMError(f"{path}: unknown PPM format {meta.get('format')!r}", path=path)
    torch_dtype = getattr(torch, dtype)
    backbone = AutoModel.from_pretrained(str(path), dtype=torch_dtype)
    head = torch.nn.Linear(meta["hidden_size"], 1, dtype=torch_dtype)
    head.load_state_dict(load_file(str(path / HEAD_FILE)))
    ppm = PPM(backbone, head).to(pick_device(device)).eval()
    ppm.source_dir = path
    return ppm, load_tokenizer(path)


def ppm_text(question: str, steps: list[str], tokenizer) -> str:
    """The text the PPM scores: chat-formatted question (no few-shot) + the steps so far."""
    template = None
    if getattr(tokenizer, "chat_template", None):

        def template(messages):
            return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    return build_prompt(question, steps, template, few_shot=False)


class PPMScorer:
    """Batched scoring of texts with a PPM: ``score(texts) -> [float in [-1, 1]]``.

    Texts scored together share long token prefixes (the chat header; siblings share their whole
    trajectory but the last step). As in the decode loop, the common prefix of a batch is run
    once and kept across calls (``actors.backends.shared_prefix``); each text then costs only
    its own tokens. Texts are ordered by their token ids so that texts sharing a prefix land in
    the same batch. Scores equal ``PPM.forward`` on the padded batch up to float rounding.
    """

    def __init__(self, ppm: PPM, tokenizer, max_batch: int = 64, version: str = "", prefix_entries: int = 4):
        self.max_batch = max_batch
        self.prefixes = kv.PrefixLRU(prefix_entries)
        self._lock = threading.Lock()  # score() and load_weights() never overlap
        self._use(ppm, tokenizer, version or Path(getattr(ppm, "source_dir", "ppm")).name)

    def _use(self, ppm: PPM, tokenizer, version: str) -> None:
        self.ppm, self.tokenizer, self.version = ppm.eval(), tokenizer, version
        self.shared = sp.supports(ppm.backbone)
        if self.shared:
            ppm.backbone.set_attn_implementation(sp.ATTN)
        self.prefixes.clear()  # prefix KV belongs to the old weights

    def score(self, texts: list[str]) -> list[float]:
        if not texts:
            return []
        ids = self.tokenizer(list(texts)).input_ids
        if any(not x for x in ids):
            raise ValueError("cannot score an empty text")
        out: list[float] = [0.0] * len(texts)
        order = sorted(range(len(texts)), key=lambda i: ids[i])
        with self._lock, torch.inference_mode():
            for a in range(0, len(order), self.max_batch):
                idx = order[a : a + self.max_batch]
                for i, s in zip(idx, self._score_ids([ids[i] for i in idx]).float().tolist()):
                    out[i] = s
        return out

    def _score_ids(self, ids: list[list[int]]) -> torch.Tensor:
        weight = self.ppm.head.weight
        dev, dtype = weight.device, self.ppm.backbone.dtype
        prefix = None
        if self.shared:
            layers = self.ppm.backbone.config.get_text_config(decoder=True).num_hidden_layers
            prefix = kv.prefix_for(ids, self.prefixes, self._forward, layers, dev, dtype)
        lp = prefix.length if prefix else 0
        inp, valid = kv.left_pad([x[lp:] for x in ids], self.tokenizer.pad_token_id, dev)
        if not self.shared:
            return self.ppm(inp, valid.long())
        pos = lp + (valid.long().cumsum(1) - 1).clamp(min=0)
        hidden = self._forward(inp, pos, kv.causal_mask(valid, dtype), None, prefix)
        return torch.tanh(self.ppm.value(hidden[:, -1]))  # left padded: last token at -1

    def _forward(self, input_ids, positions, mask, cache, prefix):
        return self.ppm.backbone(
            input_ids=input_ids,
            position_ids=positions,
            attention_mask=mask,
            use_cache=cache is not None,
            **kv.forward_kwargs(self.ppm.backbone, cache, prefix),
        ).last_hidden_state

    def load_weights(self, path: str | Path, version: str) -> None:
        """Swap to the PPM saved at ``path`` between two ``score`` calls (same device, dtype)."""
        weight = self.ppm.head.weight
        ppm, tokenizer = load_ppm(path, str(weight.device), dtype=str(weight.dtype).split(".")[-1])
        with self._lock:
            self._use(ppm, tokenizer, version)
        log.info("PPM swapped to %s (%s)", version, path)
