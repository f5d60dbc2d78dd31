"""math-verify in killable subprocesses: a hard timeout that works from any thread.

math-verify (``math_verify.parse`` / ``math_verify.verify``) can run for minutes on adversarial
input (``2^{2^{2^{2^{2^{2}}}}}`` makes sympy compute a 20,000-digit power), and its own timeout
uses ``signal.alarm``, which only works in the main thread. Grading is called from worker threads
and asyncio code, so here math-verify runs in a small pool of persistent subprocesses
(``python -m rstar.mathverify_worker``) that speak JSON lines over stdin/stdout, with math-verify's
signal timeouts disabled. The caller waits for the reply with ``select`` and a deadline; a worker
that misses it is killed (SIGKILL) and a fresh one is started on the next call.

Guaranteed: ``compare`` returns or raises ``MathVerifyTimeout`` within ``timeout_s`` of sending the
request, from any thread; a worker that dies or hangs never poisons the next call. Not guaranteed:
the time spent waiting for a free worker (at most ``MAX_WORKERS`` calls run at once) or for a
worker to start (~2 s of CPU to import and warm up sympy; ``warm_up()`` pays it ahead) is not part of ``timeout_s``.
Each worker holds ~150 MB and is capped at 2 GiB of address space. It exits when its parent
dies: at once when idle (stdin closes), and by a CPU limit ~2 s past the request's deadline when
the parent dies in the middle of a hanging comparison.

Run the worker by hand:
``echo '{"pred": "0.5", "gold": "\\\\frac12", "timeout_s": 5}' | python -m rstar.mathverify_worker``.
"""

from __future__ import annotations

import atexit
import os
import queue
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec

MAX_WORKERS = 2
STARTUP_TIMEOUT_S = 60.0  # importing sympy on a loaded 2-core box can take several seconds
WORKER_MEMORY_BYTES = 2 << 30
# math-verify's numeric check calls two expressions equal when their difference evaluates to
# below ~10**-digits in absolute terms (its default of 15 makes 1/2**99 equal 1/2**98).
NUMERIC_DIGITS = 100


class MathVerifyTimeout(TimeoutError):
    """math-verify did not answer within the deadline (the worker was killed)."""


class MathVerifyError(RuntimeError):
    """The worker could not start, or died while comparing (its stderr has the cause)."""


class _Reply(msgspec.Struct):
    equal: bool = False
    parsed: bool = False  # both sides parsed into math objects
    error: str | None = None


class _Worker:
    def __init__(self) -> None:
        env = dict(os.environ)
        # The worker must import this package even when the caller's cwd is elsewhere.
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rstar.mathverify_worker"],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None  # both opened as PIPE just above
        self.stdin, self.stdout = stdin, stdout
        self.buf = b""
        try:
            self._read_line(time.monotonic() + STARTUP_TIMEOUT_S)
        except MathVerifyTimeout:
            self.kill()
            raise MathVerifyError(f"math-verify worker did not start in {STARTUP_TIMEOUT_S:.0f}s") from None

    def _read_line(self, deadline: float) -> bytes:
        fd = self.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise MathVerifyTimeout(f"math-verify gave no answer in time (pid {self.proc.pid})")
            chunk = os.read(fd, 65536)
            if not chunk:
                code = self.proc.wait()
                raise MathVerifyError(f"math-verify worker exited with code {code}")
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line

    def call(self, pred: str, gold: str, timeout_s: float) -> _Reply:
        try:
            self.stdin.write(msgspec.json.encode({"pred": pred, "gold": gold, "timeout_s": timeout_s}) + b"\n")
        except BrokenPipeError:
            raise MathVerifyError(f"math-verify worker exited with code {self.proc.wait()}") from None
        return msgspec.json.decode(self._read_line(time.monotonic() + timeout_s), type=_Reply)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait()
        for f in (self.stdin, self.stdout):
            f.close()


_idle: queue.LifoQueue[_Worker] = queue.LifoQueue()
_lock = threading.Lock()
_live = 0


def _acquire() -> _Worker:
    """An idle worker, or a new one while fewer than MAX_WORKERS live, or wait for either."""
    global _live
    while True:
        try:
            return _idle.get_nowait()
        except queue.Empty:
            pass
        with _lock:
            if _live < MAX_WORKERS:
                _live += 1
                break
        try:
            # Poll, not block: a busy worker may be killed (timeout) instead of coming back.
            return _idle.get(timeout=0.05)
        except queue.Empty:
            continue
    try:
        return _Worker()
    except BaseException:
        with _lock:
            _live -= 1
        raise


def _discard(w: _Worker) -> None:
    global _live
    w.kill()
    with _lock:
        _live -= 1


def compare(pred: str, gold: str, timeout_s: float) -> tuple[bool, bool]:
    """``(equal, parsed)`` from math-verify for two LaTeX/plain answers, within ``timeout_s``."""
    w = _acquire()
    try:
        reply = w.call(pred, gold, timeout_s)
    except (MathVerifyTimeout, MathVerifyError):
        _discard(w)
        raise
    except BaseException:
        _discard(w)  # interrupted mid-call: its pipe state is unknown
        raise
    _idle.put(w)
    if reply.error is not None:
        raise MathVerifyError(f"math-verify failed: {reply.error}")
    return reply.equal, reply.parsed


def warm_up() -> None:
    """Start one worker now, so the first real comparison does not pay the sympy import."""
    _idle.put(_acquire())


@atexit.register
def _shutdown() -> None:
    while True:
        try:
            _discard(_idle.get_nowait())
        except queue.Empty:
            return


def _serve() -> None:
    import logging
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    logging.disable(logging.WARNING)  # math-verify warns that its timeouts are off: we know
    import math_verify as mv

    # The answers come normalised (rstar.answer_forms), so parse each as one whole LaTeX answer:
    # no unit stripping (its list has single letters: "10+2t" would read as 12), and no
    # falling back to a piece of the answer when the whole does not parse ("first_match").
    norm = mv.LatexNormalizationConfig(basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all")
    targets = (mv.LatexExtractionConfig(normalization_config=norm),)

    def parse(s: str) -> list:
        return mv.parse(f"\\boxed{{{s}}}", targets, extraction_mode="first_match", parsing_timeout=None)

    out = sys.stdout.buffer
    # Touch the grammar and sympy's symbolic and set code before "ready": that lazy loading
    # would otherwise cost the first real comparison ~1 s of its deadline.
    for gold, pred in (("1", "1"), ("x^2+2x+1", "(x+1)^2"), ("[1, 2)", "\\{1, 2\\}")):
        mv.verify(parse(gold), parse(pred), timeout_seconds=None)
    out.write(b'{"ready":true}\n')
    out.flush()
    for line in sys.stdin.buffer:  # EOF (the parent closed the pipe or died) ends the worker
        req = msgspec.json.decode(line)
        # The caller kills us at its deadline. If it died first (SIGKILL), nobody will: a CPU
        # limit just past the deadline does, from the kernel, even while a C-level bignum
        # power holds the GIL. CPU time never exceeds wall time here, so a live caller's
        # deadline always comes first.
        used = sum(resource.getrusage(resource.RUSAGE_SELF)[:2])
        hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
        soft = int(used + req["timeout_s"]) + 2
        resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))
        try:
            g, p = parse(req["gold"]), parse(req["pred"])
            parsed = bool(g) and bool(p) and not isinstance(g[0], str) and not isinstance(p[0], str)
            equal = parsed and mv.verify(g[0], p[0], numeric_precision=NUMERIC_DIGITS, timeout_seconds=None)
            reply = _Reply(equal=equal, parsed=parsed)
        except Exception as e:  # reported to the caller, which raises MathVerifyError
            reply = _Reply(error=f"{type(e).__name__}: {e}")
        out.write(msgspec.json.encode(reply) + b"\n")
        out.flush()


if __name__ == "__main__":
    _serve()
