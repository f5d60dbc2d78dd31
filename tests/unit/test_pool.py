"""The problem pool (``learner.pool``): what ``rstar up``, ``rstar problems add`` and the re-queue may queue."""

from learner.bootstrap import teacher_problems
from learner.pool import pool_problems, select_pool
from learner.round_eval import eval_sets
from rstar.config import load_config
from rstar.curriculum import split_of, synthetic_problems
from rstar.problems import DEFAULT_SYNTHETIC, load_problems, split_pool_heldout
from rstar.schemas import Problem


def _cfg(*overrides):
    return load_config(None, ["learner.teacher_problems=40", "learner.eval_real=svamp", *overrides], env={})


def _svamp_held(cfg):
    return split_pool_heldout(load_problems("svamp"), cfg.learner.eval_real_fraction, cfg.learner.eval_seed)[1]


def test_pool_mixes_sets_in_turn_and_leaves_out_held_out_and_teacher_problems():
    cfg = _cfg()
    pool = pool_problems(cfg, "synthetic:1-6 + svamp")
    held = {p.id for p in _svamp_held(cfg)}
    taught = {p.id for p in teacher_problems(cfg)}
    ids = [p.id for p in pool.problems]
    assert len(ids) == len(set(ids))
    assert held and not held & set(ids)
    assert taught and not taught & set(ids)
    assert [p.source for p in pool.problems[:6]] == ["synthetic", "svamp"] * 3
    assert {p.meta["level"] for p in pool.problems if p.source == "synthetic"} == {1, 2, 3, 4, 5, 6}
    assert set(pool.held_out) == held  # every problem left out is counted
    assert len(pool_problems(cfg, "synthetic:1-6+svamp", limit=7).problems) == 7


def test_pool_keeps_a_real_set_whole_when_it_is_not_the_evaluation_set():
    cfg = _cfg("learner.eval_real=mawps", "learner.teacher=none")
    pool = pool_problems(cfg, "svamp")
    assert len(pool.problems) == len(load_problems("svamp")) and pool.counts() == {"held_out": 0, "teacher": 0}


def test_the_pool_keeps_its_size_when_the_teacher_drew_from_the_same_generator():
    # Teacher and pool: levels 1-2, seed 0: the teacher's 1,200 problems are the pool's first ones.
    cfg = load_config(None, ["learner.teacher_problems=1200", "learner.teacher_levels=[1, 2]"], env={})
    pool = pool_problems(cfg, "synthetic:1-2")
    taught = {p.id for p in teacher_problems(cfg)}
    assert len(pool.problems) == DEFAULT_SYNTHETIC and not taught & {p.id for p in pool.problems}
    assert set(pool.teacher) == taught
    with_teacher = pool_problems(cfg, "synthetic:1-2", limit=10, include_teacher=True)
    assert [p.id for p in with_teacher.problems] == [p.id for p in teacher_problems(cfg)[:10]]
    assert with_teacher.counts() == {"held_out": 0, "teacher": 0}


def test_a_limit_counts_only_the_problems_drawn_and_keeps_its_prefix():
    cfg = _cfg()
    small, big = (pool_problems(cfg, "svamp", limit=n, seed=3, sample=True) for n in (10, 20))
    assert len(small.problems) == 10 and [p.id for p in big.problems[:10]] == [p.id for p in small.problems]
    assert 0 < len(big.held_out) < len(_svamp_held(cfg))  # ~20 % of the ~25 drawn, not the set's 200
    # a set that is not the evaluation set gives rstar problems add's old seeded sample
    assert [p.id for p in pool_problems(cfg, "gsm8k-train", limit=5, seed=3, sample=True).problems] == [
        p.id for p in load_problems("gsm8k-train", limit=5, seed=3)
    ]


def test_a_user_list_is_filtered_by_id_and_by_question():
    cfg = _cfg()
    held = _svamp_held(cfg)[:3]
    syn_eval = eval_sets(cfg)["synthetic"][:2]
    taught = teacher_problems(cfg)[:2]
    mine = [
        Problem(id=f"mine-{i}", source="user", question=f"What is {i} plus 1?", answer=str(i + 1)) for i in range(4)
    ]
    copied = [
        Problem(id=held[0].id, source="user", question="a reused id", answer="1"),  # an evaluation id
        Problem(id="copy-1", source="user", question=f"  {held[1].question.upper()} ", answer="2"),  # its text
        Problem(id="copy-2", source="user", question=syn_eval[0].question, answer=syn_eval[0].answer),
        syn_eval[1],
        held[2],
        *taught,
    ]
    pool = select_pool(cfg, [*mine[:2], *copied, *mine[2:]])
    assert [p.id for p in pool.problems] == [p.id for p in mine]
    assert pool.held_out == [held[0].id, "copy-1", "copy-2", syn_eval[1].id, held[2].id]
    assert pool.teacher == [p.id for p in taught]
    assert any("held-out evaluation" in n and "copy-1" in n for n in pool.notes())
    asked = select_pool(cfg, [*mine, *copied], include_teacher=True)
    assert {p.id for p in taught} <= {p.id for p in asked.problems} and len(asked.held_out) == 5


def test_the_synthetic_heldout_split_is_never_in_the_pool():
    cfg = _cfg("learner.eval_synthetic_n=4")  # far fewer than are held out: the whole split is
    heldout = synthetic_problems(50, "heldout", (4, 5), seed=9)
    assert all(split_of(p.id) == "heldout" for p in heldout)
    assert select_pool(cfg, heldout).problems == []
    pool = pool_problems(cfg, "synthetic:4-5", limit=5, split="heldout")
    assert pool.problems == [] and len(pool.held_out) == 5
    # the train split never shares an id with it (a fixed hash of the id, the same for every seed)
    assert not {p.id for p in synthetic_problems(500, "train", (4, 5), seed=9)} & {p.id for p in heldout}
