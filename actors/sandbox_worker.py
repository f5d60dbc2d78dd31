"""Sandbox worker process: confines itself once, then runs each call in a fresh forked child.

Started by ``actors.sandbox.SandboxPool`` as ``python -I -S -B actors/sandbox_worker.py`` with a
minimal environment and its own session; standard library (and ``pyseccomp``) only. It talks to the pool over
stdin/stdout in frames (4-byte big-endian length + payload):

    pool → worker   hello (JSON config), then one job (JSON) per call
    worker → pool   hello reply (JSON: isolation report, or {"error": …}), then per job two
                    frames: a header written by the worker (JSON: how the child ended, duration)
                    and the child's own result (JSON bytes, possibly empty)

The worker never runs model code itself. It keeps one *spare* child forked and confined ahead
of time (``sandbox_jail.confine_child``, under the worker's seccomp filter), waiting on a pipe, so a call does not wait for a fork.
Per job it first imports the allow-listed modules the program names (sympy is then loaded once,
before forking, rather than in every child; a spare forked without it is replaced), hands the
job to the spare, which runs the steps (``sandbox_exec.run_job``), reads its result until EOF or
the wall-clock deadline (then kills it), replies, reaps the child, removes its scratch dir and
forks the next spare. Every child thus starts from the same clean state: nothing one call does
(rebinding ``math.pi``, leaking memory, crashing) reaches another.

Guarantees and limits: see ``actors/sandbox.py``. The child's result is trusted only as far as
the code that produced it: code can forge its own result, never another call's.
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


def write_all(fd: int, data: bytes) -> None:
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


def _child(cfg: dict, job_r: int, out_w: int, scratch: str, devnull: int, uid: int | None, base_as: int) -> None:
    """Body of the forked child: confine, wait for the job, run it, write the result, exit."""
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
        os.close(job_r)
        result = sandbox_exec.run_job(json.loads(frame), scratch, cfg)
    except BaseException as e:  # a sandbox bug, not the code's failure: say so in the result
        code = 70
        result = {
            "ok": False,
            "error": f"sandbox internal error: {e!r}"[:500],
            "error_kind": "crash",
            "stdout": "",
            "stderr": "",
            "steps_run": 0,
        }
    # Lone surrogates (print("\ud800")) are not valid UTF-8: escape them rather than fail.
    result = {k: v.encode("utf-8", "backslashreplace").decode() if isinstance(v, str) else v for k, v in result.items()}
    try:
        write_all(out_w, json.dumps(result, ensure_ascii=False).encode())
        os.close(out_w)  # EOF tells the worker the result is complete
    finally:
        os._exit(code)


def _wait(pid: int, r: int, deadline: float, cap: int) -> tuple[dict, bytes]:
    """Read the child's result until EOF; stop at the deadline or past ``cap`` bytes.

    Returns as soon as a non-empty result is complete, without waiting for the child's exit
    (which the caller reaps off the critical path); an empty one waits for the exit status.
    """
    pidfd = os.pidfd_open(pid)
    buf, reading, exited = bytearray(), True, False
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return {"status": "timeout"}, b""
            ready = select.select([pidfd, r] if reading else [pidfd], [], [], remaining)[0]
            exited = exited or pidfd in ready
            # Once the child has exited its pipe holds the rest of the output, then EOF.
            while reading and (r in ready or exited):
                chunk = os.read(r, 1 << 16)
                reading = bool(chunk)
                buf += chunk
                if len(buf) > cap:
                    return {"status": "oversize"}, b""
                if not exited:
                    break
            if not reading and buf:
                return {"status": "exit"}, bytes(buf)
            if exited:
                status = os.waitpid(pid, 0)[1]
                if os.WIFSIGNALED(status):
                    return {"status": "signal", "signal": os.WTERMSIG(status)}, bytes(buf)
                return {"status": "exit", "code": os.WEXITSTATUS(status)}, bytes(buf)
    finally:
        os.close(pidfd)


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
        self.cap = 4 * cfg["max_output_chars"] + cfg["snapshot_bytes"] * 3 + (64 << 10)

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

    def serve(self) -> None:
        """One job per frame; a spare child is forked after each reply, off the critical path."""
        spare = None
        try:
            while (frame := read_frame(0)) is not None:
                job = json.loads(frame)
                fresh = [m for m in job["imports"] if m in self.modules and m not in sys.modules]
                if fresh and spare is not None:  # it was forked without the module: replace it
                    self.finish(spare)
                    spare = None
                for name in fresh:
                    try:
                        __import__(name)
                    except Exception:  # the child meets the same error and reports it
                        pass
                if fresh:
                    gc.freeze()  # keep the new objects out of the children's collections
                child, spare = spare or self.fork(), None
                start = time.monotonic()
                try:
                    write_frame(child.job_w, frame)
                    os.close(child.job_w)
                    child.job_w = -1
                except BrokenPipeError:  # the spare died while waiting: _wait reports it
                    pass
                header, body = _wait(child.pid, child.out_r, start + self.cfg["timeout_s"], self.cap)
                child.reaped = header["status"] in ("exit", "signal") and not body
                header["duration"] = time.monotonic() - start
                write_frame(1, json.dumps(header).encode())
                write_frame(1, body)
                self.finish(child)
                spare = self.fork()
        finally:
            if spare is not None:
                self.finish(spare)


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
