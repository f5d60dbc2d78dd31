"""``rstar rounds``: the learner's rounds — state, data, held-out accuracy, models.

    rstar rounds [--json]

One row per round from the store's ``rounds`` table (written by ``learner.rounds``): its state,
the trees collected and the share of their problems solved, the SFT examples and PPM pairs
selected, the PPM's pairwise accuracy on held-out pairs, held-out accuracy per evaluation set as
``greedy / majority@k / MCTS(+PPM)@k`` of the models trained on that round, and the policy
version. ``--json`` prints the rows with their full ``eval`` documents (PPM version, training
reports, bootstrap figures).
"""

from __future__ import annotations

import json

import typer

from rstar.cli import ConfigOpt, SetOpt, get_config


def _pct(x) -> str:
    return f"{x:.1%}" if isinstance(x, (int, float)) else "–"


def _pts(x) -> str:
    return f"{100 * x:.0f}" if isinstance(x, (int, float)) else "–"


def rounds_table(rows: list[dict]):
    """The rounds as a rich Table (also shown by the ``rstar up`` dashboard)."""
    from rich.table import Table

    sets: dict[str, list[str]] = {}  # evaluation set -> method labels, in first-seen order
    for r in rows:
        for name, figs in ((r["eval"] or {}).get("accuracy") or {}).get("sets", {}).items():
            labels = sets.setdefault(name, [])
            labels += [k for k in figs if k != "n" and k not in labels]
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
        cells += ["/".join(_pts(acc.get(name, {}).get(label)) for label in labels) for name, labels in sets.items()]
        cells.append(r["policy_version"] or "–")
        t.add_row(*cells)
    return t


def rounds_cmd(as_json: bool = typer.Option(False, "--json", help="Print JSON rows."),
               config: str = ConfigOpt, overrides: list[str] = SetOpt) -> None:
    """Show every round: state, trees, solve rate, data, held-out accuracy, model versions."""
    from store.db import open_store
    from store.queries import list_rounds

    cfg = get_config(config, overrides)
    rows = list_rounds(open_store(cfg.store_url))
    if as_json:
        typer.echo(json.dumps(rows))
        return
    from rich.console import Console

    Console().print(rounds_table(rows))


def register(app: typer.Typer) -> None:
    app.command("rounds")(rounds_cmd)
