"""The resumable training loop shared by the policy (SFT) and PPM trainers.

    result = run_loop(model, n_items, loss_fn, spec, work_dir, fingerprint, progress, stop)

The data order of the whole run is fixed by the seed (``batch_order``), so a resumed run sees the
same batches. Every ``save_every`` optimizer steps the full training state (model, optimizer,
scheduler, RNG) goes to ``work_dir/state-<batches done>`` through accelerate, and only then is
``work_dir/LATEST`` (written to a temp file and renamed) pointed at it: a process killed at any
moment, even mid-save, leaves ``LATEST`` naming a complete state. A rerun with the same
``work_dir`` and the same data (``fingerprint``) continues from there; a different fingerprint
starts afresh (with a warning), so a stale state never trains the wrong data.

``stop`` (a ``threading.Event``) is checked after each optimizer step: when set, the state is
saved and ``TrainingInterrupted`` raised, so a service can shut down mid-training and resume later.

Runs on CPU here, on one GPU, or under ``accelerate launch`` on several (each process takes every
n-th batch; the multi-GPU path is not exercised by the tests, which run on CPU).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from rstar.log import get_logger
from rstar.models import one_build_at_a_time

if TYPE_CHECKING:
    import torch

log = get_logger(__name__)
LATEST = "LATEST"


class TrainingInterrupted(RuntimeError):
    """Training stopped on request after saving its state; rerun with the same work_dir to resume."""

    def __init__(self, work_dir: Path, batches_done: int):
        self.work_dir, self.batches_done = work_dir, batches_done
        super().__init__(f"training stopped after {batches_done} batches; state saved in {work_dir}")


@dataclass(frozen=True)
class LoopSpec:
    lr: float
    epochs: int
    batch_size: int
    grad_accum: int
    warmup_ratio: float
    weight_decay: float
    save_every: int
    seed: int
    log_every: int = 10
    desc: str = "train"
    steps: int = 0  # optimizer steps of the run, whatever the data's size; 0 = ``epochs`` passes
    threads: int = 0  # torch CPU threads; 0 keeps torch's default
    autocast: str = "off"  # "bf16": the forward pass under torch.autocast (weights stay float32)


@dataclass
class LoopResult:
    model: torch.nn.Module  # the unwrapped, trained model
    batches: int  # batches this process runs in the whole run
    steps: int  # optimizer steps in the whole run
    losses: list[float] = field(default_factory=list)  # per batch run in this call
    resumed_from_batch: int = 0
    seconds: float = 0.0


GROUP_BATCHES = 16  # length grouping: items are sorted by length within windows of this many batches


def batch_order(
    n: int, epochs: int, batch_size: int, seed: int, total: int = 0, lengths: list[int] | None = None
) -> list[list[int]]:
    """Item indices of every batch of the run, shuffled per epoch by ``seed``: ``epochs`` passes,
    or with ``total`` > 0 exactly ``total`` batches, over as many passes as that takes.

    With ``lengths`` (tokens per item), each epoch's shuffled items are sorted by length within
    windows of ``GROUP_BATCHES`` batches and the batches then shuffled, so a batch holds items of
    similar length: less padding, the same items per epoch, still a random order of batches.
    """
    batches: list[list[int]] = []
    e = 0
    while (e < epochs) if total <= 0 else (len(batches) < total):
        rng = random.Random(seed * 1000 + e)
        idx = list(range(n))
        rng.shuffle(idx)
        if lengths is None:
            batches += [idx[i : i + batch_size] for i in range(0, n, batch_size)]
        else:
            window = batch_size * GROUP_BATCHES
            epoch: list[list[int]] = []
            for w in range(0, n, window):
                part = sorted(idx[w : w + window], key=lambda i: lengths[i])
                epoch += [part[i : i + batch_size] for i in range(0, len(part), batch_size)]
            rng.shuffle(epoch)
            batches += epoch
        e += 1
    return batches[:total] if total > 0 else batches


def run_batches(spec: LoopSpec, n: int, lengths: list[int] | None = None) -> list[list[int]]:
    """Every batch of a run of ``spec`` over ``n`` items (``spec.steps`` optimizer steps, or epochs)."""
    return batch_order(n, spec.epochs, spec.batch_size, spec.seed, spec.steps * spec.grad_accum, lengths)


@one_build_at_a_time
def apply_lora(model, r: int, alpha: int, task_type: str | None):
    """LoRA adapters on every linear layer (peft); merged back by ``merge_lora`` before saving."""
    from peft import LoraConfig, get_peft_model

    return get_peft_model(
        model, LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, target_modules="all-linear", task_type=task_type)
    )


def merge_lora(model):
    return model.merge_and_unload() if hasattr(model, "merge_and_unload") else model


def _autocast(kind: str, device_type: str):
    """The forward pass's precision context: ``torch.autocast`` to bf16, or nothing."""
    import torch

    if kind == "bf16":
        return torch.autocast(device_type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _latest(work_dir: Path) -> tuple[Path, dict] | None:
    try:
        name = (work_dir / LATEST).read_text().strip()
        state = work_dir / name
        return state, json.loads((state / "progress.json").read_text())
    except (OSError, ValueError):
        return None


def _tied_head_warning(record: logging.LogRecord) -> bool:
    """False for accelerate's warning that it dropped ``lm_head.weight`` from a saved state: with
    tied embeddings (the nano policy) that tensor is the embedding's, and loading re-ties it."""
    return "Removed shared tensor {'lm_head.weight'}" not in record.getMessage()


def _save(acc, work_dir: Path, done: int, fingerprint: str) -> None:
    state = work_dir / f"state-{done:08d}"
    accelerate_log = logging.getLogger("accelerate.utils.other")
    if _tied_head_warning not in accelerate_log.filters:
        accelerate_log.addFilter(_tied_head_warning)
    acc.save_state(str(state))
    if acc.is_main_process:
        (state / "progress.json").write_text(json.dumps({"batches_done": done, "fingerprint": fingerprint}))
        tmp = work_dir / f".{LATEST}.tmp"
        tmp.write_text(state.name)
        os.replace(tmp, work_dir / LATEST)  # the commit point of this save
        for old in work_dir.glob("state-*"):
            if old != state:
                shutil.rmtree(old, ignore_errors=True)
    acc.wait_for_everyone()


def clear_state(work_dir: Path) -> None:
    """Drop the resumable state once the trained model is safely written."""
    shutil.rmtree(work_dir, ignore_errors=True)


def run_loop(
    model,
    n_items: int,
    loss_fn: Callable,
    spec: LoopSpec,
    work_dir: Path,
    fingerprint: str,
    progress: bool = True,
    stop: threading.Event | None = None,
    lengths: list[int] | None = None,
) -> LoopResult:
    """Train ``model`` on ``n_items`` items; ``loss_fn(model, item_indices, device)`` -> loss.
    ``lengths`` (tokens per item) groups items of similar length into batches (``batch_order``)."""
    import torch
    from accelerate import Accelerator
    from rich.progress import Progress
    from transformers import get_cosine_schedule_with_warmup

    t0 = time.perf_counter()
    if spec.threads:
        torch.set_num_threads(spec.threads)
    # Gradient accumulation by hand rather than accelerate's accumulate(): a run whose batch count
    # is not a multiple of grad_accum still steps on its last, partial accumulation.
    acc = Accelerator(cpu=not torch.cuda.is_available())
    everything = run_batches(spec, n_items, lengths)
    per_proc = len(everything) // acc.num_processes
    if per_proc == 0:
        raise ValueError(f"{len(everything)} batches cannot feed {acc.num_processes} processes")
    batches = [everything[i * acc.num_processes + acc.process_index] for i in range(per_proc)]
    steps = math.ceil(len(batches) / spec.grad_accum)
    model.train()
    opt = torch.optim.AdamW(
        [p for p in model.parameters() if p.requires_grad], lr=spec.lr, weight_decay=spec.weight_decay
    )
    # A prepared scheduler steps once per process per optimizer step: size it for that.
    sched = get_cosine_schedule_with_warmup(
        opt, int(spec.warmup_ratio * steps) * acc.num_processes, steps * acc.num_processes
    )
    model, opt, sched = acc.prepare(model, opt, sched)

    start = 0
    found = _latest(work_dir)
    if found is not None and found[1].get("fingerprint") == fingerprint:
        acc.load_state(str(found[0]))
        start = found[1]["batches_done"]
        log.info("%s: resuming at batch %d of %d from %s", spec.desc, start, len(batches), found[0])
    elif found is not None:
        log.warning("%s: state in %s is for other data or settings; starting afresh", spec.desc, work_dir)
        clear_state(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)

    losses: list[float] = []
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task(spec.desc, total=len(batches), completed=start)
        for b in range(start, len(batches)):
            done = b + 1
            sync = done % spec.grad_accum == 0 or done == len(batches)
            with contextlib.nullcontext() if sync else acc.no_sync(model):
                with _autocast(spec.autocast, acc.device.type):
                    loss = loss_fn(model, batches[b], acc.device)
                acc.backward(loss / spec.grad_accum)
            if sync:
                opt.step()
                sched.step()
                opt.zero_grad()
            losses.append(float(loss.detach()))
            bar.update(task, advance=1, description=f"{spec.desc} loss {losses[-1]:.3f}")
            step = math.ceil(done / spec.grad_accum)
            if not progress and sync and step % spec.log_every == 0:
                recent = losses[-spec.log_every * spec.grad_accum :]
                log.info("%s: step %d/%d loss %.4f", spec.desc, step, steps, sum(recent) / len(recent))
            if done < len(batches) and sync:
                if stop is not None and stop.is_set():
                    _save(acc, work_dir, done, fingerprint)
                    raise TrainingInterrupted(work_dir, done)
                if step % spec.save_every == 0:
                    _save(acc, work_dir, done, fingerprint)
    return LoopResult(
        model=acc.unwrap_model(model),
        batches=len(batches),
        steps=steps,
        losses=losses,
        resumed_from_batch=start,
        seconds=round(time.perf_counter() - t0, 2),
    )
