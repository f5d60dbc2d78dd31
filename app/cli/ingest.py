"""``rstar ingest``: run the tree ingest consumer as a process of its own (TREES → SQL store)."""

from __future__ import annotations

import json

import typer

from app.cli import ConfigOpt, SetOpt, get_config


def ingest(
    config: str = ConfigOpt,
    overrides: list[str] = SetOpt,
    batch_size: int = typer.Option(256, min=1, help="Trees per fetch and per SQL transaction."),
    as_json: bool = typer.Option(False, "--json", help="Print the final counters as JSON."),
) -> None:
    """Consume finished trees into the store until SIGINT/SIGTERM; ack only after commit."""
    from learner.ingest import serve

    cfg = get_config(config, overrides)
    stats = serve(cfg, batch_size)
    gauges = stats.gauges()
    if as_json:
        typer.echo(json.dumps(gauges))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("counter", "value", title="ingest")
    for k, v in gauges.items():
        table.add_row(k.removeprefix("ingest/"), f"{v:,.1f}" if k.endswith("_s") else f"{v:,.0f}")
    Console().print(table)


def register(app: typer.Typer) -> None:
    app.command("ingest")(ingest)
