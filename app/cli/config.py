"""``rstar config show``: the resolved config, where each value came from, and what it does.

    rstar config show                       # every field: value and source
    rstar config show --doc                 # ... and each field's documentation
    rstar config show --preset nano --set train.steps=300 --json

A value's source is the last layer that set it, lowest first: ``default`` < ``preset NAME`` <
``file PATH`` (``--config`` or ``$RSTAR_CONFIG``) < ``env`` (``RSTAR_<SECTION>__<FIELD>``) <
``--set``. A bad value or name is refused with the same message every command gives. Secrets
are not printed: ``api.token`` shows as ``***`` when set, and a password inside a URL
(``postgresql://user:***@host/db``) is hidden.
"""

from __future__ import annotations

import json
import re

import typer

from app.cli import ConfigOpt, SetOpt

SECRET_FIELDS = {"api.token"}
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


def shown(key: str, value):
    """``value`` as it may be printed: a secret field masked, a URL's password hidden."""
    if key in SECRET_FIELDS and value is not None:
        return "***"
    return _URL_PASSWORD.sub(r"\1***@", value) if isinstance(value, str) else value


def config_rows(preset: str | None, config: str | None, overrides: list[str] | None) -> list[dict]:
    """One row per field: ``key`` (``section.field``), ``value`` (JSON-able), ``source``, ``doc``."""
    from pydantic import BaseModel

    from app.up import preset_path
    from rstar.config import SECTIONS, Config, ConfigError, config_layers, load_config, value_sources

    try:
        path = preset_path(preset) if preset else None
        cfg = load_config(config, overrides, preset=path)
        sources = value_sources(config_layers(config, overrides, preset=path))
    except (ConfigError, ValueError) as e:
        raise typer.BadParameter(str(e), param_hint="config") from None
    dumped = cfg.model_dump(mode="json")
    rows = []
    for name, field in Config.model_fields.items():
        section, sub = name in SECTIONS, field.annotation
        if section and isinstance(sub, type) and issubclass(sub, BaseModel):  # a section: what SECTIONS holds
            docs = [(f"{name}.{k}", f.description) for k, f in sub.model_fields.items()]
        else:
            docs = [(name, field.description)]
        for key, doc in docs:
            value = dumped[name][key.split(".", 1)[1]] if section else dumped[name]
            rows.append(
                {
                    "key": key,
                    "value": shown(key, value),
                    "source": sources.get(key, "default"),
                    "doc": " ".join((doc or "").split()),
                }
            )
    return rows


def show(
    doc: bool = typer.Option(False, "--doc", help="Add each field's documentation."),
    preset: str = typer.Option(None, "--preset", help="A built-in preset under the file, env and --set."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON list of {key, value, source, doc}."),
    config: str = ConfigOpt,
    overrides: list[str] = SetOpt,
) -> None:
    """Print every config field: its value and where it came from (default, preset, file, env, --set)."""
    rows = config_rows(preset, config, overrides)
    if as_json:
        print(json.dumps(rows if doc else [{k: r[k] for k in ("key", "value", "source")} for r in rows], indent=1))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("field", "value", "source", *(["doc"] if doc else []), show_lines=doc)
    for r in rows:
        style = None if r["source"] == "default" else "bold"
        table.add_row(r["key"], json.dumps(r["value"]), r["source"], *([r["doc"]] if doc else []), style=style)
    Console().print(table)


def register(app: typer.Typer) -> None:
    group = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)
    app.add_typer(group, name="config")
    group.command("show")(show)
