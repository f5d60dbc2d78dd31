"""``rstar rounds``: the learner's rounds — state, data, held-out accuracy, models.

    rstar rounds [--json | --markdown] [--plot FILE.png]

One row per round from the store's ``rounds`` table (written by ``learner.rounds``): its state,
the trees collected and the share of their problems solved, the SFT examples and PPM pairs
selected, the PPM's pairwise accuracy on held-out pairs, held-out accuracy per evaluation set as
``greedy / majority@k / MCTS(+PPM)@k`` of the models trained on that round, and the policy
version. ``--json`` prints the rows with their full ``eval`` documents (PPM version, training
reports, bootstrap figures); ``--markdown`` the same table as Markdown (for a README);
``--plot`` also draws accuracy and solve rate per round (``rstar.rounds_plot``, `plot` extra).
"""

from __future__ import annotations

import json

import typer

from rstar.cli import ConfigOpt, SetOpt, get_config


def _pct(x) -> str:
    return f"{x:.1%}" if isinstance(x, (int, float)) else "–"


def _pts(x) -> str:
    return f"{100 * x:.0f}" if isinstance(x, (int, float)) else "–"


def _by_column(figs: dict) -> dict:
    from learner.round_eval import method_column

    return {method_column(k): v for k, v in figs.items() if k != "n"}


def rounds_table(rows: list[dict]):
    """The rounds as a rich Table (also shown by the ``rstar up`` dashboard)."""
    from rich.table import Table

    from learner.round_eval import method_rank

    sets: dict[str, list[str]] = {}  # evaluation set -> method columns: greedy, majority, MCTS
    for r in rows:
        for name, figs in ((r["eval"] or {}).get("accuracy") or {}).get("sets", {}).items():
            labels = sets.setdefault(name, [])
            labels += [k for k in _by_column(figs) if k not in labels]
    for labels in sets.values():
        labels.sort(key=method_rank)
    t = Table(title="rstar rounds", caption="held-out accuracy (%) per set: " + ", ".join(
        f"{name} = {' / '.join(labels)}" for name, labels in sets.items()) if sets else None)
    for col in ("round", "state", "trees", "solved", "SFT ex", "pairs", "PPM acc"):
        t.add_column(col, justify="right")
    for name in sets:
        t.add_column(f"{name} %", justify="right", no_wrap=True)
    t.add_column("policy", no_wrap=True)
    for r in rows:
        ev = r["eval"] or {}
        collect, data = ev.get("collect") or {}, ev.get("data") or {}
        acc = (ev.get("accuracy") or {}).get("sets", {})
        cells = [str(r["round"]), r["state"], str(collect.get("trees", "–")), _pct(collect.get("solve_rate")),
                 str(data.get("sft_examples", "–")), str(data.get("ppm_pairs", "–")), _pct(ev.get("ppm_pairwise_acc"))]
        cells += ["/".join(_pts(_by_column(acc.get(name, {})).get(label)) for label in labels)
                  for name, labels in sets.items()]
        cells.append(r["policy_version"] or "–")
        t.add_row(*cells)
    return t


def rounds_markdown(rows: list[dict]) -> str:
    """The table of ``rounds_table`` as Markdown (evaluation sets as ``greedy / majority / MCTS``)."""
    t = rounds_table(rows)
    head = [c.header for c in t.columns]
    cells = [list(c.cells) for c in t.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" for _ in head) + "|"]
    lines += ["| " + " | ".join(str(col[i]) for col in cells) + " |" for i in range(t.row_count)]
    return "\n".join(lines) + (f"\n\n{t.caption}" if t.caption else "")


def rounds_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON rows."),
               markdown: bool = typer.Option(False, "--markdown", help="Print the table as Markdown."),
               plot: str = typer.Option(None, "--plot", help="Also draw the rounds to this PNG (needs matplotlib)."),
               config: str = ConfigOpt, overrides: list[str] = SetOpt) -> None:
    """Show every round: state, trees, solve rate, data, held-out accuracy, model versions."""
    from store.db import open_store
    from store.queries import list_rounds

    cfg = get_config(config, overrides)
    rows = list_rounds(open_store(cfg.store_url))
    if plot:
        from rstar.rounds_plot import plot_rounds

        try:
            plot_rounds(rows, plot)
        except RuntimeError as e:
            raise typer.BadParameter(str(e), param_hint="--plot") from None
    if as_json:
        typer.echo(json.dumps(rows))
    elif markdown:
        typer.echo(rounds_markdown(rows))
    else:
        from rich.console import Console

        Console().print(rounds_table(rows))


def register(app: typer.Typer) -> None:
    app.command("rounds")(rounds_cmd)
