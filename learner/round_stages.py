"""The stages of a round, one function per state of ``rounds.state`` (see ``learner.rounds``).

Each stage does its work, then commits its results and the move to the next state in one
transaction (``_commit``), so a stage either happened completely or is redone on restart. Models
are written under ``data_dir/learner/round-R/`` (``policy``, ``ppm``, their training reports
``sft.json`` / ``ppm.json`` and resumable work dirs); a stage that finds its model complete
(every file matching the MANIFEST) does not train it again.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import Engine

from learner import data
from learner.state import Learner, complete, round_dir
from rstar.config import Config
from rstar.log import get_logger
from rstar.schemas import CollectCounts, DataCounts, Problem, RequeueLeftOut, RoundEval
from store import learner_tables as lt

if TYPE_CHECKING:
    from broker.client import Broker


log = get_logger(__name__)
T = TypeVar("T")


def base_model(cfg: Config) -> str:
    return cfg.learner.base_model or cfg.model.policy


def start_model(cfg: Config, round_no: int) -> Path:
    """The model round ``round_no``'s policy is fine-tuned from (``learner.finetune_from``)."""
    from rstar.models import resolve_model_dir

    how = cfg.learner.finetune_from
    if round_no == 0 or how == "base":
        return resolve_model_dir(base_model(cfg), cfg.model.cache_dir)
    start = round_dir(cfg, 0 if how == "bootstrap" else round_no - 1) / "policy"
    if not complete(start):
        raise RuntimeError(
            f"round {round_no} fine-tunes from {start} (learner.finetune_from = {how!r}), "
            "which is not a complete checkpoint"
        )
    return start


def round_train_config(cfg: Config, round_no: int):
    """The SFT settings of a round: round 0 takes ``bootstrap_lr`` / ``bootstrap_steps`` when set."""
    tc = cfg.train
    if round_no != 0:
        return tc
    return tc.model_copy(
        update={"lr": tc.bootstrap_lr or tc.lr, "steps": tc.steps if tc.bootstrap_steps is None else tc.bootstrap_steps}
    )


async def _in_thread(learner: Learner, fn: Callable[..., T], *args: Any) -> T:
    """Run a trainer in a worker thread; it raises TrainingInterrupted when ``learner.stop`` is set."""
    learner.training = True
    try:
        return await asyncio.to_thread(fn, *args, learner.progress, learner.stop)
    finally:
        learner.training = False


def _write_json(path: Path, doc: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {"note": f"{path.name} not found"}


async def _commit(
    learner: Learner, round_no: int, expect: str, to: str, parts: RoundEval, sel=None, nxt: int | None = None, **values
) -> bool:
    """One transaction: the stage's results (its ``parts`` of the round's eval), the state move,
    and (publishing) the next round."""

    def run() -> bool:
        with lt.begin(learner.engine) as conn:
            if sel is not None:
                data.write_selection(conn, round_no, sel)
            lt.merge_eval(conn, round_no, parts)
            moved = lt.advance(conn, round_no, expect, to, **values)
            if moved and nxt is not None:
                lt.open_round(conn, nxt, learner.cfg.learner.round_quota)
            return moved

    moved = await asyncio.to_thread(run)
    if moved:
        log.info("round %d: %s -> %s", round_no, expect, to)
    else:
        log.warning("round %d was no longer %r (another learner?): re-reading", round_no, expect)
    return True


async def _collect(learner: Learner, row: dict) -> bool:
    lc, r = learner.cfg.learner, row["round"]
    boot = None
    if r == 0 and lc.teacher != "none":
        from learner.bootstrap import run_bootstrap

        boot = (await run_bootstrap(learner.cfg, learner.engine, learner.exclude)).as_dict()
    counts = await asyncio.to_thread(lt.tree_counts, learner.engine, r)
    # A collecting round follows the configured quota (a restart with a new round_quota applies it).
    quota = row["quota"] if r == 0 else lc.round_quota
    if boot is None and not lc.control:  # a control round trains on no actor tree: nothing to wait for
        age = (datetime.now(UTC) - row["started_at"]).total_seconds()
        if counts["trees"] < quota and (age < lc.round_time_limit_s or counts["trees"] == 0):
            return False
    sel = await asyncio.to_thread(data.round_selection, learner.engine, learner.cfg, r, learner.exclude)
    if not sel.sft:
        log.warning("round %d: no correct trajectory to train on yet; collecting on", r)
        return False
    solve_rate = round(counts["solved_problems"] / counts["problems"], 4) if counts["problems"] else 0.0
    parts = RoundEval(
        bootstrap=boot,
        collect=CollectCounts(**counts, solve_rate=solve_rate),
        data=DataCounts(
            sft_examples=len(sel.sft),
            ppm_pairs=len(sel.pairs),
            problems=sel.problems,
            solved_problems=sel.solved_problems,
        ),
    )
    return await _commit(learner, r, "collecting", "training_policy", parts, sel=sel, quota=quota)


async def _train_policy(learner: Learner, row: dict) -> bool:
    from learner.sft import train_sft

    r, d = row["round"], round_dir(learner.cfg, row["round"])
    if not complete(d / "policy"):
        examples = await asyncio.to_thread(data.sft_examples, learner.engine, r)
        start = await asyncio.to_thread(start_model, learner.cfg, r)
        rep = await _in_thread(
            learner, train_sft, examples, start, d / "policy", round_train_config(learner.cfg, r), d / "sft-work"
        )
        _write_json(d / "sft.json", asdict(rep) | {"from": str(start)})
    return await _commit(learner, r, "training_policy", "training_ppm", RoundEval(sft=_read_json(d / "sft.json")))


async def _train_ppm(learner: Learner, row: dict) -> bool:
    from learner.ppm_train import train_ppm

    r, d = row["round"], round_dir(learner.cfg, row["round"])
    if not complete(d / "ppm"):
        pairs = await asyncio.to_thread(data.ppm_pairs, learner.engine, r)
        if not pairs:
            no_ppm = RoundEval(ppm={"note": "no pairs: no PPM"})
            return await _commit(learner, r, "training_ppm", "publishing", no_ppm)
        trained = await _in_thread(
            learner, train_ppm, pairs, d / "policy", d / "ppm", learner.cfg.train, d / "ppm-work"
        )
        _write_json(d / "ppm.json", asdict(trained))
    rep = _read_json(d / "ppm.json")
    parts = RoundEval(ppm=rep, ppm_pairwise_acc=rep.get("heldout_accuracy"))
    return await _commit(learner, r, "training_ppm", "publishing", parts)


async def evaluate_published(learner: Learner, row: dict) -> None:
    """Evaluate a published round's pair and store the figures (``eval.accuracy``); no state move.

    Runs beside the round stages (``learner.rounds.run_evaluator``), so the actors search with
    the new pair while it is being evaluated; an interrupted evaluation resumes from the figures
    it stored, method by method.
    """
    from learner.round_eval import evaluate_round

    r, d = row["round"], round_dir(learner.cfg, row["round"])
    ppm = d / "ppm" if complete(d / "ppm") else None

    async def store(parts: RoundEval, clear: tuple[str, ...] = ()) -> None:
        def run() -> None:
            with lt.begin(learner.engine) as conn:
                lt.merge_eval(conn, r, parts, clear)

        await asyncio.to_thread(run)

    # Each finished figure is stored at once (``accuracy_partial``): a restart resumes from it.
    done = RoundEval.of(row["eval"]).accuracy_partial
    figures = await evaluate_round(
        learner.cfg,
        learner.sets,
        d / "policy",
        ppm,
        r,
        done=done,
        on_figure=lambda figs: store(RoundEval(accuracy_partial=figs)),
    )
    await store(RoundEval(accuracy=figures), clear=("accuracy_partial",))  # the partial figures are done with
    log.info("round %d: evaluated in %.0fs", r, figures.seconds)


async def requeue_unsolved(cfg: Config, engine: Engine, broker: Broker, round_no: int):
    """Queue again, with ``requeue_rollouts``, the problems round ``round_no`` left unsolved that the
    pool may hold (``learner.pool``: never a held-out evaluation problem, the teacher's only if
    ``learner.pool_include_teacher``); returns that ``Pool`` (what was left out is logged)."""
    from broker.problems import requeue_problem
    from learner.pool import Pool, select_pool

    lc = cfg.learner
    unsolved = await asyncio.to_thread(lt.unsolved_problems, engine, round_no, lc.requeue_rollouts)
    pool = await asyncio.to_thread(select_pool, cfg, unsolved) if unsolved else Pool()
    for note in pool.notes():
        log.warning("round %d re-queue: %s", round_no, note)
    for p in pool.problems:  # the same attempt id twice is deduplicated by the broker
        meta = {**p.meta, "rollouts": lc.requeue_rollouts}
        await requeue_problem(
            broker,
            Problem(id=p.id, source=p.source, question=p.question, answer=p.answer, meta=meta),
            attempt=f"r{round_no + 1}",
        )
    return pool


async def _publish(learner: Learner, row: dict) -> bool:
    from learner.publish import publish_pair

    if learner.broker is None:
        raise RuntimeError("publishing needs a broker connection (Learner.broker)")
    lc, r, d = learner.cfg.learner, row["round"], round_dir(learner.cfg, row["round"])
    ppm = d / "ppm" if complete(d / "ppm") else None
    ev = RoundEval.of(row["eval"])
    pub = await publish_pair(
        learner.broker,
        learner.engine,
        round_no=r,
        policy_dir=d / "policy",
        ppm_dir=ppm,
        announce_ppm=ppm is not None and r + 1 >= lc.ppm_init_from_round,
        base=base_model(learner.cfg),
        policy_metrics={"sft": ev.sft},
        ppm_metrics={"ppm": ev.ppm},
    )
    requeued = await requeue_unsolved(learner.cfg, learner.engine, learner.broker, r)
    last = bool(lc.max_rounds) and r >= lc.max_rounds
    left_out = RequeueLeftOut(held_out=len(requeued.held_out), teacher=len(requeued.teacher))
    return await _commit(
        learner,
        r,
        row["state"],
        "published",
        RoundEval(
            requeued=len(requeued.problems),
            requeue_left_out=left_out if requeued.held_out or requeued.teacher else None,
        ),
        nxt=None if last else r + 1,
        policy_version=pub.policy.version,
        ppm_version=pub.ppm.version if pub.ppm else None,
    )


STAGES = {
    "collecting": _collect,
    "training_policy": _train_policy,
    "training_ppm": _train_ppm,
    "publishing": _publish,
    "evaluating": _publish,
}  # rounds stored before evaluation ran beside publishing
