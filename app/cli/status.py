"""``rstar status``: the current model pointer and the live actor fleet (from heartbeats).

An actor is listed while its heartbeat is younger than ``broker.heartbeat_ttl_s``. ``stale`` says
whether it serves another policy than the pointer names (downloading, or it refused the pointer).
"""

from __future__ import annotations

import json
import time

import typer

from app.cli import ConfigOpt, SetOpt, get_config


async def _read(cfg) -> dict:
    from actors.heartbeat import read_fleet
    from broker.checkpoints import get_pointer
    from broker.client import open_broker

    async with open_broker(cfg, "rstar-status") as b:
        pointer = await get_pointer(b)
        fleet = await read_fleet(b)
    now = time.time()
    current = pointer.policy.version if pointer else None
    return {
        "pointer": None
        if pointer is None
        else {
            "round": pointer.round,
            "policy": pointer.policy.version,
            "ppm": pointer.ppm.version if pointer.ppm else None,
        },
        "actors": [
            {
                "actor_id": h.actor_id,
                "host": h.host,
                "backend": h.backend,
                "policy_version": h.policy_version,
                "ppm_version": h.ppm_version,
                "stale": current is not None and h.policy_version != current,
                "trees_per_min": h.trees_per_min,
                "tokens_per_s": h.tokens_per_s,
                "busy_fraction": h.busy_fraction,
                "trees_in_flight": h.trees_in_flight,
                "age_s": round(now - h.at, 1),
            }
            for h in fleet
        ],
    }


def status(
    config: str = ConfigOpt,
    overrides: list[str] = SetOpt,
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show the current policy+PPM pointer and every live actor."""
    import asyncio

    cfg = get_config(config, overrides)
    out = asyncio.run(_read(cfg))
    if as_json:
        typer.echo(json.dumps(out))
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    p = out["pointer"]
    console.print(
        "model pointer: "
        + (
            "none (actors serve their configured models)"
            if p is None
            else f"round {p['round']}, policy {p['policy']}, PPM {p['ppm'] or '-'}"
        )
    )
    table = Table(
        "actor",
        "host",
        "backend",
        "policy",
        "PPM",
        "trees/min",
        "tok/s",
        "busy",
        "in flight",
        "seen",
        title=f"{len(out['actors'])} actors",
    )
    for a in out["actors"]:
        policy = a["policy_version"] + (" [yellow](stale)[/]" if a["stale"] else "")
        table.add_row(
            a["actor_id"],
            a["host"],
            a["backend"],
            policy,
            a["ppm_version"] or "-",
            f"{a['trees_per_min']:.1f}",
            f"{a['tokens_per_s']:.0f}",
            f"{a['busy_fraction']:.0%}",
            str(a["trees_in_flight"]),
            f"{a['age_s']:.0f}s ago",
        )
    console.print(table)


def register(app: typer.Typer) -> None:
    app.command("status")(status)
