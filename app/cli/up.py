"""``rstar up``: start everything on this machine and watch it learn (see ``app.up``)."""

from __future__ import annotations

import re
import sys

import typer

from app.cli import ConfigOpt, SetOpt


def parse_duration(text: str | None) -> float:
    """``90``, ``90s``, ``15m``, ``2h``, ``1h30m`` → seconds."""
    if not text:
        return 0.0
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s?)?", text.strip())
    if not parts or not any(parts.groups()):
        raise typer.BadParameter(f"{text!r} is not a duration like 90s, 15m, 2h", param_hint="--duration")
    h, m, s = (float(x) if x else 0.0 for x in parts.groups())
    return h * 3600 + m * 60 + s


def up(
    preset: str = typer.Option(None, help="Named preset under app/presets (quick, learning)."),
    actors: int = typer.Option(1, min=0, help="Actor processes (one per GPU; one fits 2 CPU cores)."),
    dataset: str = typer.Option(
        None,
        help="Problem pool to queue: `rstar eval --dataset` names, joined by + to mix "
        "(held-out evaluation problems and the teacher's are left out, and counted); "
        "default: the config's learner.pool (synthetic).",
    ),
    problems: str = typer.Option(None, "--problems", help="Queue problems from this JSONL file instead."),
    limit: int = typer.Option(None, help="Queue at most this many problems."),
    include_teacher: bool = typer.Option(
        False,
        "--include-teacher",
        help="Queue the teacher's demonstrated problems too (sets "
        "learner.pool_include_teacher; held-out problems are never queued).",
    ),
    rounds: int = typer.Option(
        0, help="Stop once this round is published, evaluated and served by an actor (0: run until Ctrl-C)."
    ),
    duration: str = typer.Option(None, help="Stop after this long, e.g. 15m or 2h."),
    no_api: bool = typer.Option(False, "--no-api", help="Do not start the HTTP API."),
    detach: bool = typer.Option(
        False, "--detach", help="Run in the background (log: data_dir/run/up.log); `rstar down` stops it."
    ),
    config: str = ConfigOpt,
    overrides: list[str] = SetOpt,
) -> None:
    """Run broker, store, learner, actors and API as processes, with a live dashboard."""
    from app.up import UpOptions, preset_path, run_up
    from rstar.config import ConfigError, load_config

    if include_teacher:  # in the run's config, so the learner's re-queue follows it too
        overrides = [*(overrides or []), "learner.pool_include_teacher=true"]
    try:
        cfg = load_config(config, overrides, preset=preset_path(preset) if preset else None)
    except (ConfigError, ValueError) as e:
        raise typer.BadParameter(str(e)) from None
    if detach:
        from app.background import BackgroundError, start_detached

        run_dir = (cfg.data_dir / "run").resolve()
        try:
            pid = start_detached([a for a in sys.argv[1:] if a != "--detach"], run_dir)
        except BackgroundError as e:
            raise typer.BadParameter(str(e), param_hint="--detach") from None
        typer.echo(f"rstar up runs in the background (pid {pid}); log: {run_dir / 'up.log'}; stop it: rstar down")
        return
    opts = UpOptions(
        actors=actors,
        dataset=None if problems else (dataset or cfg.learner.pool),
        problems_file=problems,
        limit=limit,
        rounds=rounds,
        duration_s=parse_duration(duration),
        api=not no_api,
    )
    run_up(cfg, opts, config, overrides or [])


def down(
    timeout: float = typer.Option(120.0, "--timeout", min=0, help="Seconds to wait for the run to stop."),
    force: bool = typer.Option(False, "--force", help="Kill the run and its processes if they have not stopped."),
    config: str = ConfigOpt,
    overrides: list[str] = SetOpt,
) -> None:
    """Stop the run `rstar up --detach` started for this data_dir (its processes finish their work first)."""
    from app.background import BackgroundError, stop_detached
    from app.cli import get_config

    run_dir = (get_config(config, overrides).data_dir / "run").resolve()
    try:
        res = stop_detached(run_dir, timeout, force)
    except BackgroundError as e:
        typer.echo(str(e), err=True)
        raise typer.Exit(1) from None
    if not res["stopped"]:
        typer.echo(
            f"rstar up (pid {res['pid']}) still runs after {res['seconds']} s: `rstar down --force` kills it", err=True
        )
        raise typer.Exit(1)
    how = "killed" if res["killed"] else "stopped"
    typer.echo(f"rstar up (pid {res['pid']}) {how} after {res['seconds']} s")


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)
