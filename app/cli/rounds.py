"""``rstar rounds``: the learner's rounds — state, data, held-out accuracy, models.

    rstar rounds [--json | --markdown] [--levels] [--plot FILE.png [--control-store URL | --control-json FILE]]

From the store's ``rounds`` table (written by ``learner.rounds``), two tables. Rounds: one row per
round with its state, the trees collected and the share of their problems solved, the SFT
examples and PPM pairs selected, the PPM's pairwise accuracy on held-out pairs and the policy
version. Held-out accuracy: one row per evaluated round and set, its size ``n`` and a column per
method (``greedy``, ``majority@k``, ``mcts@k``, ``mcts+ppm@k``) of the models trained on that
round, each ``acc [lo–hi]`` in % with the 95 % Wilson interval (``rstar.stats.wilson``; a figure
stored as a bare accuracy, before the records kept counts, shows without one).

``--markdown`` prints the tables as Markdown (for a README); ``--levels`` adds a table per
evaluation set with curriculum levels: correct/n per level, per round and method. ``--json``
prints the rows (``store.queries.list_rounds``: round, state, quota, times, versions and the full
``eval`` document) each with ``accuracy``: ``{set: {method label: {"n", "correct", "accuracy",
"lo", "hi", "by_level": {level: {"n", "correct"}}}}}`` (``json_rows``; ``n``, ``correct``, ``lo``
and ``hi`` are null for a figure stored as a bare accuracy). ``--plot`` draws accuracy with its
intervals, per-level accuracy and solve rate per round (``app.rounds_plot``, `plot` extra);
``--control-store`` / ``--control-json`` (a saved ``--json`` output) add a control run's greedy
accuracy to it, dashed.
"""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import typer

from app.cli import ConfigOpt, SetOpt, get_config
from rstar.schemas import MethodRecord, RoundEval, level_key


def _pct(x) -> str:
    return f"{x:.1%}" if isinstance(x, (int, float)) else "–"


def interval(rec: MethodRecord | None) -> tuple[float, float] | None:
    """The 95 % Wilson interval of a record, or None when its counts are unknown."""
    from rstar.stats import wilson

    if rec is None or rec.n is None or rec.correct is None:
        return None
    return wilson(rec.correct, rec.n)


def accuracy_cell(rec: MethodRecord | None, set_n: int | None = None) -> str:
    """``52 [46–58]``: accuracy and its 95 % Wilson interval in whole %; ``52`` without counts;
    ``15 [8–26] n=60`` when the method ran on fewer problems than the set has (``eval_sampled_n``)."""
    if rec is None:
        return "–"
    ci = interval(rec)
    acc = f"{100 * rec.accuracy:.0f}"
    cell = acc if ci is None else f"{acc} [{100 * ci[0]:.0f}–{100 * ci[1]:.0f}]"
    return cell + (f" n={rec.n}" if set_n is not None and rec.n not in (None, set_n) else "")


def round_accuracy(row: dict) -> dict[str, dict[str, dict]]:
    """``{set: {label: {"n", "correct", "accuracy", "lo", "hi", "by_level"}}}`` of one round."""
    out: dict[str, dict[str, dict]] = {}
    for name, recs in RoundEval.of(row.get("eval")).records().items():
        for label, rec in recs.items():
            ci = interval(rec)
            out.setdefault(name, {})[label] = {
                "n": rec.n,
                "correct": rec.correct,
                "accuracy": rec.accuracy,
                "lo": round(ci[0], 4) if ci else None,
                "hi": round(ci[1], 4) if ci else None,
                "by_level": msgspec.to_builtins(rec.by_level),
            }
    return out


def json_rows(rows: list[dict]) -> list[dict]:
    """The rows of ``--json``: every field of ``list_rounds`` plus ``accuracy`` (``round_accuracy``)."""
    return [{**r, "accuracy": round_accuracy(r)} for r in rows]


def _methods(rows: list[dict]) -> list[str]:
    """The method labels of every evaluated round and set, in display order."""
    from learner.round_eval import method_rank

    labels = {lb for r in rows for recs in RoundEval.of(r.get("eval")).records().values() for lb in recs}
    return sorted(labels, key=lambda lb: (method_rank(lb), lb))


def _table(title: str, caption: str | None = None):
    """A compact rich Table (no vertical rules, one space between columns): the round tables fit
    an 80-column terminal without cutting a figure."""
    from rich import box
    from rich.table import Table

    return Table(title=title, caption=caption, box=box.SIMPLE_HEAD, padding=0, pad_edge=False, show_edge=False)


def rounds_table(rows: list[dict]):
    """The rounds as a rich Table: state, trees, solve rate, data, PPM accuracy, policy version
    (the one column shortened, with an ellipsis, when the terminal is too narrow)."""
    t = _table("rstar rounds")
    for col in ("round", "state", "trees", "solved", "SFT ex", "pairs", "PPM acc"):
        t.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    t.add_column("policy", no_wrap=True, overflow="ellipsis")
    for r in rows:
        ev = RoundEval.of(r.get("eval"))
        collect, data = ev.collect, ev.data
        t.add_row(
            str(r["round"]),
            r["state"],
            str(collect.trees) if collect else "–",
            _pct(collect.solve_rate if collect else None),
            str(data.sft_examples) if data else "–",
            str(data.ppm_pairs) if data else "–",
            _pct(ev.ppm_pairwise_acc),
            r.get("policy_version") or "–",
        )
    return t


def accuracy_table(rows: list[dict]):
    """Held-out accuracy as a rich Table: a row per evaluated round and set, a column per method,
    each cell ``acc [lo–hi]`` in % (``accuracy_cell``); None when no round has figures."""
    labels = _methods(rows)
    if not labels:
        return None
    bare = False
    t = _table("held-out accuracy", "accuracy % [95 % Wilson interval]")
    for col in ("round", "set", "n", *labels):
        t.add_column(col, justify="right" if col != "set" else "left", no_wrap=True)
    for r in rows:
        ev = RoundEval.of(r.get("eval"))
        sizes = ev.set_sizes()
        for name, recs in ev.records().items():
            bare = bare or any(rec.n is None for rec in recs.values())
            t.add_row(
                str(r["round"]),
                name,
                str(sizes.get(name, "–")),
                *(accuracy_cell(recs.get(lb), sizes.get(name)) for lb in labels),
            )
    if bare:
        t.caption += "; a figure without an interval was stored without its counts"
    return t


def levels_tables(rows: list[dict]) -> list:
    """Per evaluation set with curriculum levels, a rich Table: a row per round and method,
    ``correct/n`` per level (``–`` where the round has no figure for it)."""
    from learner.round_eval import method_rank

    records = [(r["round"], RoundEval.of(r.get("eval")).records()) for r in rows]
    levels: dict[str, list[str]] = {}
    for _, sets in records:
        for name, recs in sets.items():
            for rec in recs.values():
                have = levels.setdefault(name, [])
                have += [lv for lv in rec.by_level if lv not in have]
    out = []
    for name, lvs in levels.items():
        if not lvs:
            continue
        lvs.sort(key=level_key)
        t = _table(f"held-out {name} by level", "correct / n per curriculum level")
        for col in ("round", "method", *(f"L{lv}" for lv in lvs), "all"):
            t.add_column(col, justify="right", no_wrap=True)
        for round_no, sets in records:
            recs = sets.get(name, {})
            for label in sorted(recs, key=lambda lb: (method_rank(lb), lb)):
                rec = recs[label]
                if not rec.by_level:
                    continue
                cells = [
                    f"{rec.by_level[lv].correct}/{rec.by_level[lv].n}" if lv in rec.by_level else "–" for lv in lvs
                ]
                t.add_row(str(round_no), label, *cells, f"{rec.correct}/{rec.n}")
        out.append(t)
    return out


def table_markdown(t) -> str:
    """A rich Table as a Markdown table (header line breaks become spaces), caption below."""
    head = [str(c.header).replace("\n", " ") for c in t.columns]
    cells = [list(c.cells) for c in t.columns]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(":---" if c.justify == "left" else "---:" for c in t.columns) + "|",
    ]
    lines += ["| " + " | ".join(str(col[i]) for col in cells) + " |" for i in range(t.row_count)]
    return "\n".join(lines) + (f"\n\n{t.caption}" if t.caption else "")


def report_tables(rows: list[dict], levels: bool = False) -> list:
    """The tables ``rstar rounds`` prints: rounds, held-out accuracy (once a round has figures),
    and with ``levels`` the ``levels_tables``."""
    acc = accuracy_table(rows)
    return [rounds_table(rows)] + ([acc] if acc is not None else []) + (levels_tables(rows) if levels else [])


def rounds_markdown(rows: list[dict], levels: bool = False) -> str:
    """The tables of ``report_tables`` as Markdown, each after its title in bold (but the first)."""
    tables = report_tables(rows, levels)
    return "\n\n".join([table_markdown(tables[0])] + [f"**{t.title}**\n\n" + table_markdown(t) for t in tables[1:]])


def load_rows_json(path: str | Path) -> list[dict]:
    """Rows saved from ``rstar rounds --json``; ValueError when the file is not such a list."""
    try:
        rows = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: {e}") from None
    if not isinstance(rows, list) or not all(isinstance(r, dict) and isinstance(r.get("round"), int) for r in rows):
        raise ValueError(f"{path}: not a list of rounds as `rstar rounds --json` prints them")
    return rows


def rounds_cmd(
    as_json: bool = typer.Option(False, "--json", help="Print JSON rows (with accuracy records)."),
    markdown: bool = typer.Option(False, "--markdown", help="Print the tables as Markdown."),
    levels: bool = typer.Option(False, "--levels", help="Also show accuracy per curriculum level."),
    plot: str = typer.Option(None, "--plot", help="Also draw the rounds to this PNG (needs matplotlib)."),
    control_store: str = typer.Option(
        None, "--control-store", help="With --plot: a control run's store URL; its greedy line is drawn dashed."
    ),
    control_json: str = typer.Option(
        None, "--control-json", help="With --plot: a control run's saved `rstar rounds --json` output."
    ),
    config: str = ConfigOpt,
    overrides: list[str] = SetOpt,
) -> None:
    """Show every round: state, trees, solve rate, data, held-out accuracy, model versions."""
    from store.db import open_store
    from store.queries import list_rounds

    if (control_store or control_json) and not plot:
        raise typer.BadParameter(
            "a control run is only drawn on a plot: add --plot FILE.png", param_hint="--control-store/--control-json"
        )
    if control_store and control_json:
        raise typer.BadParameter("give one control run", param_hint="--control-store/--control-json")
    cfg = get_config(config, overrides)
    rows = list_rounds(open_store(cfg.store_url))
    if plot:
        from app.rounds_plot import plot_rounds

        control = None
        if control_json:
            try:
                control = load_rows_json(control_json)
            except ValueError as e:
                raise typer.BadParameter(str(e), param_hint="--control-json") from None
        elif control_store:
            control = list_rounds(open_store(control_store))
        if control is not None and not control:
            raise typer.BadParameter("the control run has no rounds", param_hint="--control-store/--control-json")
        try:
            plot_rounds(rows, plot, control_rows=control)
        except RuntimeError as e:
            raise typer.BadParameter(str(e), param_hint="--plot") from None
    if as_json:
        typer.echo(json.dumps(json_rows(rows)))
    elif markdown:
        typer.echo(rounds_markdown(rows, levels=levels))
    else:
        from rich.console import Console

        console = Console()
        for t in report_tables(rows, levels):
            console.print(t)


def register(app: typer.Typer) -> None:
    app.command("rounds")(rounds_cmd)
