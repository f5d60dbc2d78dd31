"""``rstar serve``: the store's HTTP API and web tree explorer.

    rstar serve [--host 127.0.0.1] [--port 8321] [--set api.token=…] [--set store.url=…]

Opens (and migrates) the store from the config, then serves ``store.api.create_app`` until
SIGINT/SIGTERM. Reads are open to anyone who can reach the port; ``POST /api/problems`` needs
``api.token`` (set it through ``RSTAR_API__TOKEN`` rather than a file others can read).

With ``broker.url`` set (as ``rstar up`` and the compose file set it), posted problems are also
queued for the actors on PROBLEMS (``broker.problems.add_problems``: each id once ever) after they
are stored; a broker that cannot take them within ``broker.publish_retry_s`` makes the request a
502, the problems stay stored, and posting them again queues them. Without ``broker.url`` posted
problems are only stored (queue them with ``rstar problems add``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

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
    hook = None
    if cfg.broker.url:
        hook, close = queue_hook(cfg)
    else:
        log.warning("no broker.url: posted problems are stored, not queued for the actors")
    api = create_app(cfg, on_problems=hook)
    if hook is not None:
        api.on_cleanup.append(close)
    web.run_app(api, host=host, port=port, print=None, access_log=None)


def queue_hook(cfg) -> tuple[Callable[[Sequence], Awaitable[None]], Callable[..., Awaitable[None]]]:
    """``(on_problems, close)``: a hook that queues stored problems on PROBLEMS over one broker
    connection (opened at the first post, opened again after a failure), and its cleanup."""
    from broker.client import Broker, open_broker
    from broker.problems import add_problems

    held: dict = {}
    lock = asyncio.Lock()

    async def close(_app=None) -> None:
        cm = held.pop("cm", None)
        held.pop("b", None)
        if cm is not None:
            try:
                await cm.__aexit__(None, None, None)
            except Exception:  # closing a connection that already failed: nothing more to do
                pass

    async def on_problems(problems: Sequence) -> None:
        async with lock:
            if "b" not in held:
                cm = open_broker(cfg, "rstar-api")
                held["cm"], held["b"] = cm, await cm.__aenter__()
            b: Broker = held["b"]  # taken under the lock: another post may drop a failed one
        try:
            await add_problems(b, problems)
        except Exception:
            async with lock:  # the next post connects afresh (unless one already did)
                if held.get("b") is b:
                    await close()
            raise

    return on_problems, close


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
