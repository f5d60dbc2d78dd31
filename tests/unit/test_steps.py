"""The step format: parsing, rendering, terminal detection, prompts."""

import pytest

from rstar import steps as fmt


def test_render_parse_round_trip_exactly():
    text = fmt.render_steps(["# a\nx = 1\n", "# b\nanswer = x + 1\n"])
    assert text == "# a\nx = 1\n<end_of_step>\n# b\nanswer = x + 1\n<end_of_step>\n"
    assert fmt.render_steps(fmt.parse_steps(text)) == text
    assert fmt.parse_steps(text) == ["# a\nx = 1\n", "# b\nanswer = x + 1\n"]


def test_normalize_drops_fences_delimiter_and_blank_edges():
    raw = "\n```python\n# compute\ny = 2 * 3   \n```\n<end_of_step>\ntrailing junk"
    assert fmt.normalize_step(raw) == "# compute\ny = 2 * 3\n"


def test_empty_step_is_an_error():
    with pytest.raises(fmt.StepFormatError):
        fmt.normalize_step("  \n```\n")


@pytest.mark.parametrize(
    "step,terminal",
    [
        ("answer = 3\n", True),
        ("# total\nanswer=total - 5\n", True),
        ("x = 1\n# answer = 3 later\n", False),
        ("if answer == 3:\n    pass\n", False),
        ("answers = [1]\n", False),
        ("final_answer = 2\n", False),
    ],
)
def test_terminal_means_binding_answer_at_line_start(step, terminal):
    assert fmt.is_terminal(step) is terminal


def test_comment_only_step_has_no_code():
    assert not fmt.has_code("# just thinking\n# more\n")
    assert fmt.has_code("# think\nx = 1\n")


def test_program_joins_code_of_all_steps():
    assert fmt.program(["x = 1", "answer = x"]) == "x = 1\nanswer = x\n"


def test_prompt_contains_examples_question_and_steps_so_far():
    p = fmt.build_prompt("How many?", ["# s\nx = 1\n"])
    assert "Problem: How many?" in p and p.endswith("# s\nx = 1\n<end_of_step>\n")
    assert fmt.STEP_END in fmt.user_message("q") and "Lena buys" in p
    assert fmt.build_prompt("How many?", [], few_shot=False) == "Problem: How many?\nSolution:\n"
    chat = fmt.build_prompt("Q?", [], chat_template=lambda m: f"<u>{m[0]['content']}</u><a>")
    assert chat.startswith("<u>") and chat.endswith("</u><a>")


def test_few_shot_examples_are_valid_programs():
    for _, example in fmt.FEW_SHOT:
        ns: dict = {}
        exec(fmt.program(example), ns)  # our own trusted examples
        assert "answer" in ns and fmt.is_terminal(example[-1])
