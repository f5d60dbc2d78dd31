"""Exact numbers in answer text: the values the grading spec reads, in-process and without sympy.

``number(s)`` reads one plain number with its spellings: sign (``+``, ``-``), currency, thousands
separators, decimals, ``\\frac{a}{b}``, ``a/b``, e-notation, ``a \\times 10^{k}``, integer powers
``b^{k}``, and trailing unit words (``5 cm``, ``12 km/h``; not ``5x`` nor ``5 pi``). ``value(s)``
also evaluates rational arithmetic exactly (``0.1+0.2``, ``\\frac{1}{2^{99}}``). Both give a
``Num``, or None for anything else; ``value`` raises ZeroDivisionError for a division by zero.
Results stay under ``MAX_DIGITS`` digits, so no input makes the bignum work long.

Rewrites to exact LaTeX: ``spelled`` (``two hundred`` → ``200``, ``one third`` → ``1/3``),
``repeating`` (``0.8\\overline{3}`` → ``\\frac{5}{6}``), ``mixed`` (``2\\frac{3}{4}`` → ``\\frac{11}{4}``).
"""

from __future__ import annotations

import math
import re
from fractions import Fraction
from typing import NamedTuple


class Num(NamedTuple):
    value: Fraction
    double: bool  # written as the shortest repr of a double with 15+ significant digits


# ---------------------------------------------------------------- spelled, repeating, mixed

_ONES = {
    w: i
    for i, w in enumerate(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
        "fifteen sixteen seventeen eighteen nineteen".split()
    )
}
_TENS = {w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)}
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9}
_PARTS = {
    "half": 2,
    "halve": 2,
    "third": 3,
    "quarter": 4,
    "fourth": 4,
    "fifth": 5,
    "sixth": 6,
    "seventh": 7,
    "eighth": 8,
    "ninth": 9,
    "tenth": 10,
}
_WORD = re.compile(r"[a-z]+", re.I)


def _whole_words(words: list[str]) -> int | None:
    """``["two", "hundred", "five"]`` → 205; None unless the words spell one whole number."""
    total = current = 0
    last = None  # the kind of the previous word: one, ten, hundred, scale
    for w in words:
        if w in _ONES and last not in ("one", "teen") and not (last == "ten" and _ONES[w] >= 10):
            current, last = current + _ONES[w], "teen" if _ONES[w] >= 10 else "one"
        elif w in _TENS and last in (None, "hundred", "scale"):
            current, last = current + _TENS[w], "ten"
        elif w == "hundred" and last in ("one", "teen", "ten") and current < 100:
            current, last = current * 100, "hundred"
        elif w in _SCALES and last is not None and last != "scale":
            total, current, last = total + current * _SCALES[w], 0, "scale"
        else:
            return None
    return total + current if last is not None else None


def _part(word: str) -> int | None:
    return _PARTS.get(word[:-1] if word.endswith("s") else word) or _PARTS.get(word)


def _spelled_value(words: list[str]) -> Fraction | None:
    """A whole number, a fraction ("two thirds", "a half"), or both joined by "and"."""
    sign = -1 if words[0] in ("negative", "minus") else 1
    words = words[1:] if sign < 0 else words
    whole, frac = [w for w in words if w != "and"], []  # "two hundred and five"
    if words and _part(words[-1]) and "and" in words:  # "three and a half"
        cut = len(words) - 1 - words[::-1].index("and")
        whole, frac = words[:cut], words[cut + 1 :]
    elif words and _part(words[-1]):  # "two thirds"
        whole, frac = [], words
    value = Fraction(0)
    if whole:
        n = _whole_words(whole)
        if n is None:
            return None
        value += n
    if frac:
        count = 1 if frac[:-1] in (["a"], ["an"]) else _whole_words(frac[:-1])
        if not count:
            return None
        value += Fraction(count, _part(frac[-1]))
    return sign * value if whole or frac else None


def spelled(s: str) -> str:
    """A spelled-out number that starts the answer, in digits: ``seven apples`` → ``7 apples``."""
    words: list[tuple[str, int]] = []  # (word, where it ends)
    for m in _WORD.finditer(s):
        w = m.group(0).lower()
        gap = s[words[-1][1] if words else 0 : m.start()]
        if (gap.strip(" -") if words else gap) or not (
            w in _ONES
            or w in _TENS
            or w in _SCALES
            or _part(w)
            or w in ("hundred", "and", "a", "an", "negative", "minus")
        ):
            break
        words.append((w, m.end()))
    while words and words[-1][0] in ("and", "a", "an", "negative", "minus"):
        words.pop()
    x = _spelled_value([w for w, _ in words]) if words else None
    if x is None:
        return s
    digits = f"{x.numerator}/{x.denominator}" if x.denominator > 1 else f"{x}"
    return digits + s[words[-1][1] :]


_REPEATING = re.compile(r"(?<![\d.])(\d*)\.(\d*)\\overline\s*(?:\{(\d+)\}|(\d))")
_MIXED = re.compile(r"(?<![\w.^_}\\)])(\d+)\s*\\frac\{(\d+)\}\{(\d+)\}")


def repeating(s: str) -> str:
    """``0.8\\overline{3}`` → ``\\frac{5}{6}``: a repeating decimal is an exact value."""

    def exact(m: re.Match) -> str:
        whole, fixed, period = m[1] or "0", m[2], m[3] or m[4]
        if len(whole) + len(fixed) + len(period) > MAX_DIGITS:
            return m[0]  # left as written (bignum work stays short)
        value = Fraction(int(whole)) + Fraction(int(fixed or "0"), 10 ** len(fixed))
        value += Fraction(int(period), (10 ** len(period) - 1) * 10 ** len(fixed))
        return f"\\frac{{{value.numerator}}}{{{value.denominator}}}"

    return _REPEATING.sub(exact, s)


def mixed(s: str) -> str:
    """``2\\frac{3}{4}`` → ``\\frac{11}{4}``: an integer written before a fraction is a mixed number."""

    def improper(m: re.Match) -> str:
        if max(len(m[1]) + len(m[3]), len(m[2])) > MAX_DIGITS:
            return m[0]  # left as written (bignum work stays short)
        whole, num, den = int(m[1]), int(m[2]), int(m[3])
        return f"\\frac{{{whole * den + num}}}{{{den}}}"

    return _MIXED.sub(improper, s)


# ---------------------------------------------------------------- numbers

_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|\.\d+"
_EXP = r"(?:[eE](?P<e1>[-+]?\d+)|\s*(?:\\times|\\cdot|×|\*|x)\s*10\s*\^\s*\{?\s*(?P<e2>[-+]?\d+)\s*\}?)?"
_VALUE = re.compile(
    rf"(?P<sign>[-+]?)\s*(?:€|£|¥|usd|eur|rs\.?)?\s*(?P<sign2>[-+]?)\s*(?:"
    rf"\\frac\s*\{{\s*(?P<fn>[-+]?{_NUM})\s*\}}\s*\{{\s*(?P<fd>[-+]?{_NUM})\s*\}}"
    rf"|(?P<n>{_NUM})\s*/\s*(?P<d>{_NUM})"
    rf"|(?P<pb>\d+)\s*\^\s*(?:\{{\s*(?P<pe>[-+]?\d+)\s*\}}|(?P<pe1>\d))"
    rf"|(?P<num>{_NUM}){_EXP})"
    rf"\s*(?P<rest>.*)",
    re.I | re.S,
)
# Words after a number that are mathematics, not a unit: "5 pi" is not 5.
MATH_WORDS = {
    "pi",
    "e",
    "i",
    "sqrt",
    "x",
    "y",
    "z",
    "n",
    "k",
    "and",
    "or",
    "to",
    "times",
    "over",
    "mod",
    "squared",
    "cubed",
    "plus",
    "minus",
    "ln",
    "log",
    "sin",
    "cos",
    "tan",
    "with",
}
_UNIT_SYMBOLS = {
    "m",
    "cm",
    "mm",
    "km",
    "g",
    "kg",
    "mg",
    "s",
    "ms",
    "min",
    "h",
    "hr",
    "hrs",
    "l",
    "ml",
    "in",
    "ft",
    "yd",
    "mi",
    "lb",
    "lbs",
    "oz",
    "mph",
    "kph",
    "kmh",
    "sq",
    "cu",
}
_UNIT = re.compile(r"[a-z][a-z./^0-9²³]*(?:\s+[a-z][a-z./^0-9²³]*)*", re.I)
MAX_DIGITS = 4000  # a value with more digits is left to math-verify (and its deadline)
_LONG_DIGITS = re.compile(rf"\d{{{MAX_DIGITS + 1}}}")
MAX_NESTING = 64  # brackets, fractions and exponents nested deeper are left to math-verify too


def _is_unit(rest: str, spaced: bool) -> bool:
    """Are the words after a number a unit (``cm``, ``5 m``, ``km/h``, ``apples``), not more
    mathematics (``5x``, ``5ab``, ``5 pi``) or a second quantity (``6 feet two inches``)?"""
    words = rest.lower().split()
    if not _UNIT.fullmatch(rest) or words[0] in MATH_WORDS or any(w in _ONES or w in _TENS for w in words):
        return False
    letters = re.match(r"[a-z]+", words[0])
    if letters is None:  # _UNIT's re.I also takes letters that only fold to ASCII, such as "ſ"
        return False
    symbol = letters.group(0)
    return symbol in _UNIT_SYMBOLS or (spaced and len(symbol) >= 2)


def _double(mantissa: str, exponent: str | None) -> bool:
    """Is ``mantissa[e exponent]`` how a double prints: a decimal with 15+ significant digits
    that is the shortest repr of its own float (what ``repr`` and ``str`` give)?"""
    if "," in mantissa or ("." not in mantissa and exponent is None):
        return False
    digits = re.sub(r"\D", "", mantissa).lstrip("0")
    text = mantissa + (f"e{exponent}" if exponent is not None else "")
    return len(digits) >= 15 and math.isfinite(x := float(text)) and Fraction(repr(x)) == Fraction(text)


def _power(base: str, exponent: str) -> Fraction | None:
    b, e = int(base), int(exponent)
    if b > 1 and abs(e) > MAX_DIGITS / math.log10(b):  # not abs(e) * log: e may be past any float
        return None
    return Fraction(b) ** e if b or e >= 0 else None


def number(s: str) -> Num | None:
    """One plain number, with optional sign, currency and unit words; None for anything else."""
    s = s.strip()
    if _LONG_DIGITS.search(s):  # past MAX_DIGITS (and Python's int-from-str limit): math-verify's
        return None
    m = _VALUE.fullmatch(s)
    if not m:
        return None
    rest = m["rest"].strip()
    if rest and not _is_unit(rest, s[m.start("rest") - 1].isspace()):
        return None
    double = False
    if m["num"] is not None:
        value = Fraction(m["num"].replace(",", ""))
        exp = m["e1"] or m["e2"]
        if exp is not None:
            if abs(int(exp)) > MAX_DIGITS:
                return None
            value *= Fraction(10) ** int(exp)
        double = m["e2"] is None and _double(m["num"], m["e1"])
    elif m["pb"] is not None:
        power = _power(m["pb"], m["pe"] or m["pe1"])
        if power is None:
            return None
        value = power
    else:
        n, d = (m["fn"], m["fd"]) if m["n"] is None else (m["n"], m["d"])
        den = Fraction(d.replace(",", ""))
        if not den:  # \frac{4}{0} is no number (value's arithmetic raises; a plain number is None)
            return None
        value = Fraction(n.replace(",", "")) / den
    if _digits(value) > MAX_DIGITS:
        return None
    negative = (m["sign"] == "-") != (m["sign2"] == "-")
    return Num(-value if negative else value, double)


_TOKEN = re.compile(r"\s*(\\frac|\\cdot|\\times|\d*\.\d+|\d+\.?|[-+*/^(){}×])")


class _Arithmetic:
    """Exact value of a rational arithmetic expression: numbers, ``+ - * / ^``, ``\\cdot``,
    ``\\times``, ``\\frac{}{}``, brackets, integer powers (``\\frac{1}{2^{99}}``, ``0.1+0.2``).
    Raises ValueError for anything else (nesting past ``MAX_NESTING`` included: the parser
    recurses), ZeroDivisionError for a division by zero."""

    def __init__(self, s: str) -> None:
        self.depth = 0
        self.tokens, pos = [], 0
        while pos < len(s.rstrip()):
            m = _TOKEN.match(s, pos)
            if not m:
                raise ValueError(s)
            self.tokens.append(m[1])
            pos = m.end()
        self.i = 0

    def value(self) -> Fraction:
        v = self.sum()
        if self.i != len(self.tokens):
            raise ValueError(self.tokens[self.i])
        return v

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, want: str | None = None) -> str:
        t = self.peek()
        if t is None or (want is not None and t != want):
            raise ValueError(f"expected {want}")
        self.i += 1
        return t

    def sum(self) -> Fraction:
        v = self.product()
        while self.peek() in ("+", "-"):
            v = _small(v + self.product() if self.take() == "+" else v - self.product())
        return v

    def product(self) -> Fraction:
        v = self.signed()
        while self.peek() in ("*", "/", "\\cdot", "\\times", "×", "(", "\\frac"):
            op = self.take() if self.peek() not in ("(", "\\frac") else "*"
            v = _small(v / self.signed() if op == "/" else v * self.signed())
        return v

    def signed(self) -> Fraction:
        negative = False
        while self.peek() in ("-", "+"):  # a loop, not recursion: "------1" is one level
            negative ^= self.take() == "-"
        self.depth += 1  # every bracket, \frac and exponent passes here
        if self.depth > MAX_NESTING:
            raise ValueError("nested too deeply")
        base = self.atom()
        if self.peek() == "^":
            self.take()
            exp = self.signed()
            # Compared as exact fractions: abs(exp) * digits could be past any float.
            if exp.denominator != 1 or (abs(base) not in (0, 1) and abs(exp) > MAX_DIGITS / _digits(base)):
                raise ValueError("not a small integer power")
            base = base ** int(exp)
        self.depth -= 1
        return -base if negative else base

    def atom(self) -> Fraction:
        t = self.take()
        if t in ("(", "{"):
            v = self.sum()
            self.take(")" if t == "(" else "}")
            return v
        if t == "\\frac":
            self.take("{")
            num = self.sum()
            self.take("}")
            self.take("{")
            den = self.sum()
            self.take("}")
            return num / den
        if t[0].isdigit() or t[0] == ".":
            return Fraction(t)
        raise ValueError(t)


def _digits(x: Fraction) -> float:
    return max(abs(x.numerator).bit_length(), x.denominator.bit_length()) * math.log10(2)


def _small(x: Fraction) -> Fraction:
    """``x``, if its numerator and denominator stay within ``MAX_DIGITS`` (bignum work stays short)."""
    if _digits(x) > MAX_DIGITS:
        raise ValueError("too many digits")
    return x


def value(s: str) -> Num | None:
    """A plain number, or the exact value of rational arithmetic; None for anything else.
    Raises ZeroDivisionError when the arithmetic divides by zero."""
    n = number(s)
    if n is not None:
        return n
    try:
        return Num(_Arithmetic(s).value(), False)
    except ValueError:
        return None
