"""Answer grading: pull the final answer out of model text, and decide if two answers are equal.

``extract_answer(text)`` finds the final answer in free text: the last ``\\boxed{…}`` (nested
braces), else the last ``#### …`` line (GSM8K), else the last "the answer is …", else the last
number. ``verify(pred, gold)`` returns a ``Verdict``; ``grade(pred, gold)`` is its boolean.

The spec (``tests/unit/grading_cases.jsonl`` holds cases for each rule; ``rstar grade --file`` on
that table reports agreement by category). A verdict says whether two *final answers* are the same
mathematical value, with no false positive:

- Only equivalence is judged, not the requested form: ``\\frac{2}{4}`` = ``\\frac12``,
  ``2^{10}`` = ``1024``, ``(x+1)^2`` = ``x^2+2x+1``.
- Exact values, no tolerance. A rounded or truncated decimal is not a repeating or irrational value
  (``0.67``, ``0.6666666667`` ≠ 2/3; ``3.1416`` ≠ π); integers of any size compare exactly;
  ``10^{-7}`` ≠ ``10^{-6}``; a repeating decimal ``0.8\\overline{3}`` is the exact 5/6.
- ``%`` is a unit label (MATH's strip_string convention): ``40\\%`` = ``40`` = ``40 percent``, ≠ ``0.4``.
- Units, currency, degrees and filler text go when the number matches (``5 cm``, ``\\$12.50``,
  ``30^\\circ``, ``The answer is 24``); units are not converted (``5 cm`` = ``5 m``) and degrees are
  not radians. A compound quantity (``3 feet 6 inches``) is no single number: it equals only itself.
- Values: thousands separators (``1,234``, ``10{,}000``, ``3\\,000``), leading zeros, ``5.0``, ``+``,
  ``−``, a final period, ``1.5e3``, ``1.5 \\times 10^3``, spelled-out numbers (``seven``, ``two
  hundred``, ``one third``, ``twenty-five``). ``2\\frac{3}{4}`` is the mixed number 11/4. A
  single-variable assignment is its value (``x=3`` = ``3``, ``y=2x+3`` = ``2x+3``); another
  equation is not its right-hand side (``2x+3=7`` ≠ ``7``); a chain of values without variables
  stands for its last one (``2+3=5`` = ``5``).
- Lists and sets: order and braces do not matter (``2, 1`` = ``\\{1, 2\\}``), ``\\pm`` expands,
  a missing or extra element is false. Tuples: order and length matter; a bare list against a
  tuple is read as that tuple; a set is never a tuple or interval. Intervals: endpoints and
  open/closed ends must match; a union's order does not. Matrices: pmatrix, bmatrix, array are
  the same; shape and every entry must match (a transpose is false); a scalar factor outside is
  applied. ``i`` is the imaginary unit (``i^3`` = ``-i``). A numeral with a base subscript equals
  only the same digits in the same base (``210_3`` ≠ ``210_4``, ≠ ``21``); a plain integer is base 10.
- Malformed, empty or hedged predictions are false (method ``malformed``): ``""``, ``None``,
  ``\\boxed{}``, ``5 or 6``, two different boxed answers, ``\\frac{4}{0}``, unbalanced braces, over
  ``MAX_ANSWER_CHARS``. An empty prediction is never 0. In a gold, "or" lists solutions
  (MATH writes ``-2 \\text{ or } -12``).

One exception to exactness, for code output: a prediction written as a double's shortest repr
with 15+ significant digits (what Python's ``str``/``repr`` print, e.g. ``238.79999999999998``;
no person rounds that way) matches a rational gold of magnitude under 2**53 within
``FLOAT_ULPS`` units in the last place of the gold's double: that is the float arithmetic's
error, not a rounding. ``0.30000000000000004`` = ``0.3`` and ``0.6666666666666666`` = 2/3, while
``0.6666666667`` (10 digits) ≠ 2/3. It never applies to irrational golds (a decimal is never
π/2) nor to integers past 2**53, where a double cannot tell neighbours apart. In the system the
sandbox prints a float ``answer`` with at most 10 significant digits
(``actors.sandbox_exec.format_answer``): float noise such as ``0.1 + 0.2`` arrives as ``0.3`` and
matches, but a float of a repeating or irrational value (``2/3`` → ``0.6666666667``) is a
rounding and is graded wrong; policy code must compute such answers exactly (``Fraction``, sympy).

How ``verify`` decides (``Verdict.method``):

1. ``malformed``: see above; ``error`` says which side and why.
2. ``form``: the answers' structure settles it without looking at values: based numerals, a
   matrix against a non-matrix or another shape, a set against a tuple or interval, a bare list
   against an interval, an equation that is no assignment against a non-equation.
3. ``numeric``: both sides are plain numbers or rational arithmetic (``0.1+0.2``,
   ``\\frac{1}{2^{99}}``), or lists, sets or matrices of them, compared as exact fractions,
   in-process (no sympy).
4. ``string``: equal after normalisation (``(C)`` = ``c``, identical LaTeX), or a side math-verify
   cannot parse, or a compound quantity.
5. ``math_verify``: everything else, by ``math_verify`` in a subprocess with a hard deadline
   (``rstar.mathverify_worker``), callable from any thread. The answers reach it normalised
   (``rstar.answer_forms``): decimals as exact fractions, so math-verify's float rounding never
   applies; the worker parses each answer whole (never a fragment of it) and strips no units.
   ``timeout`` when it misses ``timeout_s`` (not equal; the verdict is cached like any other, so
   a repeated hanging answer costs one timeout). A crash of that subprocess gives
   ``method="math_verify"`` with ``error`` set, never an exception.

Limits: math-verify's last resort for two symbolic expressions is numeric: it calls them equal
when their difference evaluates to under 10**-100 in absolute terms (the worker's
``NUMERIC_DIGITS``). Rational arithmetic never gets there (the numeric path settles
``\\frac{1}{2^{99}}`` ≠ ``\\frac{1}{2^{98}}`` exactly); irrational values that small could.
Units are labels, never compared (``5 cm^2`` = ``5 cm^3``).

Verdicts are LRU-cached. Costs per pair of each path, and the timeout's slack, are measured by
``benchmarks/grading.py`` (figures in ``docs/bench/grading.json``); a worker's start (importing
sympy) is paid once, or ahead by ``mathverify_worker.warm_up()``.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
from fractions import Fraction

import msgspec

from rstar import answer_forms as forms
from rstar import mathverify_worker as mvw
from rstar.answer_forms import Form, Num
from rstar.log import get_logger

log = get_logger(__name__)
MAX_ANSWER_CHARS = 2000


class Verdict(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    equivalent: bool
    method: str  # malformed | form | numeric | string | math_verify | timeout
    pred: str | None
    gold: str
    error: str | None = None


# ---------------------------------------------------------------- extraction

_NUMBER_TOKEN = re.compile(r"-?\d[\d,]*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def extract_answer(text: str | None) -> str | None:
    """The final answer in free text, or None. An unclosed last ``\\boxed{`` gives None."""
    if not text or not text.strip():
        return None
    boxes = list(forms.BOXED.finditer(text))
    if boxes:
        end = boxes[-1].end()
        if text[end : end + 1] == "{":
            inner = forms.braced(text, end)
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


def _balanced(s: str) -> bool:
    depth = 0
    for ch in s:
        depth += {"{": 1, "}": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0


# ---------------------------------------------------------------- verdicts

FLOAT_ULPS = 4  # see the module doc: a double printed in full may be this far from an exact gold


def _float_artefact(p: Num, g: Fraction) -> bool:
    if not p.double or not abs(g) < 2**53:
        return False
    return abs(p.value - g) <= FLOAT_ULPS * Fraction(math.ulp(float(g)))


def _num_equal(p: Num, g: Num) -> bool:
    return p.value == g.value or _float_artefact(p, g.value)


def _numbers_equal(p: Form, g: Form) -> bool:
    """Matrices and single numbers in order; lists and sets as multisets."""
    ps, gs = p.numbers, g.numbers
    assert ps is not None and gs is not None  # the caller checks both have exact values
    if len(ps) != len(gs):
        return False
    if "matrix" in (p.kind, g.kind) or (p.kind == g.kind == "number"):
        return all(map(_num_equal, ps, gs))
    left = list(gs)
    for x in sorted(ps, key=lambda n: n.value):
        match = next((y for y in left if _num_equal(x, y)), None)
        if match is None:
            return False
        left.remove(match)
    return True


def _digits(f: Form) -> tuple[str, int] | None:
    """A based numeral's digits and base; a non-negative integer is base 10."""
    if f.base is not None:
        return f.base
    if f.kind == "number" and f.numbers:  # a "number" Form always has its one value
        value = f.numbers[0].value
        if value.denominator == 1 and value >= 0:
            return str(value), 10
    return None


_ASSIGNMENT = re.compile(r"\s*(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?\w+\}?)?(?:\([^()=]*\))?\s*=")


def _by_form(p: Form, g: Form) -> bool | None:
    """The verdict when the answers' structure settles it, else None."""
    kinds = {p.kind, g.kind}
    if "based" in kinds:
        return _digits(p) is not None and _digits(p) == _digits(g)
    if "matrix" in kinds:
        return None if p.kind == g.kind and p.shape == g.shape else False
    if kinds in ({"set", "tuple"}, {"set", "interval"}, {"list", "interval"}):
        return False
    if "equation" in kinds and len(kinds) == 2:
        eq = p if p.kind == "equation" else g
        return None if _ASSIGNMENT.match(eq.text) else False
    return None


def _string_key(f: Form) -> str:
    s = re.sub(r"\s+", "", f.text)
    if "\\" in s:
        return s
    s = s.lower()  # plain text: case does not matter, "(C)" is the letter C
    return s[1:-1] if s.startswith("(") and s.endswith(")") and "," not in s else s


def _mv_texts(p: Form, g: Form) -> tuple[str, str]:
    """What math-verify compares: a bare list against a tuple gets the tuple's parentheses."""
    pt, gt = p.text, g.text
    if p.kind == "list" and g.kind == "tuple":
        pt = f"({pt})"
    elif g.kind == "list" and p.kind == "tuple":
        gt = f"({gt})"
    return forms.for_math_verify(pt), forms.for_math_verify(gt)


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
    try:
        p = forms.read(pred, pred=True)
    except forms.Malformed as e:
        return Verdict(False, "malformed", pred, gold, f"pred {e}")
    try:
        g = forms.read(gold, pred=False)
    except forms.Malformed as e:
        return Verdict(False, "malformed", pred, gold, f"gold {e}")
    settled = _by_form(p, g)
    if settled is not None:
        return Verdict(settled, "form", pred, gold)
    if p.numbers is not None and g.numbers is not None:
        return Verdict(_numbers_equal(p, g), "numeric", pred, gold)
    if _string_key(p) == _string_key(g) or "compound" in (p.kind, g.kind):
        return Verdict(_string_key(p) == _string_key(g), "string", pred, gold)
    try:
        equal, parsed = mvw.compare(*_mv_texts(p, g), timeout_s)
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
