"""``rstar broker up`` runs the embedded NATS server on its own; ``rstar broker dlq`` lists poison messages
and replays them (``--replay SEQ``, ``--replay-all``)."""

from __future__ import annotations

import json

import typer

from app.cli import ConfigOpt, SetOpt, get_config


def up(config: str = ConfigOpt, overrides: list[str] = SetOpt) -> None:
    """Run the embedded nats-server (store under data_dir/nats) until Ctrl-C, with rstar's streams set up."""
    import asyncio
    import signal
    import time

    from broker.client import connect
    from broker.server import nats_listening, start_server
    from broker.streams import ensure_broker

    cfg = get_config(config, overrides)
    b = cfg.broker
    if b.url:
        raise typer.BadParameter(f"broker.url is set ({b.url}): that server is not ours to start", param_hint="config")
    if nats_listening(b.embedded_host, b.embedded_port):
        typer.echo(f"a NATS server already listens on {b.embedded_host}:{b.embedded_port}", err=True)
        raise typer.Exit(1)
    stopping = []
    for sig in (signal.SIGINT, signal.SIGTERM):  # before the server exists, so it is always stopped
        signal.signal(sig, lambda *_: stopping.append(True))
    srv = start_server(cfg.data_dir / "nats", b.embedded_port, b.embedded_host, b.max_payload)

    async def setup():
        nc = await connect(srv.url, "rstar-broker-up", b)
        await ensure_broker(nc.jetstream(), b)
        await nc.close()

    try:
        asyncio.run(setup())
        typer.echo(f"NATS JetStream at {srv.url} (store {srv.store_dir}); Ctrl-C stops it")
        while not stopping and srv.running():
            time.sleep(0.2)
    finally:
        srv.stop()
    if not stopping:
        typer.echo(f"nats-server exited with {srv.proc.returncode}; log in {srv.store_dir / 'run'}", err=True)
        raise typer.Exit(1)


def dlq(
    limit: int = typer.Option(50, min=1, help="Show at most this many, newest last."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per line."),
    replay_seqs: list[int] = typer.Option(
        None, "--replay", help="Publish this dead letter back to its original subject and delete it (repeatable)."
    ),
    replay_all: bool = typer.Option(False, "--replay-all", help="Replay every dead letter."),
    config: str = ConfigOpt,
    overrides: list[str] = SetOpt,
) -> None:
    """List dead-lettered messages with their errors; replay them once the cause is fixed."""
    import asyncio

    from broker.client import open_broker
    from broker.dead_letters import list_dead_letters, replay

    cfg = get_config(config, overrides)
    if replay_seqs and replay_all:
        raise typer.BadParameter("give --replay SEQ or --replay-all, not both", param_hint="--replay")

    async def run():
        async with open_broker(cfg, "rstar-broker-dlq") as br:
            if replay_seqs or replay_all:
                return await replay(br, None if replay_all else replay_seqs)
            return await list_dead_letters(br, limit)

    try:
        result = asyncio.run(run())
    except LookupError as e:
        raise typer.BadParameter(str(e.args[0]), param_hint="--replay") from None
    if replay_seqs or replay_all:
        for seq, subject in result:
            typer.echo(
                json.dumps({"replayed": seq, "subject": subject}) if as_json else f"replayed #{seq} to {subject}"
            )
        if not as_json:
            typer.echo(f"{len(result)} dead letter(s) replayed")
        return
    total, rows = result
    if as_json:
        for r in rows:
            typer.echo(json.dumps(r))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("seq", "subject", "from", "bytes", "error", title=f"dead letters ({total:,} in all)")
    for r in rows:
        table.add_row(
            str(r["seq"]),
            r["subject"],
            f"{r.get('Rstar-Dlq-Stream', '?')} #{r.get('Rstar-Dlq-Seq', '?')}",
            f"{r['bytes']:,}",
            r.get("Rstar-Error", ""),
        )
    Console().print(table)


def register(app: typer.Typer) -> None:
    group = typer.Typer(no_args_is_help=True, help="The NATS JetStream broker.")
    app.add_typer(group, name="broker")
    group.command("up")(up)
    group.command("dlq")(dlq)
