"""The live view of ``rstar up``: round, trees/min, solve rate, models, evaluation, actors, processes.

``snapshot`` reads the store (counts, rounds) and the broker (model pointer, heartbeats);
``render`` turns a snapshot into rich renderables. Both are cheap enough to run every 2 s.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from rich.console import Group
from rich.panel import Panel
from rich.table import Table

from rstar.schemas import RoundEval


def evaluated_through(rounds: list[dict]) -> int:
    """The highest round R such that every round up to R is published and evaluated, else -1.

    The evaluator takes the newest round first, so round R can have figures while R - 1 is still
    being evaluated: a run stopped at "round N evaluated" must wait for every earlier round too."""
    through = -1
    for r in sorted(rounds, key=lambda r: r["round"]):
        if r["state"] != "published" or not RoundEval.of(r.get("eval")).evaluated:
            break
        through = r["round"]
    return through


@dataclass
class Snapshot:
    problems: int = 0
    trees: int = 0
    solved_trees: int = 0
    nodes: int = 0
    trees_per_min: float = 0.0
    round: int | None = None
    round_state: str = "–"
    published_round: int = -1
    evaluated_round: int = -1  # every round up to this one is published and has evaluation figures
    pointer: str = "base model (no checkpoint yet)"
    rounds: list[dict] = field(default_factory=list)
    actors: list[dict] = field(default_factory=list)
    swapped_actors: int = 0
    first_tree_s: float | None = None
    first_swap_s: float | None = None
    error: str | None = None


class View:
    """Keeps the store engine and a broker connection open between snapshots."""

    def __init__(self, cfg, engine, broker) -> None:
        self.cfg, self.engine, self.broker = cfg, engine, broker
        self._trees: list[tuple[float, int]] = []

    async def snapshot(self) -> Snapshot:
        import asyncio

        from actors.heartbeat import read_fleet
        from broker.checkpoints import get_pointer
        from store.queries import list_rounds, stats

        st, rounds = await asyncio.to_thread(lambda: (stats(self.engine), list_rounds(self.engine)))
        pointer = await get_pointer(self.broker)
        fleet = await read_fleet(self.broker)
        now = time.monotonic()
        self._trees = [(t, n) for t, n in self._trees if now - t <= 300] + [(now, st["trees"])]
        t0, n0 = self._trees[0]
        s = Snapshot(
            problems=st["problems"],
            trees=st["trees"],
            solved_trees=st["solved_trees"],
            nodes=st["nodes"],
            rounds=rounds,
            trees_per_min=round(60 * (st["trees"] - n0) / (now - t0), 1) if now > t0 else 0.0,
        )
        if rounds:
            s.round, s.round_state = rounds[-1]["round"], rounds[-1]["state"]
            done = [r["round"] for r in rounds if r["state"] == "published"]
            s.published_round = max(done) if done else -1
            s.evaluated_round = evaluated_through(rounds)
        if pointer is not None:
            s.pointer = f"round {pointer.round}: {pointer.policy.version}" + (
                f" + {pointer.ppm.version}" if pointer.ppm else ""
            )
        s.actors = [
            {
                "id": h.actor_id,
                "policy": h.policy_version,
                "ppm": h.ppm_version,
                "trees/min": h.trees_per_min,
                "tok/s": h.tokens_per_s,
                "busy": h.busy_fraction,
                "in flight": h.trees_in_flight,
            }
            for h in fleet
        ]
        if pointer is not None:
            s.swapped_actors = sum(h.policy_version == pointer.policy.version for h in fleet)
        return s


def _last_eval(rounds: list[dict]) -> str:
    """The newest round's held-out figures: ``greedy 40% (12/30)`` per set and method (a figure
    stored as a bare accuracy shows without its counts)."""
    from learner.round_eval import method_rank

    for r in reversed(rounds):
        sets = RoundEval.of(r.get("eval")).records()
        if sets:
            parts = [
                f"{name}: "
                + " / ".join(
                    f"{k} {100 * v.accuracy:.0f}%" + (f" ({v.correct}/{v.n})" if v.n is not None else "")
                    for k, v in sorted(recs.items(), key=lambda kv: method_rank(kv[0]))
                )
                for name, recs in sets.items()
            ]
            return f"round {r['round']} — " + "; ".join(parts)
    return "none yet"


def render(s: Snapshot, processes: list[dict], elapsed_s: float):
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    solve = f"{100 * s.solved_trees / s.trees:.0f}%" if s.trees else "–"
    head.add_row("running", f"{elapsed_s / 60:.1f} min")
    head.add_row("round", f"{s.round if s.round is not None else '–'} ({s.round_state})")
    head.add_row("models", s.pointer)
    head.add_row(
        "trees",
        f"{s.trees} stored, {s.trees_per_min} / min, solve rate {solve}, {s.nodes} nodes, {s.problems} problems",
    )
    head.add_row("last eval", _last_eval(s.rounds))
    marks = []
    if s.first_tree_s is not None:
        marks.append(f"first tree after {s.first_tree_s:.0f}s")
    if s.first_swap_s is not None:
        marks.append(f"first checkpoint swap after {s.first_swap_s:.0f}s")
    if marks:
        head.add_row("milestones", ", ".join(marks))
    if s.error:
        head.add_row("[red]view error", s.error)
    actors = Table(title=f"actors alive: {len(s.actors)}", expand=True)
    for col in ("id", "policy", "ppm", "trees/min", "tok/s", "busy", "in flight"):
        actors.add_column(col)
    for a in s.actors:
        actors.add_row(
            a["id"],
            a["policy"] or "–",
            a["ppm"] or "–",
            f"{a['trees/min']:.1f}",
            f"{a['tok/s']:.0f}",
            f"{100 * a['busy']:.0f}%",
            str(a["in flight"]),
        )
    procs = Table(title="processes", expand=True)
    for col in ("name", "pid", "state", "restarts"):
        procs.add_column(col)
    for p in processes:
        state = "running" if p["running"] else ("done" if p["done"] else f"exited {p['last_exit']}")
        procs.add_row(p["name"], str(p["pid"]), state, str(p["restarts"]))
    return Panel(Group(head, actors, procs), title="rstar up", subtitle="Ctrl-C stops everything")
