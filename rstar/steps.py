"""The step format of code-augmented chain of thought.

A solution is a sequence of *steps*. Each step is a chunk of Python whose comments carry the
reasoning and whose code does the arithmetic; a step ends with the delimiter line
``<end_of_step>``. The final step binds the variable ``answer``; the value of ``answer`` after
running all steps in order is the solution's answer. Example::

    # Each box holds 12 apples and there are 3 boxes.
    boxes = 3
    total = boxes * 12
    <end_of_step>
    # 5 apples are eaten, the rest is the answer.
    answer = total - 5
    <end_of_step>

Why ``answer = …`` rather than a ``\\boxed{}`` string: the answer is produced by code that the
sandbox ran, so a terminal step is verified like any other, and no second parser is needed.

Generation stops at ``STEP_END``; ``parse_steps`` splits any text into steps and
``render_steps`` joins them back so that ``render_steps(parse_steps(t)) == t`` for any text made
of whole steps. The few-shot prompt teaches the format to an instruct model that never saw it
(needed only before the bootstrap round has fine-tuned the policy on it).
"""

from __future__ import annotations

import re

STEP_END = "<end_of_step>"
STOP = [STEP_END]
_ANSWER_RE = re.compile(r"^answer\s*=(?!=)", re.MULTILINE)


class StepFormatError(ValueError):
    """Model output that cannot be a step (empty, no code, or text after the delimiter)."""


def normalize_step(text: str) -> str:
    """The canonical text of one step: no delimiter, no surrounding blank lines, one final newline."""
    text = text.replace("\r\n", "\n")
    if STEP_END in text:
        text = text[: text.index(STEP_END)]
    lines = [ln.rstrip() for ln in text.split("\n")]
    # Models like to wrap code in fences; a fence line is not Python.
    lines = [ln for ln in lines if not ln.strip().startswith("```")]
    body = "\n".join(lines).strip("\n")
    if not body.strip():
        raise StepFormatError("empty step")
    return body + "\n"


def is_terminal(step: str) -> bool:
    """A step is terminal when it binds the answer (``answer = …`` at the start of a line)."""
    return bool(_ANSWER_RE.search(step))


def has_code(step: str) -> bool:
    """True when the step has at least one line that is not a comment."""
    return any(ln.strip() and not ln.strip().startswith("#") for ln in step.split("\n"))


def parse_steps(text: str) -> list[str]:
    """Split text made of delimited steps into canonical steps (a trailing partial step is kept).

    Never raises: a part with nothing but blank lines and code fences is no step and is dropped.
    """
    steps = []
    for part in text.replace("\r\n", "\n").split(STEP_END):
        try:
            steps.append(normalize_step(part))
        except StepFormatError:
            continue
    return steps


def render_steps(steps: list[str]) -> str:
    """Join steps into the text the model continues: each step followed by the delimiter line."""
    return "".join(normalize_step(s) + STEP_END + "\n" for s in steps)


def program(steps: list[str]) -> str:
    """The Python program of a trajectory: every step's code in order (what the sandbox runs)."""
    return "".join(normalize_step(s) for s in steps)


FEW_SHOT = [
    (
        "Lena buys 4 packs of pencils with 6 pencils in each pack. She gives 5 pencils to her "
        "brother. How many pencils does she have left?",
        [
            "# Lena buys 4 packs with 6 pencils each.\npacks = 4\npencils_per_pack = 6\n"
            "total = packs * pencils_per_pack\n",
            "# She gives 5 pencils away; the rest is the answer.\nanswer = total - 5\n",
        ],
    ),
    (
        "A train travels 180 km in 3 hours. At the same speed, how far does it travel in 5 hours?",
        [
            "# Speed is distance divided by time.\nspeed = 180 / 3\n",
            "# Distance in 5 hours at that speed.\ndistance = speed * 5\n",
            "# The answer is that distance in km.\nanswer = distance\n",
        ],
    ),
]

INSTRUCTIONS = (
    "Solve the problem with Python code. Write one small step at a time: comment lines that "
    f"explain the reasoning, then code. End every step with a line {STEP_END}. "
    "In the last step assign the final result to the variable answer."
)


def user_message(question: str, few_shot: bool = True) -> str:
    """The user turn: with ``few_shot``, instructions and worked examples; then the question.

    Without ``few_shot`` it is the bare ``Problem: …\nSolution:`` that a policy fine-tuned on the
    format is trained on and searched with (instructions would only add prefill to every call).
    """
    parts = []
    if few_shot:
        parts.append(INSTRUCTIONS)
        for q, steps in FEW_SHOT:
            parts.append(f"Problem: {q}\nSolution:\n{render_steps(steps)}")
    parts.append(f"Problem: {question.strip()}\nSolution:")
    return "\n\n".join(parts)


def build_prompt(question: str, steps: list[str], chat_template=None, few_shot: bool = True) -> str:
    """The full text the policy continues: prompt for ``question`` plus the steps so far.

    ``chat_template`` is a callable ``(messages) -> str`` (a tokenizer's ``apply_chat_template``
    with ``add_generation_prompt=True, tokenize=False``); without one a plain text prompt is used.
    """
    msg = user_message(question, few_shot)
    if chat_template is not None:
        head = chat_template([{"role": "user", "content": msg}])
    else:
        head = msg + "\n"
    return head + render_steps(steps)
