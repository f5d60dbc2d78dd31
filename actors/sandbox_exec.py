"""Run a program's steps inside a sandbox child and describe the outcome as a plain dict.

Executed in a forked, already confined child of a sandbox worker (``actors/sandbox_worker.py``);
standard library only. The steps run one after another in one global namespace whose
``__name__`` is ``"__main__"``, each compiled on its own (a step must be complete statements; a
step that only makes sense glued to the next one is a ``SyntaxError``). Output goes to bounded
in-memory buffers that are reset between steps, so the result carries the last step's stdout.

What it adds on top of the kernel limits (``actors/sandbox_jail.py``) is legibility, not
security: an audit hook turns process creation, signals, sockets and writes outside the scratch
dir into a ``Forbidden`` error with a clear message before the kernel would refuse them anyway
(``ctypes`` skips the hook and meets the kernel).

A job comes in one or two stages (``job["stages"]``): with two, every step but the last runs
first, their record (a snapshot of the state after them, or their failure) goes to the worker
through ``next_stage``, which returns the last step only then (see ``actors/sandbox_worker.py``).
Snapshots for the ancestor cache are taken by ``sandbox_snapshot`` after the steps the pool
asked for, when its rules say they are faithful.

Nothing here is trusted by the pool: the code runs in this process and can rewrite any of it,
the output cap included (``Capture.limit``); the pool validates and bounds every record.
"""

from __future__ import annotations

import ast
import builtins
import io
import os
import sys
import time
import traceback
from collections.abc import Callable

import sandbox_snapshot  # sibling module: this file runs inside the sandbox worker only

FORBIDDEN_EVENTS = {
    "os.fork",
    "os.forkpty",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "subprocess.Popen",
    "os.kill",
    "os.killpg",
    "signal.pthread_kill",
    "socket.connect",
    "socket.bind",
    "socket.sendto",
    "socket.sendmsg",
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
# errno values with which the kernel refuses what the sandbox does not allow
_DENIED = {1, 11, 13, 27, 28, 30, 101}  # EPERM EAGAIN EACCES EFBIG ENOSPC EROFS ENETUNREACH


class Forbidden(PermissionError):
    """The code tried something the sandbox does not allow."""


class OutputLimit(BaseException):
    """Printed more than the limit (a BaseException so ``except Exception`` cannot swallow it)."""


class Capture(io.TextIOBase):
    def __init__(self, limit: int):
        self.limit, self.size = limit, 0
        self.parts: list[str] = []

    def writable(self) -> bool:
        return True

    def write(self, s: str) -> int:
        if self.size + len(s) > self.limit:
            self.parts.append(s[: max(0, self.limit - self.size)])
            self.size = self.limit
            raise OutputLimit(f"output limit of {self.limit} characters exceeded")
        self.parts.append(s)
        self.size += len(s)
        return len(s)

    def take(self) -> str:
        text, self.parts, self.size = "".join(self.parts), [], 0
        return text


def _guard(scratch: str):
    def hook(event: str, args: tuple) -> None:
        if event in FORBIDDEN_EVENTS:
            raise Forbidden(f"{event} is not allowed in the sandbox")
        if event == "open" and isinstance(args[0], (str, bytes)) and args[2] & _WRITE_FLAGS:
            path = os.path.realpath(os.fsdecode(args[0]))
            if path != scratch and not path.startswith(scratch + "/"):
                raise Forbidden(f"writing {os.fsdecode(args[0])!r} outside the scratch dir")

    return hook


def classify(e: BaseException, memory_mb: int) -> tuple[str, str]:
    """(error_kind, short message) for an exception that ended a step."""
    if isinstance(e, OutputLimit):
        return "output_limit", str(e)
    if isinstance(e, MemoryError):
        return "memory", f"memory limit exceeded ({memory_mb} MB)"
    if isinstance(e, SystemExit):
        return "forbidden", f"exiting the interpreter is not allowed (SystemExit: {e.code})"
    if isinstance(e, Forbidden):
        return "forbidden", str(e)
    if isinstance(e, RuntimeError) and str(e) == "can't start new thread":  # RLIMIT_NPROC
        return "forbidden", "starting a thread is not allowed in the sandbox"
    last = traceback.format_exception_only(type(e), e)[-1].strip()[:500]
    if isinstance(e, OSError) and e.errno in _DENIED:
        return "forbidden", last
    return "exception", last


def format_answer(value) -> str:
    """int → "12"; integral float → "12"; other float → ≤10 significant digits; Fraction → "3/4"."""
    if isinstance(value, float) and not isinstance(value, bool):
        return str(int(value)) if value.is_integer() else format(value, ".10g")
    return str(value)  # int, Fraction ("3/4"), sympy and anything else


def run_job(job: dict, scratch: str, limits: dict, next_stage: Callable[[dict], list[str]]) -> dict:
    """Run ``job["steps"]`` (numbered from ``job["start"] + 1``), in stages, and report the outcome."""
    modules, want = set(limits["modules"]), set(job["want"])
    out, err = Capture(limits["max_output_chars"]), Capture(limits["max_output_chars"])
    sys.stdout, sys.stderr = out, err
    sys.addaudithook(_guard(scratch))
    ns: dict = {"__name__": "__main__", "__builtins__": builtins}
    if job["snapshot"]:
        ns.update(sandbox_snapshot.restore(job["snapshot"]))
    before = sandbox_snapshot.process_state() if want else None
    safe, n, last, steps = True, job["start"], job["last"], job["steps"]
    cost_ms = job["snapshot_cost_ms"]  # what re-running the steps up to n would take
    snaps: dict = {}
    first = n
    for stage in range(job["stages"]):
        if stage:  # the record of the steps so far, then the last step
            steps = next_stage({"ok": True, "snapshots": snaps, "steps_run": n - first})
            snaps, first = {}, n
        for text in steps:
            n += 1
            t0 = time.process_time()  # CPU time: what re-running costs, whatever the machine's load
            try:
                if want:  # parse once: the tree serves the safety check and the compiler
                    tree = compile(text, f"<step {n}>", "exec", ast.PyCF_ONLY_AST, dont_inherit=True)
                    assert isinstance(tree, ast.Module)  # "exec" mode always parses to a Module
                    safe = safe and sandbox_snapshot.safe_step(tree, modules)
                    code = compile(tree, f"<step {n}>", "exec", dont_inherit=True)
                else:
                    code = compile(text, f"<step {n}>", "exec", dont_inherit=True)
                exec(code, ns)
            except BaseException as e:  # the code's own failure, reported, never re-raised
                kind, message = classify(e, limits["memory_mb"])
                del e
                stdout, stderr = out.take(), err.take()
                ns.clear()  # frees a memory bomb's allocations before the result is built
                return _failed(n, message, kind, stdout, stderr, n - first)
            cost_ms += (time.process_time() - t0) * 1e3
            # A snapshot costs about a millisecond (pickling, page copies in this forked child):
            # worth it only for a prefix that costs more than that to re-run.
            if n in want and safe and cost_ms >= limits["snapshot_min_ms"]:
                data = sandbox_snapshot.snapshot(ns, before, scratch, modules, limits["snapshot_bytes"])
                if data is not None:
                    snaps[str(n)] = {"data": data, "cost_ms": cost_ms}
            if n < last:
                out.take(), err.take()
    result = {
        "ok": True,
        "stdout": out.take(),
        "stderr": err.take(),
        "answer": None,
        "snapshots": snaps,
        "steps_run": n - first,
    }
    if "answer" in ns:
        try:
            result["answer"] = format_answer(ns["answer"])
            if len(result["answer"]) > limits["max_output_chars"]:
                raise OutputLimit(f"output limit of {limits['max_output_chars']} characters exceeded by the answer")
        except BaseException as e:  # e.g. an int too long to print
            kind, message = classify(e, limits["memory_mb"])
            return _failed(n, f"answer: {message}", kind, result["stdout"], result["stderr"], n - first)
    return result


def _failed(step: int, error: str, kind: str, stdout: str, stderr: str, steps_run: int) -> dict:
    return {
        "ok": False,
        "failed_step": step,
        "error": error,
        "error_kind": kind,
        "stdout": stdout,
        "stderr": stderr,
        "steps_run": steps_run,
    }
