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

The child's result is data to validate, never a fact: the code runs in the child's process and
can write anything to its result pipe. The pool bounds every record (output to
``max_output_chars``, errors to 500 characters, snapshots to ``snapshot_kb`` of base64) and
files what it caches only under a program that contains every step that could have written it.
For that a call of n steps runs in two stages when the cache is on (``sandbox_worker``): the
child runs steps up to n-1 and writes its record of them (snapshot or failure) *before* step n
is sent to it, so that record is filed under ``program(steps[:n-1])``, and the rest under
``program(steps[:n])``. A forged failure or snapshot, even a snapshot whose unpickling runs
code, thus only answers programs that run the forging step themselves: it is that code's own
result, never a sibling's.

Guaranteed, with ``isolation = "strict"`` (the default; the pool refuses to start without it),
for every call — each runs in a fresh child forked from a clean worker, see
``actors/sandbox_worker.py`` and ``actors/sandbox_jail.py``:

- never in the caller's interpreter; nothing a call does changes another call or the pool, and
  nothing of a call (program, output, result) reaches a later one: the worker keeps a call's
  bytes only in buffers it zeroes afterwards and forks each child from a clean frame;
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
- at most ``max_output_chars`` of stdout and of stderr reach the caller: a last step that
  printed more, or a result claiming more, fails with ``output_limit`` (the pool enforces it on
  what it reads; the child's own cap can be lifted by the code, and only spares its memory).

A failure is an ``ExecResult`` with ``ok=False`` and ``error_kind`` one of ``exception``,
``timeout``, ``memory``, ``crash``, ``output_limit``, ``forbidden``; ``run`` raises only for
bad input (``StepFormatError``, ``ValueError``) or a pool that is closed or cannot replace its
workers (``SandboxError``). A worker that hangs or dies is killed and replaced in the background.

Not guaranteed: this is not a defence against kernel exploits (a shared kernel; the seccomp
filter is a deny-list, so the common syscalls stay reachable); code may spend its CPU/time
budget, read the (read-only) Python installation, see which allow-listed modules earlier calls
made its worker import and how many calls came before, and forge its own result (its answer,
output, failure or snapshot, which answer only programs that contain its code); the cache may
differ from a full re-run for a prefix whose calls into an allow-listed module change that
module's hidden state (see ``sandbox_snapshot``).
``isolation = "weak"`` (for machines where the actor is not root or lacks CAP_SYS_ADMIN, e.g. a
default Docker container) keeps only the mechanisms that work and logs the ones missing.

Tests: ``tests/unit/test_sandbox.py`` (semantics, cache), ``tests/integration/
test_sandbox_escape.py`` (hostile code); figures: ``python benchmarks/sandbox.py``.
"""

from __future__ import annotations

import asyncio
import base64
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


class _Header(msgspec.Struct):  # written by the worker: how the child ended
    status: Literal["exit", "signal", "timeout", "oversize"]
    duration: float
    code: int | None = None
    signal: int | None = None
    staged: bool = False  # the child's stage-1 record (all steps but the last) came complete


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

    async def send(self, *payloads: bytes) -> None:
        self.stdin.write(b"".join(struct.pack(">I", len(p)) + p for p in payloads))
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
        # Two stages when steps before the last run and may be cached: the child's record of them
        # is complete before the last step reaches it, so it speaks for program(steps[:n-1]) only.
        split = n - 1 > start and self.cfg.cache_entries
        stages = [norm[start : n - 1], norm[n - 1 :]] if split else [norm[start:]]
        head = msgspec.json.encode({"imports": [m for m in self.cfg.modules if m in text], "stages": len(stages)})
        job = msgspec.json.encode(
            {
                "steps": stages[0],
                "start": start,
                "last": n,
                "stages": len(stages),
                "snapshot": entry.data if entry else None,
                "snapshot_cost_ms": entry.cost_ms if entry else 0.0,
                "want": want,
            }
        )
        frames = [head, job] + [msgspec.json.encode({"steps": s}) for s in stages[1:]]
        reply = await self._exchange(frames)
        return reply if isinstance(reply, ExecResult) else self._interpret(*reply, keys, start, want)

    async def _exchange(self, frames: list[bytes], retry: bool = True) -> tuple[_Header, bytes, bytes] | ExecResult:
        """Send one call to an idle worker and read its three reply frames."""
        worker = await self._acquire()
        try:
            await worker.send(*frames)
            head = await asyncio.wait_for(worker.recv(), self.cfg.timeout_s + self.cfg.grace_s)
            first = await asyncio.wait_for(worker.recv(), self.cfg.grace_s)
            rest = await asyncio.wait_for(worker.recv(), self.cfg.grace_s)
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
                return await self._exchange(frames, retry=False)
            return ExecResult(False, error="sandbox worker died", error_kind="crash")
        except BaseException:  # cancelled mid-call: its reply would reach the next caller
            self._replace(worker, "was abandoned by a cancelled call")
            raise
        self._idle.put_nowait(worker)
        return header, first, rest

    def _interpret(
        self, header: _Header, first: bytes, rest: bytes, keys: list[bytes], start: int, want: list[int]
    ) -> ExecResult:
        """The call's result from what the worker saw and what the child wrote.

        The child's records are claims of the code that ran, validated and bounded here
        (``_record``), and each is filed only under the program whose code fixed it: the stage-1
        record under ``keys[n-2]``, the rest under ``keys[n-1]``. A cached failure or snapshot
        thus only ever answers programs that contain every step that could have forged it.
        """
        n, took = len(keys), header.duration
        if header.staged:
            early = self._record(first, start + 1, n - 1, n - 1 in want)
            if isinstance(early, _Claim):
                self._file(keys[n - 2], early)
                if isinstance(early.entry, Failure):
                    return _failure(early.entry, n, took)
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
        claim = self._record(rest, n if header.staged else start + 1, n, n in want)
        if not isinstance(claim, _Claim):
            error = f"exited with status {header.code} without a result" if not rest else claim
            return ExecResult(False, error=error, error_kind="crash", duration_s=took)
        self._file(keys[n - 1], claim)
        if isinstance(claim.entry, Failure):
            return _failure(claim.entry, n, took)
        return ExecResult(True, stdout=claim.stdout, stderr=claim.stderr, answer=claim.answer, duration_s=took)

    def _record(self, data: bytes, lo: int, hi: int, snap: bool) -> _Claim | str:
        """One framed record of the child for steps ``lo..hi``, bounded; an error message if unreadable."""
        if len(data) < 4 or struct.unpack_from(">I", data)[0] != len(data) - 4:
            return "ended with an unreadable result"
        try:
            child = msgspec.json.decode(data[4:], type=_ChildResult)
        except msgspec.DecodeError:
            return "ended with an unreadable result"
        cap = self.cfg.max_output_chars
        self._stats["steps_run"] += min(max(child.steps_run, 0), hi - lo + 1)
        out, err, answer = child.stdout[:cap], child.stderr[:cap], child.answer
        if child.ok and max(len(child.stdout), len(child.stderr), len(answer or "")) > cap:
            error = f"output limit of {cap} characters exceeded"  # the code lifted the child's own cap
            child = msgspec.structs.replace(child, ok=False, error=error, error_kind="output_limit", failed_step=hi)
        if not child.ok:
            step = child.failed_step if child.failed_step is not None and lo <= child.failed_step <= hi else hi
            kind = child.error_kind or "crash"
            return _Claim(Failure(step, (child.error or "failed")[:500], kind, out, err))
        found = child.snapshots.get(str(hi)) if snap else None
        return _Claim(_valid_snapshot(found, self.cfg.snapshot_kb << 10), out, err, answer)

    def _file(self, key: bytes, claim: _Claim) -> None:
        entry = claim.entry
        if isinstance(entry, Snapshot) or (isinstance(entry, Failure) and entry.error_kind in CACHEABLE_FAILURES):
            self._cache.put(key, entry)


class _Claim:
    """A validated record: a failure, or success with the snapshot it carried (if sound)."""

    def __init__(self, entry: Failure | Snapshot | None, stdout: str = "", stderr: str = "", answer: str | None = None):
        self.entry, self.stdout, self.stderr, self.answer = entry, stdout, stderr, answer


def _valid_snapshot(snap: Snapshot | None, max_bytes: int) -> Snapshot | None:
    """A snapshot whose data is base64 of at most ``max_bytes`` and whose cost is a sane figure."""
    if snap is None or len(snap.data) > max_bytes * 4 // 3 + 4:
        return None
    try:
        base64.b64decode(snap.data, validate=True)
    except ValueError:
        return None
    if not 0.0 <= snap.cost_ms <= 1e9:
        return None
    return snap


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
