"""A round's training data, selected from the store and written back to it (SQL in, SQL out).

    sel = select_round(engine, 2, cfg.train, window=1, exclude=eval_ids)
    with begin(engine) as conn:
        write_selection(conn, 2, sel)               # replaces round 2's rows
    examples = sft_examples(engine, 2)              # -> list[SFTExample] for learner.sft
    pairs = ppm_pairs(engine, 2)                    # -> list[PPMPair] for learner.ppm_train

The rules are ``learner.selection``'s (rStar-Math §3.3): per solved problem the
``train.sft_per_problem`` correct trajectories with the highest average Q over all of that
problem's trees in the round (distinct texts only); per tree, the step pairs (up to ``k`` siblings
with the highest Q that reached a correct answer × up to ``k`` with the lowest Q that reached only
wrong ones) and the final pairs (whole correct × whole wrong trajectories). ``window`` pools the
trees of the last ``window`` rounds (1 = this round only, as the paper).

Every row names its tree and node (``sft_examples.tree_id, leaf_idx``; ``ppm_pairs.tree_id,
pos_idx, neg_idx``: the compared step, or the leaf of a compared trajectory), so any example
traces back to the search that produced it. ``prompt`` is the plain-text prompt (no chat template,
no few-shot) of the question and the shared prefix, ``pos_text``/``neg_text`` the rendered steps;
the readers turn them back into exact step lists. Problems in ``exclude`` (evaluation sets) never
become training data.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine

from learner.ppm_train import PPMPair
from learner.selection import Trajectory, select_ppm_pairs, select_sft, trajectories
from learner.sft import SFTExample
from rstar.config import Config, TrainConfig
from rstar.log import get_logger
from rstar.schemas import Node
from rstar.steps import build_prompt, parse_steps, render_steps
from store import learner_tables as lt

log = get_logger(__name__)


class TrainingDataError(ValueError):
    """A stored training row that cannot be turned back into an example; names the row."""


@dataclass
class Selection:
    sft: list[dict] = field(default_factory=list)  # sft_examples rows (round set on write)
    pairs: list[dict] = field(default_factory=list)  # ppm_pairs rows
    problems: int = 0
    solved_problems: int = 0


def _texts(by_idx: dict[int, Node], path: Sequence[int]) -> list[str]:
    return [by_idx[i].text for i in path]


def _prompt(question: str, prefix: list[str]) -> str:
    return build_prompt(question, prefix, None, few_shot=False)


def _sft_for_problem(trees: list[tuple[str, list[Node]]], per_problem: int) -> list[dict]:
    owner: dict[int, tuple[str, dict[int, Node]]] = {}
    cands: list[Trajectory] = []
    for tree_id, nodes in trees:
        by_idx = {n.idx: n for n in nodes}
        for t in trajectories(nodes):
            owner[id(t)] = (tree_id, by_idx)
            cands.append(t)
    rows, seen = [], set()
    for t in select_sft(cands, per_problem=len(cands)):  # all correct ones, best first
        tree_id, by_idx = owner[id(t)]
        text = render_steps(_texts(by_idx, t.path))
        if text in seen:  # the same solution found twice teaches nothing new
            continue
        seen.add(text)
        rows.append({"tree_id": tree_id, "leaf_idx": t.leaf, "text": text, "avg_q": t.avg_q})
        if len(rows) == per_problem:
            break
    return rows


def _pairs_for_tree(question: str, tree_id: str, nodes: list[Node], k: int) -> list[dict]:
    by_idx = {n.idx: n for n in nodes}
    rows = []
    for p in select_ppm_pairs(nodes, k):
        rows.append(
            {
                "tree_id": tree_id,
                "pos_idx": p.pos[-1],
                "neg_idx": p.neg[-1],
                "kind": p.kind,
                "prompt": _prompt(question, _texts(by_idx, p.prefix)),
                "pos_text": render_steps(_texts(by_idx, p.pos)),
                "neg_text": render_steps(_texts(by_idx, p.neg)),
            }
        )
    return rows


def select_round(
    engine: Engine, round_no: int, cfg: TrainConfig, window: int = 1, exclude: frozenset[str] | set[str] = frozenset()
) -> Selection:
    """Select SFT rows and PPM pair rows from the trees of rounds ``round_no-window+1 .. round_no``."""
    sel = Selection()
    rounds = list(range(max(0, round_no - window + 1), round_no + 1))
    for pid, question, trees in lt.trees_with_nodes(engine, rounds):
        if pid in exclude:
            continue
        sel.problems += 1
        sft = _sft_for_problem(trees, cfg.sft_per_problem)
        sel.solved_problems += bool(sft)
        sel.sft += sft
        for tree_id, nodes in trees:
            sel.pairs += _pairs_for_tree(question, tree_id, nodes, cfg.ppm_pairs_k)
    return sel


def round_selection(engine: Engine, cfg: Config, round_no: int, exclude: frozenset[str] | set[str]) -> Selection:
    """What round ``round_no`` trains on; the round controller and ``rstar train`` both call this.

    A control run (``learner.control``) takes round 0's selection, the teacher's trees only.
    Otherwise the trees of the ``learner.sft_rounds_window`` latest rounds; when they solved
    nothing, the policy's SFT rows come from every round so far (the PPM pairs stay the window's).
    """
    if cfg.learner.control:
        return select_round(engine, 0, cfg.train, 1, exclude)
    sel = select_round(engine, round_no, cfg.train, cfg.learner.sft_rounds_window, exclude)
    if not sel.sft and round_no > 0:
        log.warning("round %d solved nothing: its policy trains on every round's selection so far", round_no)
        sel.sft = select_round(engine, round_no, cfg.train, round_no + 1, exclude).sft
    return sel


def write_selection(conn: Connection, round_no: int, sel: Selection) -> None:
    lt.replace_selection(conn, round_no, sel.sft, sel.pairs)


def sft_examples(engine: Engine, round_no: int) -> list[SFTExample]:
    """The round's SFT rows as examples; ``searched`` marks those from an actor's tree."""
    return [
        SFTExample(r["question"], tuple(parse_steps(r["text"])), searched=r["source"] != "teacher")
        for r in lt.sft_rows(engine, round_no)
    ]


def ppm_pairs(engine: Engine, round_no: int) -> list[PPMPair]:
    out = []
    for r in lt.pair_rows(engine, round_no):
        head = _prompt(r["question"], [])
        if not r["prompt"].startswith(head):
            raise TrainingDataError(
                f"ppm_pairs row {r['id']} (tree {r['tree_id']}): prompt does not start with its question's prompt"
            )
        out.append(
            PPMPair(
                tree_id=r["tree_id"],
                question=r["question"],
                prefix=tuple(parse_steps(r["prompt"][len(head) :])),
                pos=tuple(parse_steps(r["pos_text"])),
                neg=tuple(parse_steps(r["neg_text"])),
            )
        )
    return out
