"""The problem pool: which problems may go on the PROBLEMS queue for the actors to search.

    pool = pool_problems(cfg, "synthetic:1-6+svamp", limit=2000)  # built-in sets, joined by + to mix
    pool = select_pool(cfg, read_problems_jsonl("mine.jsonl"))    # any list: a user file, a re-queue
    pool.problems, pool.held_out, pool.teacher                     # to queue / left out (ids)

``select_pool`` (``PoolRule.select``) is the one rule, applied by every way problems reach the
queue: ``rstar up`` (``--dataset`` and ``--problems FILE``), ``rstar problems add`` (a file or
``--dataset``; the compose ``seed`` service runs it) and the learner's re-queue of the problems a
round left unsolved (``learner.round_stages.requeue_unsolved``):

- **held-out evaluation problems are never queued**: the held-out part of ``learner.eval_real``
  (``split_pool_heldout`` by ``eval_real_fraction`` and ``eval_seed``: the whole part, not only
  the ``eval_real_n`` problems evaluated now), the synthetic curriculum's ``heldout`` split (a
  problem whose source is ``synthetic`` and whose id hashes there: ``rstar.curriculum.split_of``;
  the learner's ``eval_synthetic_n`` problems come from it), and any problem with the id or the
  question (case and spacing aside) of one of those or of the learner's evaluation sets — so a
  user file that copies them, or a set that shares questions with the evaluation set (ASDiv and
  MAWPS share 216), is filtered the same way;
- **the teacher's demonstrated problems are not searched again unless asked**: the problems of
  ``learner.bootstrap.teacher_problems`` (by id or question) are left out unless
  ``learner.pool_include_teacher`` (``--include-teacher``) is set.

What is left out is returned, by id, for the caller to report (``Pool.notes``): never silently.
With a ``limit``, the problems are drawn in order until ``limit`` are kept, and the left-out counts
are of the problems drawn.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from rstar.config import Config
from rstar.curriculum import split_of
from rstar.schemas import Problem

_SHOWN_IDS = 5  # ids named in a note


def _norm(question: str) -> str:
    return " ".join(question.split()).lower()


@dataclass
class Pool:
    """Problems to queue, in order, and the ids left out, by reason."""

    problems: list[Problem] = field(default_factory=list)
    held_out: list[str] = field(default_factory=list)  # held-out evaluation problems: never queued
    teacher: list[str] = field(default_factory=list)  # the teacher's demonstrated problems

    def counts(self) -> dict[str, int]:
        return {"held_out": len(self.held_out), "teacher": len(self.teacher)}

    def notes(self) -> list[str]:
        """One line per reason anything was left out (empty when nothing was)."""

        def ids(xs: list[str]) -> str:
            more = f", … ({len(xs) - _SHOWN_IDS} more)" if len(xs) > _SHOWN_IDS else ""
            return ", ".join(xs[:_SHOWN_IDS]) + more

        out = []
        if self.held_out:
            out.append(
                f"{len(self.held_out)} held-out evaluation problem(s) left out, never queued (the learner "
                f"evaluates on them: learner.eval_real's held-out part, the synthetic heldout split): "
                f"{ids(self.held_out)}"
            )
        if self.teacher:
            out.append(
                f"{len(self.teacher)} of the teacher's demonstrated problems left out (round 0 showed "
                f"their solutions; --include-teacher or learner.pool_include_teacher = true queues them): "
                f"{ids(self.teacher)}"
            )
        return out


@dataclass(frozen=True)
class PoolRule:
    """What ``select`` leaves out; made from a config by ``pool_rule``."""

    held_ids: frozenset[str] = frozenset()
    held_questions: frozenset[str] = frozenset()
    teacher_ids: frozenset[str] = frozenset()
    teacher_questions: frozenset[str] = frozenset()
    include_teacher: bool = False

    def reason(self, p: Problem) -> str | None:
        """``"held_out"``, ``"teacher"``, or None for a problem the pool may hold."""
        q = _norm(p.question)
        if (
            p.id in self.held_ids
            or q in self.held_questions
            or (p.source == "synthetic" and split_of(p.id) == "heldout")
        ):
            return "held_out"
        if not self.include_teacher and (p.id in self.teacher_ids or q in self.teacher_questions):
            return "teacher"
        return None

    def select(self, problems: Iterable[Problem], limit: int | None = None) -> Pool:
        """The problems the pool may hold, in order, at most ``limit``; the others counted."""
        return self.mix([(problems, None)], limit)

    def mix(self, sets: list[tuple[Iterable[Problem], int | None]], limit: int | None = None) -> Pool:
        """Sets taken in turn (one kept problem of each, then the next), each up to its own cap.

        The order is that of ``itertools.zip_longest`` over the sets once filtered; a set's
        left-out problems are counted as they are drawn, so with a ``limit`` only those drawn
        before it was reached.
        """
        pool = Pool()
        streams: list[tuple[Iterator[Problem], int | None]] = [(iter(ps), cap) for ps, cap in sets]
        taken = [0] * len(streams)
        active = list(range(len(streams)))
        while active:
            for i in list(active):
                if limit is not None and len(pool.problems) >= limit:
                    return pool
                it, cap = streams[i]
                if cap is not None and taken[i] >= cap:
                    active.remove(i)
                    continue
                for p in it:
                    why = self.reason(p)
                    if why is None:
                        pool.problems.append(p)
                        taken[i] += 1
                        break
                    (pool.held_out if why == "held_out" else pool.teacher).append(p.id)
                else:
                    active.remove(i)
        return pool


def held_out_problems(cfg: Config, sets: dict[str, list[Problem]] | None = None) -> list[Problem]:
    """The learner's evaluation problems (``sets``: its ``eval_sets``, made when None) and the
    whole held-out part of ``learner.eval_real``."""
    from learner.round_eval import eval_sets
    from rstar.problems import load_problems, split_pool_heldout

    lc = cfg.learner
    held = [p for ps in (eval_sets(cfg) if sets is None else sets).values() for p in ps]
    if lc.eval_real:
        held += split_pool_heldout(load_problems(lc.eval_real), lc.eval_real_fraction, lc.eval_seed)[1]
    return held


def pool_rule(cfg: Config, include_teacher: bool | None = None) -> PoolRule:
    """The rule for this config; ``include_teacher`` None = ``learner.pool_include_teacher``."""
    from learner.bootstrap import teacher_problems
    from learner.round_eval import eval_ids, eval_sets

    include = cfg.learner.pool_include_teacher if include_teacher is None else include_teacher
    sets = eval_sets(cfg)
    held = held_out_problems(cfg, sets)
    # as the learner's bootstrap draws them: its evaluation problems excluded
    taught = teacher_problems(cfg, eval_ids(sets)) if not include and cfg.learner.teacher != "none" else []
    return PoolRule(
        held_ids=frozenset(p.id for p in held),
        held_questions=frozenset(_norm(p.question) for p in held),
        teacher_ids=frozenset(p.id for p in taught),
        teacher_questions=frozenset(_norm(p.question) for p in taught),
        include_teacher=include,
    )


def select_pool(
    cfg: Config, problems: Iterable[Problem], limit: int | None = None, include_teacher: bool | None = None
) -> Pool:
    """The problems of a list (a file, a re-queue) the pool may hold: see the module doc."""
    return pool_rule(cfg, include_teacher).select(problems, limit)


def shuffled(problems: list[Problem], seed: int) -> list[Problem]:
    """A seeded shuffle: its first ``n`` are ``load_problems(..., limit=n, seed=seed)``'s sample."""
    order = list(range(len(problems)))
    random.Random(seed).shuffle(order)
    return [problems[i] for i in order]


def pool_problems(
    cfg: Config,
    datasets: str,
    limit: int | None = None,
    *,
    split: str | None = None,
    seed: int | None = None,
    sample: bool = False,
    include_teacher: bool | None = None,
) -> Pool:
    """The pool of built-in sets (``rstar.problems.load_problems`` names or files), ``+`` to mix.

    Sets joined by ``+`` (``synthetic:1-6+svamp``) are taken in turn (one problem from each set,
    then the next), so every round sees all of them; the rule (``select_pool``) leaves out the
    held-out part of ``learner.eval_real`` and the teacher's problems. A synthetic set gives
    ``limit`` problems (``DEFAULT_SYNTHETIC`` without one) of ``split`` (train by default) from the
    generator seeded by ``seed`` (None = ``search.seed``): the teacher draws from the same
    generator, so as many more are made as it may take to keep that size once its problems are
    left out. Other sets come whole, in file order, or with ``sample`` and a ``limit`` in an order
    shuffled by ``seed`` (a seeded sample, as ``rstar problems add --limit``).
    """
    from rstar.problems import DEFAULT_SYNTHETIC, load_problems

    rule = pool_rule(cfg, include_teacher)
    seed = cfg.search.seed if seed is None else seed
    sets: list[tuple[Iterable[Problem], int | None]] = []
    for name in (x.strip() for x in datasets.split("+") if x.strip()):
        if name == "synthetic" or name.startswith("synthetic:"):
            n = DEFAULT_SYNTHETIC if limit is None else limit
            extra = 0 if rule.include_teacher or split not in (None, "train") else len(rule.teacher_ids)
            sets.append((load_problems(name, split=split or "train", seed=seed, limit=n + extra), n))
        else:
            problems = load_problems(name, split=split)
            sets.append((shuffled(problems, seed) if sample and limit is not None else problems, None))
    return rule.mix(sets, limit)
