"""Sandbox worker process: confines itself once, then runs each call in a fresh forked child.

Started by ``actors.sandbox.SandboxPool`` as ``python -I -S -B actors/sandbox_worker.py`` with a
minimal environment and its own session; standard library (and ``pyseccomp``) only. It talks to
the pool over stdin/stdout in frames (4-byte big-endian length + payload):

    pool → worker   hello (JSON config), then per call a head (JSON: ``imports``, ``stages``)
                    and ``stages`` job frames (JSON, 1 or 2), which the worker passes on unread
    worker → pool   hello reply (JSON: isolation report, or {"error": …}), then per call three
                    frames: a header written by the worker (JSON: how the child ended, duration,
                    ``staged``), the child's stage-1 record (empty unless ``staged``) and the
                    rest of what the child wrote (bytes, possibly empty)

The worker never runs model code itself. It keeps one *spare* child forked and confined ahead
of time (``sandbox_jail.confine_child``, under the worker's seccomp filter), waiting on a pipe,
so a call does not wait for a fork. Per call it first imports the allow-listed modules the
program names (sympy is then loaded once, before forking, rather than in every child; a spare
forked without it is replaced) and hands the first job frame to the spare, which runs the steps
(``sandbox_exec.run_job``). A call of two stages (every step but the last, then the last) gets
its second frame only once the child has written a complete stage-1 record: what that record
says was fixed before the last step's code existed in the child, so the pool can file it under
the program without its last step (see ``actors/sandbox.py``). The worker reads the child's
output until EOF or the wall-clock deadline (then kills it) or a size cap, replies, reaps the
child, removes its scratch dir and forks the next spare.

A fresh state per call: every child starts from the worker's clean state, and the worker keeps
nothing of a call in memory a later child could read. Job and result bytes live only in two
buffers allocated once and zeroed after each call (never in Python strings or bytes, whose
freed memory keeps its contents), the spare is forked from a frame that holds nothing of the
call before, and the worker never parses a job or a result. Nothing one call does (rebinding
``math.pi``, leaking memory, crashing, walking the stack into the worker's loop) reaches another.
What a child can see of earlier calls: which allow-listed modules the worker has imported, and
how many children it forked before (its scratch dir's name).

Guarantees and limits: see ``actors/sandbox.py``.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import struct
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sandbox_exec  # noqa: E402  (stdlib-only siblings, imported before the chroot hides them)
import sandbox_jail  # noqa: E402

del sys.path[0]

MAX_JOB_BYTES = 256 << 20


def read_frame(fd: int) -> bytes | None:
    head = _read_exactly(fd, 4)
    if head is None:
        return None
    size = struct.unpack(">I", head)[0]
    if size > MAX_JOB_BYTES:
        raise ValueError(f"frame of {size} bytes exceeds {MAX_JOB_BYTES}")
    data = _read_exactly(fd, size)
    if data is None:
        raise EOFError("pool closed the pipe mid-frame")
    return data


def _read_exactly(fd: int, n: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < n:
        chunk = os.read(fd, n - len(buf))
        if not chunk:
            return None if not buf else bytes(buf)
        buf += chunk
    return bytes(buf)


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def write_frame(fd: int, data: bytes) -> None:
    write_all(fd, struct.pack(">I", len(data)) + data)


def _address_space(procfd: int) -> int:
    fd = os.open("self/statm", os.O_RDONLY, dir_fd=procfd)
    try:
        return int(os.read(fd, 128).split()[0]) * os.sysconf("SC_PAGE_SIZE")
    finally:
        os.close(fd)


class _Spare:
    """A child forked and confined ahead of its job, waiting for it on a pipe."""

    def __init__(self, pid: int, job_w: int, out_r: int, scratch: str):
        self.pid, self.job_w, self.out_r, self.scratch = pid, job_w, out_r, scratch
        self.reaped = False  # once collected, its pid may be reused: never signal it again


def _emit(fd: int, record: dict) -> None:
    """Write one framed JSON record (lone surrogates, e.g. print("\\ud800"), escaped)."""
    record = {k: v.encode("utf-8", "backslashreplace").decode() if isinstance(v, str) else v for k, v in record.items()}
    write_frame(fd, json.dumps(record, ensure_ascii=False).encode())


def _child(cfg: dict, job_r: int, out_w: int, scratch: str, devnull: int, uid: int | None, base_as: int) -> None:
    """Body of the forked child: confine, wait for the job, run it stage by stage, write records."""
    code = 0
    try:
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        keep = sorted((job_r, out_w))
        os.closerange(3, keep[0])
        os.closerange(keep[0] + 1, keep[1])
        os.closerange(keep[1] + 1, 1 << 16)
        os.chdir(scratch)
        os.environ.update(HOME=scratch, TMPDIR=scratch)  # the rest: the pool's minimal env
        sandbox_jail.confine_child(uid, cfg["cpu_s"], base_as + (cfg["memory_mb"] << 20), cfg["file_mb"] << 20)
        frame = read_frame(job_r)
        if frame is None:  # the worker discarded this spare
            os._exit(0)

        def next_stage(record: dict) -> list[str]:
            _emit(out_w, record)
            more = read_frame(job_r)
            if more is None:
                raise EOFError("the worker sent no next stage")
            return json.loads(more)["steps"]

        result = sandbox_exec.run_job(json.loads(frame), scratch, cfg, next_stage)
    except BaseException as e:  # a sandbox bug, not the code's failure: say so in the result
        code = 70
        result = {"ok": False, "error": f"sandbox internal error: {e!r}"[:500], "error_kind": "crash"}
    try:
        _emit(out_w, result)
        os.close(out_w)  # EOF tells the worker the result is complete
    finally:
        os._exit(code)


def _reap(pid: int) -> None:
    """Kill (a no-op once it has exited) and collect a child that _wait has not collected."""
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)


def _remove(path: str) -> None:
    """Remove a scratch tree of any depth: iterative, one dir fd open at a time, no recursion.

    The code may have made dirs unreadable (reopened after a chmod) or nested them thousands
    deep (paths past PATH_MAX: everything is relative to a dir fd).
    """
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW
    names: list[str] = []  # the path from ``path`` down to the current dir
    cur = os.open(path, flags)
    try:
        while True:
            sub = None
            with os.scandir(cur) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        sub = entry.name
                        break
                    os.unlink(entry.name, dir_fd=cur)
            if sub is not None:
                try:
                    down = os.open(sub, flags, dir_fd=cur)
                except PermissionError:
                    os.chmod(sub, 0o700, dir_fd=cur, follow_symlinks=False)
                    down = os.open(sub, flags, dir_fd=cur)
                os.close(cur)
                cur, sub = down, None
                names.append(entry.name)
                continue
            if not names:
                break
            up = os.open("..", flags, dir_fd=cur)
            os.close(cur)
            cur = up
            os.rmdir(names.pop(), dir_fd=cur)
    finally:
        os.close(cur)
    os.rmdir(path)


class _Server:
    def __init__(self, cfg: dict, scratch_root: str, uid: int | None, procfd: int):
        self.cfg, self.scratch_root, self.uid, self.procfd = cfg, scratch_root, uid, procfd
        self.devnull = os.open(os.devnull, os.O_RDWR)
        self.modules, self.count = set(cfg["modules"]), 0
        # Two records of two streams (up to 6 bytes a char once JSON-escaped) and two snapshots.
        self.cap = 24 * cfg["max_output_chars"] + 3 * cfg["snapshot_bytes"] + (64 << 10)
        self.out = bytearray(self.cap + 1)  # the child's output: zeroed after every call
        self.job = bytearray(1 << 16)  # one job frame at a time: zeroed after use

    def fork(self) -> _Spare:
        self.count += 1
        scratch = f"{self.scratch_root}/c{self.count}"
        os.mkdir(scratch, 0o700)
        if self.uid is not None:
            os.chown(scratch, self.uid, self.uid)
        base_as = _address_space(self.procfd)
        job_r, job_w = os.pipe()
        out_r, out_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            _child(self.cfg, job_r, out_w, scratch, self.devnull, self.uid, base_as)
        os.close(job_r)
        os.close(out_w)
        os.set_blocking(job_w, False)  # the code may stop reading: writes must keep the deadline
        return _Spare(pid, job_w, out_r, scratch)

    def finish(self, child: _Spare) -> None:
        os.close(child.job_w) if child.job_w >= 0 else None
        os.close(child.out_r)
        if not child.reaped:
            _reap(child.pid)
        try:
            _remove(child.scratch)
        except OSError as e:  # never fatal: the tmpfs is capped, the next call has its own dir
            print(f"sandbox worker: cannot remove {child.scratch}: {e!r}", file=sys.stderr)

    def read_job(self) -> int:
        """Read the pool's next job frame (length prefix included) into ``self.job``."""
        head = _read_exactly(0, 4)
        if head is None or len(head) < 4:
            raise EOFError("pool closed the pipe mid-call")
        size = 4 + struct.unpack(">I", head)[0]
        if size > MAX_JOB_BYTES:
            raise ValueError(f"frame of {size} bytes exceeds {MAX_JOB_BYTES}")
        if size > len(self.job):
            self.job = bytearray(size)  # the old buffer was zeroed: nothing of it stays behind
        view = memoryview(self.job)
        view[:4] = head
        got = 4
        while got < size:
            n = os.readv(0, [view[got:size]])
            if not n:
                raise EOFError("pool closed the pipe mid-frame")
            got += n
        return size

    def send_job(self, child: _Spare, size: int, deadline: float) -> None:
        """Pass ``self.job[:size]`` to the child by the deadline (a child gone or stuck: dropped)."""
        view = memoryview(self.job)[:size]
        try:
            while view and child.job_w >= 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([], [child.job_w], [], remaining)[1]:
                    break
                try:
                    view = view[os.write(child.job_w, view) :]
                except BlockingIOError:
                    continue
        except BrokenPipeError:  # it died or closed the pipe: reading its output tells why
            pass
        finally:
            del view
            self.job[:size] = bytes(size)

    def read_out(self, child: _Spare, held: int, until: int, deadline: float) -> tuple[int, str | None]:
        """Read the child's output into ``self.out`` until it holds ``until`` bytes or EOF.

        Returns the bytes held and None, or "eof", "timeout" or "oversize".
        """
        view = memoryview(self.out)
        while held < until:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([child.out_r], [], [], remaining)[0]:
                return held, "timeout"
            n = os.readv(child.out_r, [view[held:]])
            if not n:
                return held, "eof"
            held += n
            if held > self.cap:
                return held, "oversize"
        return held, None

    def exit_status(self, child: _Spare, deadline: float) -> dict:
        """How a child that wrote nothing more ended (it may still be running: wait, then kill)."""
        pidfd = os.pidfd_open(child.pid)
        try:
            if not select.select([pidfd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                return {"status": "timeout"}
        finally:
            os.close(pidfd)
        status = os.waitpid(child.pid, 0)[1]
        child.reaped = True
        if os.WIFSIGNALED(status):
            return {"status": "signal", "signal": os.WTERMSIG(status)}
        return {"status": "exit", "code": os.WEXITSTATUS(status)}

    def call(self, child: _Spare) -> bool:
        """Serve one call on ``child`` (consumed in any case); False once the pool closed."""
        try:
            head = read_frame(0)
            if head is None:
                return False
            job = json.loads(head)
            fresh = [m for m in job["imports"] if m in self.modules and m not in sys.modules]
            if fresh:  # the spare was forked without the module: replace it
                self.finish(child)
                for name in fresh:
                    try:
                        __import__(name)
                    except Exception:  # the child meets the same error and reports it
                        pass
                gc.freeze()  # keep the new objects out of the children's collections
                child = self.fork()
            start = time.monotonic()
            deadline = start + self.cfg["timeout_s"]
            self.send_job(child, self.read_job(), deadline)
            first, held, why = 0, 0, None
            if job["stages"] == 2:
                held, why = self.read_out(child, 0, 4, deadline)
                if why is None:
                    first = 4 + struct.unpack_from(">I", self.out)[0]
                    held, why = self.read_out(child, held, first, deadline) if first <= self.cap else (held, "oversize")
                size = self.read_job()
                if why is None:
                    self.send_job(child, size, deadline)
                else:
                    self.job[:size] = bytes(size)
                    first = 0
            if why is None:
                held, why = self.read_out(child, held, self.cap + 1, deadline)
            if why in ("timeout", "oversize"):
                header: dict = {"status": why}
            elif held > first:
                header = {"status": "exit"}
            else:  # no result: how it ended says why (the caller reaps a child that wrote one)
                header = self.exit_status(child, deadline)
            header["duration"] = time.monotonic() - start
            header["staged"] = first > 0
            write_frame(1, json.dumps(header).encode())
            rest = first if header["status"] == "exit" else held  # nothing after a timeout
            for lo, hi in ((0, first), (rest, held)):
                write_all(1, struct.pack(">I", hi - lo))
                write_all(1, memoryview(self.out)[lo:hi])
            self.out[:held] = bytes(held)
            return True
        finally:
            self.finish(child)

    def serve(self) -> None:
        """One call after another; the next spare is forked after each reply, off the critical path,
        from this frame, which holds nothing of the call before."""
        while self.call(self.fork()):
            pass


def main() -> int:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    cfg = json.loads(read_frame(0) or b"{}")
    # -I -S left the standard library on sys.path; add the environment's site-packages.
    sys.path[:] = [p for p in sys.path if os.path.isdir(p)] + cfg["site_dirs"]
    sys.dont_write_bytecode = True
    uid = 10**9 + os.getpid() if os.geteuid() == 0 else None  # unique while this worker lives
    try:
        for name in cfg["modules"]:
            if name in sys.stdlib_module_names:
                __import__(name)
        procfd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY)
        binds = list(sandbox_jail.SYSTEM_DIRS) + sys.path
        syscalls = sandbox_jail.build_filter(cfg["strict"])
        active = sandbox_jail.enter_jail(binds, cfg["scratch_mb"], cfg["strict"], syscalls is not None)
    except (ImportError, OSError) as e:  # JailError is an OSError
        write_frame(1, json.dumps({"error": str(e)}).encode())
        return 1
    if active["pid"]:
        # CLONE_NEWPID applies to children: the server becomes PID 1 of the new namespace.
        pid = os.fork()
        if pid:
            os.close(0)
            os.close(1)
            return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
        sandbox_jail.die_with_parent()
    if syscalls is not None:
        try:  # every child forked from here on inherits the filter
            sandbox_jail.load_filter(syscalls)
        except OSError as e:
            write_frame(1, json.dumps({"error": f"sandbox isolation unavailable (seccomp: {e})"}).encode())
            return 1
    scratch_root = "/scratch"
    if not active["filesystem"]:
        scratch_root = tempfile.mkdtemp(prefix="rstar-sbx-")
        os.chmod(scratch_root, 0o711)  # the children's uid must reach its own dir inside
    write_frame(1, json.dumps({"isolation": active, "uid": uid, "scratch": scratch_root}).encode())
    gc.freeze()
    try:
        _Server(cfg, scratch_root, uid, procfd).serve()
    finally:
        if not active["filesystem"]:
            try:
                _remove(scratch_root)
            except OSError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
