"""Supervised fine-tuning of the policy on verified trajectories.

    train_sft(examples, base_dir, out_dir, cfg.train, work_dir) -> SFTReport

As in the paper, every round fine-tunes *from the base model*, not from the last round's policy.
An example is a question and its steps; the model sees exactly the prompt the search will give it
(the chat-formatted question without few-shot examples, ``rstar.steps.build_prompt``) and is
trained on the solution tokens only (prompt tokens masked out of the loss), ending with EOS.

Runs with accelerate (CPU here, one or more GPUs under ``accelerate launch``); full fine-tune or
LoRA (peft, merged into the saved weights so actors load a plain model). Training is resumable:
every ``save_every`` optimizer steps the full state (model, optimizer, scheduler, RNG, step) goes
to ``work_dir/state``; a rerun with the same ``work_dir`` continues from there with the same
data order. The final model is written atomically by ``learner.checkpoints.save_model_dir``.
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

from rstar import steps as fmt
from rstar.config import TrainConfig
from rstar.log import get_logger

log = get_logger("learner.sft")


@dataclass(frozen=True)
class SFTExample:
    question: str
    steps: tuple[str, ...]


@dataclass
class SFTReport:
    examples: int
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


def _order(n: int, epochs: int, seed: int) -> list[int]:
    """The data order of the whole run, fixed by the seed (so a resumed run sees the same)."""
    order = []
    for e in range(epochs):
        idx = list(range(n))
        random.Random(seed * 1000 + e).shuffle(idx)
        order += idx
    return order


def _load_model(base_dir: Path, cfg: TrainConfig):
    from rstar.models import load_causal_lm

    model = load_causal_lm(base_dir, device="cpu", dtype="float32")
    if cfg.method == "lora":
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(r=cfg.lora_r, lora_alpha=cfg.lora_alpha, lora_dropout=0.0,
                          target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, lora)
    return model


def train_sft(examples: list[SFTExample], base_dir: Path, out_dir: Path, cfg: TrainConfig,
              work_dir: Path, progress: bool = True) -> SFTReport:
    import torch
    from accelerate import Accelerator
    from transformers import get_cosine_schedule_with_warmup

    from rstar.checkpoints import save_model_dir
    from rstar.models import load_tokenizer

    if not examples:
        raise ValueError("no SFT examples: nothing to train on")
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(base_dir)
    data, dropped = encode_examples(examples, tokenizer, cfg.max_len)
    if dropped:
        log.warning("dropped %d of %d examples longer than %d tokens", dropped, len(examples), cfg.max_len)
    if not data:
        raise ValueError(f"every SFT example is longer than train.max_len={cfg.max_len}")
    acc = Accelerator(gradient_accumulation_steps=cfg.grad_accum, cpu=not torch.cuda.is_available())
    model = _load_model(base_dir, cfg)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.lr,
                            weight_decay=cfg.weight_decay)
    order = _order(len(data), cfg.epochs, cfg.seed)
    batches = [order[i:i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
    total_steps = math.ceil(len(batches) / cfg.grad_accum)
    sched = get_cosine_schedule_with_warmup(opt, int(cfg.warmup_ratio * total_steps), total_steps)
    model, opt, sched = acc.prepare(model, opt, sched)

    state_dir, meta_path = work_dir / "state", work_dir / "state.json"
    start_batch = 0
    if meta_path.exists():
        acc.load_state(str(state_dir))
        start_batch = json.loads(meta_path.read_text())["batches_done"]
        log.info("resuming SFT from batch %d of %d", start_batch, len(batches))
    losses: list[float] = []
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    from rich.progress import Progress

    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("SFT", total=len(batches), completed=start_batch)
        for b in range(start_batch, len(batches)):
            batch = {k: v.to(acc.device) for k, v in collate([data[i] for i in batches[b]], pad).items()}
            with acc.accumulate(model):
                loss = model(**batch).loss
                acc.backward(loss)
                opt.step()
                sched.step()
                opt.zero_grad()
            losses.append(float(loss.detach()))
            bar.update(task, advance=1, description=f"SFT loss {losses[-1]:.3f}")
            done = b + 1
            if done % (cfg.save_every * cfg.grad_accum) == 0 and done < len(batches):
                work_dir.mkdir(parents=True, exist_ok=True)
                acc.save_state(str(state_dir))
                meta_path.write_text(json.dumps({"batches_done": done}))
    model = acc.unwrap_model(model)
    if cfg.method == "lora":
        model = model.merge_and_unload()
    save_model_dir(model, tokenizer, out_dir)
    secs = time.perf_counter() - t0
    n_seen = len(order) - start_batch * cfg.batch_size
    return SFTReport(examples=len(data), dropped_too_long=dropped, steps=total_steps,
                     first_loss=losses[0] if losses else float("nan"),
                     last_loss=sum(losses[-5:]) / len(losses[-5:]) if losses else float("nan"),
                     seconds=round(secs, 2), seconds_per_example=round(secs / max(n_seen, 1), 3),
                     resumed_from_step=start_batch)
