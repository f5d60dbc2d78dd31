"""The step parser on any model output: a canonical step or ``StepFormatError``, never another
exception; ``parse_steps`` never raises and round-trips what ``render_steps`` wrote."""

from __future__ import annotations

from fuzz_strategies import fuzz
from hypothesis import given
from hypothesis import strategies as st

from rstar import steps as fmt

# Model output is mostly code with the delimiter, fences, CRLF and blank lines mixed in.
_pieces = st.sampled_from(
    [fmt.STEP_END, "<end_of", "_step>", "```", "```python", "\n", "\r\n", "\r", " ", "\t", "#", "# note",
     "answer = 1", "answer == 2", "x = 3", "print(x)", "\u2028", "\x00", "\ufeff", "    "]
)  # fmt: skip
model_output = st.lists(_pieces | st.text(max_size=8), max_size=40).map("".join) | st.text()


@fuzz(500)
@given(model_output)
def test_normalize_gives_a_canonical_step_or_a_format_error(text):
    try:
        step = fmt.normalize_step(text)
    except fmt.StepFormatError:
        return
    assert step.endswith("\n") and step.strip() and fmt.STEP_END not in step and "\r\n" not in step
    assert fmt.normalize_step(step) == step  # canonical: normalising again changes nothing
    assert isinstance(fmt.is_terminal(step), bool) and isinstance(fmt.has_code(step), bool)


@fuzz(500)
@given(model_output)
def test_parse_steps_never_raises_and_gives_canonical_steps(text):
    steps = fmt.parse_steps(text)
    assert all(fmt.normalize_step(s) == s for s in steps)
    assert fmt.parse_steps(fmt.render_steps(steps)) == steps


@fuzz(300)
@given(st.lists(model_output, max_size=6))
def test_render_then_parse_gives_back_the_normalised_steps(raw):
    steps = []
    for r in raw:
        try:
            steps.append(fmt.normalize_step(r))
        except fmt.StepFormatError:
            pass
    text = fmt.render_steps(steps)
    assert fmt.parse_steps(text) == steps
    assert fmt.render_steps(fmt.parse_steps(text)) == text
    assert fmt.program(steps) == "".join(steps)
