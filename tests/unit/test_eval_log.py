"""``rstar eval --out``: outcomes are appended as they finish and a rerun resumes; another run's
file is refused; a line torn by a kill is dropped, any other malformed line is an error."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from learner.eval_log import EvalLog, EvalLogError
from learner.evaluate import ProblemOutcome

RUN = {"dataset": "synthetic", "method": "majority", "k": 8}


def outcome(pid: str, correct: bool) -> ProblemOutcome:
    return ProblemOutcome(problem_id=pid, answer="1" if correct else "2", gold="1", correct=correct)


def test_outcomes_survive_a_reopen_and_totals_cover_every_segment(tmp_path):
    path = tmp_path / "e.jsonl"
    first = EvalLog(path, RUN)
    assert (first.done, first.segment) == ({}, 0)
    first.record(outcome("a", True), wall_s=10.0, gen_tokens=100)
    first.record(outcome("b", False), wall_s=25.0, gen_tokens=300)
    second = EvalLog(path, RUN)
    assert set(second.done) == {"a", "b"} and second.segment == 1
    second.record(outcome("c", True), wall_s=5.0, gen_tokens=40)
    res = EvalLog(path, RUN).result(["a", "b", "c", "d"], "synthetic", "majority", 8)
    assert (res.n, res.correct, res.accuracy) == (3, 2, round(2 / 3, 4))
    assert (res.seconds, res.gen_tokens) == (30.0, 340)
    assert [o.problem_id for o in res.outcomes] == ["a", "b", "c"]


def test_another_runs_file_is_refused_naming_what_differs(tmp_path):
    path = tmp_path / "e.jsonl"
    EvalLog(path, RUN).record(outcome("a", True), 1.0, 1)
    with pytest.raises(EvalLogError, match="differs in k, method"):
        EvalLog(path, {**RUN, "method": "mcts", "k": 4})
    (tmp_path / "other.jsonl").write_text('{"question": "1+1?"}\n')
    with pytest.raises(EvalLogError, match="other.jsonl:1: not an rstar eval log"):
        EvalLog(tmp_path / "other.jsonl", RUN)


def test_a_torn_last_line_is_dropped_and_a_broken_middle_line_named(tmp_path):
    path = tmp_path / "e.jsonl"
    log = EvalLog(path, RUN)
    log.record(outcome("a", True), 1.0, 1)
    with path.open("ab") as f:
        f.write(b'{"problem_id": "b", "answer": "1", "go')  # killed mid-write
    resumed = EvalLog(path, RUN)
    assert set(resumed.done) == {"a"}
    resumed.record(outcome("b", True), 2.0, 2)  # appends after the cut, not onto it
    assert set(EvalLog(path, RUN).done) == {"a", "b"}
    lines = path.read_text().splitlines()
    path.write_text("\n".join([lines[0], '{"problem_id": 3}', *lines[1:]]) + "\n")
    with pytest.raises(EvalLogError, match=r"e.jsonl:2: .*str"):
        EvalLog(path, RUN)


def rstar_eval(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    exe = str(Path(sys.executable).parent / "rstar")
    return subprocess.run([exe, "eval", *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_rstar_eval_resumes_from_its_out_file(tmp_path, tiny_model_dir):
    out = tmp_path / "greedy.jsonl"

    def run(limit: int, step_tokens: int = 16) -> subprocess.CompletedProcess:
        return rstar_eval(
            "--dataset",
            "synthetic",
            "--limit",
            str(limit),
            "--method",
            "greedy",
            "--json",
            "--out",
            str(out),
            "--set",
            f'model.policy="{tiny_model_dir}"',
            "--set",
            f"generation.max_step_tokens={step_tokens}",
            "--set",
            "search.max_depth=2",
            "--set",
            "sandbox.isolation='weak'",
            cwd=tmp_path,
        )

    r = run(2)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["n"] == 2
    first = out.read_text().splitlines()
    assert len(first) == 3 and json.loads(first[0])["run"]["method"] == "greedy"
    r = run(3)  # the first two are not evaluated again
    assert r.returncode == 0, r.stderr
    assert "2 of 3 problems done" in r.stderr
    assert json.loads(r.stdout)["n"] == 3
    lines = out.read_text().splitlines()
    assert lines[:3] == first and len(lines) == 4 and json.loads(lines[3])["segment"] == 1
    r = run(3, step_tokens=32)
    assert r.returncode == 2 and "differs in generation" in r.stderr
    assert out.read_text().splitlines() == lines
