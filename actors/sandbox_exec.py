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

Snapshots (the ancestor cache): after a step the parent asked for, the namespace is pickled when
that is known to be a faithful copy of the state: every value is plain data (numbers, strings,
Fractions, containers of them, numpy arrays without objects, sympy expressions), an allow-listed
module, or a function/class of one; and since the call began no module outside the allow-listed
packages was imported, no attribute of an allow-listed module or of ``builtins`` was rebound
(submodules that load lazily excepted), and ``random``'s state, ``os.environ``, the cwd and the
(empty) scratch dir are unchanged. Not detected: mutation inside objects that modules hold (a
class attribute, a module-level list) or interpreter settings such as
``sys.setrecursionlimit``; a prefix relying on those may behave differently when restored.
"""

from __future__ import annotations

import base64
import builtins
import io
import os
import pickle
import sys
import traceback
import types
from fractions import Fraction

FORBIDDEN_EVENTS = {
    "os.fork", "os.forkpty", "os.system", "os.exec", "os.posix_spawn", "os.spawn",
    "subprocess.Popen", "os.kill", "os.killpg", "signal.pthread_kill",
    "socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg",
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
# errno values with which the kernel refuses what the sandbox does not allow
_DENIED = {1, 11, 13, 27, 28, 30, 101}  # EPERM EAGAIN EACCES EFBIG ENOSPC EROFS ENETUNREACH
_ATOMS = (type(None), bool, int, float, complex, str, bytes, Fraction, range)
_CONTAINERS = (list, tuple, set, frozenset)


class Forbidden(PermissionError):
    """The code tried something the sandbox does not allow."""


class OutputLimit(BaseException):
    """Printed more than the limit (a BaseException so ``except Exception`` cannot swallow it)."""


class Capture(io.TextIOBase):
    def __init__(self, limit: int):
        self.limit, self.parts, self.size = limit, [], 0

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


def _allowed(name: str | None, modules: set[str]) -> bool:
    return bool(name) and name.split(".")[0] in modules


def _plain(value, modules: set[str], budget: list[int]) -> bool:
    """True when ``value`` survives pickling as an equal, independent copy (see module doc)."""
    budget[0] -= 1
    if budget[0] < 0:
        return False
    t = type(value)
    if t in _ATOMS:
        return True
    if t in _CONTAINERS:
        return all(_plain(v, modules, budget) for v in value)
    if t is dict:
        return all(_plain(k, modules, budget) and _plain(v, modules, budget)
                   for k, v in value.items())
    if t is types.ModuleType:
        return _allowed(value.__name__, modules)
    if t in (types.BuiltinFunctionType, types.FunctionType) or isinstance(value, type):
        owner = getattr(value, "__self__", None)
        return (owner is None or isinstance(owner, types.ModuleType)) and _allowed(
            getattr(value, "__module__", None), modules)
    sympy, numpy = sys.modules.get("sympy"), sys.modules.get("numpy")
    if sympy is not None and isinstance(value, sympy.Basic):
        return _allowed(t.__module__, modules)
    if numpy is not None and t is numpy.ndarray:
        return value.dtype.kind != "O"
    if numpy is not None and t is numpy.ufunc:
        return True
    return numpy is not None and isinstance(value, numpy.generic) and _allowed(t.__module__, modules)


class _Pickler(pickle.Pickler):
    def reducer_override(self, obj):
        if isinstance(obj, types.ModuleType):  # modules travel by name, re-imported on load
            return __import__, (obj.__name__, None, None, ["__name__"])
        return NotImplemented


_MISSING = object()


def process_state(modules: set[str]) -> dict:
    """Process state outside the namespace that a snapshot would not carry."""
    rnd = sys.modules.get("random")
    return {
        # Submodules of allow-listed packages may load lazily (sympy.solve does); any other
        # import could carry state that a restored namespace would not have.
        "imported": frozenset(m for m in sys.modules if m.partition(".")[0] not in modules),
        "attrs": {m: dict(sys.modules[m].__dict__) for m in modules | {"builtins"}
                  if m in sys.modules},
        "random": rnd.getstate() if rnd else None,
        "environ": dict(os.environ),
        "cwd": os.getcwd(),
    }


def unchanged(before: dict, modules: set[str]) -> bool:
    """True when nothing in ``process_state`` changed, except submodules bound by lazy imports."""
    now = process_state(modules)
    if any(now[k] != before[k] for k in ("imported", "random", "environ", "cwd")):
        return False
    for name, old in before["attrs"].items():
        cur = now["attrs"][name]
        if any(cur.get(k, _MISSING) is not v for k, v in old.items()):
            return False
        if any(not isinstance(cur[k], types.ModuleType) for k in cur.keys() - old.keys()):
            return False
    return True


def snapshot(ns: dict, before: dict, scratch: str, modules: set[str], max_bytes: int) -> str | None:
    """Base64 pickle of ``ns`` when it is a faithful copy of the state, else None."""
    if ns.get("__builtins__") is not builtins or not unchanged(before, modules):
        return None
    if os.listdir(scratch):
        return None
    state = {k: v for k, v in ns.items() if k != "__builtins__"}
    if not all(_plain(v, modules, [100_000]) for v in state.values()):
        return None
    buf = io.BytesIO()
    try:
        _Pickler(buf, protocol=pickle.HIGHEST_PROTOCOL).dump(state)
    except Exception:  # anything that does not pickle is simply not cached
        return None
    return base64.b64encode(buf.getvalue()).decode() if buf.tell() <= max_bytes else None


def run_job(job: dict, scratch: str, limits: dict) -> dict:
    """Run ``job["steps"]`` (numbered from ``job["start"] + 1``) and report the outcome."""
    modules = set(limits["modules"])
    out, err = Capture(limits["max_output_chars"]), Capture(limits["max_output_chars"])
    sys.stdout, sys.stderr = out, err
    sys.addaudithook(_guard(scratch))
    ns: dict = {"__name__": "__main__", "__builtins__": builtins}
    if job["snapshot"]:
        ns.update(pickle.loads(base64.b64decode(job["snapshot"])))
    before = process_state(modules) if job["want"] else {}
    snaps, n, last = {}, job["start"], job["start"] + len(job["steps"])
    for text in job["steps"]:
        n += 1
        try:
            exec(compile(text, f"<step {n}>", "exec", dont_inherit=True), ns)
        except BaseException as e:  # the code's own failure, reported, never re-raised
            kind, message = classify(e, limits["memory_mb"])
            del e
            stdout, stderr = out.take(), err.take()
            ns.clear()  # frees a memory bomb's allocations before the result is built
            return {"ok": False, "failed_step": n, "error": message, "error_kind": kind,
                    "stdout": stdout, "stderr": stderr, "steps_run": n - job["start"]}
        if n in job["want"]:
            snaps[str(n)] = snapshot(ns, before, scratch, modules, limits["snapshot_bytes"])
        if n < last:
            out.take(), err.take()
    result = {"ok": True, "stdout": out.take(), "stderr": err.take(), "answer": None,
              "snapshots": {k: v for k, v in snaps.items() if v is not None},
              "steps_run": n - job["start"]}
    if "answer" in ns:
        try:
            result["answer"] = format_answer(ns["answer"])
            if len(result["answer"]) > limits["max_output_chars"]:
                raise OutputLimit(f"output limit of {limits['max_output_chars']} characters "
                                  "exceeded by the answer")
        except BaseException as e:  # e.g. an int too long to print
            kind, message = classify(e, limits["memory_mb"])
            return {"ok": False, "failed_step": n, "error": f"answer: {message}",
                    "error_kind": kind, "stdout": result["stdout"], "stderr": result["stderr"],
                    "steps_run": result["steps_run"]}
    return result
