"""Plot the learner's rounds: held-out accuracy per set and method with 95 % Wilson intervals,
greedy accuracy per curriculum level, and the rounds' solve rate.

    rstar rounds --plot docs/learning.png                            # needs the `plot` extra (matplotlib)
    rstar rounds --plot docs/learning.png --control-json control.json

Reads the rows ``store.queries.list_rounds`` returns (or rows saved by ``rstar rounds --json``).
Panels: one per evaluation set (a line per method, error bars from ``rstar.stats.wilson``; a
figure stored without counts has no bar); one per set with curriculum levels (greedy correct/n
per level and round, coloured by accuracy); the pool problems the actors solved per round. A
control run's rows (``control_rows``) add its greedy line to each set's panel, dashed. A round
without evaluation figures is left out of the accuracy lines (it shows as a gap, not as zero).
"""

from __future__ import annotations

from pathlib import Path

from learner.round_eval import method_rank
from rstar.schemas import RoundEval, level_key
from rstar.stats import wilson

Point = tuple[int, float, float | None, float | None]  # round, accuracy, interval low, high


def accuracy_series(rows: list[dict]) -> dict[str, dict[str, list[Point]]]:
    """``{set: {method label: [(round, accuracy, lo, hi), ...]}}`` over the evaluated rounds
    (``lo``/``hi``: the 95 % Wilson interval, None for a figure stored without counts)."""
    out: dict[str, dict[str, list[Point]]] = {}
    for r in rows:
        for name, recs in RoundEval.of(r.get("eval")).records().items():
            for label, rec in recs.items():
                lo, hi = wilson(rec.correct, rec.n) if rec.n is not None and rec.correct is not None else (None, None)
                out.setdefault(name, {}).setdefault(label, []).append((r["round"], rec.accuracy, lo, hi))
    return out


def level_series(rows: list[dict], method: str = "greedy") -> dict[str, dict[str, list[tuple[int, int, int]]]]:
    """``{set: {level: [(round, correct, n), ...]}}`` of ``method`` for the sets with levels."""
    out: dict[str, dict[str, list[tuple[int, int, int]]]] = {}
    for r in rows:
        for name, recs in RoundEval.of(r.get("eval")).records().items():
            for lv, c in (recs[method].by_level if method in recs else {}).items():
                out.setdefault(name, {}).setdefault(lv, []).append((r["round"], c.correct, c.n))
    return {name: {lv: lvs[lv] for lv in sorted(lvs, key=level_key)} for name, lvs in out.items()}


def _errorbar(ax, pts: list[Point], dx: float = 0.0, **kw) -> None:
    xs = [x + dx for x, *_ in pts]
    ys = [100 * y for _, y, _, _ in pts]
    err = [
        [100 * (y - lo) if lo is not None else 0.0 for _, y, lo, _ in pts],
        [100 * (hi - y) if hi is not None else 0.0 for _, y, _, hi in pts],
    ]
    ax.errorbar(xs, ys, yerr=err, marker="o", markersize=4, capsize=3, elinewidth=1, **kw)


def plot_rounds(
    rows: list[dict], path: str | Path, title: str = "rstar self-evolution", control_rows: list[dict] | None = None
) -> Path:
    """Draw the rounds to ``path`` (PNG); ``control_rows`` (a control run's rows, same shape)
    add its greedy accuracy, dashed, to each evaluation set's panel. Returns ``path``."""
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("plotting needs matplotlib: pip install -e '.[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = accuracy_series(rows)
    control = accuracy_series(control_rows) if control_rows else {}
    levels = level_series(rows)
    collected = [(r["round"], RoundEval.of(r.get("eval")).collect) for r in rows]
    solve = [(x, c.solve_rate) for x, c in collected if c is not None and c.solve_rate is not None and x > 0]
    panels = (
        [("acc", name) for name in series] + [("levels", name) for name in levels] + ([("solve", "")] if solve else [])
    )
    if not panels:
        raise RuntimeError("no round has evaluation figures or a solve rate yet")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8), squeeze=False)
    for ax, (kind, name) in zip(axes[0], panels):
        if kind == "levels":
            _levels_panel(fig, ax, name, levels[name])
            continue
        if kind == "acc":
            lines = sorted(series[name].items(), key=lambda kv: (method_rank(kv[0]), kv[0]))
            xs = {x for _, pts in lines for x, *_ in pts} | {x for x, *_ in control.get(name, {}).get("greedy", [])}
            for i, (label, pts) in enumerate(lines):
                _errorbar(ax, pts, dx=0.06 * (i - (len(lines) - 1) / 2), label=label, color=f"C{method_rank(label)}")
            if control.get(name, {}).get("greedy"):
                _errorbar(
                    ax,
                    control[name]["greedy"],
                    dx=0.06 * (len(lines) + 1) / 2,
                    label="control greedy",
                    color="0.35",
                    linestyle="--",
                )
            ax.set_title(f"held-out {name} (95 % Wilson)")
        else:
            ax.plot([x for x, _ in solve], [100 * y for _, y in solve], marker="o", label="solve rate (actors)")
            ax.set_title("pool problems solved")
            xs = {x for x, _ in solve}
        ax.set_xlabel("round")
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax.set_xlim(min(xs) - 0.5, max(xs) + 0.5)
        ax.set_xticks(range(min(xs), max(xs) + 1))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _levels_panel(fig, ax, name: str, by_level: dict[str, list[tuple[int, int, int]]]) -> None:
    """Rounds across, levels down: each cell greedy correct/n, coloured by accuracy."""
    import numpy as np

    rounds = sorted({x for pts in by_level.values() for x, _, _ in pts})
    lvs = list(by_level)
    grid = np.full((len(lvs), len(rounds)), np.nan)
    for i, lv in enumerate(lvs):
        for x, c, n in by_level[lv]:
            j = rounds.index(x)
            grid[i, j] = c / n if n else np.nan
            ax.text(j, i, f"{c}/{n}", ha="center", va="center", fontsize=8)
    im = ax.imshow(np.ma.masked_invalid(grid), cmap="RdYlGn", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(rounds)), [str(x) for x in rounds])
    ax.set_yticks(range(len(lvs)), [f"L{lv}" for lv in lvs])
    ax.set_xlabel("round")
    ax.set_title(f"held-out {name}: greedy by level")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="accuracy")
