"""The problem pool ``rstar up --dataset a+b`` queues (``rstar.up.pool_problems``)."""

from learner.bootstrap import teacher_problems
from rstar.config import load_config
from rstar.problems import load_problems, split_pool_heldout
from rstar.up import pool_problems


def _cfg(*overrides):
    return load_config(None, ["learner.teacher_problems=40", "learner.eval_real=svamp", *overrides], env={})


def test_pool_mixes_sets_in_turn_and_leaves_out_held_out_and_teacher_problems():
    cfg = _cfg()
    pool = pool_problems(cfg, "synthetic:1-6 + svamp")
    held = {p.id for p in split_pool_heldout(load_problems("svamp"), cfg.learner.eval_real_fraction,
                                             cfg.learner.eval_seed)[1]}
    taught = {p.id for p in teacher_problems(cfg)}
    ids = [p.id for p in pool]
    assert len(ids) == len(set(ids))
    assert held and not held & set(ids)
    assert taught and not taught & set(ids)
    assert [p.source for p in pool[:6]] == ["synthetic", "svamp"] * 3
    assert {p.meta["level"] for p in pool if p.source == "synthetic"} == {1, 2, 3, 4, 5, 6}
    assert len(pool_problems(cfg, "synthetic:1-6+svamp", limit=7)) == 7


def test_pool_keeps_a_real_set_whole_when_it_is_not_the_evaluation_set():
    cfg = _cfg("learner.eval_real=mawps", "learner.teacher=none")
    assert len(pool_problems(cfg, "svamp")) == len(load_problems("svamp"))


def test_the_pool_keeps_its_size_when_the_teacher_drew_from_the_same_generator():
    from rstar.problems import DEFAULT_SYNTHETIC

    # Teacher and pool: levels 1-2, seed 0: the teacher's 1,200 problems are the pool's first ones.
    cfg = load_config(None, ["learner.teacher_problems=1200", "learner.teacher_levels=[1, 2]"], env={})
    pool = pool_problems(cfg, "synthetic:1-2")
    taught = {p.id for p in teacher_problems(cfg)}
    assert len(pool) == DEFAULT_SYNTHETIC and not taught & {p.id for p in pool}
