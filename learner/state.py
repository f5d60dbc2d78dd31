"""The learner's state: what the round controller works with, where a round's files live, and
whether a stage's model is complete.

    learner = make_learner(cfg, engine, broker)
    round_dir(cfg, 3) / "policy"                # data_dir/learner/round-3/policy
    complete(round_dir(cfg, 3) / "policy")      # every file matches its MANIFEST

A round's state (``STATES``) lives in the store's ``rounds`` table; ``learner.rounds`` moves it
on and ``learner.round_stages`` does each stage's work.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine

from rstar.checkpoints import CheckpointError, verify_dir
from rstar.config import Config
from rstar.schemas import Problem

if TYPE_CHECKING:
    from broker.client import Broker

STATES = ("collecting", "training_policy", "training_ppm", "publishing", "published")


@dataclass
class Learner:
    """What the controller works with; ``stop`` interrupts training between optimizer steps."""

    cfg: Config
    engine: Engine
    broker: Broker | None  # needed to publish
    sets: dict[str, list[Problem]]
    exclude: frozenset[str]
    stop: threading.Event = field(default_factory=threading.Event)
    progress: bool = False
    training: bool = False  # a training thread is running (it stops itself on ``stop``)


def make_learner(cfg: Config, engine: Engine, broker=None, progress: bool = False) -> Learner:
    from learner.round_eval import eval_ids, eval_sets

    sets = eval_sets(cfg)
    return Learner(cfg, engine, broker, sets, eval_ids(sets), progress=progress)


def finished(cfg: Config, row: dict | None) -> bool:
    """The last configured round is published (``max_rounds``); nothing more to do."""
    return (
        row is not None
        and row["state"] == "published"
        and bool(cfg.learner.max_rounds)
        and row["round"] >= cfg.learner.max_rounds
    )


def round_dir(cfg: Config, round_no: int) -> Path:
    """``data_dir/learner/round-R``: the round's models, training reports and work dirs."""
    return cfg.data_dir / "learner" / f"round-{round_no}"


def complete(d: Path) -> bool:
    """True when ``d`` is a finished checkpoint (every file matches its MANIFEST)."""
    try:
        verify_dir(d)
        return True
    except CheckpointError:
        return False
