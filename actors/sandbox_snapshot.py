"""Snapshots of a sandbox namespace for the ancestor cache, taken only when they are faithful.

Runs in the sandbox child (``actors/sandbox_exec.py``), standard library only. A cached prefix
must give the same results as re-running it, so a namespace is pickled only when the state that
matters to later steps is all in it and survives pickling unchanged:

1. Static, per step (``safe_step``, on the step's AST): no attribute ever assigned or deleted
   (``math.pi = 3``, ``Fraction.x = 1``, ``del m.f``, ``obj.a[0] = 1``), no dunder attribute;
   no name that reaches around the namespace (``setattr``, ``getattr``, ``vars``, ``globals``,
   ``exec``, ``open``, ``__builtins__``, …); no call of a ``set…`` function
   (``np.set_printoptions``, ``sys.setrecursionlimit``); imports only from the allow-listed
   modules and nothing called ``random`` or ``seed``.
2. Dynamic, at the snapshot (``unchanged``): no module outside the allow-listed packages was
   imported, ``random``'s state, ``os.environ``, the cwd and the scratch dir (empty) are as they
   were when the call began.
3. Every value is plain data (numbers, strings, Fractions, containers of them, numpy arrays
   without objects, sympy expressions), an allow-listed module, or a function or class of one;
   and the pickle is at most ``max_bytes``.

Why static rather than comparing every module attribute before and after: in a forked child the
first touch of an object copies its page, and checking sympy's ~1000 attributes that way cost
~5 ms per call, more than re-running a typical ancestor. Not detected: side effects of calls
into allow-listed modules that mutate their internal state by other names (``sympy.var``
excepted: it writes to the namespace). A prefix relying on one may behave differently when
restored; programs of plain arithmetic, Fractions, sympy and numpy do not.

A snapshot costs about a millisecond in the child, so ``sandbox_exec`` asks for one only when
the steps behind it took longer than ``SandboxConfig.snapshot_min_ms`` to run.
"""

from __future__ import annotations

import ast
import base64
import builtins
import io
import itertools
import os
import pickle
import sys
import types
from fractions import Fraction

_ATOMS = (type(None), bool, int, float, complex, str, bytes, Fraction, range)
_CONTAINERS = (list, tuple, set, frozenset)
_UNSAFE_NAMES = {
    "setattr",
    "delattr",
    "getattr",
    "vars",
    "globals",
    "locals",
    "exec",
    "eval",
    "compile",
    "open",
    "breakpoint",
}
_STATEFUL = {"random", "seed"}


def _allowed(name: str | None, modules: set[str]) -> bool:
    if not name:
        return False
    return name.split(".")[0] in modules


def _allowed_import(name: str | None, modules: set[str]) -> bool:
    if not name or not _allowed(name, modules):
        return False
    return not _STATEFUL & set(name.split("."))


def safe_step(tree: ast.AST, modules: set[str]) -> bool:
    """Rule 1 of the module doc for one step's AST."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if not isinstance(node.ctx, ast.Load) or node.attr.startswith("__") or node.attr in _STATEFUL:
                return False
        elif isinstance(node, ast.Name):
            if node.id in _UNSAFE_NAMES or (node.id.startswith("__") and node.id != "__name__"):
                return False
        elif isinstance(node, ast.Subscript):  # obj.table[k] = v may be a module's table
            if not isinstance(node.ctx, ast.Load) and isinstance(node.value, ast.Attribute):
                return False
        elif isinstance(node, ast.Call):
            f = node.func
            name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", "")
            if name.startswith("set") and name != "set":
                return False
        elif isinstance(node, ast.Import):
            if not all(_allowed_import(a.name, modules) for a in node.names):
                return False
        elif isinstance(node, ast.ImportFrom):
            if node.level or not _allowed_import(node.module, modules):
                return False
            if any(a.name in _STATEFUL for a in node.names):
                return False
    return True


def process_state() -> dict:
    """What rule 2 compares (cheap: touches no module's attributes)."""
    rnd = sys.modules.get("random")
    return {
        "modules": len(sys.modules),
        "random": rnd.getstate() if rnd else None,
        "environ": dict(os.environ),
        "cwd": os.getcwd(),
    }


def unchanged(before: dict, scratch: str, modules: set[str]) -> bool:
    """Rule 2: only allow-listed submodules loaded lazily (sympy.solve does) since ``before``."""
    grown = len(sys.modules) - before["modules"]
    if grown < 0:
        return False
    # sys.modules keeps insertion order: the new names are the last ones, read from the end.
    if not all(_allowed(m, modules) for m in itertools.islice(reversed(sys.modules), grown)):
        return False
    rnd = sys.modules.get("random")
    return (
        (rnd.getstate() if rnd else None) == before["random"]
        and dict(os.environ) == before["environ"]
        and os.getcwd() == before["cwd"]
        and not os.listdir(scratch)
    )


def _plain(value, modules: set[str], budget: list[int]) -> bool:
    """Rule 3 for one value: it survives pickling as an equal, independent copy."""
    budget[0] -= 1
    if budget[0] < 0:
        return False
    t = type(value)
    if t in _ATOMS:
        return True
    if t in _CONTAINERS:
        return all(_plain(v, modules, budget) for v in value)
    if t is dict:
        return all(_plain(k, modules, budget) and _plain(v, modules, budget) for k, v in value.items())
    if t is types.ModuleType:
        return _allowed(value.__name__, modules)
    if t in (types.BuiltinFunctionType, types.FunctionType) or isinstance(value, type):
        owner = getattr(value, "__self__", None)
        return (owner is None or isinstance(owner, types.ModuleType)) and _allowed(
            getattr(value, "__module__", None), modules
        )
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


def snapshot(ns: dict, before: dict, scratch: str, modules: set[str], max_bytes: int) -> str | None:
    """Base64 pickle of ``ns`` when rules 2 and 3 hold (the caller checked rule 1), else None."""
    if ns.get("__builtins__") is not builtins or not unchanged(before, scratch, modules):
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


def restore(data: str) -> dict:
    """The namespace entries of a snapshot (unpickled in the confined child only)."""
    return pickle.loads(base64.b64decode(data))
