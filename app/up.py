"""``rstar up``: the whole system on one machine, each part its own process, with a live view.

    rstar up [--preset quick] [--actors N] [--dataset synthetic] [--rounds N] [--duration 2h]

What it does, in order:
1. resolves the config (preset < --config < env < --set) and saves it as
   ``<data_dir>/run/config.json``; every child gets exactly that file;
2. starts (or joins) the embedded NATS server, its JetStream store in ``<data_dir>/nats``;
3. migrates the store (SQLite in ``<data_dir>/rstar.db`` by default);
4. queues the problem pool (stable ids: a rerun queues nothing new; ``learner.pool``: never a
   held-out evaluation problem, the teacher's demonstrated problems only with ``--include-teacher``);
5. starts the learner (ingest + rounds), N actors and the API as children
   (``app.supervisor``; logs in ``<data_dir>/run/logs``), restarting any that dies;
6. shows a dashboard until Ctrl-C, ``--duration`` or ``--rounds`` says stop (``--rounds N``: round N
   published, evaluated and reported served by an actor's heartbeat, or ``SERVE_GRACE_S`` after
   it was out, with a warning), then stops the children (SIGTERM; SIGKILL for one still running
   after its own stop bound + 10 s) and the server: on SIGTERM, ``rstar up`` exits within
   ``rstar.stopping.up_stop_bound_s`` (max(actor.grace_s + 30 s, learner.stop_timeout_s) + 30 s).

Running it again resumes: the store holds the rounds and trees, the broker the queue and the
model pointer, the learner continues the round it was in, actors load the current pointer.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from app.supervisor import Supervisor, rstar_argv
from rstar.config import Config, dump_config
from rstar.log import get_logger
from rstar.stopping import child_stop_wait_s, run_until_signal, up_stop_bound_s

log = get_logger(__name__)

PRESETS = Path(__file__).parent / "presets"
SERVE_GRACE_S = 180.0  # --rounds N: how long to wait for an actor to serve round N's pair once it is out


@dataclass
class UpOptions:
    actors: int = 1
    dataset: str | None = "synthetic"
    problems_file: str | None = None
    limit: int | None = None
    rounds: int = 0  # stop once this round is published, evaluated and served (0 = run until stopped)
    duration_s: float = 0.0  # stop after this long (0 = run until stopped)
    api: bool = True
    live: bool = True


def preset_path(name: str) -> Path:
    p = PRESETS / f"{name}.toml"
    if not p.is_file():
        names = ", ".join(sorted(x.stem for x in PRESETS.glob("*.toml")))
        raise ValueError(f"unknown preset {name!r} (have: {names})")
    return p


async def seed_problems(cfg: Config, opts: UpOptions) -> dict:
    """Queue the pool (``learner.pool``: no held-out evaluation problem, the teacher's only if asked)."""
    from broker.client import open_broker
    from broker.problems import add_problems
    from learner.pool import pool_problems, select_pool
    from rstar.problems import read_problems_jsonl

    if opts.problems_file:
        pool = select_pool(cfg, read_problems_jsonl(opts.problems_file), opts.limit)
    elif opts.dataset:
        pool = pool_problems(cfg, opts.dataset, opts.limit)
    else:
        return {"published": 0}
    for note in pool.notes():
        log.warning("problem pool: %s", note)
    async with open_broker(cfg, "rstar-up-seed") as b:
        counts = await add_problems(b, pool.problems)
    return {
        "problems": len(pool.problems),
        "published": counts.published,
        "already_queued": counts.duplicates,
        **pool.counts(),
    }


async def _watch(
    cfg: Config, engine, sup: Supervisor, opts: UpOptions, stop: asyncio.Event, start_children: Callable[[], None]
) -> None:
    """Read the starting state, start the children, then show the dashboard until told to stop.

    The starting state (trees, pointer) is read before any child runs, so a resumed run's old
    trees and pointer are never taken for this run's first tree or first swap, however late the
    first live snapshot comes on a loaded machine.
    """
    from rich.console import Console
    from rich.live import Live

    from app.dashboard import Snapshot, View, render
    from broker.client import open_broker
    from learner.round_eval import has_eval_sets

    first_tree_at = first_swap_at = done_at = None
    evaluates = has_eval_sets(cfg)
    last = Snapshot()
    async with open_broker(cfg, "rstar-up-view", setup=False) as b:
        view = View(cfg, engine, b)
        try:
            base = await view.snapshot()
        except Exception as e:
            log.warning("could not read the starting state (%s: %s): milestones count from zero", type(e).__name__, e)
            base = Snapshot()
        start_children()
        started = time.monotonic()
        with Live(
            render(last, sup.status(), 0.0), console=Console(), refresh_per_second=1, auto_refresh=opts.live
        ) as live:
            while not stop.is_set():
                sup.poll()
                try:
                    last = await view.snapshot()
                except Exception as e:  # the view must not take the system down; show what failed
                    last.error = f"{type(e).__name__}: {e}"
                elapsed = time.monotonic() - started
                if first_tree_at is None and last.trees > base.trees:
                    first_tree_at = elapsed
                    log.info("first tree stored after %.0fs", elapsed)
                if first_swap_at is None and last.swapped_actors and last.pointer != base.pointer:
                    first_swap_at = elapsed
                    log.info("first checkpoint swap observed after %.0fs", elapsed)
                last.first_tree_s, last.first_swap_s = first_tree_at, first_swap_at
                live.update(render(last, sup.status(), elapsed))
                if not opts.live:
                    live.refresh()
                if opts.duration_s and elapsed >= opts.duration_s:
                    log.info("--duration reached: stopping")
                    return
                if (
                    opts.rounds
                    and last.published_round >= opts.rounds
                    and (last.evaluated_round >= opts.rounds or not evaluates)
                ):
                    # A bounded run ends once its last pair is in service, not merely published:
                    # wait (bounded) until an actor's heartbeat reports the pointer's policy.
                    done_at = done_at if done_at is not None else elapsed
                    if last.swapped_actors or not opts.actors:
                        log.info("round %d published and evaluated: stopping", opts.rounds)
                        return
                    if elapsed - done_at >= SERVE_GRACE_S:
                        log.warning(
                            "round %d published and evaluated, but no actor reported serving it within %.0fs: stopping",
                            opts.rounds,
                            SERVE_GRACE_S,
                        )
                        return
                try:
                    await asyncio.wait_for(stop.wait(), 2.0)
                except TimeoutError:
                    pass


def run_up(cfg: Config, opts: UpOptions, config_file: str | None, overrides: list[str]) -> None:
    from broker.server import embedded_server
    from store.db import open_store

    if cfg.learner.teacher != "none":  # actors wait for the bootstrap policy (see ActorConfig)
        cfg = cfg.model_copy(update={"actor": cfg.actor.model_copy(update={"wait_for_model": True})})
    run_dir = (cfg.data_dir / "run").resolve()
    resolved = run_dir / "config.json"
    dump_config(cfg, resolved)
    env = dict(os.environ)
    with embedded_server(cfg) as url:
        env["RSTAR_BROKER__URL"] = url
        cfg = cfg.model_copy(update={"broker": cfg.broker.model_copy(update={"url": url})})
        engine = open_store(cfg.store_url)
        seeded = asyncio.run(seed_problems(cfg, opts))
        log.info("problem pool: %s", seeded)
        sup = Supervisor(run_dir / "logs", env)

        def start_children() -> None:
            sup.add("learner", rstar_argv(["learner"], str(resolved), []))
            for i in range(opts.actors):
                sup.add(f"actor-{i}", rstar_argv(["actor"], str(resolved), [f"actor.id=actor-{i}"]))
            if opts.api:
                sup.add("api", rstar_argv(["serve"], str(resolved), []))

        # Children run in their own sessions (Ctrl-C does not reach them): once one is started,
        # any failure, even starting the next, must still stop it.
        try:
            run_until_signal(lambda stop: _watch(cfg, engine, sup, opts, stop, start_children), up_stop_bound_s(cfg))
        finally:
            log.info("stopping %d processes…", len(sup.children))
            sup.stop(grace_s=child_stop_wait_s(cfg))  # each child bounds its own stop: see rstar.stopping
            engine.dispose()
    log.info("stopped; run `rstar up` again to resume (logs: %s)", run_dir / "logs")
