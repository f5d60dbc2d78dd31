"""The code sandbox: runs model-written step programs in a pool of confined worker processes.

Usage::

    async with SandboxPool(cfg.sandbox) as pool:
        result = await pool.run(["x = 6\\n", "answer = x * 7\\n"])  # ok=True, answer="42"

``run(steps)`` executes ``rstar.steps.program(steps)``: the steps in order, in one namespace, each
compiled on its own (the same thing for steps made of complete statements, as every step must
be). ``stdout`` is what the last step printed; ``answer`` is the value of the global ``answer``
afterwards, formatted (``sandbox_exec.format_answer``). Many ``run`` calls may be in flight at
once; each waits for one of ``cfg.workers`` idle workers. ``run_sync(steps)`` does one call with
a throwaway one-worker pool (scripts, REPL).

Ancestor cache (``sandbox_cache``): the pool keeps the namespace after a prefix when the child
could prove the snapshot faithful (``sandbox_snapshot``) and the prefix took at least
``snapshot_min_ms`` to run; a later call then runs only the steps after it. A prefix that failed
deterministically answers every program that starts with it without running anything.

Guaranteed, with ``isolation = "strict"`` (the default; the pool refuses to start without it),
for every call — each runs in a fresh child forked from a clean worker, see
``actors/sandbox_worker.py`` and ``actors/sandbox_jail.py``:

- never in the caller's interpreter; nothing a call does changes another call or the pool;
- wall-clock limit ``timeout_s`` (the child is killed), CPU limit ``cpu_s`` (RLIMIT_CPU),
  address space ``memory_mb`` above the interpreter's (RLIMIT_AS), files up to ``file_mb``
  (RLIMIT_FSIZE) in a private size-capped tmpfs, no memfd (pages outside those limits);
- no process or thread creation (RLIMIT_NPROC = 1 under a uid that is not 0; holds for
  ``os.fork`` and for ``ctypes`` calling ``fork()``), no signal to anything outside the child's
  PID namespace, no network (an empty network namespace: even 127.0.0.1 is unreachable, so
  are the local NATS and PostgreSQL), no socket family but AF_UNIX/AF_INET/AF_INET6 (AF_VSOCK's
  port space is the host's);
- a read-only view of the Python installation and system libraries only, a fresh scratch dir as
  cwd (removed after the call, however deep its tree), no /proc, no /dev/shm, no /etc, no home
  or repository files;
- an environment of a few fixed variables: nothing of the caller's environment is visible;
- no System V IPC and no POSIX message queues (zero limits in a private IPC namespace, and
  ``mq_*`` refused), no kernel keyrings (per uid, not namespaced: refused): nothing outlives the
  call;
- a seccomp filter (``sandbox_jail``: a deny-list) refuses namespace and mount changes,
  ``ptrace`` and reading other processes, ``bpf``, ``userfaultfd``, ``perf_event_open``,
  ``io_uring``, module loading and the like with EPERM; another syscall ABI kills the child;
- at most ``max_output_chars`` of stdout/stderr per step (more fails the call: ``output_limit``).

A failure is an ``ExecResult`` with ``ok=False`` and ``error_kind`` one of ``exception``,
``timeout``, ``memory``, ``crash``, ``output_limit``, ``forbidden``; ``run`` raises only for
bad input (``StepFormatError``, ``ValueError``) or a pool that is closed or cannot replace its
workers (``SandboxError``). A worker that hangs or dies is killed and replaced in the background.

Not guaranteed: this is not a defence against kernel exploits (a shared kernel; the seccomp
filter is a deny-list, so the common syscalls stay reachable); code may spend its CPU/time
budget, read the (read-only) Python installation, and forge its own result (never another
call's); the cache may differ from a full re-run for a prefix whose calls into an allow-listed
module change that module's hidden state (see ``sandbox_snapshot``).
``isolation = "weak"`` (for machines where the actor is not root or lacks CAP_SYS_ADMIN, e.g. a
default Docker container) keeps only the mechanisms that work and logs the ones missing.

Tests: ``tests/unit/test_sandbox.py`` (semantics, cache), ``tests/integration/
test_sandbox_escape.py`` (hostile code); figures: ``python benchmarks/sandbox.py``.
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import sys
import sysconfig
from collections import Counter
from typing import Literal

import msgspec

from actors.sandbox_cache import CACHEABLE_FAILURES, ErrorKind, Failure, PrefixCache, Snapshot, prefix_keys
from rstar.config import SandboxConfig
from rstar.log import get_logger
from rstar.steps import normalize_step

log = get_logger(__name__)
WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_worker.py")
ENV = {
    "PATH": "/usr/bin:/bin",
    "LANG": "C.UTF-8",
    "OMP_NUM_THREADS": "1",
    "OPENBLAS_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


class ExecResult(msgspec.Struct, frozen=True):
    ok: bool
    stdout: str = ""  # what the last step printed (ancestors' output is not included)
    error: str | None = None  # short message, e.g. "NameError: name 'x' is not defined"
    error_kind: ErrorKind | None = None
    answer: str | None = None  # the global `answer` after a successful run, formatted
    duration_s: float = 0.0  # fork to exit of the child; 0.0 when answered from the cache
    stderr: str = ""  # what the last step wrote to stderr (warnings)


class SandboxError(RuntimeError):
    """The pool cannot serve: closed, not started, or its workers cannot be (re)started."""


class _Header(msgspec.Struct):
    status: Literal["exit", "signal", "timeout", "oversize"]
    duration: float
    code: int | None = None
    signal: int | None = None


class _ChildResult(msgspec.Struct):  # written by the confined child: validated, never trusted
    ok: bool
    stdout: str = ""
    stderr: str = ""
    error: str | None = None
    error_kind: ErrorKind | None = None
    answer: str | None = None
    failed_step: int | None = None
    snapshots: dict[str, Snapshot] = {}
    steps_run: int = 0


def _site_dirs() -> list[str]:
    """Where third-party modules live (the worker finds the standard library by itself)."""
    paths = sysconfig.get_paths()
    return list(dict.fromkeys(d for d in (paths["purelib"], paths["platlib"]) if os.path.isdir(d)))


class _Worker:
    def __init__(self, proc: asyncio.subprocess.Process):
        if proc.stdin is None or proc.stdout is None:
            raise ValueError("a sandbox worker needs its stdin and stdout as pipes")
        self.proc, self.stdin, self.stdout = proc, proc.stdin, proc.stdout

    async def send(self, payload: bytes) -> None:
        self.stdin.write(struct.pack(">I", len(payload)) + payload)
        await self.stdin.drain()

    async def recv(self) -> bytes:
        size = struct.unpack(">I", await self.stdout.readexactly(4))[0]
        return await self.stdout.readexactly(size)

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()


class SandboxPool:
    def __init__(self, cfg: SandboxConfig):
        self.cfg = cfg
        self.isolation: dict[str, bool] = {}
        self._cache = PrefixCache(cfg.cache_entries)
        self._stats: Counter[str] = Counter()
        self._idle: asyncio.Queue[_Worker | None] = asyncio.Queue()
        self._workers: set[_Worker] = set()
        self._tasks: set[asyncio.Task] = set()
        self._broken: BaseException | None = None
        self._open = False
        self._hello = msgspec.json.encode(
            {
                "site_dirs": _site_dirs(),
                "strict": cfg.isolation == "strict",
                "modules": cfg.modules,
                "timeout_s": cfg.timeout_s,
                "cpu_s": cfg.cpu_s,
                "memory_mb": cfg.memory_mb,
                "file_mb": cfg.file_mb,
                "scratch_mb": cfg.scratch_mb,
                "max_output_chars": cfg.max_output_chars,
                "snapshot_bytes": cfg.snapshot_kb << 10,
                "snapshot_min_ms": cfg.snapshot_min_ms,
            }
        )

    async def __aenter__(self) -> SandboxPool:
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def start(self) -> None:
        """Start ``cfg.workers`` workers; raises SandboxError when isolation cannot be set up."""
        spawned = await asyncio.gather(*(self._spawn() for _ in range(self.cfg.workers)), return_exceptions=True)
        errors = [w for w in spawned if isinstance(w, BaseException)]
        workers = [w for w in spawned if isinstance(w, _Worker)]
        if errors:
            for w in workers:
                w.kill()
            raise errors[0]
        for w in workers:
            self._idle.put_nowait(w)
        self._open = True
        missing = [m for m, ok in self.isolation.items() if not ok]
        if missing:
            log.warning("sandbox runs with weak isolation, missing: %s", ", ".join(missing))
        log.debug("sandbox pool started: %d workers, isolation %s", self.cfg.workers, self.isolation)

    async def close(self) -> None:
        """Stop the workers (EOF, then SIGKILL after 2 s) and any replacement in flight."""
        self._open = False
        self._broken = self._broken or SandboxError("sandbox pool is closed")
        self._idle.put_nowait(None)  # calls waiting for a worker fail instead of hanging
        for task in list(self._tasks):
            task.cancel()
        for w in list(self._workers):
            if w.proc.returncode is None:
                w.stdin.close()
                try:
                    await asyncio.wait_for(w.proc.wait(), 2.0)
                except TimeoutError:
                    w.kill()
                    await w.proc.wait()
        self._workers.clear()

    def gauges(self) -> dict[str, float]:
        """Counters since start: calls, cache hits, steps executed, worker restarts, cache size."""
        return {
            "sandbox/calls": self._stats["calls"],
            "sandbox/cache_hits": self._stats["hits"],
            "sandbox/steps_run": self._stats["steps_run"],
            "sandbox/worker_restarts": self._stats["restarts"],
            "sandbox/cache_entries": len(self._cache),
        }

    async def _spawn(self) -> _Worker:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            "-B",
            WORKER,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=ENV,
            start_new_session=True,
        )
        worker = _Worker(proc)
        self._workers.add(worker)
        try:
            await worker.send(self._hello)
            reply = msgspec.json.decode(await asyncio.wait_for(worker.recv(), 60.0))
        except (TimeoutError, OSError, EOFError, asyncio.IncompleteReadError) as e:
            worker.kill()
            self._workers.discard(worker)
            raise SandboxError(f"sandbox worker failed to start: {e!r}") from e
        if "error" in reply:
            worker.kill()
            self._workers.discard(worker)
            raise SandboxError(f"sandbox worker refused to start: {reply['error']}")
        self.isolation = reply["isolation"]
        return worker

    async def _respawn(self) -> None:
        for attempt in range(3):
            try:
                worker = await self._spawn()
                if not self._open:  # closed meanwhile
                    worker.kill()
                    return
                self._idle.put_nowait(worker)
                return
            except SandboxError as e:
                log.error("replacing a sandbox worker failed (attempt %d): %s", attempt + 1, e)
                await asyncio.sleep(0.5 * 2**attempt)
        self._broken = SandboxError("sandbox workers cannot be replaced; see the log")
        self._idle.put_nowait(None)  # wakes every waiter, see _acquire

    def _replace(self, worker: _Worker, why: str) -> None:
        log.warning("sandbox worker pid %s %s; replacing it", worker.proc.pid, why)
        worker.kill()
        self._workers.discard(worker)
        self._stats["restarts"] += 1
        if not self._open:
            return
        task = asyncio.create_task(self._respawn(), name="sandbox-respawn")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _acquire(self) -> _Worker:
        worker = await self._idle.get()
        if worker is None:
            self._idle.put_nowait(None)
            raise self._broken or SandboxError("sandbox pool is closed")
        return worker

    async def run(self, steps: list[str]) -> ExecResult:
        """Run ``program(steps)``; the result describes the last step (see module doc)."""
        if not self._open:
            raise SandboxError("sandbox pool is not running (call start() or use `async with`)")
        if not steps:
            raise ValueError("run() needs at least one step")
        norm = [normalize_step(s) for s in steps]
        self._stats["calls"] += 1
        text = "".join(norm)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:  # lone surrogates: Python cannot compile this text
            return ExecResult(
                False, error=f"SyntaxError: the code is not valid UTF-8 ({e.reason})", error_kind="exception"
            )
        keys, n = prefix_keys(norm), len(norm)
        start, entry = self._cache.lookup(keys)
        if start:
            self._stats["hits"] += 1
        if isinstance(entry, Failure):
            return _failure(entry, n, 0.0)
        want = [i for i in (n - 1, n) if i > start and self.cfg.cache_entries and keys[i - 1] not in self._cache]
        job = msgspec.json.encode(
            {
                "steps": norm[start:],
                "start": start,
                "snapshot": entry.data if entry else None,
                "snapshot_cost_ms": entry.cost_ms if entry else 0.0,
                "want": want,
                "imports": [m for m in self.cfg.modules if m in text],
            }
        )
        reply = await self._exchange(job)
        return reply if isinstance(reply, ExecResult) else self._interpret(*reply, keys, want)

    async def _exchange(self, job: bytes, retry: bool = True) -> tuple[_Header, bytes] | ExecResult:
        """Send one job to an idle worker and read its two reply frames."""
        worker = await self._acquire()
        try:
            await worker.send(job)
            head = await asyncio.wait_for(worker.recv(), self.cfg.timeout_s + self.cfg.grace_s)
            body = await asyncio.wait_for(worker.recv(), self.cfg.grace_s)
            header = msgspec.json.decode(head, type=_Header)
        except TimeoutError:
            self._replace(worker, "did not answer in time")
            return ExecResult(
                False,
                error=f"timed out after {self.cfg.timeout_s}s",
                error_kind="timeout",
                duration_s=self.cfg.timeout_s,
            )
        except (OSError, asyncio.IncompleteReadError, msgspec.DecodeError) as e:
            # Under strict isolation code cannot end a worker: it was killed from outside, and
            # the call deserves a second try on a fresh one.
            self._replace(worker, f"failed ({e!r})")
            if retry:
                return await self._exchange(job, retry=False)
            return ExecResult(False, error="sandbox worker died", error_kind="crash")
        except BaseException:  # cancelled mid-call: its reply would reach the next caller
            self._replace(worker, "was abandoned by a cancelled call")
            raise
        self._idle.put_nowait(worker)
        return header, body

    def _interpret(self, header: _Header, body: bytes, keys: list[bytes], want: list[int]) -> ExecResult:
        n, took = len(keys), header.duration
        if header.status == "timeout":
            return ExecResult(
                False, error=f"timed out after {self.cfg.timeout_s}s", error_kind="timeout", duration_s=took
            )
        if header.status == "signal":
            if header.signal == signal.SIGXCPU:
                return ExecResult(
                    False, error=f"CPU time limit of {self.cfg.cpu_s}s exceeded", error_kind="timeout", duration_s=took
                )
            return ExecResult(
                False, error=f"killed by {_signal_name(header.signal)}", error_kind="crash", duration_s=took
            )
        if header.status == "oversize":
            return ExecResult(False, error="result too large", error_kind="crash", duration_s=took)
        try:
            child = msgspec.json.decode(body, type=_ChildResult)
        except msgspec.DecodeError:
            error = (
                f"exited with status {header.code} without a result" if not body else "ended with an unreadable result"
            )
            return ExecResult(False, error=error, error_kind="crash", duration_s=took)
        self._stats["steps_run"] += child.steps_run
        if not child.ok:
            step = child.failed_step if child.failed_step and 1 <= child.failed_step <= n else n
            failure = Failure(step, child.error or "failed", child.error_kind or "crash", child.stdout, child.stderr)
            if failure.error_kind in CACHEABLE_FAILURES:
                self._cache.put(keys[step - 1], failure)
            return _failure(failure, n, took)
        limit = (self.cfg.snapshot_kb << 10) * 4 // 3 + 4  # base64 of the largest allowed pickle
        for idx, snap in child.snapshots.items():
            if idx.isdigit() and int(idx) in want and len(snap.data) <= limit:
                self._cache.put(keys[int(idx) - 1], snap)
        return ExecResult(True, stdout=child.stdout, stderr=child.stderr, answer=child.answer, duration_s=took)


def _signal_name(number: int | None) -> str:
    if number is not None:
        try:
            return signal.Signals(number).name
        except ValueError:
            pass
    return f"signal {number}"


def _failure(f: Failure, n: int, took: float) -> ExecResult:
    """The result of a program of ``n`` steps whose step ``f.step`` failed."""
    if f.step < n:  # the last step never ran: nothing of its output to show
        return ExecResult(
            False, error=f"earlier step {f.step} failed: {f.error}", error_kind=f.error_kind, duration_s=took
        )
    return ExecResult(False, stdout=f.stdout, stderr=f.stderr, error=f.error, error_kind=f.error_kind, duration_s=took)


def run_sync(steps: list[str], cfg: SandboxConfig | None = None) -> ExecResult:
    """One call on a throwaway one-worker pool (for scripts; the search keeps a pool open)."""
    cfg = (cfg or SandboxConfig()).model_copy(update={"workers": 1})

    async def once() -> ExecResult:
        async with SandboxPool(cfg) as pool:
            return await pool.run(steps)

    return asyncio.run(once())
