"""The synthetic curriculum: determinism, disjoint splits, runnable reference solutions, variety."""

from __future__ import annotations

import re
import statistics
from collections import defaultdict
from fractions import Fraction

import msgspec
import pytest

from rstar.curriculum import FRIENDS, ITEMS, LEVELS, NAMES, CurriculumError, format_exact, split_of, synthetic_problems
from rstar.grading import verify
from rstar.steps import STEP_END, has_code, is_terminal, parse_steps, program, render_steps

NUMBER = re.compile(r"\d+(?:\.\d+)?")


@pytest.fixture(scope="module")
def many():
    """3,600 problems: 500 train and 100 held-out per level."""
    train = synthetic_problems(3000, "train", LEVELS, seed=11)
    heldout = synthetic_problems(600, "heldout", LEVELS, seed=11)
    return train, heldout


def code_lines(steps: list[str]) -> str:
    return "\n".join(ln for ln in program(steps).splitlines() if not ln.lstrip().startswith("#"))


def test_same_seed_same_problems_other_seed_other_problems():
    a = synthetic_problems(60, levels=LEVELS, seed=5)
    b = synthetic_problems(60, levels=LEVELS, seed=5)
    c = synthetic_problems(60, levels=LEVELS, seed=6)
    assert msgspec.json.encode(a) == msgspec.json.encode(b)
    assert not {p.id for p in a} & {p.id for p in c}


def test_problem_shape(many):
    train, heldout = many
    for split, problems in (("train", train), ("heldout", heldout)):
        assert len({p.id for p in problems}) == len(problems)  # unique within a call
        for i, p in enumerate(problems):
            assert p.source == "synthetic" and p.meta["split"] == split == split_of(p.id)
            assert p.meta["level"] == LEVELS[i % len(LEVELS)]
            assert set(p.meta) == {"level", "split", "reference_steps"}


def test_train_and_heldout_never_share_a_question(many):
    train, heldout = many
    other_seeds = synthetic_problems(1200, "train", LEVELS, seed=12)  # a train set made with another seed
    held_q = {p.question for p in heldout}
    assert not held_q & {p.question for p in train}
    assert not held_q & {p.question for p in other_seeds}
    assert not {p.id for p in heldout} & {p.id for p in train + other_seeds}


def test_reference_solutions_run_and_grade_correct(many):
    train, heldout = many
    for p in train + heldout:
        steps = p.meta["reference_steps"]
        assert parse_steps(render_steps(steps)) == steps and all(STEP_END not in s for s in steps)
        assert all(has_code(s) and s.lstrip().startswith("#") for s in steps)  # reasoning, then code
        assert [is_terminal(s) for s in steps] == [False] * (len(steps) - 1) + [True]
        namespace: dict = {}
        exec(program(steps), namespace)  # trusted: we generated this code
        v = verify(str(namespace["answer"]), p.answer)
        assert v.equivalent and v.method == "numeric", (p.question, steps, namespace["answer"], p.answer)


def test_answers_are_exact_and_positive(many):
    for p in many[0]:
        pattern = r"[1-9]\d*" if p.meta["level"] <= 4 else r"[1-9]\d*(?:\.\d+)?|0\.\d+"
        assert re.fullmatch(pattern, p.answer), p.answer
    decimals = [p for p in many[0] if "." in p.answer]
    assert decimals and all(p.meta["level"] >= 5 for p in decimals)
    assert format_exact(Fraction(75, 2)) == "37.5" and format_exact(Fraction(-6)) == "-6"
    with pytest.raises(CurriculumError):
        format_exact(Fraction(1, 3))


def test_difficulty_grows_with_level(many):
    by_level = defaultdict(list)
    for p in many[0]:
        by_level[p.meta["level"]].append(p)
    numbers = [statistics.mean(len(NUMBER.findall(p.question)) for p in by_level[lv]) for lv in LEVELS]
    assert numbers == sorted(numbers) and numbers[-1] > 2 * numbers[0], numbers
    assert max(len(NUMBER.findall(p.question)) for p in by_level[1]) <= 3  # one or two operations
    # distractors: from level 4 a number in the question that the solution never uses
    for lv in LEVELS:
        unused = sum(
            bool(set(NUMBER.findall(p.question)) - set(NUMBER.findall(code_lines(p.meta["reference_steps"]))))
            for p in by_level[lv]
        )
        assert unused == 0 if lv <= 3 else unused >= 0.9 * len(by_level[lv]), (lv, unused)
    assert any("%" in p.question for p in by_level[4]) and any("a third" in p.question for p in by_level[5])


def test_wording_and_step_splits_vary(many):
    train = many[0]
    words = [n[0] for n in NAMES] + FRIENDS + [w for item in ITEMS for w in item]
    mask = re.compile(r"\b(" + "|".join(sorted(map(re.escape, words), key=len, reverse=True)) + r")\b")
    skeletons = {NUMBER.sub("#", mask.sub("W", s)) for p in train for s in re.split(r"(?<=[.?])\s+", p.question)}
    assert len(skeletons) >= 60, len(skeletons)
    variables = {m for p in train for m in re.findall(r"^(\w+) *[-+*/]?=", code_lines(p.meta["reference_steps"]), re.M)}
    assert len(variables) >= 40, sorted(variables)
    comments = {
        NUMBER.sub("#", mask.sub("W", ln))
        for p in train
        for s in p.meta["reference_steps"]
        for ln in s.splitlines()
        if ln.startswith("#")
    }
    assert len(comments) >= 50, len(comments)
    # the same number of moves is split into different numbers of steps
    shapes = defaultdict(set)
    for p in train:
        moves = sum(
            ln.startswith("#") and "not needed" not in ln for s in p.meta["reference_steps"] for ln in s.splitlines()
        )
        shapes[moves].add(len(p.meta["reference_steps"]))
    assert all(len(shapes[m]) >= 2 for m in (3, 4, 5)), dict(shapes)


def test_bad_arguments():
    with pytest.raises(CurriculumError, match="split"):
        synthetic_problems(3, split="test")
    with pytest.raises(CurriculumError, match="levels"):
        synthetic_problems(3, levels=(0,))
    with pytest.raises(CurriculumError, match="levels"):
        synthetic_problems(3, levels=())
    assert synthetic_problems(0) == []
