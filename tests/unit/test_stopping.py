"""``rstar.stopping``: the first signal stops a service, a watchdog bounds the stop, a second signal
ends it at once, and leftover threads (a model call, a cancelled to_thread) hold no exit back.

Each case is a small script in its own process (the signals are real)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from rstar.stopping import FORCED_EXIT

ROOT = Path(__file__).resolve().parents[2]
STARTUP_S = 60.0  # a Python start on a loaded machine


def _start(body: str) -> subprocess.Popen:
    code = "import asyncio, atexit, sys, threading, time\nfrom rstar import stopping\n" + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _ready(p: subprocess.Popen) -> None:
    assert p.stdout is not None
    line = p.stdout.readline()  # the script prints "ready" once its handlers are in place
    assert line.strip() == "ready", (line, p.stderr.read() if p.stderr else "")


def _stopped(p: subprocess.Popen, sig: int = signal.SIGTERM) -> tuple[int, float, str, str]:
    t0 = time.monotonic()
    p.send_signal(sig)
    out, err = p.communicate(timeout=STARTUP_S)
    return p.returncode, time.monotonic() - t0, out, err


SERVICE = """
async def main(stop):
    print("ready", flush=True)
    await stop.wait()
    return "done"
"""


def test_first_signal_stops_main_and_restores_the_handlers():
    p = _start(
        SERVICE
        + """
before = __import__("signal").getsignal(15)
print("result", stopping.run_until_signal(main, deadline_s=600), flush=True)
print("restored", __import__("signal").getsignal(15) is before, flush=True)
"""
    )
    _ready(p)
    code, _, out, err = _stopped(p)
    assert code == 0, err
    assert "result done" in out and "restored True" in out


def test_a_stop_that_overruns_its_deadline_is_ended_by_the_watchdog():
    p = _start(
        """
async def main(stop):
    print("ready", flush=True)
    await stop.wait()
    time.sleep(3600)  # the loop itself is stuck: only the watchdog can end this

stopping.run_until_signal(main, deadline_s=2)
"""
    )
    _ready(p)
    code, took, _, err = _stopped(p)
    assert code == FORCED_EXIT and "still running 2s after SIGTERM" in err, err
    assert 2 <= took < 2 + 30


def test_the_watchdog_is_armed_while_the_loop_is_blocked():
    """The signal arrives during synchronous work (a model load): the watchdog starts at once."""
    p = _start(
        """
async def main(stop):
    print("ready", flush=True)
    time.sleep(3600)

stopping.run_until_signal(main, deadline_s=2)
"""
    )
    _ready(p)
    code, took, _, err = _stopped(p)
    assert code == FORCED_EXIT, err
    assert took < 2 + 30


def test_a_second_signal_ends_the_process_at_once():
    p = _start(
        """
async def main(stop):
    print("ready", flush=True)
    await stop.wait()
    print("stopping", flush=True)
    await asyncio.sleep(3600)

stopping.run_until_signal(main, deadline_s=3600)
"""
    )
    _ready(p)
    p.send_signal(signal.SIGTERM)
    assert p.stdout is not None and p.stdout.readline().strip() == "stopping"
    code, took, _, err = _stopped(p, signal.SIGINT)
    assert code == 128 + signal.SIGINT and "second SIGINT" in err, err
    assert took < 30


@pytest.mark.parametrize("leftover", ["to_thread", "thread"])
def test_leftover_threads_hold_no_exit_back(leftover):
    """A cancelled ``to_thread`` call (asyncio.run would wait for it) or a non-daemon thread in a
    long call (the interpreter would join it: a model thread in ``generate()``) is left behind by
    ``exit_now``; atexit handlers still run and output is flushed."""
    p = _start(
        f"""
atexit.register(lambda: print("atexit ran", flush=True))

async def main(stop):
    if "{leftover}" == "thread":
        threading.Thread(target=time.sleep, args=(3600,)).start()
    work = asyncio.create_task(asyncio.to_thread(time.sleep, 3600 if "{leftover}" == "to_thread" else 0))
    print("ready", flush=True)
    await stop.wait()
    work.cancel()
    return 7

code = stopping.run_until_signal(main, deadline_s=3600)
print("returned", code)  # no flush: exit_now flushes
stopping.exit_now(code)
"""
    )
    _ready(p)
    code, took, out, err = _stopped(p)
    assert code == 7, err
    assert "returned 7" in out and "atexit ran" in out
    assert took < 30
