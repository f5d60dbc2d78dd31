"""app.supervisor's restart backoff follows consecutive quick deaths, not the lifetime count.

Found by the chaos run (benchmarks/chaos.py, PostgreSQL pass): after its sixth restart of the
run, a learner killed within 30 s of a start waited 60 s to be restarted (``2 ** restarts``),
though every earlier death had come after a long, healthy run.
"""

import sys
import time

import pytest

from app.supervisor import QUICK_S, Supervisor

pytestmark = pytest.mark.timeout(60)


def _exit_seen(sup, child, timeout=10.0) -> float:
    """Poll until the supervisor has noticed the child's exit; return the restart delay it chose."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sup.poll()
        if child.next_start:
            return child.next_start - time.monotonic()
        time.sleep(0.05)
    raise AssertionError("the exit was not noticed")


def test_a_child_with_many_past_restarts_is_back_in_a_second_after_one_quick_death(tmp_path):
    sup = Supervisor(tmp_path / "logs", {})
    crash = sup.add("crash", [sys.executable, "-c", "raise SystemExit(3)"])
    crash.restarts = 9  # restarted nine times over a long run, each after it had run a while
    try:
        assert _exit_seen(sup, crash) <= 1.0  # the first quick death in a row: 1 s, not 60 s
        assert crash.quick_deaths == 1
        deadline = time.monotonic() + 10
        while crash.restarts < 10 and time.monotonic() < deadline:
            sup.poll()
            time.sleep(0.05)
        assert 1.0 < _exit_seen(sup, crash) <= 2.0  # dying quickly again: the backoff grows
        assert crash.quick_deaths == 2
        crash.started_at -= QUICK_S  # as if it had run a while before this exit
        crash.next_start, crash.quick_deaths = 0.0, 5
        assert _exit_seen(sup, crash) <= 1.0 and crash.quick_deaths == 0  # a long run resets it
    finally:
        sup.stop(grace_s=1.0)
