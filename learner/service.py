"""``rstar learner``: ingest and the round controller in one long-running process.

    rstar learner [--exit-when-done] [--set learner.round_quota=100 ...]

Three named tasks on one broker connection and one store engine: ``learner-ingest``
(``learner.ingest.ingest_loop``: TREES → SQL, ack after commit), ``learner-rounds``
(``learner.rounds.run_controller``) and ``learner-dlq`` (``broker.dead_letters``: problems no
actor ever finished go to the DLQ). If one ends with an error, the others are stopped and the
error fails the process (a supervisor restarts it; all state is in the store and the broker, so
it continues where it was). SIGINT/SIGTERM set one stop event: ingest finishes the batch it is
writing, a training stage finishes its optimizer step and saves its resumable state, evaluation
and publishing are cancelled (redone on restart); then the connection is drained and the process
exits 0, within ``learner.stop_timeout_s`` of the signal whatever the load (else it is ended
with exit code 124 and resumes from its last saved state: ``rstar.stopping``).
"""

from __future__ import annotations

import asyncio

from rstar.config import Config
from rstar.log import get_logger
from rstar.stopping import learner_stop_bound_s, run_until_signal

log = get_logger(__name__)


async def run_learner(cfg: Config, stop: asyncio.Event, exit_when_done: bool = False, progress: bool = False) -> None:
    """Ingest and run rounds until ``stop`` is set (or the last round is published, if asked)."""
    from broker.client import open_broker
    from broker.dead_letters import watch_exhausted_problems
    from learner.ingest import ingest_loop
    from learner.rounds import run_controller
    from learner.state import make_learner
    from rstar.models import import_model_libs
    from store.db import open_store

    engine = await asyncio.to_thread(open_store, cfg.store_url)
    try:
        async with open_broker(cfg, "rstar-learner") as b:
            learner = await asyncio.to_thread(make_learner, cfg, engine, b, progress)
            await asyncio.to_thread(import_model_libs)  # before the threads that train and evaluate
            tasks = [
                asyncio.create_task(ingest_loop(b, engine, stop), name="learner-ingest"),
                asyncio.create_task(run_controller(learner, stop, exit_when_done), name="learner-rounds"),
                asyncio.create_task(watch_exhausted_problems(b, stop), name="learner-dlq"),
            ]
            log.info(
                "learner: ingesting into %s, rounds under %s",
                engine.url.render_as_string(hide_password=True),
                cfg.data_dir / "learner",
            )
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            stop.set()  # one task ended (stop, error, or all rounds done): end the others
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for task, res in zip(tasks, results):
                if isinstance(res, BaseException) and not isinstance(res, asyncio.CancelledError):
                    log.error("learner: task %s failed: %s: %s", task.get_name(), type(res).__name__, res)
                    raise res
    finally:
        engine.dispose()
    log.info("learner stopped")


def serve(cfg: Config, exit_when_done: bool = False, progress: bool = False) -> None:
    """The process: signal handlers, then ``run_learner`` until SIGINT/SIGTERM."""
    run_until_signal(lambda stop: run_learner(cfg, stop, exit_when_done, progress), learner_stop_bound_s(cfg))
