"""The built-in nano policy: a few-million-parameter Llama with its own tokenizer, from scratch.

    model.policy = "nano"        # resolve_model_dir("nano", cache_dir) builds it once

The scale model of the loop (DESIGN §6), as nanoGPT's ``shakespeare_char`` is for pretraining:
small enough that the whole self-evolution — bootstrap, search, selection, SFT, PPM, publishing,
hot swap, evaluation — runs in minutes on a laptop CPU, so a learning curve can be measured.

What ``build_nano`` writes (a plain Hugging Face directory; nothing else in rstar knows it is nano):
- a byte-level BPE tokenizer trained on the synthetic curriculum's own text (questions and
  reference solutions of the train split, levels 1-6, plus the step-format instructions), with
  **every digit its own token** — copying the question's numbers into code is the first thing a
  from-scratch model must learn, and a multi-digit merge would hide them — and ``<end_of_step>``
  as one token (an added token, not a special one: decoding keeps it, so the search's stop string
  is seen);
- a ``LlamaForCausalLM`` with random weights (seeded): hidden 256, 4 layers, 8 heads / 4 KV
  heads, MLP 768, tied embeddings (~3.4 M parameters, ~14 MB in fp32).

The weights are untrained: round 0 (the bootstrap) fine-tunes this directory on the teacher's
demonstrations like any base model, which for nano is training from scratch (the ``nano`` preset
sizes that run). The directory depends only on ``NanoSpec`` and this module's corpus, so every
process that resolves ``nano`` with the same spec builds the same model (same tokenizer, same
initial weights), and it is built once per cache (atomically, like the GGUF conversion).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from rstar.log import get_logger, timed
from rstar.models import one_build_at_a_time

log = get_logger(__name__)

EOS = "<|endoftext|>"


@dataclass(frozen=True)
class NanoSpec:
    """What fixes the nano model: its shape, its tokenizer's size and corpus, its init seed."""

    hidden: int = 256
    layers: int = 4
    heads: int = 8
    kv_heads: int = 4
    mlp: int = 768
    max_positions: int = 1024
    vocab: int = 1024  # the BPE stops merging earlier on this corpus (~950 tokens)
    corpus_problems: int = 3000  # curriculum train problems (levels 1-6) the tokenizer is fitted on
    seed: int = 0


def corpus(spec: NanoSpec) -> list[str]:
    """The tokenizer's training text: curriculum questions and solutions, the prompt's words."""
    from rstar.curriculum import LEVELS, synthetic_problems
    from rstar.steps import INSTRUCTIONS, render_steps, user_message

    texts = [INSTRUCTIONS]
    for p in synthetic_problems(spec.corpus_problems, "train", LEVELS, spec.seed):
        texts.append(user_message(p.question, few_shot=False) + "\n" + render_steps(p.meta["reference_steps"]))
    return texts


def nano_key(spec: NanoSpec, texts: list[str]) -> str:
    """A short digest of the spec and the corpus, naming the cache directory: a changed spec,
    curriculum or prompt format never reuses an old build."""
    h = hashlib.sha256(json.dumps(asdict(spec), sort_keys=True).encode())
    for t in texts:
        h.update(t.encode())
    return h.hexdigest()[:10]


def train_tokenizer(spec: NanoSpec, texts: list[str]):
    """A byte-level BPE (digits split one per token) as a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from rstar.steps import STEP_END

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, pad_token=EOS, unk_token=None)
    fast.add_tokens([STEP_END])  # one token, and decoded as text (the search stops on it)
    fast.model_max_length = spec.max_positions
    return fast


@one_build_at_a_time
def init_model(spec: NanoSpec, vocab_size: int, eos_id: int):
    """A randomly initialised ``LlamaForCausalLM`` of ``spec``'s shape (seeded)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=spec.hidden,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        num_key_value_heads=spec.kv_heads,
        intermediate_size=spec.mlp,
        max_position_embeddings=spec.max_positions,
        tie_word_embeddings=True,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        pad_token_id=eos_id,
        # RoPE: transformers' default (theta 10000) in 4.x and 5.x alike; 5.x no longer takes rope_theta.
    )
    torch.manual_seed(spec.seed)
    return LlamaForCausalLM(config).float().eval()


def build_nano(target: Path, spec: NanoSpec = NanoSpec(), texts: list[str] | None = None) -> Path:
    """Write the untrained nano model directory at ``target`` (atomically); return it."""
    from rstar.checkpoints import save_model_dir

    target.parent.mkdir(parents=True, exist_ok=True)
    with timed(log, f"building the nano policy ({target.name})", slow_s=0.0):
        tok = train_tokenizer(spec, corpus(spec) if texts is None else texts)
        model = init_model(spec, len(tok), tok.eos_token_id)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
        try:
            save_model_dir(model, tok, tmp / "out", extra={"rstar_nano.json": json.dumps(asdict(spec)).encode()})
            (tmp / "out").chmod(0o755)  # the cache is shared by every rstar process
            for f in (tmp / "out").iterdir():
                f.chmod(0o644)
            try:
                os.replace(tmp / "out", target)
            except OSError:
                from rstar.models import is_model_dir

                if not is_model_dir(target):
                    raise
                log.info("another process built %s first; using its copy", target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def nano_dir(cache_dir: Path, spec: NanoSpec = NanoSpec()) -> Path:
    """The cached nano model directory, built on first use."""
    from rstar.models import is_model_dir

    texts = corpus(spec)
    target = Path(cache_dir) / "models" / f"nano-{nano_key(spec, texts)}"
    return target if is_model_dir(target) else build_nano(target, spec, texts)


if __name__ == "__main__":
    from rstar.config import ModelConfig

    print(nano_dir(ModelConfig().cache_dir))
