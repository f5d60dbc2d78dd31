"""app.supervisor with real child processes: restart after an exit, stop with SIGTERM, then
SIGKILL for a child that ignores it."""

import sys
import time

import pytest

from app.supervisor import Supervisor

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


def test_children_stop_when_the_supervisor_is_killed_outright(tmp_path):
    import os
    import signal
    import socket
    import subprocess

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # A supervisor process (as `rstar up` is) with one real rstar service: the NATS broker.
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from app.supervisor import Supervisor, rstar_argv\n"
        f"sup = Supervisor(Path({str(tmp_path / 'logs')!r}), dict(__import__('os').environ))\n"
        f"c = sup.add('broker', rstar_argv(['broker', 'up'], None, ['broker.embedded_port={port}', "
        f"'data_dir=\"{tmp_path}\"']))\n"
        "print(c.proc.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    log = tmp_path / "logs" / "broker.log"
    assert _wait(lambda: "NATS JetStream at" in log.read_text(), timeout=30)
    os.kill(parent.pid, signal.SIGKILL)  # no chance to stop its children
    parent.wait()

    def gone(pid: int) -> bool:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with open(f"/proc/{pid}/stat") as f:  # exited but not reaped (a zombie) counts as gone
            return f.read().split(")")[-1].split()[0] == "Z"

    assert _wait(lambda: gone(child), timeout=20), log.read_text()
    assert "supervisor pid" in log.read_text()
    with pytest.raises(OSError):  # it stopped its nats-server on the way out (SIGTERM path)
        socket.create_connection(("127.0.0.1", port), timeout=1)
