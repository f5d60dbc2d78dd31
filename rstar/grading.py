"""Answer grading: pull the final answer out of model text, and decide if two answers are equal.

``extract_answer(text)`` finds the final answer in free text: the last ``\\boxed{…}`` (nested
braces), else the last ``#### …`` line (GSM8K), else the last "the answer is …", else the last
number. ``verify(pred, gold)`` returns a ``Verdict``; ``grade(pred, gold)`` is its boolean.

How ``verify`` decides (``Verdict.method``):

1. ``malformed``: no prediction (None, empty), unbalanced braces, or over ``MAX_ANSWER_CHARS``.
2. ``numeric``: both sides read as plain numbers, exactly, in-process (microseconds). Accepted:
   ints, decimals, ``3/4``, ``\\frac{3}{4}`` / ``\\dfrac34``, thousands separators (``1,000``;
   ``1,2`` is a list), signs (also ``−``), ``1.5e3`` / ``1.5 \\times 10^{3}``, currency (``$5.00``),
   trailing units (``5 cm``, ``5 apples``, ``5^\\circ``), ``x = 5``, and unbracketed lists
   ``1, 2`` (compared as multisets, so ``2, 1`` equals them). Policies:
   - Percent: ``50%`` equals ``50%``, ``50`` (the sign read as a unit) and ``0.5`` (its value);
     without a ``%`` on either side ``0.5`` and ``50`` differ.
   - Tolerance: values are exact fractions; a float-noise margin of 1e-9 relative (1e-12
     absolute) lets code output such as ``0.30000000000000004`` or ``3.3333333333333335`` match.
     A gold written as a decimal with 3+ places is taken as rounded: a prediction within half a
     unit of its last place matches (``10/3`` equals gold ``3.33333``). Golds with fewer places
     are exact (they are usually money), and predictions are never taken as rounded:
     ``0.33`` vs ``1/3`` is not equivalent either way, nor is ``3.14`` vs ``\\pi``.
   - Units are ignored, not converted: ``5 cm`` equals ``5 m``.
3. ``string``: equal after normalisation (case, spaces, ``\\text{}``, outer parentheses around
   a single item): ``(C)`` = ``c``, and identical LaTeX never pays for a math-verify call.
4. ``math_verify``: LaTeX forms (``\\sqrt``, ``\\pi``, intervals, sets, tuples, equations) by
   ``math_verify`` in a subprocess with a hard deadline (``rstar.mathverify_worker``), callable
   from any thread. ``timeout`` when it misses ``timeout_s`` (the answer counts as not equal;
   the verdict is cached like any other, so a repeated hanging answer costs one timeout).
   A crash of that subprocess gives ``method="math_verify"`` with ``error`` set, never an exception.

Cost, measured on the 2-core dev box: numeric path 40-80 us per new pair, ~0.3 us for a repeated
pair (verdicts are LRU-cached); math-verify path ~1.6 ms of pipe round trip plus sympy's work,
10-300 ms for typical radicals, intervals and polynomials; ~2 s of CPU once to start a worker
(import and warm-up of sympy; ``warm_up()`` pays it ahead).
"""

from __future__ import annotations

import asyncio
import functools
import re
from fractions import Fraction

import msgspec

from rstar import mathverify_worker as mvw
from rstar.log import get_logger

log = get_logger(__name__)
MAX_ANSWER_CHARS = 2000


class Verdict(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    equivalent: bool
    method: str  # numeric | math_verify | string | timeout | malformed
    pred: str | None
    gold: str
    error: str | None = None


# ---------------------------------------------------------------- extraction

def _braced(text: str, start: int) -> str | None:
    """Content of the ``{…}`` opening at ``text[start]``, or None if the braces never close."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1:i]
    return None


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_NUMBER_TOKEN = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def extract_answer(text: str | None) -> str | None:
    """The final answer in free text, or None. An unclosed last ``\\boxed{`` gives None."""
    if not text or not text.strip():
        return None
    boxes = list(_BOXED.finditer(text))
    if boxes:
        end = boxes[-1].end()
        if text[end:end + 1] == "{":
            inner = _braced(text, end)
            return inner.strip() or None if inner is not None else None
        token = re.match(r"[^\s$]+", text[end:])  # \boxed 5
        return token.group(0) if token else None
    for pattern in (r"####\s*([^\n]+)", r"(?i)(?:final answer|the answer)\s*(?:is|:|=)?\s*:?\s*([^\n]+)"):
        hits = re.findall(pattern, text)
        if hits:
            ans = hits[-1].strip().rstrip(".").strip().strip("$").strip()
            if ans:
                return ans
    numbers = _NUMBER_TOKEN.findall(text)
    return numbers[-1].rstrip(",") if numbers else None


# ---------------------------------------------------------------- normalisation

_WRAPPERS = re.compile(r"\\(?:text|textbf|textrm|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_DROP = re.compile(r"\\left|\\right|\\[!,;: ]|~|\^\s*\{?\\circ\}?|°|\\displaystyle")


def _clean(s: str) -> str:
    s = s.strip()
    while True:  # peel $…$, \(…\), \[…\] and a \boxed{…} that wraps the whole answer
        before = s
        for a, b in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if len(s) >= len(a) + len(b) and s.startswith(a) and s.endswith(b):
                s = s[len(a):-len(b)].strip()
        m = _BOXED.match(s)
        if m and s[m.end():m.end() + 1] == "{" and _braced(s, m.end()) == s[m.end() + 1:-1]:
            s = s[m.end() + 1:-1].strip()
        if s == before:
            break
    s = _WRAPPERS.sub(r"\1", s)
    s = _DROP.sub("", s).replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    s = s.replace("\\%", "%").replace("\\$", "$").replace("−", "-").replace("\u2009", "")
    s = re.sub(r"\s*\bper\s*cent\b|\s*\bpercent\b", "%", s, flags=re.I)
    return s.strip().rstrip(".").strip()


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


# ---------------------------------------------------------------- numbers

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+"
_EXP = r"(?:[eE](?P<e1>[-+]?\d+)|\s*(?:\\times|\\cdot|×|\*|x)\s*10\s*\^\s*\{?\s*(?P<e2>[-+]?\d+)\s*\}?)?"
_VALUE = re.compile(
    rf"(?P<sign>[-+]?)\s*(?:\$|€|£|¥|usd|eur|rs\.?)?\s*(?P<sign2>[-+]?)\s*(?:"
    rf"\\frac\s*(?:\{{\s*(?P<fn>[-+]?{_NUM})\s*\}}|(?P<fn1>\d))\s*(?:\{{\s*(?P<fd>[-+]?{_NUM})\s*\}}|(?P<fd1>\d))"
    rf"|(?P<n>{_NUM})\s*/\s*(?P<d>{_NUM})"
    rf"|(?P<num>{_NUM}){_EXP})"
    rf"\s*(?P<pct>%)?\s*(?P<rest>.*)", re.I | re.S)
# Words after a number that are mathematics, not a unit: "5 pi" is not 5.
_MATH_WORDS = {"pi", "e", "i", "sqrt", "x", "y", "z", "n", "k", "and", "or", "to", "times", "over",
               "mod", "squared", "cubed", "plus", "minus", "ln", "log", "sin", "cos", "tan", "with"}
_UNIT = re.compile(r"[a-z][a-z./^0-9²³]*(?:\s+[a-z][a-z./^0-9²³]*)*", re.I)


class _Num(msgspec.Struct, frozen=True):
    value: Fraction
    percent: bool
    places: int | None  # decimal places as written (for the rounded-gold rule)


def _to_fraction(text: str) -> Fraction:
    return Fraction(text.replace(",", ""))


def _parse_number(s: str) -> _Num | None:
    s = re.sub(r"^[a-z]\w*\s*=\s*", "", s.strip(), flags=re.I)  # "x = 5"
    m = _VALUE.fullmatch(s)
    if not m:
        return None
    rest = m["rest"].strip()
    if rest:
        unit = _UNIT.fullmatch(rest)
        first = rest.split()[0].lower()
        spaced = m["rest"][:1].isspace() or m["pct"]
        if not unit or first in _MATH_WORDS or not (spaced or len(first.split("/")[0]) >= 2):
            return None
    negative = (m["sign"] == "-") != (m["sign2"] == "-")
    places = None
    if m["num"] is not None:
        value = _to_fraction(m["num"])
        exp = m["e1"] or m["e2"]
        if exp is not None:
            if abs(int(exp)) > 400:
                return None  # not a number anyone means; let math-verify decide
            value *= Fraction(10) ** int(exp)
        elif "." in m["num"]:
            places = len(m["num"].split(".")[1])
    else:
        n, d = (m["fn"] or m["fn1"], m["fd"] or m["fd1"]) if m["n"] is None else (m["n"], m["d"])
        if _to_fraction(d) == 0:
            return None
        value = _to_fraction(n) / _to_fraction(d)
    return _Num(-value if negative else value, bool(m["pct"]), places)


def _parse_numbers(s: str) -> list[_Num] | None:
    """One number, or an unbracketed comma list of numbers; None if any part is not a number."""
    one = _parse_number(s)
    if one is not None:
        return [one]
    if any(c in s for c in "()[]{}") or "," not in s:
        return None
    parts = [_parse_number(p) for p in s.split(",")]
    return parts if all(p is not None for p in parts) else None


def _close(p: Fraction, g: Fraction, g_places: int | None) -> bool:
    if p == g:
        return True
    diff = abs(p - g)
    if diff <= Fraction(1, 10**12) or diff <= Fraction(1, 10**9) * max(abs(p), abs(g)):
        return True
    return g_places is not None and g_places >= 3 and diff <= Fraction(1, 2 * 10**g_places)


def _num_equal(p: _Num, g: _Num) -> bool:
    if p.percent == g.percent:
        return _close(p.value, g.value, g.places)
    # One side has a percent sign: "50%" stands for 50 (sign as unit) and for 0.5 (its value).
    if _close(p.value, g.value, g.places):
        return True
    return _close(p.value / 100, g.value, g.places) if p.percent else _close(p.value, g.value / 100, None)


def _lists_equal(ps: list[_Num], gs: list[_Num]) -> bool:
    if len(ps) != len(gs):
        return False
    left = list(gs)
    for p in sorted(ps, key=lambda n: n.value):
        match = next((g for g in left if _num_equal(p, g)), None)
        if match is None:
            return False
        left.remove(match)
    return True


def _string_key(s: str) -> str:
    s = re.sub(r"[\s{}]", "", s).lower()
    # "(C)" is the letter C; "(1,3)" stays a pair (or an interval).
    return s[1:-1] if s.startswith("(") and s.endswith(")") and "," not in s else s


# ---------------------------------------------------------------- verdicts

@functools.lru_cache(maxsize=65536)
def _decide(pred: str, gold: str, timeout_s: float) -> Verdict:
    """The verdict; cached, timeouts included: a policy that repeats an answer that hangs sympy
    must not cost a worker restart each time (a larger ``timeout_s`` is a new key: a new try)."""
    for side, s in (("pred", pred), ("gold", gold)):
        if not s.strip():
            return Verdict(False, "malformed", pred, gold, f"{side} is empty")
        if len(s) > MAX_ANSWER_CHARS:
            return Verdict(False, "malformed", pred, gold, f"{side} is {len(s)} chars (max {MAX_ANSWER_CHARS})")
        if not _balanced(s):
            return Verdict(False, "malformed", pred, gold, f"{side} has unbalanced braces")
    p, g = _clean(pred), _clean(gold)
    pn, gn = _parse_numbers(p), _parse_numbers(g)
    if pn is not None and gn is not None:
        return Verdict(_lists_equal(pn, gn), "numeric", pred, gold)
    if _string_key(p) == _string_key(g):
        return Verdict(True, "string", pred, gold)
    try:
        equal, parsed = mvw.compare(re.sub(r"(?<![\\a-zA-Z])pi\b", r"\\pi", p), g, timeout_s)
    except mvw.MathVerifyTimeout:
        return Verdict(False, "timeout", pred, gold, f"math-verify took over {timeout_s:g}s")
    except mvw.MathVerifyError as e:
        log.warning("math-verify failed on pred=%r gold=%r: %s", pred[:200], gold[:200], e)
        return Verdict(False, "math_verify", pred, gold, str(e))
    return Verdict(equal, "math_verify" if parsed else "string", pred, gold)


def verify(pred: str | None, gold: str, timeout_s: float = 2.0) -> Verdict:
    """Is ``pred`` the same answer as ``gold``? Never raises for bad answers; see module doc."""
    if not isinstance(gold, str) or not isinstance(pred, str | None):
        raise TypeError(f"verify takes str answers, got pred={pred!r} gold={gold!r}")
    if pred is None:
        return Verdict(False, "malformed", None, gold, "no answer")
    return _decide(pred, gold, float(timeout_s))


def grade(pred: str | None, gold: str, timeout_s: float = 2.0) -> bool:
    """True when ``pred`` is equivalent to ``gold``."""
    return verify(pred, gold, timeout_s).equivalent


async def averify(pred: str | None, gold: str, timeout_s: float = 2.0) -> Verdict:
    """``verify`` for asyncio code: runs in a thread so the event loop never blocks on sympy."""
    return await asyncio.to_thread(verify, pred, gold, timeout_s)
