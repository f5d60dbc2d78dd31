"""Run rstar services as child processes, restart the ones that die, stop them all cleanly.

Used by ``rstar up`` (one machine, every part its own process, as in the compose cluster).
Each child is ``python -m rstar <command>`` with the parent's config file and overrides; its
stdout/stderr go to ``<log_dir>/<name>.log``. A child that exits on its own is restarted with
exponential backoff (1 s … 60 s), like compose's ``restart: unless-stopped``; one that keeps
dying within seconds is reported in ``status()``. The backoff grows with the child's consecutive
quick deaths (within ``QUICK_S`` of a start), not with its restarts over the whole run: a child
that ran a while and then dies early after a restart or two is back in 1-2 s, not 60 s (Docker
too resets its restart delay once a container has run a while). ``stop()`` sends SIGTERM to all,
waits ``grace_s``, then SIGKILLs what is left. A supervisor killed outright (SIGKILL, OOM) cannot do
that: each child also watches for its parent's death (``exit_with_parent``) and then stops
itself with SIGTERM, so no orphaned learner or actor goes on beside the next ``rstar up``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from rstar.log import get_logger

log = get_logger(__name__)

PARENT_ENV = "RSTAR_SUPERVISOR_PID"
QUICK_S = 30.0  # a child that exits sooner than this after its start died "quickly"


def exit_with_parent(poll_s: float = 1.0) -> None:
    """In a supervised child: SIGTERM ourselves (the graceful path) once the supervisor is gone.

    A no-op outside a supervisor. Polls ``getppid`` from a daemon thread: when the parent dies
    the child is re-parented, so the parent id changes."""
    pid = os.environ.pop(PARENT_ENV, None)  # not inherited further (sandbox workers, nats-server)
    if not pid or not pid.isdigit():
        return

    def watch() -> None:
        while os.getppid() == int(pid):
            time.sleep(poll_s)
        log.warning("supervisor pid %s is gone: stopping", pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


@dataclass
class Child:
    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen | None = None
    restarts: int = 0
    quick_deaths: int = 0  # consecutive exits within QUICK_S of a start (the backoff's exponent)
    started_at: float = 0.0
    next_start: float = 0.0
    last_exit: int | None = None
    done: bool = False  # one-shot children that finished with 0 are not restarted
    one_shot: bool = False


def rstar_argv(command: list[str], config: str | None, overrides: list[str]) -> list[str]:
    argv = [sys.executable, "-m", "app", *command]
    if config:
        argv += ["--config", config]
    for o in overrides:
        argv += ["--set", o]
    return argv


@dataclass
class Supervisor:
    log_dir: Path
    env: dict[str, str]
    children: list[Child] = field(default_factory=list)

    def add(self, name: str, argv: list[str], one_shot: bool = False) -> Child:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        child = Child(name, argv, self.log_dir / f"{name}.log", one_shot=one_shot)
        self.children.append(child)
        self._start(child)
        return child

    def _start(self, c: Child) -> None:
        with open(c.log_path, "ab") as out:
            out.write(f"\n--- start {time.strftime('%Y-%m-%d %H:%M:%S')}: {' '.join(c.argv)}\n".encode())
            out.flush()
            # A new session: Ctrl-C in the terminal reaches rstar up only, which stops children in order.
            c.proc = subprocess.Popen(
                c.argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**self.env, PARENT_ENV: str(os.getpid())},
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        c.started_at = time.monotonic()

    def poll(self) -> None:
        """Restart children that exited (with backoff); call this periodically."""
        now = time.monotonic()
        for c in self.children:
            if c.done or c.proc is None:
                continue
            code = c.proc.poll()
            if code is None:
                continue
            if c.next_start == 0.0:
                c.last_exit = code
                if c.one_shot and code == 0:
                    c.done = True
                    continue
                quick = now - c.started_at < QUICK_S
                c.quick_deaths = c.quick_deaths + 1 if quick else 0
                delay = min(60.0, 2.0 ** min(c.quick_deaths - 1, 6)) if quick else 1.0
                c.next_start = now + delay
                log.warning("%s exited with %s; restarting in %.0fs (log: %s)", c.name, code, delay, c.log_path)
            elif now >= c.next_start:
                c.restarts += 1
                c.next_start = 0.0
                self._start(c)

    def alive(self, name: str) -> bool:
        return any(c.name == name and c.proc is not None and c.proc.poll() is None for c in self.children)

    def status(self) -> list[dict]:
        return [
            {
                "name": c.name,
                "pid": c.proc.pid if c.proc else None,
                "running": c.proc is not None and c.proc.poll() is None,
                "restarts": c.restarts,
                "last_exit": c.last_exit,
                "done": c.done,
            }
            for c in self.children
        ]

    def stop(self, grace_s: float = 30.0) -> None:
        running = [(c, c.proc) for c in self.children if c.proc is not None and c.proc.poll() is None]
        for _, proc in running:
            try:
                proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        for c, proc in running:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop within %.0fs: killing it", c.name, grace_s)
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:  # its whole group exited just now: nothing to kill
                    pass
                proc.wait()
