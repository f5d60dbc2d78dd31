"""The grader on hostile answers: no crash, no hang, a verdict within its timeout.

The in-process parts (``extract_answer``, ``answer_forms.read``, ``answer_numbers.value``) run
many cases; ``verify`` itself, whose last resort is math-verify in a subprocess, runs few.
Documented outcomes only: ``read`` gives a Form or raises ``Malformed``; ``value`` gives a Num,
None, or raises ZeroDivisionError; ``verify`` always gives a Verdict.
"""

from __future__ import annotations

import time

from fuzz_strategies import big_digits, fuzz, nested
from hypothesis import event, given
from hypothesis import strategies as st

from rstar import answer_forms as forms
from rstar import mathverify_worker
from rstar.answer_numbers import Num, number, value
from rstar.grading import MAX_ANSWER_CHARS, Verdict, extract_answer, verify

# Pieces of answers as models and datasets write them, joined at random.
TOKENS = [
    *"0123456789",
    ".", ",", " ", "-", "+", "*", "/", "^", "(", ")", "[", "]", "{", "}", "=", "<", "_", "&", "%", "$", "x", "i", "e",
    "\\frac", "\\dfrac", "\\boxed", "\\sqrt", "\\pi", "\\infty", "\\cup", "\\{", "\\}", "\\pm", "\\times 10^",
    "\\cdot", "\\overline", "\\text{ cm}", "\\text{ or }", "\\left(", "\\right)", "\\begin{pmatrix}", "\\\\",
    "\\end{pmatrix}", "^\\circ", "\\%", "\\$", " or ", "two", " hundred", " third", "and", "a", "half",
    "The answer is ", "####", "x=", "_{16}", "_3", "e-7", "\\,", "{,}", "0.8\\overline{3}", "1e400", "NaN",
]  # fmt: skip
_token = st.sampled_from(TOKENS) | big_digits.map(lambda d: d[:40]) | st.text(max_size=3)
answer_like = st.lists(_token, max_size=30).map("".join)
deep = nested(
    answer_like,
    (("(", ")"), ("{", "}"), ("-", ""), ("+", ""), ("\\frac{1}{", "}"), ("\\boxed{", "}"), ("$", "$"), ("[", "]")),
)
powers = st.builds(
    lambda base, op, exp, close: f"{base}^{op}{exp}{close}",
    st.sampled_from(["2", "10", "0", "1", "-1", "(10^400)", "\\frac{1}{2}", "3"]),
    st.sampled_from(["", "{", "{-", "(", "(10^", "-"]),
    big_digits,
    st.sampled_from(["", "}", ")"]),
)
# Well-formed LaTeX mathematics (what reaches math-verify), power towers included.
symbolic = st.recursive(
    st.sampled_from(["x", "y", "2", "3", "10", "\\pi", "e", "i", "\\infty"]) | big_digits.map(lambda d: d[:30]),
    lambda inner: st.one_of(
        st.builds("{}{}{}".format, inner, st.sampled_from(["+", "-", "\\cdot ", "/", "^"]), inner),
        st.builds("\\frac{{{}}}{{{}}}".format, inner, inner),
        st.builds("{}^{{{}}}".format, inner, inner),
        st.builds("{}({})".format, st.sampled_from(["\\sqrt", "\\sin", "\\log", "\\ln", "f", ""]), inner),
        st.builds("({}, {})".format, inner, inner),
    ),
    max_leaves=8,
)
answers = st.text(max_size=60) | answer_like | deep.map(lambda s: s[: MAX_ANSWER_CHARS + 10]) | powers | symbolic


def _timed(fn, *args, **kw):
    t0 = time.monotonic()
    out = fn(*args, **kw)
    return out, time.monotonic() - t0


# A generous bound for one in-process parse of at most ~2,000 characters on a loaded machine:
# what matters is that no input makes it grow without limit (seconds to minutes).
IN_PROCESS_S = 5.0


@fuzz(400)
@given(answers, st.booleans())
def test_reading_an_answer_gives_a_form_or_malformed(s, pred):
    try:
        form, took = _timed(forms.read, s, pred=pred)
    except forms.Malformed:
        return
    assert isinstance(form, forms.Form) and took < IN_PROCESS_S


@fuzz(400)
@given(answers)
def test_exact_values_give_a_number_none_or_zero_division(s):
    for fn in (number, value):
        try:
            out, took = _timed(fn, s)
        except ZeroDivisionError:
            assert fn is value  # documented for value's arithmetic only
            continue
        assert (out is None or isinstance(out, Num)) and took < IN_PROCESS_S


@fuzz(200)
@given(st.text(max_size=200) | answer_like | deep)
def test_extracting_an_answer_gives_text_or_none(text):
    out, took = _timed(extract_answer, text)
    assert (out is None or isinstance(out, str)) and took < IN_PROCESS_S


TIMEOUT_S = 1.0


@fuzz(20)
@given(answers | symbolic, symbolic | st.sampled_from(["5", "\\frac{1}{2}", "x^2+1", "(1, 2)", "\\{1, 2\\}", "2^{10}"]))
def test_verify_gives_a_verdict_within_its_timeout(pred, gold):
    verdict, took = _timed(verify, pred, gold, TIMEOUT_S)
    event(f"method: {verdict.method}")
    assert isinstance(verdict, Verdict) and isinstance(verdict.equivalent, bool)
    # The deadline covers the comparison; a worker that had to be (re)started adds its start-up.
    assert took < TIMEOUT_S + mathverify_worker.STARTUP_TIMEOUT_S + 5
    if verdict.method == "timeout":
        assert not verdict.equivalent
