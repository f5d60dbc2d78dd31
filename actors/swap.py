"""Get a policy+PPM pair ready to serve, and put it into a running ``ModelWorker``.

The steps of one hot swap, each usable on its own (``actors.watcher`` runs them in order):

1. ``materialize(b, ref, cache_dir, kind)`` — the checkpoint as a local directory: a cached copy
   (``<cache>/<kind>/<version>-<sha256[:16]>``) when it still verifies against its manifest, else
   downloaded with ``broker.checkpoints.fetch_checkpoint`` (tar digest = the pointer's sha256,
   then every file against ``MANIFEST.json``).
2. ``check_pair(policy_dir, ppm_dir)`` — refuse a pair that cannot work together: a policy that is
   not a model directory, a PPM that is not one, a PPM whose backbone is not the policy's base
   (architecture, vocabulary, sizes differ) or whose head does not fit its backbone.
3. ``load_pair(cfg, pair, ...)`` — **in a worker thread**, off the model thread: a fresh backend on
   the new policy (transformers) and a fresh PPM scorer. Generation goes on meanwhile.
4. ``install(worker, loaded)`` — the function to run in the model thread between two calls
   (``ModelWorker.run_between_calls``): swap references (transformers), or reload the engine in
   place with ``Backend.load_weights`` (vLLM, whose engine cannot be built twice on one GPU).

Memory: with the transformers backend the old and the new pair are both resident from step 3 until
the swap (two pairs; never a third: ``actors.watcher`` loads one pointer at a time, the newest, and
drops the old pair right after the swap). With an in-place backend only the new PPM is extra.
Any failure before ``install`` leaves the serving pair untouched; ``SwapRefused`` and
``CheckpointError`` carry the reason, which the watcher logs.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from broker.checkpoints import fetch_checkpoint
from broker.client import Broker
from rstar.checkpoints import CheckpointError, verify_dir
from rstar.config import Config
from rstar.log import get_logger, timed
from rstar.schemas import ModelPointer, ModelRef

if TYPE_CHECKING:
    from actors.backends.base import Backend
    from actors.ppm import PPMScorer

log = get_logger(__name__)

# config.json keys that make two checkpoints "the same base": a PPM must share them with its policy.
BASE_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
)


class SwapRefused(RuntimeError):
    """A checkpoint pair that must not be served; the message says why."""


@dataclass(frozen=True)
class ModelPair:
    """What an actor serves: the pointer's round and the two versions (``ppm_version`` "" = none)."""

    round: int
    policy_version: str
    ppm_version: str
    policy_sha256: str = ""  # "" for models named in the config rather than by a pointer
    ppm_sha256: str = ""

    @classmethod
    def of(cls, p: ModelPointer) -> ModelPair:
        return cls(
            p.round, p.policy.version, p.ppm.version if p.ppm else "", p.policy.sha256, p.ppm.sha256 if p.ppm else ""
        )

    @property
    def key(self) -> tuple[str, str, str, str]:
        """Identity of the weights (the round may change without new weights)."""
        return (self.policy_version, self.policy_sha256, self.ppm_version, self.ppm_sha256)


def cache_path(cache_dir: Path, kind: str, ref: ModelRef) -> Path:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", ref.version)[:80] or "v"
    return Path(cache_dir) / kind / f"{safe}-{ref.sha256[:16]}"


async def materialize(b: Broker, ref: ModelRef, cache_dir: Path, kind: str) -> Path:
    """A verified local directory of ``ref``; CheckpointError if it is missing, partial or altered.

    Actors on one host may share ``cache_dir``: a lock file per version makes the second one wait
    for the first one's download and then use it.
    """
    d = cache_path(cache_dir, kind, ref)
    d.parent.mkdir(parents=True, exist_ok=True)
    lock = await asyncio.to_thread(_lock, d.with_name(f".{d.name}.lock"))
    try:
        if d.is_dir():
            try:
                await asyncio.to_thread(verify_dir, d)
                os.utime(d)  # recently used: ``prune`` in other actors leaves it alone
                return d
            except CheckpointError as e:  # damaged on disk: fetch it again
                log.warning("cached checkpoint %s is damaged (%s); downloading again", d, e)
        with timed(log, f"download {kind} {ref.version}", slow_s=0.5):
            return await fetch_checkpoint(b, ref, d)
    finally:
        lock.close()  # closing the file releases the flock


def _lock(path: Path):
    f = open(path, "a")
    fcntl.flock(f, fcntl.LOCK_EX)
    return f


def _config(d: Path, what: str) -> dict:
    try:
        return json.loads((d / "config.json").read_text())
    except (OSError, ValueError) as e:
        raise SwapRefused(f"{what} {d.name}: unreadable config.json ({e})") from None


def check_pair(policy_dir: Path, ppm_dir: Path | None) -> None:
    """Raise SwapRefused unless the policy and PPM directories can be served together."""
    from rstar.models import is_model_dir

    if not is_model_dir(policy_dir):
        raise SwapRefused(f"policy {policy_dir.name} is not a model directory (config.json + weights)")
    if ppm_dir is None:
        return
    from actors.ppm import HEAD_FILE, META_FILE

    if not (ppm_dir / META_FILE).is_file() or not (ppm_dir / HEAD_FILE).is_file():
        raise SwapRefused(f"PPM {ppm_dir.name} is not a PPM directory (needs {META_FILE} and {HEAD_FILE})")
    pol, ppm = _config(policy_dir, "policy"), _config(ppm_dir, "PPM")
    diff = [k for k in BASE_KEYS if pol.get(k) != ppm.get(k)]
    if diff:
        raise SwapRefused(
            "PPM base does not match the policy: " + ", ".join(f"{k} {ppm.get(k)!r} vs {pol.get(k)!r}" for k in diff)
        )
    try:
        head = json.loads((ppm_dir / META_FILE).read_text()).get("hidden_size")
    except (OSError, ValueError) as e:
        raise SwapRefused(f"PPM {ppm_dir.name}: unreadable {META_FILE} ({e})") from None
    if head != ppm.get("hidden_size"):
        raise SwapRefused(f"PPM head expects hidden size {head!r}, backbone has {ppm.get('hidden_size')!r}")


def with_models(cfg: Config, policy_dir: Path, ppm_dir: Path | None) -> Config:
    """A copy of ``cfg`` whose model section names these directories."""
    model = cfg.model.model_copy(update={"policy": str(policy_dir), "ppm": str(ppm_dir) if ppm_dir else None})
    return cfg.model_copy(update={"model": model})


def swaps_in_place(backend) -> bool:
    """True when the backend reloads weights in its running engine (vLLM) instead of being rebuilt."""
    return backend.name != "transformers"


def can_swap(backend) -> bool:
    from actors.backends.base import Backend

    return not swaps_in_place(backend) or type(backend).load_weights is not Backend.load_weights


@dataclass
class Loaded:
    pair: ModelPair
    policy_dir: Path
    backend: Backend | None  # a fresh backend, or None: reload the running one in place
    scorer: PPMScorer | None


def load_pair(cfg: Config, pair: ModelPair, policy_dir: Path, ppm_dir: Path | None, current_backend) -> Loaded:
    """Build the new pair's models (blocking: call it in a worker thread, not the model thread)."""
    from actors.backends import setup_backend
    from actors.runtime import setup_scorer

    run_cfg = with_models(cfg, policy_dir, ppm_dir)
    backend = None
    if not swaps_in_place(current_backend):
        with timed(log, f"load policy {pair.policy_version}", slow_s=0.5):
            backend = setup_backend(run_cfg)
        backend.version = pair.policy_version
    scorer = None
    if ppm_dir is not None:
        with timed(log, f"load PPM {pair.ppm_version}", slow_s=0.5):
            scorer = setup_scorer(run_cfg)
        scorer.version = pair.ppm_version
    return Loaded(pair, policy_dir, backend, scorer)


def install(worker, loaded: Loaded) -> None:
    """Serve ``loaded`` from the next call on. Runs in the model thread, between two calls."""
    if loaded.backend is None:
        # The engine reloads in place; on failure it keeps its old weights and we keep the old PPM.
        worker.backend.load_weights(str(loaded.policy_dir), loaded.pair.policy_version)
        old = None
    else:
        old, worker.backend = worker.backend, loaded.backend
    worker.scorer = loaded.scorer
    if old is not None:
        old.close()


def prune(cache_dir: Path, keep: list[Path], idle_s: float = 3600.0) -> None:
    """Remove cached checkpoints other than ``keep`` that nobody used for ``idle_s``.

    The idle rule protects a directory another actor sharing the cache is loading right now.
    """
    keep_set = {p.resolve() for p in keep}
    now = time.time()
    for kind in ("policy", "ppm"):
        for d in (Path(cache_dir) / kind).glob("*"):
            if (
                d.is_dir()
                and not d.name.startswith(".")
                and d.resolve() not in keep_set
                and d.stat().st_mtime < now - idle_s
            ):
                shutil.rmtree(d, ignore_errors=True)
                d.with_name(f".{d.name}.lock").unlink(missing_ok=True)
