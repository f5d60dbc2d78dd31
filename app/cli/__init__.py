"""The ``rstar`` command. Each module in this package is one command (or one group of them):
its command functions are plain module-level functions, and ``register(app)`` adds them the same
way everywhere — ``app.command("name")(fn)``, or for a group ``group = typer.Typer(...)``,
``app.add_typer(group, name=...)``, ``group.command("name")(fn)``.

Command modules import heavy libraries (torch, transformers, sqlalchemy) inside the command
functions, so ``rstar --help`` stays instant.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

from rstar.config import Config, ConfigError, load_config

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="rstar: self-evolving math reasoning with small language models.",
)

ConfigOpt = typer.Option(None, "--config", "-c", help="TOML config file (default: $RSTAR_CONFIG).")
SetOpt = typer.Option(None, "--set", help="Override a config value: section.field=value (repeatable).")


def get_config(config: str | None, overrides: list[str] | None) -> Config:
    """Load the config for a command, turning a bad config into a clean CLI error."""
    try:
        return load_config(config, overrides)
    except ConfigError as e:
        raise typer.BadParameter(str(e), param_hint="config") from None


RoundOpt = typer.Option(
    None,
    "--round",
    help="Use round R's trained policy and PPM (data_dir/learner/round-R), "
    "with the settings the learner evaluated them with (the run's data_dir/run/config.json).",
)
PolicyOpt = typer.Option(None, "--policy", help="Use this policy directory (no few-shot prompt).")
PPMOpt = typer.Option(None, "--ppm", help="Use this PPM directory (PPM-augmented search).")


def get_model_config(
    config: str | None, overrides: list[str] | None, round_no: int | None, policy: str | None, ppm: str | None
) -> Config:
    """The config of a command that can run a trained round (``--round``) or given models.

    With ``--round R`` and no ``--config``, the run's resolved config (``data_dir/run/config.json``,
    written by ``rstar up``) is the base, so the search runs as the learner's evaluation did; the
    round's policy and, when it has one, its PPM are used without few-shot examples.
    """
    cfg = get_config(config, overrides)
    if round_no is None and policy is None and ppm is None:
        return cfg
    from learner.round_eval import eval_config
    from learner.state import complete, round_dir

    if round_no is not None:
        if policy is not None:
            raise typer.BadParameter("give --round or --policy, not both", param_hint="--round")
        run_cfg = cfg.data_dir / "run" / "config.json"
        if config is None and run_cfg.is_file():
            cfg = get_config(str(run_cfg), overrides)
        d = round_dir(cfg, round_no)
        if not complete(d / "policy"):
            raise typer.BadParameter(
                f"round {round_no} has no complete policy in {d / 'policy'} (data_dir = {cfg.data_dir})",
                param_hint="--round",
            )
        policy = str(d / "policy")
        if ppm is None and complete(d / "ppm"):
            ppm = str(d / "ppm")
    from pathlib import Path

    return eval_config(cfg, Path(policy) if policy else Path(cfg.model.policy), Path(ppm) if ppm else None)


def _register_all() -> None:
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{mod.name}")
        module.register(app)


_register_all()


def main() -> None:
    """Run the command; one that ran a service (``rstar.stopping``) ends with ``exit_now``: its
    leftover threads are not joined nor the interpreter torn down, so a stop stays bounded."""
    import sys
    import traceback

    from app.supervisor import exit_with_parent
    from rstar import stopping

    exit_with_parent()
    try:
        app()
    except SystemExit as e:
        code = e.code
    except BaseException:
        if not stopping.served():
            raise
        traceback.print_exc()
        code = 1
    else:  # pragma: no cover - typer's standalone mode always ends in SystemExit
        code = 0
    if not stopping.served():
        sys.exit(code)
    if isinstance(code, str):
        print(code, file=sys.stderr)
        code = 1
    stopping.exit_now(code or 0)
