"""Answer forms: what one answer string is, before the grader compares two of them.

``read(answer, pred=...)`` turns an answer into a ``Form``, or raises ``Malformed``. It applies
the conventions of the grading spec (see ``rstar.grading``) that math-verify does not:

- Wrappers go: ``$…$``, ``\\(…\\)``, ``\\[…\\]``, ``\\boxed{…}``, ``\\text{…}``, ``\\left``/``\\right``,
  spacing commands (``3\\,000`` is 3000), ``{,}``, a trailing period, and filler such as
  "The answer is". ``%``, "percent", ``\\$``, ``°``/``^\\circ`` are unit labels and are dropped
  (``40\\%`` is 40), as are trailing unit words after a number (``5 cm``).
- Values are rewritten exactly (``rstar.answer_numbers``): spelled-out numbers (``two hundred``,
  ``one third``) become digits, ``0.8\\overline{3}`` becomes ``\\frac{5}{6}``, the mixed number
  ``2\\frac{3}{4}`` becomes ``\\frac{11}{4}``; a chain of values without variables (``2+3=5``)
  becomes its last one.
- Malformed: nothing left (``\\boxed{}``), ``None``/``null``/``NaN``, a literal division by zero, two
  different boxed answers, and, in a prediction, a hedge (``5 or 6``). In a gold, "or" separates
  several solutions (MATH writes ``-2 \\text{ or } -12``).

``Form.kind`` says what the answer is: ``number``, ``list`` (bare commas), ``set`` (``\\{…\\}``),
``tuple``, ``interval``, ``matrix``, ``based`` (``210_3``), ``compound`` (``3 feet 6 inches``),
``equation`` or ``expr``. ``Form.numbers`` holds exact values when the answer is made of plain
numbers or rational arithmetic only (one, a list or set of them, or a matrix of them with its
scalar factor applied).
``for_math_verify(text)`` rewrites an answer for math-verify: decimals as exact fractions (so
no float rounding applies), ``i`` as the imaginary unit, the word ``pi`` as ``\\pi``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction

from rstar.answer_numbers import MATH_WORDS, Num, mixed, repeating, spelled, value


class Malformed(ValueError):
    """The answer states no single value (empty, hedged, divides by zero, …)."""


@dataclass(frozen=True, slots=True)
class Form:
    text: str  # the answer after normalisation: compared as a string, sent to math-verify
    kind: str  # number | list | set | tuple | interval | matrix | based | compound | equation | expr
    numbers: tuple[Num, ...] | None = None  # exact values, row by row for a matrix
    shape: tuple[int, int] | None = None  # matrix: rows, columns
    base: tuple[str, int] | None = None  # based numeral: digits (lower case, no leading zeros), base


# ---------------------------------------------------------------- wrappers and labels

BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_WRAPPERS = re.compile(r"\\(?:text|textbf|textrm|textit|mathrm|mathbf|mbox|operatorname)\s*\{([^{}]*)\}")
_SPACING = re.compile(
    r"\\\\|\\[!,;:> ]|\\[hv]?phantom\s*(?:\{[^{}]*\}|[^\s{])"
    r"|\\left\s*\.|\\right\s*\.|\\left|\\right|\\displaystyle|\\hline"
)
_LABELS = re.compile(r"\\?%|\bper\s*cent\b|\bpercent\b|\\?\$|\^\s*\{?\s*\\circ\s*\}?|\\circ|\\degree|°", re.I)
_FILLER = re.compile(
    r"^(?:(?:so|thus|therefore|hence),?\s+)?(?:the\s+)?(?:final\s+)?answer\s*(?:is|=|:)?\s*:?\s*", re.I
)
_TEXT_UNIT = re.compile(r"(?<=[\d}])\s*\\(?:text|mbox|mathrm)\s*\{\s*([A-Za-z]{2,}[A-Za-z .^/\d]*)\}\s*$")
_FRAC_ARGS = re.compile(r"\\frac\s*(\d|\\[A-Za-z]+|\{[^{}]*\})\s*(\d|\\[A-Za-z]+|\{[^{}]*\})")
_HEDGE = re.compile(r"\bor\b", re.I)
_RELATION = re.compile(r"[<>]|\\[lg]eq?\b|\\[lg]t\b")
_NO_VALUE = {"none", "null", "nan", "n/a"}
_ZERO = r"[-+]?0+(?:\.0*)?"
_DIV_ZERO = re.compile(rf"\\frac\s*\{{[^{{}}]*\}}\s*\{{\s*{_ZERO}\s*\}}|/\s*{_ZERO}(?![\d.])")


def braced(text: str, start: int) -> str | None:
    """Content of the ``{…}`` opening at ``text[start]``, or None if the braces never close."""
    depth = 0
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start + 1 : i]
    return None


def _boxes(s: str) -> list[tuple[int, int, str]]:
    """``(start, end, content)`` of each outermost ``\\boxed{…}`` (or ``\\boxed x``) in ``s``."""
    out: list[tuple[int, int, str]] = []
    for m in BOXED.finditer(s):
        if out and m.start() < out[-1][1]:
            continue  # inside the previous box
        if s[m.end() : m.end() + 1] == "{":
            inner = braced(s, m.end())
            if inner is None:
                raise Malformed("has an unclosed \\boxed{")
            out.append((m.start(), m.end() + len(inner) + 2, inner.strip()))
        else:
            rest = re.match(r"[^\s$]*", s[m.end() :])
            assert rest is not None  # the pattern matches the empty string too
            token = rest.group(0)
            out.append((m.start(), m.end() + len(token), token))
    return out


def _unwrap(s: str) -> str:
    """Peel math delimiters and boxes until the answer itself is left."""
    while True:
        before = s = s.strip()
        for a, b in (("$", "$"), ("\\(", "\\)"), ("\\[", "\\]")):
            if len(s) >= len(a) + len(b) and s.startswith(a) and s.endswith(b):
                s = s[len(a) : -len(b)].strip()
        boxes = _boxes(s)
        if any(not content for _, _, content in boxes):
            raise Malformed("has an empty \\boxed{}")
        if len({content for _, _, content in boxes}) > 1:
            raise Malformed("gives different boxed answers")
        if len(boxes) > 1:
            s = boxes[0][2]
        elif boxes:
            start, end, content = boxes[0]
            s = s[:start] + content + s[end:]
        if s == before:
            return s


def _drop_text_unit(s: str) -> str:
    """``2\\sqrt{3}\\text{ cm}`` → ``2\\sqrt{3}``: a word label after mathematics is a unit."""
    m = _TEXT_UNIT.search(s)
    return s[: m.start()] if m and m[1].split()[0].lower() not in MATH_WORDS else s


def _plain(s: str) -> str:
    """Drop wrappers, spacing, unit labels and filler; unify spellings (``\\dfrac``, ``−``)."""
    s = _drop_text_unit(s)
    while (t := _WRAPPERS.sub(r"\1", s)) != s:
        s = t
    s = _SPACING.sub(lambda m: {"\\\\": "\\\\", "\\ ": " "}.get(m.group(0), ""), s)
    s = s.replace("~", " ").replace("{,}", ",")
    s = s.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac").replace("−", "-")
    s = s.replace("\u2009", "").replace("\u202f", "").replace("\u00a0", " ")
    s = _LABELS.sub("", s)
    s = _FRAC_ARGS.sub(lambda m: f"\\frac{{{m[1].strip('{}')}}}{{{m[2].strip('{}')}}}", s)
    s = _FILLER.sub("", s.strip())
    return s.strip().rstrip(".").strip()


# ---------------------------------------------------------------- structure

_OPEN, _CLOSE = "([{", ")]}"


def split_top(s: str, sep: str) -> list[str]:
    """``s`` split at each ``sep`` outside brackets of any kind."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(s):
        depth += (ch in _OPEN) - (ch in _CLOSE)
        if ch == sep and depth == 0:
            parts.append(s[start:i])
            start = i + 1
    return parts + [s[start:]]


def _closer(s: str, start: int) -> int:
    """Index of the bracket that closes the one at ``s[start]`` (-1 if none)."""
    depth = 0
    for i in range(start, len(s)):
        depth += (s[i] in _OPEN) - (s[i] in _CLOSE)
        if depth == 0:
            return i
    return -1


def _is_set(s: str) -> bool:
    return s.startswith("\\{") and s.endswith("\\}") and _closer(s, 1) == len(s) - 1


def _kind(s: str) -> str:
    """set, tuple, interval, list, equation or expr (numbers, matrices and numerals come first)."""
    if _is_set(s):
        return "set"
    bracketed = s[:1] in "([" and s[-1:] in ")]"
    if bracketed and ("\\cup" in s or "\\cap" in s):
        return "interval"
    if bracketed and _closer(s, 0) == len(s) - 1 and len(split_top(s[1:-1], ",")) > 1:
        plain_pair = s[0] == "(" and s[-1] == ")" and "\\infty" not in s
        return "tuple" if plain_pair else "interval"
    if len(split_top(s, ",")) > 1:
        return "list"
    return "equation" if "=" in s.replace("\\leq", "").replace("\\geq", "") else "expr"


_MATRIX = re.compile(
    r"(?P<factor>[^\\]*?|\\frac\{[^{}]*\}\{[^{}]*\})\s*(?P<open>\()?\s*"
    r"\\begin\{(?P<env>pmatrix|bmatrix|Bmatrix|matrix|smallmatrix|array)\}(?:\{[lcr|\s]*\})?"
    r"(?P<body>.*?)\\end\{(?P=env)\}\s*(?(open)\))",
    re.S,
)


def _matrix(s: str) -> Form | None:
    """``[factor] \\begin{pmatrix}…\\end{pmatrix}`` (or bmatrix, array, …) as a pmatrix Form."""
    m = _MATRIX.fullmatch(s)
    if not m:
        return None
    rows = [r for r in m["body"].split("\\\\") if r.strip()]
    cells = [[c.strip() for c in r.split("&")] for r in rows]
    if not cells or len({len(r) for r in cells}) != 1 or any(not c for r in cells for c in r):
        return None
    factor = m["factor"].strip()
    text = factor + "\\begin{pmatrix}" + "\\\\".join("&".join(r) for r in cells) + "\\end{pmatrix}"
    scale = value(factor) if factor else Num(Fraction(1), False)
    values = [value(c) for r in cells for c in r]
    nums = [v for v in values if v is not None]
    exact = (
        None if scale is None or len(nums) < len(values) else tuple(Num(scale.value * v.value, v.double) for v in nums)
    )
    return Form(text, "matrix", exact, (len(cells), len(cells[0])))


_ASSIGN = re.compile(r"(?:[A-Za-z]|\\[A-Za-z]+)(?:_\{?\w+\}?)?\s*=\s*")


def _unassigned(s: str) -> str:
    """``x = 5`` → ``5``: a single-variable assignment stands for its value."""
    m = _ASSIGN.match(s.strip())
    return s.strip()[m.end() :] if m else s.strip()


def _numbers(s: str) -> tuple[Num, ...] | None:
    """A value, or values separated by commas (``x = \\pm 2`` is two); None if any part is not."""
    one = value(_unassigned(s))
    if one is not None:
        return (one,)
    out: list[Num] = []
    for part in map(_unassigned, split_top(s, ",")):
        pm = re.match(r"\\pm\s*", part)
        n = value(part[pm.end() :] if pm else part)
        if n is None:
            return None
        out += [n, Num(-n.value, n.double)] if pm else [n]
    return tuple(out)


_BASED = re.compile(r"(-?)([0-9A-Za-z]+)_\{?\(?(\d+)\)?\}?")


def _based(s: str) -> Form | None:
    """A numeral with a base subscript (``210_3``, ``A1_{16}``), digits valid in that base."""
    m = _BASED.fullmatch(s)
    if not m or not 2 <= int(m[3]) <= 36:
        return None
    digits, base = m[2].lower(), int(m[3])
    if any(int(d, 36) >= base for d in digits) or not (re.search(r"\d", digits) or m[2].isupper()):
        return None
    return Form(s, "based", base=(m[1] + (digits.lstrip("0") or "0"), base))


_COMPOUND = re.compile(r"[-+]?\d[\d.,/]*\s*[a-z]+\.?(?:\s*,?\s+(?:and\s+)?\d[\d.,/]*\s*[a-z]+\.?)+", re.I)


def _last_value(s: str) -> str:
    """``2+3 = 5`` → ``5``: a chain of equal values without variables stands for its last one."""
    parts = s.split("=")
    variable_free = all(p.strip() and not re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", p)) for p in parts)
    return parts[-1].strip() if len(parts) > 1 and variable_free else s


def read(answer: str, *, pred: bool) -> Form:
    """The ``Form`` of one answer; ``pred`` says whether it is a prediction (a hedge is malformed)."""
    s = _plain(_unwrap(answer))
    if not s:
        raise Malformed("is empty")
    if _HEDGE.search(s) and not _RELATION.search(s):  # "x < 1 or x > 2" is one answer
        if pred:
            raise Malformed("hedges between answers ('or')")
        s = ", ".join(p.strip() for p in _HEDGE.split(s))
    if s.lower() in _NO_VALUE:
        raise Malformed(f"has no value ({s!r})")
    s = _last_value(mixed(repeating(spelled(s))))
    try:
        if _DIV_ZERO.search(s):
            raise ZeroDivisionError
        return _form(s)
    except ZeroDivisionError:
        raise Malformed("divides by zero") from None


def _form(s: str) -> Form:
    """What the normalised answer is: a based numeral, a matrix, a compound quantity, numbers,
    or else by its brackets (``_kind``)."""
    found = _based(s) or _matrix(s)
    if found:
        return found
    if _COMPOUND.fullmatch(s):
        return Form(s, "compound")
    values = _numbers(s[2:-2] if _is_set(s) else s)
    if values is not None:
        return Form(s, "set" if _is_set(s) else "number" if len(values) == 1 else "list", values)
    return Form(s, _kind(s))


# ---------------------------------------------------------------- for math-verify

_DECIMAL = re.compile(r"(?<![\d.,])(\d*\.\d+)")
_IMAGINARY = re.compile(r"(?<![\\A-Za-z])i(?![A-Za-z])")
_PI_WORD = re.compile(r"(?<![\\a-zA-Z])pi\b")


def _exact_fraction(m: re.Match) -> str:
    num, den = Fraction(m[1]).as_integer_ratio()
    return f"{{\\frac{{{num}}}{{{den}}}}}"


def for_math_verify(text: str) -> str:
    """``text`` with decimals as exact fractions, ``i`` as the imaginary unit, ``pi`` as ``\\pi``."""
    text = _DECIMAL.sub(_exact_fraction, text)
    text = _IMAGINARY.sub("(I)", text)  # latex2sympy reads "I" as sympy.I ("(I)": it drops I's exponent)
    return _PI_WORD.sub(r"\\pi", text)
