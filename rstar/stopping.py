"""Run a service's coroutine until SIGINT or SIGTERM asks it to stop; end the process in bounded time.

    result = run_until_signal(lambda stop: run_actor(cfg, stop), deadline_s=actor_stop_bound_s(cfg))

``main(stop)`` gets an ``asyncio.Event`` that is set by the first SIGINT or SIGTERM; it is
expected to finish its work in flight and return. The handlers live only as long as the loop
``asyncio.run`` makes, so the process's own handlers are back afterwards.

The bound (measured by ``benchmarks/stop_time.py``, checked by ``tests/integration/
test_stop_bound.py`` beside a CPU hog): a service stops within its own orderly path, and a process
never outlives that path by more than seconds:

- **Actor**: exits within ``actor.grace_s + STOP_MARGIN_S`` (30 s) of SIGTERM, on any load
  (``actor_stop_bound_s``); typically ``grace_s`` + 1-3 s.
- **Learner**: exits within ``learner.stop_timeout_s`` (default 60 s) of SIGTERM; typically the
  rest of one optimizer step and a state save, a few seconds on the nano preset.
- **rstar up**: each child gets its own bound plus ``CHILD_SLACK_S`` before it is SIGKILLed,
  then the NATS server its 10 s (``up_stop_bound_s``).

How, and what made stops slow before (``docs/bench/stop_time.json``):

- The first signal sets ``stop`` and arms a watchdog thread: a process still running
  ``deadline_s`` later is ended at once (exit code ``FORCED_EXIT``, 124). A second SIGINT/SIGTERM
  ends it at once (128 + the signal). The handler is a plain ``signal.signal`` one, so it runs
  (and arms the watchdog) even while the event loop is blocked in synchronous work, such as
  loading a model. A forced exit loses nothing published: it interrupts what ``kill -9``
  interrupts (unacked problems are redelivered after ack_wait, a training resumes from its last
  saved state, an uncommitted ingest batch is redelivered).
- asyncio's default executor does not wait at the end for threads still working for cancelled
  tasks (a grading call, a checkpoint load, a lock wait): they are left behind, not joined.
- ``exit_now`` ends the process once the command is done, without the interpreter's teardown:
  no join of leftover threads — a model thread inside the ``generate()`` call of a search that
  was stopped (one call: seconds on a loaded CPU, longer for a bigger model) — and no
  finalization of torch, transformers and the rest, which take seconds on a loaded machine.
  ``app.cli.main`` calls it after every command that ran a service here (``served()``); atexit
  handlers run first and output is flushed.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import os
import signal
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, NoReturn, TypeVar

if TYPE_CHECKING:
    from rstar.config import Config

T = TypeVar("T")

FORCED_EXIT = 124  # the watchdog ended the process (as timeout(1) reports a timeout)
STOP_MARGIN_S = 30.0  # an actor's orderly stop beyond its grace: notice, nak, drain, close
CHILD_SLACK_S = 10.0  # rstar up: what a child's own watchdog may take beyond its bound
BROKER_STOP_S = 10.0  # rstar up: the embedded NATS server's clean shutdown (then SIGKILL)
EXIT_HANDLERS_S = 10.0  # exit_now: the most the atexit handlers may take

_served = False


def actor_stop_bound_s(cfg: Config) -> float:
    """Seconds from SIGTERM within which an actor process has exited."""
    return cfg.actor.grace_s + STOP_MARGIN_S


def learner_stop_bound_s(cfg: Config) -> float:
    """Seconds from SIGTERM within which a learner process has exited."""
    return cfg.learner.stop_timeout_s


def child_stop_wait_s(cfg: Config) -> float:
    """How long ``rstar up`` waits for its children after SIGTERM before it SIGKILLs them."""
    return max(actor_stop_bound_s(cfg), learner_stop_bound_s(cfg)) + CHILD_SLACK_S


def up_stop_bound_s(cfg: Config) -> float:
    """Seconds from SIGTERM within which ``rstar up`` has exited, its children and server stopped."""
    return child_stop_wait_s(cfg) + BROKER_STOP_S + CHILD_SLACK_S


def served() -> bool:
    """Whether this process ran a service through ``run_until_signal`` (its exit is ``exit_now``)."""
    return _served


def _say(text: str) -> None:
    """A line on stderr without locks (the main thread may hold the logging or stderr ones)."""
    with contextlib.suppress(OSError):
        os.write(2, f"rstar: {text}\n".encode())


def _hung_exit(code: int) -> None:
    _say(f"atexit handlers still running after {EXIT_HANDLERS_S:.0f}s: exiting now")
    os._exit(code)


def exit_now(code: int = 0) -> NoReturn:
    """End the process: atexit handlers, flush stdout/stderr, then ``os._exit`` — no thread joins,
    no interpreter teardown (see the module doc). Handlers that hang get ``EXIT_HANDLERS_S``."""
    hang = threading.Timer(EXIT_HANDLERS_S, _hung_exit, args=(code,))
    hang.daemon = True
    hang.start()
    try:
        atexit._run_exitfuncs()  # logging.shutdown, the math-verify workers, ...
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(code)


class _LeavingExecutor(concurrent.futures.ThreadPoolExecutor):
    """asyncio's default executor in a service: at the loop's end, work still running in it for a
    cancelled task is left behind instead of waited for (``asyncio.run`` would wait for it)."""

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        super().shutdown(wait=False, cancel_futures=True)


class _Watchdog:
    def __init__(self, deadline_s: float | None):
        self.deadline_s = deadline_s
        self.disarmed = threading.Event()
        self._armed = False

    def arm(self, why: str) -> None:
        if self._armed or self.deadline_s is None:
            return
        self._armed = True
        threading.Thread(target=self._run, args=(why,), name="stop-watchdog", daemon=True).start()

    def _run(self, why: str) -> None:
        if not self.disarmed.wait(self.deadline_s):
            _say(f"still running {self.deadline_s:.0f}s after {why}: exiting now (exit {FORCED_EXIT})")
            os._exit(FORCED_EXIT)


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[T]], deadline_s: float | None = None) -> T:
    """``main(stop)`` until it returns; the first SIGINT/SIGTERM sets ``stop`` and, with
    ``deadline_s``, ends the process if it is still running that long after; a second one ends
    it at once."""
    global _served
    _served = True
    watchdog = _Watchdog(deadline_s)

    async def guarded() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.set_default_executor(_LeavingExecutor(thread_name_prefix="asyncio"))
        seen: list[int] = []

        def on_signal(signum: int, frame: object) -> None:
            name = signal.Signals(signum).name
            seen.append(signum)
            if len(seen) > 1:
                _say(f"second {name}: exiting now")
                os._exit(128 + signum)
            watchdog.arm(name)
            loop.call_soon_threadsafe(stop.set)

        previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            return await main(stop)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    try:
        return asyncio.run(guarded())
    finally:
        watchdog.disarmed.set()
