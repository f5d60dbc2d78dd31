"""Training the process preference model (PPM) on preference pairs.

    report = train_ppm(pairs, policy_dir, out_dir, cfg.train, work_dir)

As in rStar-Math: the backbone is initialised from the round's fine-tuned policy, a fresh scalar
head goes on top (``actors.ppm.ppm_from_policy``), and the loss is Bradley-Terry on the
pre-``tanh`` rewards, ``-log σ(r⁺ − r⁻)``; no step score is regressed directly. Each side of a
pair is scored on exactly the text the search scores (``actors.ppm.ppm_text``: the question
without few-shot examples, then the prefix steps and the compared steps).

Pairs of whole trees are held out (``ppm_heldout_fraction`` of the tree ids, by a fixed hash; at
least one tree when there are two or more), and the report gives the pairwise accuracy on them:
the fraction of held-out pairs whose positive side scores strictly above the negative.
``train.ppm_max_pairs`` caps the training pairs of a round (a seeded sample; 0 = all).

Same training machinery as the policy (``learner.train_loop``): full fine-tune or LoRA (merged
before saving), resumable after a kill, ``stop`` saves and raises ``TrainingInterrupted``. The
PPM directory is written atomically with its MANIFEST (sha256 of every file), ready to publish.
"""

from __future__ import annotations

import hashlib
import random
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from learner.sft import fingerprint, spec_from
from learner.train_loop import apply_lora, clear_state, merge_lora, run_batches, run_loop
from rstar.config import TrainConfig
from rstar.log import get_logger

log = get_logger(__name__)


@dataclass(frozen=True)
class PPMPair:
    tree_id: str
    question: str
    prefix: tuple[str, ...]  # shared steps before the compared ones
    pos: tuple[str, ...]  # preferred continuation: one step, or a whole trajectory
    neg: tuple[str, ...]


@dataclass
class PPMReport:
    pairs: int
    train_pairs: int
    heldout_pairs: int
    dropped_too_long: int
    steps: int
    first_loss: float
    last_loss: float
    heldout_accuracy: float | None  # None when no pair is held out
    seconds: float
    seconds_per_pair: float
    resumed_from_step: int


def split_by_tree(pairs: list[PPMPair], fraction: float, seed: int = 0) -> tuple[list[PPMPair], list[PPMPair]]:
    """``(train, heldout)``: every pair of a held-out tree is held out, none of it trains."""

    def h(tid: str) -> float:
        return int(hashlib.sha256(f"{seed}\n{tid}".encode()).hexdigest()[:12], 16) / 16**12

    trees = sorted({p.tree_id for p in pairs}, key=h)
    held = {t for t in trees if h(t) < fraction}
    if not held and fraction > 0 and len(trees) >= 2:
        held = {trees[0]}  # a small round still gets an accuracy figure
    return [p for p in pairs if p.tree_id not in held], [p for p in pairs if p.tree_id in held]


def encode_pairs(pairs: list[PPMPair], tokenizer, max_len: int) -> tuple[list[tuple[list[int], list[int]]], int]:
    from actors.ppm import ppm_text

    out, dropped = [], 0
    for p in pairs:
        sides = [
            tokenizer(ppm_text(p.question, list(p.prefix + s), tokenizer), add_special_tokens=False)["input_ids"]
            for s in (p.pos, p.neg)
        ]
        if max(len(s) for s in sides) > max_len:
            dropped += 1
            continue
        out.append((sides[0], sides[1]))
    return out, dropped


def collate_pairs(batch: list[tuple[list[int], list[int]]], pad_id: int):
    """Positives in rows ``[0, B)``, negatives in ``[B, 2B)``; right-padded with a mask."""
    import torch

    seqs = [b[0] for b in batch] + [b[1] for b in batch]
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def _reward_model(ppm):
    import torch

    class Reward(torch.nn.Module):
        """``forward`` = pre-tanh reward, so a DDP-wrapped model still syncs its gradients."""

        def __init__(self, ppm):
            super().__init__()
            self.ppm = ppm

        def forward(self, ids, mask):
            return self.ppm.reward(ids, mask)

    return Reward(ppm)


def pairwise_accuracy(ppm, encoded: list[tuple[list[int], list[int]]], pad_id: int, batch: int = 8) -> float | None:
    """Fraction of pairs whose positive side gets the strictly higher reward."""
    import torch

    if not encoded:
        return None
    right = 0
    was_training = ppm.training
    ppm.eval()
    dev = next(ppm.parameters()).device
    with torch.inference_mode():
        for a in range(0, len(encoded), batch):
            chunk = encoded[a : a + batch]
            ids, mask = collate_pairs(chunk, pad_id)
            r = ppm.reward(ids.to(dev), mask.to(dev))
            right += int((r[: len(chunk)] > r[len(chunk) :]).sum())
    ppm.train(was_training)
    return round(right / len(encoded), 4)


def save_ppm_dir(ppm, tokenizer, out_dir: Path) -> Path:
    """``actors.ppm.save_ppm`` plus the MANIFEST that publishing and actors verify, atomically."""
    from actors.ppm import save_ppm
    from rstar.checkpoints import atomic_dir, commit_dir

    staging = atomic_dir(out_dir)
    try:
        save_ppm(ppm, staging / "ppm", tokenizer)
        commit_dir(staging / "ppm", out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def train_ppm(
    pairs: list[PPMPair],
    policy_dir: Path,
    out_dir: Path,
    cfg: TrainConfig,
    work_dir: Path,
    progress: bool = True,
    stop: threading.Event | None = None,
) -> PPMReport:
    import torch
    import torch.nn.functional as F

    from actors.ppm import PPM, ppm_from_policy
    from rstar.checkpoints import MANIFEST, file_sha256
    from rstar.models import load_tokenizer

    t0 = time.perf_counter()
    train, held = split_by_tree(pairs, cfg.ppm_heldout_fraction, cfg.seed)
    if cfg.ppm_max_pairs and len(train) > cfg.ppm_max_pairs:
        keep = sorted(random.Random(cfg.seed).sample(range(len(train)), cfg.ppm_max_pairs))
        log.info("PPM: training on %d of %d pairs (train.ppm_max_pairs)", len(keep), len(train))
        train = [train[i] for i in keep]
    if not train:
        raise ValueError(f"no PPM pairs to train on ({len(pairs)} pairs, {len(held)} held out)")
    tokenizer = load_tokenizer(policy_dir)
    train_enc, dropped = encode_pairs(train, tokenizer, cfg.max_len)
    held_enc, held_dropped = encode_pairs(held, tokenizer, cfg.max_len)
    if dropped + held_dropped:
        log.warning("dropped %d of %d pairs longer than %d tokens", dropped + held_dropped, len(pairs), cfg.max_len)
    if not train_enc:
        raise ValueError(f"every PPM training pair is longer than train.max_len={cfg.max_len}")
    torch.manual_seed(cfg.seed)
    ppm = ppm_from_policy(policy_dir, device="cpu", seed=cfg.seed)
    if cfg.method == "lora":
        ppm.backbone = apply_lora(ppm.backbone, cfg.lora_r, cfg.lora_alpha, "FEATURE_EXTRACTION")
    pad = tokenizer.pad_token_id
    spec = spec_from(cfg, "PPM", cfg.ppm_lr, cfg.ppm_epochs, cfg.ppm_batch_size)

    def loss_fn(m, idx: list[int], device):
        ids, mask = collate_pairs([train_enc[i] for i in idx], pad)
        r = m(ids.to(device), mask.to(device))
        return -F.logsigmoid(r[: len(idx)] - r[len(idx) :]).mean()

    manifest = Path(policy_dir) / MANIFEST
    policy_id = file_sha256(manifest) if manifest.is_file() else str(Path(policy_dir).resolve())
    res = run_loop(
        _reward_model(ppm),
        len(train_enc),
        loss_fn,
        spec,
        work_dir,
        fingerprint(train_enc, spec, cfg.method, policy_id),
        progress,
        stop,
    )
    trained = res.model.ppm
    if not isinstance(trained, PPM):
        raise TypeError(f"the training loop returned {type(res.model).__name__} without its PPM")
    ppm = trained
    ppm.backbone = merge_lora(ppm.backbone)
    acc = pairwise_accuracy(ppm, held_enc, pad)
    save_ppm_dir(ppm.eval(), tokenizer, out_dir)
    clear_state(work_dir)
    # Pairs in the batches this call ran, counted exactly (the last batch may be short), as SFT does.
    n_seen = sum(len(b) for b in run_batches(spec, len(train_enc))[res.resumed_from_batch :])
    losses = res.losses
    return PPMReport(
        pairs=len(pairs),
        train_pairs=len(train_enc),
        heldout_pairs=len(held_enc),
        dropped_too_long=dropped + held_dropped,
        steps=res.steps,
        first_loss=round(losses[0], 4) if losses else float("nan"),
        last_loss=round(sum(losses[-5:]) / len(losses[-5:]), 4) if losses else float("nan"),
        heldout_accuracy=acc,
        seconds=round(time.perf_counter() - t0, 2),
        seconds_per_pair=round(res.seconds / max(n_seen, 1), 3),
        resumed_from_step=res.resumed_from_batch // cfg.grad_accum,
    )
