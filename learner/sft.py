"""Supervised fine-tuning of the policy on verified trajectories.

    train_sft(examples, base_dir, out_dir, cfg.train, work_dir) -> SFTReport

As in the paper, every round fine-tunes *from the base model*, not from the last round's policy.
An example is a question and its steps; the model sees exactly the prompt the search will give it
(the chat-formatted question without few-shot examples, ``rstar.steps.build_prompt``) and is
trained on the solution tokens only (prompt tokens masked out of the loss), ending with EOS.

Runs with accelerate (CPU here, one or more GPUs under ``accelerate launch``); full fine-tune or
LoRA (peft, merged into the saved weights so actors load a plain model). Training is resumable
(``learner.train_loop``): every ``save_every`` optimizer steps the full state goes to ``work_dir``;
a rerun with the same ``work_dir`` and data continues from there with the same data order, and
``stop`` (a ``threading.Event``) saves and raises ``TrainingInterrupted``. The final model is
written atomically with its MANIFEST by ``rstar.checkpoints.save_model_dir``; the work dir is then
removed.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from learner.train_loop import LoopSpec, apply_lora, clear_state, merge_lora, run_batches, run_loop
from rstar import steps as fmt
from rstar.config import TrainConfig
from rstar.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class SFTExample:
    question: str
    steps: tuple[str, ...]
    searched: bool = False  # from an actor's search tree (not the teacher's)


def mix_searched(examples: list[SFTExample], share: float) -> list[SFTExample]:
    """``examples`` with each searched one repeated r times, r the least whole number that makes
    searched examples at least ``share`` of the set (``train.searched_share``); unchanged when
    ``share`` is 0 or the set has no searched or no teacher examples."""
    searched = [e for e in examples if e.searched]
    rest = len(examples) - len(searched)
    if share <= 0 or not searched or not rest:
        return examples
    repeats = math.ceil(share * rest / ((1 - share) * len(searched)))
    return examples + searched * (repeats - 1)


@dataclass
class SFTReport:
    examples: int  # after train.searched_share's repeats
    searched: int  # the search's own among them (repeats counted, before over-long ones are dropped)
    dropped_too_long: int
    steps: int
    first_loss: float
    last_loss: float
    seconds: float
    seconds_per_example: float
    resumed_from_step: int


def encode_examples(examples: list[SFTExample], tokenizer, max_len: int) -> tuple[list[dict], int]:
    """Token ids and loss labels (-100 on the prompt) per example; examples over max_len dropped."""
    from actors.runtime import chat_template_for

    template = chat_template_for(tokenizer)
    out, dropped = [], 0
    for ex in examples:
        prompt = fmt.build_prompt(ex.question, [], template, few_shot=False)
        p_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        s_ids = tokenizer(fmt.render_steps(list(ex.steps)), add_special_tokens=False)["input_ids"]
        s_ids = s_ids + [tokenizer.eos_token_id]
        if len(p_ids) + len(s_ids) > max_len:
            dropped += 1
            continue
        out.append({"input_ids": p_ids + s_ids, "labels": [-100] * len(p_ids) + s_ids})
    return out, dropped


def collate(batch: list[dict], pad_id: int):
    import torch

    width = max(len(b["input_ids"]) for b in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, b in enumerate(batch):
        n = len(b["input_ids"])
        ids[i, :n] = torch.tensor(b["input_ids"])
        labels[i, :n] = torch.tensor(b["labels"])
        mask[i, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def spec_from(cfg: TrainConfig, desc: str, lr: float, epochs: int, batch_size: int, steps: int = 0) -> LoopSpec:
    return LoopSpec(
        lr=lr,
        epochs=epochs,
        batch_size=batch_size,
        grad_accum=cfg.grad_accum,
        warmup_ratio=cfg.warmup_ratio,
        weight_decay=cfg.weight_decay,
        save_every=cfg.save_every,
        seed=cfg.seed,
        log_every=cfg.log_every,
        desc=desc,
        threads=cfg.threads,
        steps=steps,
        autocast=cfg.autocast,
    )


def fingerprint(data: list, spec: LoopSpec, *extra: str) -> str:
    """What a resumable state must match: the encoded data, the loop settings, the model."""
    # Threads and logging change nothing about the result: a resume may change them.
    settings = {k: v for k, v in spec.__dict__.items() if k not in ("threads", "log_every")}
    h = hashlib.sha256(json.dumps([data, settings, extra], sort_keys=True).encode())
    return h.hexdigest()


def train_sft(
    examples: list[SFTExample],
    base_dir: Path,
    out_dir: Path,
    cfg: TrainConfig,
    work_dir: Path,
    progress: bool = True,
    stop: threading.Event | None = None,
) -> SFTReport:
    import torch

    from rstar.checkpoints import save_model_dir
    from rstar.models import load_causal_lm, load_tokenizer

    if not examples:
        raise ValueError("no SFT examples: nothing to train on")
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(base_dir)
    examples = mix_searched(examples, cfg.searched_share)
    data, dropped = encode_examples(examples, tokenizer, cfg.max_len)
    if dropped:
        log.warning("dropped %d of %d examples longer than %d tokens", dropped, len(examples), cfg.max_len)
    if not data:
        raise ValueError(f"every SFT example is longer than train.max_len={cfg.max_len}")
    model = load_causal_lm(base_dir, device="cpu", dtype="float32")
    if cfg.method == "lora":
        model = apply_lora(model, cfg.lora_r, cfg.lora_alpha, "CAUSAL_LM")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    spec = spec_from(cfg, "SFT", cfg.lr, cfg.epochs, cfg.batch_size, cfg.steps)

    def loss_fn(m, idx: list[int], device):
        batch = {k: v.to(device) for k, v in collate([data[i] for i in idx], pad).items()}
        return m(**batch).loss

    lengths = [len(d["input_ids"]) for d in data]
    res = run_loop(
        model,
        len(data),
        loss_fn,
        spec,
        work_dir,
        fingerprint(data, spec, cfg.method, str(Path(base_dir).resolve())),
        progress,
        stop,
        lengths,
    )
    save_model_dir(merge_lora(res.model).eval(), tokenizer, out_dir)
    clear_state(work_dir)
    secs = time.perf_counter() - t0
    n_seen = sum(len(b) for b in run_batches(spec, len(data), lengths)[res.resumed_from_batch :])
    losses = res.losses
    return SFTReport(
        examples=len(data),
        searched=sum(e.searched for e in examples),
        dropped_too_long=dropped,
        steps=res.steps,
        first_loss=round(losses[0], 4) if losses else float("nan"),
        last_loss=round(sum(losses[-5:]) / len(losses[-5:]), 4) if losses else float("nan"),
        seconds=round(secs, 2),
        seconds_per_example=round(res.seconds / max(n_seen, 1), 3),
        resumed_from_step=res.resumed_from_batch // cfg.grad_accum,
    )
