"""``rstar serve``: the store's HTTP API and web tree explorer.

    rstar serve [--host 127.0.0.1] [--port 8321] [--set api.token=…] [--set store.url=…]

Opens (and migrates) the store from the config, then serves ``store.api.create_app`` until
SIGINT/SIGTERM. Reads are open to anyone who can reach the port; ``POST /api/problems`` needs
``api.token`` (set it through ``RSTAR_API__TOKEN`` rather than a file others can read).
"""

from __future__ import annotations

import typer

from app.cli import ConfigOpt, SetOpt, get_config


def serve(
    config: str = ConfigOpt,
    overrides: list[str] = SetOpt,
    host: str | None = typer.Option(None, "--host", help="Interface to bind (default: api.host)."),
    port: int | None = typer.Option(None, "--port", min=0, max=65535, help="Port (default: api.port)."),
) -> None:
    """Serve the store API (/api/…, /openapi.json, /metrics, /health) and the tree explorer (/)."""
    from aiohttp import web
    from sqlalchemy.engine import make_url

    from rstar.log import get_logger
    from store.api import create_app

    cfg = get_config(config, overrides)
    host, port = host or cfg.api.host, cfg.api.port if port is None else port
    log = get_logger(__name__)
    log.info(
        "store %s; explorer at http://%s:%d/ (writes %s)",
        make_url(cfg.store_url).render_as_string(hide_password=True),
        host,
        port,
        "enabled" if cfg.api.token else "disabled: no api.token",
    )
    web.run_app(create_app(cfg), host=host, port=port, print=None, access_log=None)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
