"""No evaluation problem ever reaches an actor: every way onto PROBLEMS follows ``learner.pool``.

Against a real nats-server, reading the PROBLEMS stream back after each entry point:
``rstar up``'s seeding (``--dataset`` and ``--problems FILE``), ``rstar problems add`` as a real
process (the learner's real evaluation set ``svamp``, the default synthetic set the compose
``seed`` service queues, a user file whose ids collide with held-out ids, ``--include-teacher``),
and the learner's re-queue of unsolved problems (a real SQLite store). Held-out problems: the
whole held-out part of ``learner.eval_real`` and the synthetic curriculum's heldout split (the
learner's synthetic evaluation set is drawn from it); the teacher's demonstrated problems are
queued only when asked.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from cli_helpers import last_json, problems_add

from broker.client import open_broker
from broker.streams import PROBLEMS_REQUEUE_SUBJECT, PROBLEMS_STREAM, PROBLEMS_SUBJECT
from learner.bootstrap import teacher_problems
from learner.pool import held_out_problems
from learner.round_eval import eval_sets
from rstar.config import load_config
from rstar.curriculum import split_of, synthetic_problems
from rstar.problems import load_problems, split_pool_heldout
from rstar.schemas import Node, Problem, TreeResult, decode

pytestmark = pytest.mark.timeout(180)


def _cfg(url: str, *extra: str):
    return load_config(overrides=[f'broker.url="{url}"', *extra], env={})


def _published(url: str) -> list[tuple[str, Problem]]:
    """Every message on PROBLEMS, as (subject, problem)."""

    async def run():
        async with open_broker(_cfg(url), "test-probe") as b:
            state = (await b.js.stream_info(PROBLEMS_STREAM)).state
            out = []
            for seq in range(state.first_seq, state.last_seq + 1) if state.messages else ():
                msg = await b.js.get_msg(PROBLEMS_STREAM, seq)
                out.append((msg.subject, decode(msg.data, Problem)))
            return out

    return asyncio.run(run())


def _held_ids(cfg) -> set[str]:
    return {p.id for p in held_out_problems(cfg)}


def _assert_no_held_out(cfg, published: list[tuple[str, Problem]]) -> None:
    ids = {p.id for _, p in published}
    held = _held_ids(cfg)
    real_held = {
        p.id
        for p in split_pool_heldout(load_problems("svamp"), cfg.learner.eval_real_fraction, cfg.learner.eval_seed)[1]
    }
    assert real_held <= held and {p.id for ps in eval_sets(cfg).values() for p in ps} <= held
    assert not ids & held
    assert all(split_of(p.id) == "train" for _, p in published if p.source == "synthetic")


def test_problems_add_never_queues_the_evaluation_set_or_unasked_teacher_problems(nats_server, tmp_path):
    url = nats_server.url
    cfg = _cfg(url)  # the defaults the subprocess runs with: eval_real svamp, curriculum teacher
    taught = [p.id for p in teacher_problems(cfg)]

    # The learner's real evaluation set: only its pool part goes out, the held-out part is counted.
    svamp = load_problems("svamp")
    counts = last_json(problems_add(url, "--json", "--dataset", "svamp"))
    held_svamp = {p.id for p in svamp} & _held_ids(cfg)
    assert counts["held_out"] == len(held_svamp) > 0 and counts["teacher"] == 0
    assert counts["published"] == len(svamp) - len(held_svamp) and counts["total"] == len(svamp)
    _assert_no_held_out(cfg, _published(url))

    # The compose seed's default (``--dataset synthetic --limit N``): the teacher drew its problems
    # from the same generator and seed; they are left out and the pool keeps its size.
    counts = last_json(problems_add(url, "--json", "--dataset", "synthetic", "--limit", "40"))
    assert (counts["published"], counts["teacher"], counts["held_out"]) == (40, len(taught), 0)
    published = _published(url)
    _assert_no_held_out(cfg, published)
    assert not {p.id for _, p in published} & set(taught)

    # The synthetic heldout split (the learner's synthetic evaluation set is part of it): nothing.
    counts = last_json(problems_add(url, "--json", "--dataset", "synthetic:1-6", "--split", "heldout", "--limit", "12"))
    assert (counts["published"], counts["held_out"]) == (0, 12)

    # A user file that reuses held-out ids (and a question of the synthetic evaluation set).
    held = split_pool_heldout(svamp, cfg.learner.eval_real_fraction, cfg.learner.eval_seed)[1]
    syn_eval = eval_sets(cfg)["synthetic"][0]
    lines = [{"question": f"What is {i} times 7?", "answer": str(7 * i)} for i in range(3)]
    lines += [
        {"id": held[0].id, "question": "My own question, with an id the learner evaluates on.", "answer": "1"},
        {"id": held[1].id, "question": held[1].question, "answer": held[1].answer, "source": "svamp"},
        {"question": syn_eval.question, "answer": syn_eval.answer},
    ]
    f = tmp_path / "mine.jsonl"
    f.write_text("".join(json.dumps(x) + "\n" for x in lines))
    proc = problems_add(url, "--json", str(f))
    counts = last_json(proc)
    assert (counts["published"], counts["held_out"], counts["teacher"], counts["total"]) == (3, 3, 0, 6)
    assert "held-out evaluation problem(s) left out" in proc.stderr and held[0].id in proc.stderr
    _assert_no_held_out(cfg, _published(url))

    # Asked for, the teacher's problems are queued (never the held-out ones).
    counts = last_json(problems_add(url, "--json", "--dataset", "synthetic", "--limit", "5", "--include-teacher"))
    assert (counts["published"], counts["teacher"]) == (5, 0)
    published = _published(url)
    assert {p.id for _, p in published} & set(taught) == set(taught[:5])
    _assert_no_held_out(cfg, published)
    assert all(subject == PROBLEMS_SUBJECT for subject, _ in published)


async def test_rstar_up_seeding_follows_the_same_rule(nats_server, tmp_path):
    from app.up import UpOptions, seed_problems

    cfg = _cfg(nats_server.url, "learner.teacher_problems=30")
    taught = {p.id for p in teacher_problems(cfg)}
    out = await seed_problems(cfg, UpOptions(dataset="synthetic:1-6+svamp", limit=120))
    assert out["published"] == out["problems"] == 120 and out["teacher"] > 0 and out["held_out"] > 0

    held = split_pool_heldout(load_problems("svamp"), cfg.learner.eval_real_fraction, cfg.learner.eval_seed)[1]
    f = tmp_path / "up.jsonl"
    f.write_text(
        "".join(
            json.dumps(x) + "\n"
            for x in [
                {"question": "What is 2 plus 40?", "answer": "42"},
                {"id": held[0].id, "question": "Collides with a held-out id.", "answer": "3"},
            ]
        )
    )
    out = await seed_problems(cfg, UpOptions(dataset=None, problems_file=str(f)))
    assert (out["published"], out["held_out"], out["teacher"]) == (1, 1, 0)

    published = await asyncio.to_thread(_published, nats_server.url)
    assert len(published) == 121 and not {p.id for _, p in published} & taught
    await asyncio.to_thread(_assert_no_held_out, cfg, published)


def _unsolved_tree(i: int, problem: Problem) -> TreeResult:
    now = time.time()
    return TreeResult(
        tree_id=f"r1-{i}",
        problem=problem,
        actor_id="actor-t",
        policy_version="policy-r0",
        ppm_version="",
        started_at=now - 1,
        finished_at=now,
        round=1,
        rollouts=8,
        solved=False,
        nodes=[Node(idx=0, parent=None, depth=0, visits=1)],
    )


@pytest.mark.parametrize("include_teacher", [False, True])
async def test_the_learners_requeue_follows_the_same_rule(nats_server, tmp_path, include_teacher):
    from learner.round_stages import requeue_unsolved
    from store.db import open_store
    from store.writer import upsert_trees

    cfg = _cfg(
        nats_server.url,
        f'data_dir="{tmp_path}"',
        "learner.teacher_problems=20",
        f"learner.pool_include_teacher={str(include_teacher).lower()}",
    )
    held_real = split_pool_heldout(load_problems("svamp"), cfg.learner.eval_real_fraction, cfg.learner.eval_seed)[1][0]
    held_syn = synthetic_problems(1, "heldout", (3,), seed=5)[0]
    taught = teacher_problems(cfg)[0]
    fine = synthetic_problems(2, "train", (5,), seed=5)
    engine = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    try:
        # Searched before this rule existed, or queued by hand: a round may still hold them.
        upsert_trees(engine, [_unsolved_tree(i, p) for i, p in enumerate([held_real, held_syn, taught, *fine])])
        async with open_broker(cfg, "test-learner") as b:
            pool = await requeue_unsolved(cfg, engine, b, 1)
    finally:
        engine.dispose()
    expected = {p.id for p in fine} | ({taught.id} if include_teacher else set())
    assert {p.id for p in pool.problems} == expected
    assert set(pool.held_out) == {held_real.id, held_syn.id}
    assert pool.teacher == ([] if include_teacher else [taught.id])
    published = await asyncio.to_thread(_published, nats_server.url)
    assert {p.id for _, p in published} == expected
    assert all(
        s == PROBLEMS_REQUEUE_SUBJECT and p.meta["rollouts"] == cfg.learner.requeue_rollouts for s, p in published
    )
    await asyncio.to_thread(_assert_no_held_out, cfg, published)
