"""The per-round evaluation record (``learner.round_eval``) and the MCTS / MCTS+PPM methods
(``learner.evaluate``): counts per set, method and curriculum level; old float figures still
read; a round with a PPM evaluates both MCTS methods; ``mcts`` never scores with the PPM."""

import contextlib
import json

import msgspec
import pytest

from actors.backends.base import Backend, Generation
from actors.batcher import ModelWorker
from actors.sandbox import SandboxPool
from actors.search import SearchContext
from learner import round_eval
from learner.evaluate import EvalResult, ProblemOutcome, evaluate
from learner.round_eval import (
    eval_sets,
    evaluate_round,
    method_label,
    method_rank,
    paired_p,
    record,
    round_methods,
)
from rstar.config import load_config
from rstar.curriculum import synthetic_problems
from rstar.schemas import Figures, LevelCount, MethodRecord, Problem, RoundEval, method_record
from rstar.steps import STEP_END

pytestmark = pytest.mark.timeout(120)


def _outcomes(problems, right):
    return [
        ProblemOutcome(problem_id=p.id, answer="1", gold="1" if i in right else "2", correct=i in right)
        for i, p in enumerate(problems)
    ]


def test_record_counts_by_level_and_they_add_up():
    probs = synthetic_problems(12, "heldout", (1, 2, 3), seed=0)  # levels taken in turn: i % 3
    assert [p.meta["level"] for p in probs[:4]] == [1, 2, 3, 1]
    rec = record(probs, _outcomes(probs, {0, 3, 6, 1}), seconds=2.5)
    assert rec.n == 12 and rec.correct == 4 and rec.accuracy == 0.3333 and rec.seconds == 2.5
    assert rec.by_level == {"1": LevelCount(4, 3), "2": LevelCount(4, 1), "3": LevelCount(4, 0)}
    assert list(rec.by_level) == ["1", "2", "3"]
    assert sum(b.n for b in rec.by_level.values()) == rec.n
    assert sum(b.correct for b in rec.by_level.values()) == rec.correct
    assert rec.correct_ids == sorted(probs[i].id for i in (0, 1, 3, 6))


def test_record_of_a_set_without_levels_has_no_levels():
    probs = [Problem(id=f"svamp-{i}", source="svamp", question="q", answer="1") for i in range(5)]
    rec = record(probs, _outcomes(probs, {2}))
    assert rec == MethodRecord(accuracy=0.2, n=5, correct=1, by_level={}, correct_ids=["svamp-2"])
    # stored as the record it is, every key present (``by_level`` empty for a set without levels)
    assert msgspec.to_builtins(rec) == {
        "accuracy": 0.2,
        "n": 5,
        "correct": 1,
        "by_level": {},
        "correct_ids": ["svamp-2"],
        "seconds": None,
    }


def test_method_record_takes_old_floats_and_new_records():
    assert method_record(0.25) == MethodRecord(accuracy=0.25) and method_record(1) == MethodRecord(accuracy=1.0)
    new = {
        "n": 30,
        "correct": 6,
        "accuracy": 0.2,
        "by_level": {"10": {"n": 10, "correct": 1}, "2": {"n": 20, "correct": 5}},
        "seconds": 3.5,
    }
    rec = method_record(new)
    assert rec == MethodRecord(
        accuracy=0.2, n=30, correct=6, by_level={"2": LevelCount(20, 5), "10": LevelCount(10, 1)}, seconds=3.5
    )
    assert list(rec.by_level) == ["2", "10"]  # numeric order
    # The counts decide the accuracy; a record whose counts do not hold keeps only its accuracy.
    assert method_record({"n": 4, "correct": 1, "accuracy": 0.9}).accuracy == 0.25
    assert method_record({"n": 4, "correct": 5, "accuracy": 0.9}) == MethodRecord(accuracy=0.9)
    assert method_record(None) is None and method_record("0.5") is None and method_record(True) is None


def test_round_eval_reads_both_shapes_skips_the_set_size_and_survives_a_damaged_part():
    ev = RoundEval.of(
        {
            "accuracy": {"sets": {"synthetic": {"n": 20, "greedy": 0.1, "mcts@4": {"n": 20, "correct": 3}}}},
            "collect": {"trees": 5, "solve_rate": 0.4},
            "data": "damaged",
            "future_part": {"x": 1},
        }
    )
    recs = ev.records()
    assert set(recs["synthetic"]) == {"greedy", "mcts@4"} and ev.set_sizes() == {"synthetic": 20}
    assert recs["synthetic"]["greedy"].n is None and recs["synthetic"]["mcts@4"].accuracy == 0.15
    assert ev.collect.trees == 5 and ev.collect.solve_rate == 0.4 and ev.data is None and ev.evaluated
    assert RoundEval.of({}).records() == {} and RoundEval.of(None) == RoundEval() and not RoundEval.of(None).evaluated


def test_paired_p_compares_two_records_problem_by_problem():
    a = MethodRecord(accuracy=0.6, n=10, correct=6, correct_ids=[f"p{i}" for i in range(6)])
    b = MethodRecord(accuracy=0.0, n=10, correct=0, correct_ids=[])
    assert paired_p(a, b) == 2 / 64 and paired_p(a, a) == 1.0
    assert paired_p(a, MethodRecord(accuracy=0.0, n=10)) is None
    assert paired_p(a, MethodRecord(accuracy=0.0, n=9, correct_ids=[])) is None


def test_labels_and_methods():
    assert [method_label(m, 4) for m in ("greedy", "majority", "mcts", "mcts+ppm")] == [
        "greedy",
        "majority@4",
        "mcts@4",
        "mcts+ppm@4",
    ]
    assert sorted(["mcts+ppm@4", "mcts@4", "greedy", "majority@4"], key=method_rank) == [
        "greedy",
        "majority@4",
        "mcts@4",
        "mcts+ppm@4",
    ]
    cfg = load_config(env={})
    assert cfg.learner.eval_methods == ["greedy", "majority", "mcts", "mcts+ppm"]
    assert round_methods(cfg, with_ppm=False) == ["greedy", "majority", "mcts"]
    assert round_methods(cfg, with_ppm=True) == ["greedy", "majority", "mcts", "mcts+ppm"]


async def test_evaluate_round_stores_records_resumes_and_runs_both_mcts_with_a_ppm(monkeypatch, tmp_path):
    """The models are faked: this checks what is evaluated and stored, not the search."""
    runs = []

    @contextlib.asynccontextmanager
    async def fake_setup(cfg, actor_id="local", round_no=0, backend=None):
        yield cfg.model.ppm

    async def fake_evaluate(problems, ctx, method, k=8, dataset="", **kw):
        runs.append((dataset, method, ctx))
        outs = _outcomes(problems, {0, 1} if method == "greedy" else {0})
        return EvalResult(
            dataset=dataset,
            method=method,
            k=k,
            n=len(outs),
            correct=sum(o.correct for o in outs),
            accuracy=0.0,
            seconds=0.1,
            gen_tokens=0,
            outcomes=outs,
        )

    monkeypatch.setattr("actors.runtime.setup_search", fake_setup)
    monkeypatch.setattr("learner.evaluate.evaluate", fake_evaluate)
    cfg = load_config(overrides=["learner.eval_k=2"], env={})
    sets = {
        "synthetic": synthetic_problems(4, "heldout", (1, 2), seed=0),
        "svamp": [Problem(id=f"s{i}", source="svamp", question="q", answer="1") for i in range(3)],
    }
    stored = []

    async def on_figure(figs):
        stored.append(json.loads(json.dumps(RoundEval(accuracy_partial=figs).parts())))  # as the store keeps it

    # An interrupted evaluation stored an old-style float for synthetic greedy: kept, not redone.
    done = Figures.of({"sets": {"synthetic": {"n": 4, "greedy": 0.5}}, "seconds": 2.0})
    figs = await evaluate_round(cfg, sets, tmp_path / "policy", tmp_path / "ppm", 1, done=done, on_figure=on_figure)
    assert [(d, m) for d, m, _ in runs] == [
        ("synthetic", "majority"),
        ("synthetic", "mcts"),
        ("synthetic", "mcts+ppm"),
        ("svamp", "greedy"),
        ("svamp", "majority"),
        ("svamp", "mcts"),
        ("svamp", "mcts+ppm"),
    ]
    assert all(ctx == str(tmp_path / "ppm") for _, _, ctx in runs)  # one session, the PPM loaded
    syn, sv = figs.sets["synthetic"], figs.sets["svamp"]
    assert syn["greedy"] == MethodRecord(accuracy=0.5) and syn["n"] == 4 and figs.seconds >= 2.0
    stored_syn = RoundEval(accuracy=figs).parts()["accuracy"]["sets"]["synthetic"]
    assert stored_syn["mcts+ppm@2"] == {
        "n": 4,
        "correct": 1,
        "accuracy": 0.25,
        "by_level": {"1": {"n": 2, "correct": 1}, "2": {"n": 2, "correct": 0}},
        "correct_ids": [sets["synthetic"][0].id],
        "seconds": 0.1,
    }
    assert set(syn) == {"n", "greedy", "majority@2", "mcts@2", "mcts+ppm@2"}
    assert msgspec.to_builtins(sv["greedy"]) == {
        "n": 3,
        "correct": 2,
        "accuracy": 0.6667,
        "by_level": {},
        "correct_ids": ["s0", "s1"],
        "seconds": 0.1,
    }
    first = stored[0]["accuracy_partial"]["sets"]["synthetic"]
    assert len(stored) == 7 and set(first) == {"n", "greedy", "majority@2"}

    # Without a PPM: no MCTS+PPM; a complete `done` is returned without loading anything.
    runs.clear()
    figs = await evaluate_round(cfg, {"svamp": sets["svamp"]}, tmp_path / "policy", None, 0)
    assert [m for _, m, _ in runs] == ["greedy", "majority", "mcts"] and runs[0][2] is None
    runs.clear()
    again = await evaluate_round(cfg, {"svamp": sets["svamp"]}, tmp_path / "policy", None, 0, done=figs)
    assert runs == [] and again.sets == figs.sets


class _Backend(Backend):
    """Two first steps, then two endings: ``x + 2`` (4, right) and ``x * 3`` (6, wrong)."""

    name = "scripted"
    version = "v1"

    def generate(self, prompts, params, seeds=None):
        script = {
            0: ["# two apples\nx = 2\n", "# two\nx = 2 + 0\n"],
            1: ["# add two more\nanswer = x + 2\n", "# triple\nanswer = x * 3\n"],
        }
        return [
            [
                Generation(
                    text=script.get(p.split("Solution:")[-1].count(STEP_END), ["# lost\n"])[i % 2],
                    tokens=5,
                    stopped=True,
                )
                for i in range(params.n)
            ]
            for p in prompts
        ]


class _Scorer:
    """A PPM that prefers tripling: the wrong ending scores highest."""

    version = "ppm-test"

    def __init__(self):
        self.texts = 0

    def score(self, texts):
        self.texts += len(texts)
        return [0.9 if "x * 3" in t else -0.5 if "x + 2" in t else 0.0 for t in texts]


async def test_mcts_ignores_the_ppm_and_mcts_ppm_answers_by_it():
    c = load_config(overrides=["generation.few_shot=false", "search.n_children=2", "sandbox.workers=2"], env={})
    probs = [Problem(id=f"p{i}", source="t", question=f"Two apples and two more ({i})?", answer="4") for i in range(3)]
    scorer = _Scorer()
    async with SandboxPool(c.sandbox) as sandbox, ModelWorker(_Backend(), scorer) as worker:
        ctx = SearchContext(worker=worker, sandbox=sandbox, search=c.search, generation=c.generation)
        plain = await evaluate(probs, ctx, "mcts", k=4)
        assert scorer.texts == 0  # no PPM call at all
        assert all(o.answer in {"4", "6"} for o in plain.outcomes)
        with_ppm = await evaluate(probs, ctx, "mcts+ppm", k=4)
        assert scorer.texts > 0
        assert [o.answer for o in with_ppm.outcomes] == ["6", "6", "6"] and with_ppm.correct == 0
    async with SandboxPool(c.sandbox) as sandbox, ModelWorker(_Backend()) as worker:
        ctx = SearchContext(worker=worker, sandbox=sandbox, search=c.search, generation=c.generation)
        with pytest.raises(ValueError, match="needs a PPM"):
            await evaluate(probs, ctx, "mcts+ppm", k=4)


def test_eval_config_loads_the_round_ppm():
    cfg = load_config(env={})
    e = round_eval.eval_config(cfg, "/p", "/q")
    assert e.model.ppm == "/q" and e.search.ppm_init and not e.generation.few_shot
    assert round_eval.eval_config(cfg, "/p", None).model.ppm is None


async def test_sampled_methods_run_on_a_level_balanced_prefix(monkeypatch, tmp_path):
    """``learner.eval_sampled_n``: greedy on every problem, the sampled methods on the first n."""
    sizes = {}

    @contextlib.asynccontextmanager
    async def fake_setup(cfg, actor_id="local", round_no=0, backend=None):
        yield None

    async def fake_evaluate(problems, ctx, method, k=8, dataset="", **kw):
        sizes[method] = [p.meta["level"] for p in problems]
        outs = _outcomes(problems, set())
        return EvalResult(
            dataset=dataset,
            method=method,
            k=k,
            n=len(outs),
            correct=0,
            accuracy=0.0,
            seconds=0.1,
            gen_tokens=0,
            outcomes=outs,
        )

    monkeypatch.setattr("actors.runtime.setup_search", fake_setup)
    monkeypatch.setattr("learner.evaluate.evaluate", fake_evaluate)
    cfg = load_config(
        overrides=[
            "learner.eval_sampled_n=4",
            "learner.eval_real_n=0",
            "learner.eval_synthetic_n=12",
            "learner.eval_levels=[1, 2, 3, 4]",
        ],
        env={},
    )
    figs = await evaluate_round(cfg, eval_sets(cfg), tmp_path / "policy", None, 0)
    assert len(sizes["greedy"]) == 12 and sizes["majority"] == sizes["mcts"] == [1, 2, 3, 4]
    syn = figs.records()["synthetic"]
    assert figs.sizes() == {"synthetic": 12} and syn["greedy"].n == 12 and syn["majority@4"].n == 4
