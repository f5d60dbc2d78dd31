"""The store's HTTP API and web tree explorer (aiohttp).

    rstar serve [--host 0.0.0.0] [--port 8321]          # or, embedded in another process:
    app = create_app(cfg, engine=None, on_problems=None)  # engine None: opened and closed by the app

Read endpoints (``/api/stats``, ``/api/trees``, ``/api/trees/{id}``, ``/api/problems/{id}``,
``/api/rounds``, ``/api/checkpoints``) are open; ``POST /api/problems`` needs
``Authorization: Bearer <api.token>`` (401 without or with a wrong token; 403 when no token is
configured, i.e. writes are disabled). ``/openapi.json`` describes them all; ``/metrics`` is
Prometheus text from the app's own registry; ``/health`` checks the database; ``/`` is the explorer.

Guaranteed: user input never causes a 500 — bad query parameters and bodies get 400, unknown ids
404, each with a JSON body ``{"error": …, "param": …}``. Database calls run in worker threads
(``asyncio.to_thread``) on the sync engine shared with the CLI, so the event loop never blocks.
``on_problems`` (the broker's publish hook) is awaited after the problems are committed; if it
fails the request answers 502 and the problems stay stored (posting them again is harmless).
"""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import msgspec
from aiohttp import web
from sqlalchemy import Engine, text

from rstar.config import Config
from rstar.log import get_logger
from rstar.schemas import Problem, problem_id
from store import queries
from store.db import current_revision, open_store
from store.metrics import CONTENT_TYPE_LATEST, ApiMetrics
from store.openapi import openapi_spec
from store.writer import InvalidProblemError, check_problem, upsert_problems

log = get_logger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"
MAX_PROBLEMS_PER_POST = 10_000

ProblemsHook = Callable[[Sequence[Problem]], Awaitable[None]]
CONFIG = web.AppKey("config", Config)
ENGINE = web.AppKey("engine", Engine)
METRICS = web.AppKey("metrics", ApiMetrics)
ON_PROBLEMS = web.AppKey[ProblemsHook | None]("on_problems")


class NewProblem(msgspec.Struct, forbid_unknown_fields=True):
    """A problem as posted: ``rstar.schemas.Problem`` without ``id`` (computed) and ``schema``."""

    source: str
    question: str
    answer: str | None = None
    meta: dict = {}


class ApiError(Exception):
    """A request the API refuses: answered with ``status`` and a JSON body naming ``param``."""

    def __init__(self, status: int, message: str, param: str | None = None, headers: dict | None = None):
        self.status, self.message, self.param, self.headers = status, message, param, headers or {}
        super().__init__(message)


def _json(data, status: int = 200, headers: dict | None = None) -> web.Response:
    return web.Response(body=msgspec.json.encode(data), status=status, content_type="application/json", headers=headers)


def _error_response(status: int, message: str, param: str | None = None, headers: dict | None = None) -> web.Response:
    return _json({"error": message} | ({"param": param} if param else {}), status, headers)


_INT32 = 2**31 - 1


def _int(request: web.Request, name: str, default: int | None = None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be an integer, got {raw[:40]!r}", name) from None
    if not -_INT32 <= value <= _INT32:  # the database's integer columns are 32-bit
        raise ApiError(400, f"{name}={value} is out of range", name)
    return value


def _str(value: str | None, name: str) -> str | None:
    if value is not None and (len(value) > 256 or "\x00" in value):
        raise ApiError(400, f"{name} must be at most 256 characters without NUL", name)
    return value or None


def _bool(request: web.Request, name: str) -> bool | None:
    raw = request.query.get(name, "").lower()
    if raw == "":
        return None
    if raw in ("true", "1", "yes"):
        return True
    if raw in ("false", "0", "no"):
        return False
    raise ApiError(400, f"{name} must be true or false, got {raw[:40]!r}", name)


def _db(request: web.Request, fn, *args, **kw):
    return asyncio.to_thread(fn, request.app[ENGINE], *args, **kw)


@web.middleware
async def _errors_and_metrics(request: web.Request, handler) -> web.StreamResponse:
    """Turn every refusal into a JSON error response, and count and time every request."""
    t0 = time.perf_counter()
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    try:
        resp = await handler(request)
    except ApiError as e:
        resp = _error_response(e.status, e.message, e.param, e.headers)
    except queries.NotFoundError as e:
        resp = _error_response(404, str(e))
    except queries.BadQueryError as e:
        resp = _error_response(400, str(e), e.param)
    except web.HTTPException as e:  # aiohttp's own: unknown path 404, 405, 413 body too large
        if e.status < 400:
            raise
        keep = {k: v for k, v in e.headers.items() if k.lower() not in ("content-type", "content-length")}
        resp = _error_response(e.status, e.reason, headers=keep)
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        resp = _error_response(500, "internal error (logged on the server)")
    request.app[METRICS].observe(request.method, route, resp.status, time.perf_counter() - t0)
    return resp


async def health(request: web.Request) -> web.Response:
    def check(engine: Engine) -> str | None:
        with engine.connect() as c:
            c.execute(text("SELECT 1"))
        return current_revision(engine)

    try:
        revision = await _db(request, check)
    except Exception as e:  # the answer *is* the error: report it, do not crash the probe
        log.warning("health check failed: %s", e)
        raise ApiError(503, f"database unreachable: {type(e).__name__}") from None
    return _json({"status": "ok", "revision": revision})


async def stats(request: web.Request) -> web.Response:
    return _json(await _db(request, queries.stats))


async def trees(request: web.Request) -> web.Response:
    limit, offset = _int(request, "limit", 50), _int(request, "offset", 0)
    source = _str(request.query.get("source"), "source")
    if source not in (None, "search", "teacher"):
        raise ApiError(400, f"source must be search or teacher, got {source[:40]!r}", "source")
    rows, total = await _db(
        request,
        queries.list_trees,
        round_no=_int(request, "round"),
        solved=_bool(request, "solved"),
        problem_id=_str(request.query.get("problem"), "problem"),
        limit=limit,
        offset=offset,
        source=source,
    )
    return _json({"total": total, "limit": limit, "offset": offset, "items": rows})


async def tree(request: web.Request) -> web.Response:
    row, nodes = await _db(request, queries.get_tree, _str(request.match_info["id"], "id"))
    return _json({"tree": row, "nodes": nodes})


async def problem(request: web.Request) -> web.Response:
    return _json(await _db(request, queries.get_problem, _str(request.match_info["id"], "id")))


async def rounds(request: web.Request) -> web.Response:
    return _json({"items": await _db(request, queries.list_rounds)})


async def checkpoints(request: web.Request) -> web.Response:
    kind = _str(request.query.get("kind"), "kind")
    if kind not in (None, "policy", "ppm"):
        raise ApiError(400, f"kind must be policy or ppm, got {kind[:40]!r}", "kind")
    return _json({"items": await _db(request, queries.list_checkpoints, kind=kind, round_no=_int(request, "round"))})


def _authorize(request: web.Request) -> None:
    token = request.app[CONFIG].api.token
    if not token:
        raise ApiError(403, "writes are disabled: no api.token is configured")
    given = request.headers.get("Authorization", "")
    if not (given.startswith("Bearer ") and hmac.compare_digest(given[7:].encode(), token.encode())):
        raise ApiError(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


async def add_problems(request: web.Request) -> web.Response:
    _authorize(request)
    try:
        posted = msgspec.json.decode(await request.read(), type=list[NewProblem])
    except (msgspec.ValidationError, msgspec.DecodeError) as e:
        raise ApiError(400, f"body must be a JSON list of problems: {e}", "body") from None
    if not 1 <= len(posted) <= MAX_PROBLEMS_PER_POST:
        raise ApiError(400, f"post 1 to {MAX_PROBLEMS_PER_POST} problems, got {len(posted)}", "body")
    problems = []
    for i, p in enumerate(posted):
        if not p.question.strip() or not 0 < len(p.source) <= 100:
            raise ApiError(400, f"problem {i}: question must not be empty, source 1..100 characters", f"body[{i}]")
        problems.append(
            Problem(
                id=problem_id(p.source, p.question), source=p.source, question=p.question, answer=p.answer, meta=p.meta
            )
        )
        try:
            check_problem(problems[-1])
        except InvalidProblemError as e:
            raise ApiError(400, f"problem {i}: {e.reason}", f"body[{i}]") from None
    new = await _db(request, upsert_problems, problems)
    hook = request.app[ON_PROBLEMS]
    if hook is not None:
        try:
            await hook(problems)
        except Exception as e:
            log.exception("on_problems hook failed for %d stored problems", len(problems))
            raise ApiError(502, f"problems stored but not published: {type(e).__name__}: {e}") from None
    return _json({"received": len(problems), "new": new, "ids": [p.id for p in problems]})


async def metrics(request: web.Request) -> web.Response:
    m = request.app[METRICS]
    try:
        await _db(request, m.refresh_store)
    except Exception:  # a scrape during a database outage still reports request metrics
        log.exception("refreshing store gauges failed")
    return web.Response(body=m.render(), headers={"Content-Type": CONTENT_TYPE_LATEST})


async def openapi(request: web.Request) -> web.Response:
    return _json(openapi_spec(queries.MAX_LIMIT))


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(WEB_DIR / "index.html")


def create_app(cfg: Config, engine: Engine | None = None, on_problems: ProblemsHook | None = None) -> web.Application:
    """The API app. Without ``engine`` it opens (and migrates) ``cfg.store_url`` at startup and
    disposes the engine at cleanup; a given engine stays the caller's to dispose."""
    app = web.Application(middlewares=[_errors_and_metrics], client_max_size=16 * 1024 * 1024)
    app[CONFIG] = cfg
    app[METRICS] = ApiMetrics(refresh_s=cfg.api.metrics_refresh_s)
    app[ON_PROBLEMS] = on_problems

    async def store_ctx(app: web.Application) -> AsyncIterator[None]:
        if engine is not None:
            app[ENGINE] = engine
            yield
            return
        app[ENGINE] = await asyncio.to_thread(open_store, cfg.store_url)
        yield
        await asyncio.to_thread(app[ENGINE].dispose)

    app.cleanup_ctx.append(store_ctx)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/openapi.json", openapi)
    app.router.add_get("/", index)
    app.router.add_static("/static/", WEB_DIR)
    app.router.add_get("/api/stats", stats)
    app.router.add_get("/api/trees", trees)
    app.router.add_get("/api/trees/{id}", tree)
    app.router.add_get("/api/problems/{id}", problem)
    app.router.add_post("/api/problems", add_problems)
    app.router.add_get("/api/rounds", rounds)
    app.router.add_get("/api/checkpoints", checkpoints)
    return app
