"""User problem files and problem-set names: problems or ``ProblemFileError`` /
``ProblemSourceError``, never another exception; an encoded Problem reads back as it was."""

from __future__ import annotations

import re
import time

import msgspec
import pytest
from fuzz_strategies import big_digits, fuzz, json_values, mutated
from hypothesis import given
from hypothesis import strategies as st

from rstar.problems import (
    ProblemFileError,
    ProblemSourceError,
    load_problems,
    problem_limit_error,
    read_problems_jsonl,
)
from rstar.schemas import Problem

_line_pieces = st.sampled_from(
    ['{"question": "q"}', '{"question": "What is 2+2?", "answer": 4}', '{"question": ""}', '"question"', "[]", "{",
     "}", ",", ":", '"answer": ', '"id": ', '"source": ', '"meta": {}', '"schema": 2', "null", "1e400", "\n", "\r\n",
     "\u2028", "\x85", "\ufeff", "\x00", '"\\u0000"', '"\\ud800"']
)  # fmt: skip
lines = st.one_of(
    st.lists(_line_pieces | st.text(max_size=6), max_size=10).map("".join),
    json_values.map(lambda v: msgspec.json.encode(v).decode()),
    st.fixed_dictionaries(
        {"question": st.text(max_size=30)},
        optional={
            "answer": json_values | big_digits.map(lambda d: int(d[:4000])),
            "id": st.text(max_size=10),
            "source": st.text(max_size=10),
            "meta": json_values,
            "schema": st.integers(-2, 3),
        },
    ).map(lambda d: msgspec.json.encode(d).decode()),
)
files = st.lists(lines, max_size=8).map("\n".join).map(str.encode) | st.binary(max_size=200)


@fuzz(400)
@given(files | mutated(files))
def test_a_problem_file_gives_problems_or_a_file_error(tmp_path_factory, data):
    path = tmp_path_factory.mktemp("p") / "problems.jsonl"
    path.write_bytes(data)
    try:
        problems = read_problems_jsonl(path)
    except ProblemFileError as e:
        assert 0 <= e.line_no <= data.count(b"\n") + 1
        problems = None
    invalid: list[ProblemFileError] = []
    try:
        kept = read_problems_jsonl(path, invalid=invalid)
    except ProblemFileError as e:  # with ``invalid`` only a file that cannot be read at all raises
        assert e.line_no == 0 and problems is None
        return
    assert all(isinstance(p, Problem) and p.question.strip() for p in kept)
    assert problems is None or (kept == problems and not invalid)


_text = st.text(min_size=1).map(str.strip).filter(bool)  # questions and answers as the project writes them
_COMMA_NUMBER = re.compile(r"-?\d{1,3}(,\d{3})+(\.\d+)?")


@fuzz(200)
@given(
    st.lists(
        st.builds(
            Problem,
            id=_text,
            source=_text,
            question=_text,
            answer=st.none() | _text,
            meta=st.dictionaries(st.text(max_size=8), json_values, max_size=3),
        ),
        max_size=5,
        unique_by=lambda p: p.id,
    )
)
def test_encoded_problems_read_back_as_they_were(tmp_path_factory, problems):
    path = tmp_path_factory.mktemp("p") / "problems.jsonl"
    path.write_bytes(b"".join(msgspec.json.encode(p) + b"\n" for p in problems))
    # A gold written with thousands separators is normalised (``1,080`` -> ``1080``), as documented.
    expected = [
        msgspec.structs.replace(p, answer=p.answer.replace(",", ""))
        if p.answer and _COMMA_NUMBER.fullmatch(p.answer)
        else p
        for p in problems
    ]
    # A NUL in the source or a field over its limit is refused with the API's clear error.
    refused = [problem_limit_error(p.question, p.source, p.answer, p.meta) for p in expected]
    if any(refused):
        with pytest.raises(ProblemFileError, match=re.escape(next(r for r in refused if r))):
            read_problems_jsonl(path)
        return
    assert read_problems_jsonl(path) == expected


@fuzz(200)
@given(
    st.one_of(
        st.builds("synthetic:{}".format, st.text(max_size=12)),
        st.builds("synthetic:{}-{}".format, st.integers(-5, 10) | big_digits, st.integers(-5, 10) | big_digits),
        st.builds("synthetic:{}".format, st.lists(st.integers(-3, 10**12).map(str), max_size=4).map(",".join)),
        st.text(max_size=12),
    ),
    st.none() | st.sampled_from(["train", "heldout", "test", ""]),
)
def test_problem_set_names_give_problems_or_a_source_error(name, split):
    t0 = time.monotonic()
    try:
        problems = load_problems(name, split=split, limit=2)
    except ProblemSourceError:
        problems = []
    assert len(problems) <= 2 and time.monotonic() - t0 < 10
