"""Plot the learner's rounds: held-out accuracy per set and method, and the rounds' solve rate.

    rstar rounds --plot docs/learning.png          # needs the `plot` extra (matplotlib)

Reads the rows ``store.queries.list_rounds`` returns; a round without evaluation figures is
left out of the accuracy lines (it shows as a gap, not as zero).
"""

from __future__ import annotations

from pathlib import Path

from learner.round_eval import method_column, method_rank


def accuracy_series(rows: list[dict]) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """``{set: {method label: [(round, accuracy), ...]}}`` over the evaluated rounds."""
    out: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for r in rows:
        for name, figs in (((r.get("eval") or {}).get("accuracy") or {}).get("sets") or {}).items():
            for label, acc in figs.items():
                if label != "n" and isinstance(acc, (int, float)):
                    out.setdefault(name, {}).setdefault(method_column(label), []).append((r["round"], acc))
    return out


def plot_rounds(rows: list[dict], path: str | Path, title: str = "rstar self-evolution") -> Path:
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("plotting needs matplotlib: pip install -e '.[plot]'") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = accuracy_series(rows)
    solve = [(r["round"], ((r.get("eval") or {}).get("collect") or {}).get("solve_rate")) for r in rows]
    solve = [(x, y) for x, y in solve if isinstance(y, (int, float)) and x > 0]
    panels = list(series) + (["solve rate"] if solve else [])
    if not panels:
        raise RuntimeError("no round has evaluation figures or a solve rate yet")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.4), squeeze=False)
    for ax, name in zip(axes[0], panels):
        lines = series.get(name, {}) if name != "solve rate" else {"solve rate (actors)": solve}
        for label, pts in sorted(lines.items(), key=lambda kv: method_rank(kv[0])):  # same colours
            ax.plot([x for x, _ in pts], [100 * y for _, y in pts], marker="o", label=label)
        ax.set_title(f"held-out {name}" if name != "solve rate" else "pool problems solved")
        ax.set_xlabel("round")
        ax.set_ylabel("%")
        ax.set_ylim(0, 100)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
