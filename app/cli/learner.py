"""``rstar learner``: ingest + round controller as one long-running process (``learner.service``).

    rstar learner [--exit-when-done] [--progress] [--set learner.round_quota=100 ...]

Stops cleanly on SIGINT/SIGTERM (training saves its state first); run it again to continue.
"""

from __future__ import annotations

import typer

from app.cli import ConfigOpt, SetOpt, get_config


def learner_cmd(
    exit_when_done: bool = typer.Option(
        False, "--exit-when-done", help="Exit after publishing round learner.max_rounds."
    ),
    progress: bool = typer.Option(False, "--progress", help="Show training progress bars (else log lines)."),
    config: str = ConfigOpt,
    overrides: list[str] = SetOpt,
) -> None:
    """Ingest trees into the store and run training rounds: bootstrap, then self-evolution."""
    cfg = get_config(config, overrides)
    if exit_when_done and not cfg.learner.max_rounds:
        raise typer.BadParameter("needs learner.max_rounds > 0", param_hint="--exit-when-done")
    from learner.service import serve

    serve(cfg, exit_when_done=exit_when_done, progress=progress)


def register(app: typer.Typer) -> None:
    app.command("learner")(learner_cmd)
