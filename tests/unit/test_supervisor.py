"""rstar.supervisor with real child processes: restart after an exit, stop with SIGTERM, then
SIGKILL for a child that ignores it."""

import sys
import time

import pytest

from rstar.supervisor import Supervisor

pytestmark = pytest.mark.timeout(60)
IGNORE_TERM = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('rea' + 'dy', flush=True); time.sleep(60)"


def _wait(pred, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_an_exited_child_is_restarted_and_a_one_shot_is_not(tmp_path):
    sup = Supervisor(tmp_path / "logs", {})
    crash = sup.add("crash", [sys.executable, "-c", "raise SystemExit(3)"])
    once = sup.add("once", [sys.executable, "-c", "pass"], one_shot=True)
    try:
        assert _wait(lambda: (sup.poll(), crash.restarts >= 1)[1])  # first backoff is 1 s
        assert crash.last_exit == 3
        assert _wait(lambda: (sup.poll(), once.done)[1]) and once.restarts == 0
        assert "--- start" in (tmp_path / "logs" / "crash.log").read_text()
    finally:
        sup.stop(grace_s=1.0)


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path):
    sup = Supervisor(tmp_path / "logs", {})
    stubborn = sup.add("stubborn", [sys.executable, "-c", IGNORE_TERM])
    polite = sup.add("polite", [sys.executable, "-c", "import time; time.sleep(60)"])
    assert _wait(lambda: "ready" in (tmp_path / "logs" / "stubborn.log").read_text())
    t0 = time.monotonic()
    sup.stop(grace_s=0.5)
    assert time.monotonic() - t0 < 10
    assert stubborn.proc.returncode == -9 and polite.proc.returncode == -15
    assert not sup.alive("stubborn") and not sup.alive("polite")
