"""``rstar actor``: run one actor process (problems in, search trees out, models swapped live)."""

from __future__ import annotations

import json

import typer

from app.cli import ConfigOpt, SetOpt, get_config


def actor(
    config: str = ConfigOpt,
    overrides: list[str] = SetOpt,
    actor_id: str = typer.Option(None, "--id", help="Actor id (default: actor.id, else host-pid)."),
    as_json: bool = typer.Option(False, "--json", help="Print the final report as JSON."),
) -> None:
    """Search problems from PROBLEMS until SIGINT/SIGTERM, then finish or return in-flight ones."""
    import os

    from rstar.stopping import actor_stop_bound_s, run_until_signal

    cfg = get_config(config, overrides)
    if cfg.actor.nice:
        os.nice(cfg.actor.nice)  # before any thread or sandbox worker exists: they inherit it

    from actors.service import run_actor

    if actor_id:
        cfg.actor.id = actor_id

    report = run_until_signal(lambda stop: run_actor(cfg, stop), deadline_s=actor_stop_bound_s(cfg))
    summary = {
        "actor_id": report.actor_id,
        "published": report.published,
        "failed": report.failed,
        "returned": report.returned,
        "swaps": sum(e.swapped_at is not None for e in report.swaps),
        "refused": sum(e.refused is not None for e in report.swaps),
        "tokens_per_s": report.worker.get("tokens_per_s", 0.0),
        "busy_fraction": report.worker.get("busy_fraction", 0.0),
    }
    if as_json:
        typer.echo(json.dumps(summary))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("", "value", title=f"actor {report.actor_id}")
    for k, v in summary.items():
        if k != "actor_id":
            table.add_row(k, str(v))
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("actor")(actor)
