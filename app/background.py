"""``rstar up --detach`` and ``rstar down``: a long run that needs no terminal held open.

    rstar up --preset nano --rounds 5 --detach   # returns at once; the run goes on
    tail -f data/run/up.log                      # its dashboard and log
    rstar down                                   # stop it (its processes finish their work)

``start_detached`` starts the same ``rstar up`` command (without ``--detach``) in a session of its
own, its output appended to ``data_dir/run/up.log``, and records its pid in
``data_dir/run/up.pid``. ``stop_detached`` sends that process SIGTERM — ``rstar up`` then stops
its children as on Ctrl-C — and waits for it to exit; ``force`` then kills it and every process
started with the run's ``data_dir/run/config.json`` (its learner, actors and API, each in a
session of its own). A pid file whose process is gone (a crash, a reboot) counts as no run.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

PID_FILE = "up.pid"
LOG_FILE = "up.log"


class BackgroundError(RuntimeError):
    pass


def running_pid(run_dir: Path) -> int | None:
    """The pid of the detached ``rstar up`` of ``run_dir``, or None when none is alive."""
    try:
        pid = int((run_dir / PID_FILE).read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if b"up" in cmdline else None  # a recycled pid running something else is not ours


def start_detached(argv: list[str], run_dir: Path) -> int:
    """Start ``python -m app <argv>`` in its own session; its pid (also in ``run_dir/up.pid``)."""
    if (pid := running_pid(run_dir)) is not None:
        raise BackgroundError(f"a detached rstar up already runs here (pid {pid}): `rstar down` stops it")
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / LOG_FILE, "ab") as log, open(os.devnull, "rb") as null:
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", *argv],
            stdin=null,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    (run_dir / PID_FILE).write_text(f"{proc.pid}\n")
    return proc.pid


def _children(run_dir: Path) -> list[int]:
    """Pids of the processes ``rstar up`` started for this run: their command names its config."""
    marker = str((run_dir / "config.json").resolve()).encode()
    out = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker in (proc / "cmdline").read_bytes():
                out.append(int(proc.name))
        except OSError:
            continue
    return out


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        # a zombie (its parent has not reaped it yet) has stopped too
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except (ProcessLookupError, OSError):
        return True


def _wait_gone(pid: int, deadline: float) -> None:
    """Poll until ``pid`` has stopped or ``time.monotonic()`` passes ``deadline``."""
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.2)


def stop_detached(run_dir: Path, timeout_s: float = 120.0, force: bool = False) -> dict:
    """SIGTERM the detached run and wait up to ``timeout_s`` for it; ``force``: then SIGKILL it and
    the processes it started. Returns ``{"pid", "stopped", "seconds", "killed"}``; BackgroundError when none runs."""
    pid = running_pid(run_dir)
    if pid is None:
        (run_dir / PID_FILE).unlink(missing_ok=True)
        raise BackgroundError(f"no detached rstar up runs for {run_dir.parent} (no live pid in {run_dir / PID_FILE})")
    t0 = time.monotonic()
    os.kill(pid, signal.SIGTERM)
    _wait_gone(pid, t0 + timeout_s)
    killed = False
    if not _gone(pid) and force:
        for victim in [pid, *_children(run_dir)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim, signal.SIGKILL)
        killed = True
        _wait_gone(pid, t0 + timeout_s + 10)
    stopped = _gone(pid)
    if stopped:
        (run_dir / PID_FILE).unlink(missing_ok=True)
    return {"pid": pid, "stopped": stopped, "seconds": round(time.monotonic() - t0, 1), "killed": killed}
