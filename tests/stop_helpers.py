"""Deadlines for tests that stop real processes, derived from the documented bounds (``rstar.stopping``).

A process that got SIGTERM ends itself by its bound at the latest (its watchdog exits with 124), so
a test waits ``stop_wait_s(bound)`` — the bound plus what reaping it takes on a loaded machine — and
then checks the exit code: 0 means the orderly stop (naks, saves, drain) finished within the bound.
"""

from __future__ import annotations

import subprocess
import sys

from rstar.stopping import FORCED_EXIT

EXIT_SLACK_S = 15.0  # os._exit and the parent's wait, with every core busy


def stop_wait_s(bound_s: float) -> float:
    return bound_s + EXIT_SLACK_S


def exit_note(code: int | None) -> str:
    return "ended by its stop watchdog (the orderly stop overran its bound)" if code == FORCED_EXIT else ""


class CpuHog:
    """``n`` processes spinning on the CPU beside a test (a loaded CI machine), at the test's priority."""

    def __init__(self, n: int):
        self.procs = [
            subprocess.Popen([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL) for _ in range(n)
        ]

    def __enter__(self) -> CpuHog:
        return self

    def __exit__(self, *exc) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
