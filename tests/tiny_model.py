"""A tiny random Llama and its tokenizer, built in about a second: the model every unit test uses.

``make_tiny_model(out_dir)`` writes a normal Hugging Face directory (``config.json``,
``model.safetensors``, tokenizer files with a ChatML chat template) that every loader in rstar
accepts in place of the real policy. The tokenizer is a byte-level BPE trained on a small
built-in corpus of step-format text (so prompts tokenize into realistic, multi-token pieces);
``<end_of_step>`` is one added token that is *not* special, so decoding never skips it. The
model is a 2-layer ``LlamaForCausalLM`` with grouped-query attention (4 query heads over 2
key/value heads, like the real models) and about 100k parameters.

Guaranteed: the same ``seed`` gives byte-identical weights and tokenizer. Not meaningful: what
the model says — it is random; tests use it for shapes, plumbing and equivalences.

    python tests/tiny_model.py /tmp/tiny
"""

from __future__ import annotations

import sys
from pathlib import Path

from rstar.steps import FEW_SHOT, INSTRUCTIONS, STEP_END, render_steps, user_message

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _corpus() -> list[str]:
    """Step-format text: instructions, worked examples and simple arithmetic steps."""
    lines = [INSTRUCTIONS, user_message("How many apples are left?")]
    for question, steps in FEW_SHOT:
        lines += [question, render_steps(steps)]
    for a in range(2, 30):
        b = (a * 7) % 13 + 1
        lines.append(
            render_steps(
                [
                    f"# There are {a} boxes with {b} items each.\nboxes = {a}\nitems = boxes * {b}\n",
                    f"# {b} items are removed; the rest is the answer.\nanswer = items - {b}\n",
                ]
            )
        )
        lines.append(f"Problem: Mia has {a} coins and finds {b} more. How many coins does she have?")
    return lines


def make_tiny_model(out_dir: Path, seed: int = 0, vocab_size: int = 512, head_dim: int | None = None) -> Path:
    """Write a tiny random Llama + trained BPE tokenizer to ``out_dir``; returns ``out_dir``.

    ``head_dim`` defaults to hidden/heads = 12; vLLM's CPU attention needs one of its supported
    sizes (32 works), so its tests build the model with ``head_dim=32``.
    """
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    bpe.add_tokens([AddedToken(STEP_END, special=False, normalized=False)])
    tok = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out_dir)

    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=48,
        intermediate_size=192,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        head_dim=head_dim or 48 // 4,
        tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        initializer_range=0.2,
    )
    # A wide init makes next-token distributions peaked rather than uniform, so greedy decoding
    # has no near-ties and equivalence tests compare well-separated argmaxes.
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).float()
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir


if __name__ == "__main__":
    print(make_tiny_model(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny-model")))
