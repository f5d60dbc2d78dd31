"""``rstar store …``: look into the trajectory store from the terminal, and export trajectories.

    rstar store stats [--json]
    rstar store trees [--round R] [--solved|--unsolved] [--problem ID] [--limit N] [--offset N] [--json]
    rstar store show TREE_ID [--full] [--json]
    rstar store export --out FILE.jsonl [--round R] [--solved|--unsolved] [--problem ID] [--only-correct]
    rstar store migrate

The store URL comes from the config (``--config``, ``--set store.url=…``, ``RSTAR_STORE__URL``);
every command migrates the store to head first, as every process that opens it does.
``export`` writes to a temporary file beside ``--out`` and renames it at the end, so a killed
export never leaves a half-written file under the final name.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import typer

from app.cli import ConfigOpt, SetOpt, get_config

RoundOpt = typer.Option(None, "--round", "-r", help="Only trees of this round.")
SolvedOpt = typer.Option(None, "--solved/--unsolved", help="Only solved (or unsolved) trees.")
ProblemOpt = typer.Option(None, "--problem", "-p", help="Only trees of this problem id.")
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of tables.")


def _engine(config: str | None, overrides: list[str] | None):
    from sqlalchemy.exc import OperationalError

    from store.db import open_store

    cfg = get_config(config, overrides)
    try:
        return open_store(cfg.store_url)
    except OperationalError as e:
        raise typer.BadParameter(f"cannot open the store: {e.orig}", param_hint="store.url") from None


def _console():
    from rich.console import Console

    return Console()


def stats_cmd(config: str = ConfigOpt, overrides: list[str] = SetOpt, as_json: bool = JsonOpt) -> None:
    """Counts of problems, trees, nodes and solved, in total, per round and per policy version."""
    from rich.table import Table

    from store.queries import stats

    s = stats(_engine(config, overrides))
    if as_json:
        typer.echo(json.dumps(s))
        return
    con = _console()
    con.print(
        f"[bold]{s['problems']}[/] problems ({s['problems_searched']} searched, {s['solved_problems']} solved) · "
        f"[bold]{s['trees']}[/] trees ({s['solved_trees']} solved) · [bold]{s['nodes']}[/] nodes"
    )
    for title, key, rows in (
        ("by round", "round", s["by_round"]),
        ("by policy version", "policy_version", s["by_policy_version"]),
    ):
        if not rows:
            continue
        t = Table(title=title)
        for col in (key, "trees", "solved_trees", "nodes", "problems_searched", "solved_problems"):
            t.add_column(col, justify="right" if col != "policy_version" else "left")
        for r in rows:
            t.add_row(
                *(str(r[c]) for c in (key, "trees", "solved_trees", "nodes", "problems_searched", "solved_problems"))
            )
        con.print(t)


def trees_cmd(
    config: str = ConfigOpt,
    overrides: list[str] = SetOpt,
    round_no: int | None = RoundOpt,
    solved: bool | None = SolvedOpt,
    problem: str | None = ProblemOpt,
    limit: int = typer.Option(50, "--limit", "-n", min=1, help="Rows to show."),
    offset: int = typer.Option(0, "--offset", min=0, help="Rows to skip."),
    as_json: bool = JsonOpt,
) -> None:
    """List trees, newest first."""
    from rich.table import Table

    from store.queries import MAX_LIMIT, list_trees

    rows, total = list_trees(
        _engine(config, overrides),
        round_no=round_no,
        solved=solved,
        problem_id=problem,
        limit=min(limit, MAX_LIMIT),
        offset=offset,
    )
    if as_json:
        typer.echo(json.dumps({"total": total, "items": rows}))
        return
    from rich import box

    t = Table(title=f"{len(rows)} of {total} trees", box=box.SIMPLE_HEAD)
    # The id is never cut (``show`` needs all of it); the question wraps into what is left.
    t.add_column("id", no_wrap=True, min_width=max((len(r["id"]) for r in rows), default=2))
    for col in ("round", "solved", "nodes", "depth"):
        t.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    t.add_column("policy", overflow="ellipsis", no_wrap=True, max_width=12)
    t.add_column("finished", no_wrap=True, min_width=11)
    t.add_column("question", min_width=12)
    for r in rows:
        t.add_row(
            r["id"],
            str(r["round"]),
            "[green]✓[/]" if r["solved"] else "[red]✗[/]",
            str(r["n_nodes"]),
            str(r["max_depth"]),
            r["policy_version"],
            r["finished_at"][5:16].replace("T", " "),
            r["question"],
        )
    _console().print(t)


def _first_comment(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and ln.strip() != "<end_of_step>"]
    for ln in lines:
        if ln.startswith("#"):
            return ln.lstrip("#").strip()
    return lines[0] if lines else ""


def _label(n: dict, full: bool):
    from rich.console import Group, RenderableType
    from rich.syntax import Syntax
    from rich.text import Text

    q_style = "green" if n["q"] > 0 else "red" if n["q"] < 0 else "yellow"
    label = Text(f"#{n['idx']} ", style="bold")
    label.append(f"Q {n['q']:+.2f}", style=q_style)
    ppm = "–" if n["ppm_score"] is None else f"{n['ppm_score']:+.2f}"
    label.append(f"  N {n['visits']}  PPM {ppm}")
    if n["terminal"]:
        mark = {True: ("  ✓", "bold green"), False: ("  ✗", "bold red")}.get(n["correct"], ("  ■", "bold"))
        label.append(mark[0], style=mark[1])
        label.append(f" answer={n['answer']}", style="dim")
    if n["idx"] == 0:
        return label
    if not full:
        label.append(f"  {_first_comment(n['text'])}", style="italic")
        return label
    parts: list[RenderableType] = [label, Syntax(n["text"], "python", theme="ansi_dark", word_wrap=True)]
    if n["code_output"]:
        parts.append(Text(f"→ {n['code_output']}", style="cyan"))
    return Group(*parts)


def show_cmd(
    tree_id: str = typer.Argument(..., help="The tree id."),
    config: str = ConfigOpt,
    overrides: list[str] = SetOpt,
    full: bool = typer.Option(False, "--full", help="Full step text and output."),
    as_json: bool = JsonOpt,
) -> None:
    """Draw one tree: per node idx, Q, visits, PPM score, terminal/correct marks and its step."""
    from rich.tree import Tree

    from store.queries import NotFoundError, get_tree

    try:
        tree, nodes = get_tree(_engine(config, overrides), tree_id)
    except NotFoundError as e:
        raise typer.BadParameter(str(e), param_hint="TREE_ID") from None
    if as_json:
        typer.echo(json.dumps({"tree": tree, "nodes": nodes}))
        return
    title = (
        f"[bold]{tree['question']}[/]\ntree {tree['id']} · round {tree['round']} · {tree['source']} · "
        f"policy {tree['policy_version']} · {'[green]solved[/]' if tree['solved'] else '[red]unsolved[/]'} · "
        f"best {tree['best_answer']} · gold {tree['gold']}"
    )
    root = Tree(title)
    branches: dict[int, Tree] = {}
    for n in sorted(nodes, key=lambda n: n["depth"]):  # parents before children
        parent = branches.get(n["parent_idx"], root)
        branches[n["idx"]] = parent.add(_label(n, full))
    _console().print(root)


def export_cmd(
    out: Path = typer.Option(..., "--out", "-o", help="JSONL file to write."),
    config: str = ConfigOpt,
    overrides: list[str] = SetOpt,
    round_no: int | None = RoundOpt,
    solved: bool | None = SolvedOpt,
    problem: str | None = ProblemOpt,
    only_correct: bool = typer.Option(False, "--only-correct", help="Only trajectories with a correct answer."),
) -> None:
    """Write root→leaf trajectories (question, gold, steps, q and ppm per step, answer, correct) as JSONL."""
    from rich.progress import Progress

    from store.queries import TreeFilter, count_trees, trajectories

    engine = _engine(config, overrides)
    filters = TreeFilter(round=round_no, solved=solved, problem_id=problem)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    written = 0
    try:
        with tmp.open("w") as f, Progress(transient=True) as progress:
            task = progress.add_task("exporting trees", total=count_trees(engine, filters))
            for traj in trajectories(
                engine, filters, only_correct=only_correct, on_chunk=lambda n: progress.advance(task, n)
            ):
                f.write(json.dumps(traj) + "\n")
                written += 1
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    _console().print(f"wrote {written} trajectories to {out}")


def migrate_cmd(config: str = ConfigOpt, overrides: list[str] = SetOpt) -> None:
    """Bring the store's schema to the newest migration (every command does this anyway)."""
    from store.db import current_revision

    engine = _engine(config, overrides)
    _console().print(f"{engine.url.render_as_string(hide_password=True)} at revision {current_revision(engine)}")


def register(app: typer.Typer) -> None:
    group = typer.Typer(no_args_is_help=True, help="Query the trajectory store and export trajectories.")
    app.add_typer(group, name="store")
    group.command("stats")(stats_cmd)
    group.command("trees")(trees_cmd)
    group.command("show")(show_cmd)
    group.command("export")(export_cmd)
    group.command("migrate")(migrate_cmd)
