"""The round controller: collect → select → train policy → train PPM → publish → next, and evaluate.

    learner = make_learner(cfg, engine, broker)
    await run_controller(learner, stop)             # rstar learner runs this beside ingest

Round R's state lives in the ``rounds`` table and moves one way:
``collecting → training_policy → training_ppm → publishing → published``; each move is one
transaction together with what the finished stage produced (the selected rows, the training
reports), so a restarted learner continues the round it was in and redoes no finished stage.
Evaluation does not gate publishing: a second loop (``run_evaluator``) evaluates each published
round whose figures are missing while the actors already search with its pair (on a CPU box the
evaluation of round R overlaps the collection of round R + 1 instead of idling the actors). Stage outputs on disk (``data_dir/learner/round-R/{policy,ppm}``, written
atomically with a MANIFEST) are checked before training; a half-trained model resumes from its
training state (``learner.train_loop``).

- **collecting**: round 0 runs the bootstrap teacher (``learner.bootstrap``) and closes when it is
  done. Round R >= 1 closes when ``round_quota`` trees with ``round == R`` are in the store, or
  ``round_time_limit_s`` after it opened if it has any tree. Closing selects the training data
  (``learner.data``; evaluation problems excluded). A round whose trees solved nothing trains its
  policy on every round's selection so far rather than stopping the loop.
- **training_policy**: SFT from the base model (``learner.base_model``), as the paper, or from
  round 0's or the previous round's policy (``learner.finetune_from``); round 0 may take its own
  learning rate and step budget (``train.bootstrap_lr`` / ``bootstrap_steps``). A control run
  (``learner.control``) trains every round on the teacher's trees only.
- **training_ppm**: PPM from this round's policy, when the round has pairs (round 0's linear
  teacher trees have none: round 0 publishes a policy without a PPM).
- **publishing**: Object Store, checkpoints rows, pointer ``round = R + 1`` (``learner.publish``);
  problems round R left unsolved are re-queued with ``meta["rollouts"] = requeue_rollouts``, by the
  pool's rule (``learner.pool``: never a held-out evaluation problem, nor the teacher's unless asked).
- **evaluation** (after publishing, beside the next round): greedy / majority@k / MCTS@k, and
  MCTS+PPM@k when the round has a PPM, on the held-out sets, stored as ``eval.accuracy`` (counts
  per set, method and level: ``learner.round_eval``); PPM pairwise accuracy comes from PPM training.

Contract with the actors (DESIGN §4). An actor tags each tree with the pointer's ``round`` (0
before any pointer exists), drops the few-shot prompt once it runs a published policy (they are
fine-tuned on the bare prompt), searches a problem with ``meta["rollouts"]`` rollouts when set,
and enables PPM-augmented search (``search.ppm_init``) exactly when the pointer carries a PPM —
the learner announces a PPM only for rounds ``>= learner.ppm_init_from_round`` (paper: 3), so
rounds 1-2 stay terminal-guided and the actors need no learner setting of their own.
Trees that arrive for a round after it closed stay in the store, tagged with that round; later
rounds select from them when ``sft_rounds_window > 1`` (the learning preset: 72 trees of round 1
arrived in all, 16 closed it).
"""

from __future__ import annotations

import asyncio

from learner.round_stages import STAGES
from learner.state import STATES, Learner, finished
from learner.train_loop import TrainingInterrupted
from rstar.log import get_logger
from store import learner_tables as lt

log = get_logger(__name__)


async def step(learner: Learner) -> bool:
    """Do the current round's next stage; False when there is nothing to do now (waiting)."""
    row = await asyncio.to_thread(lt.last_round, learner.engine)
    if row is None or (row["state"] == "published" and not finished(learner.cfg, row)):
        nxt = 0 if row is None else row["round"] + 1
        quota = (
            learner.cfg.learner.teacher_problems
            if nxt == 0 and learner.cfg.learner.teacher != "none"
            else learner.cfg.learner.round_quota
        )

        def opened() -> None:
            with lt.begin(learner.engine) as conn:
                lt.open_round(conn, nxt, quota)

        await asyncio.to_thread(opened)
        return True
    if row["state"] == "published":
        return False
    if row["state"] not in STAGES:
        raise RuntimeError(f"round {row['round']} is in unknown state {row['state']!r} (known: {STATES})")
    return await STAGES[row["state"]](learner, row)


async def _until_done_or_stop(coro, stop: asyncio.Event, name: str) -> asyncio.Task:
    """Run ``coro`` as a task; return it once it is done or ``stop`` is set (it may still run)."""
    work = asyncio.create_task(coro, name=name)
    waiter = asyncio.create_task(stop.wait(), name=f"{name}-stop")
    await asyncio.wait({work, waiter}, return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    return work


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass


async def run_controller(learner: Learner, stop: asyncio.Event, exit_when_done: bool = False) -> None:
    """The round stages and the evaluator side by side; an error in one stops the other."""
    tasks = [
        asyncio.create_task(run_rounds(learner, stop, exit_when_done), name="learner-round-stages"),
        asyncio.create_task(run_evaluator(learner, stop, exit_when_done), name="learner-evaluator"),
    ]
    try:
        for fut in asyncio.as_completed(tasks):
            await fut
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run_evaluator(learner: Learner, stop: asyncio.Event, exit_when_done: bool = False) -> None:
    """Evaluate published rounds without figures, newest first, until ``stop`` (cancelled then).

    With ``exit_when_done`` it returns once the last configured round is published and evaluated.
    """
    from learner.round_stages import evaluate_published

    while not stop.is_set():
        row = await asyncio.to_thread(lt.unevaluated_round, learner.engine)
        if row is not None and learner.sets:
            work = await _until_done_or_stop(evaluate_published(learner, row), stop, "learner-evaluate")
            if not work.done():
                work.cancel()  # on restart it resumes from the figures it stored
            try:
                await work
            except asyncio.CancelledError:
                if not stop.is_set():
                    raise
            continue
        if exit_when_done and finished(learner.cfg, await asyncio.to_thread(lt.last_round, learner.engine)):
            return
        await _pause(stop, learner.cfg.learner.poll_s)


async def run_rounds(learner: Learner, stop: asyncio.Event, exit_when_done: bool = False) -> None:
    """Run rounds until ``stop`` is set, or the last round is published with ``exit_when_done``.

    On stop, a training stage finishes its current optimizer step, saves its state and returns;
    the other stages (bootstrap, publishing) are cancelled and redone on restart.
    """
    while not stop.is_set():
        work = await _until_done_or_stop(step(learner), stop, "learner-round-step")
        if not work.done():
            learner.stop.set()  # a training thread sees it after its current step
            if not learner.training:
                work.cancel()
        try:
            moved = await work
        except TrainingInterrupted as e:
            log.info("%s", e)
            return
        except asyncio.CancelledError:
            if stop.is_set():
                return
            raise
        if not moved:
            if exit_when_done and finished(learner.cfg, await asyncio.to_thread(lt.last_round, learner.engine)):
                return
            await _pause(stop, learner.cfg.learner.poll_s)
