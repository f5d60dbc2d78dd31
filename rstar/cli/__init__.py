"""The ``rstar`` command. Each module in this package adds its commands with ``register(app)``.

Command modules import heavy libraries (torch, transformers, sqlalchemy) inside the command
functions, so ``rstar --help`` stays instant.
"""

from __future__ import annotations

import importlib
import pkgutil

import typer

from rstar.config import Config, ConfigError, load_config

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  help="rstar: self-evolving math reasoning with small language models.")

ConfigOpt = typer.Option(None, "--config", "-c", help="TOML config file (default: $RSTAR_CONFIG).")
SetOpt = typer.Option(None, "--set", help="Override a config value: section.field=value (repeatable).")


def get_config(config: str | None, overrides: list[str] | None) -> Config:
    """Load the config for a command, turning a bad config into a clean CLI error."""
    try:
        return load_config(config, overrides)
    except ConfigError as e:
        raise typer.BadParameter(str(e), param_hint="config") from None


def _register_all() -> None:
    for mod in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{__name__}.{mod.name}")
        module.register(app)


_register_all()


def main() -> None:
    from rstar.supervisor import exit_with_parent

    exit_with_parent()
    app()
