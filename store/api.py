"""The store's HTTP API and web tree explorer (aiohttp).

    rstar serve [--host 0.0.0.0] [--port 8321]          # or, embedded in another process:
    app = create_app(cfg, engine=None, on_problems=None)  # engine None: opened and closed by the app

Read endpoints (``/api/stats``, ``/api/trees``, ``/api/trees/{id}``, ``/api/problems/{id}``,
``/api/rounds``, ``/api/checkpoints``) are open; ``POST /api/problems`` needs
``Authorization: Bearer <api.token>`` (401 without or with a wrong token; 403 when no token is
configured, i.e. writes are disabled). ``/openapi.json`` describes them all; ``/metrics`` is
Prometheus text from the app's own registry; ``/health`` checks the database; ``/`` is the explorer.

Guaranteed: user input never causes a 500 — bad query parameters and bodies get 400, unknown ids
404, each with a JSON body ``{"error": …, "param": …}``. A body that is not JSON (cut short, not
UTF-8) is told "body is not valid JSON"; JSON of the wrong shape is told what was expected, naming
the field; JSON nested past ``msgspec``'s depth is told so. A body over ``MAX_BODY_BYTES`` is a
413, one not received within ``body_timeout_s`` a 408, a question over ``MAX_QUESTION_CHARS`` (or
an answer, a source, a meta over theirs) a 400 naming the problem; either way the whole request
is refused and nothing of it is written. The one error that is not JSON: a request aiohttp's HTTP
parser refuses before this app sees it (a request line or a header over 8,190 bytes, over 128
headers, a bad chunk, a compressed stream it cannot decode, not HTTP) gets the parser's
plain-text 400; no request the OpenAPI document allows meets those limits. Database calls run in
worker threads (``asyncio.to_thread``) on the sync engine shared with the CLI, so the event loop
never blocks.
``on_problems`` (the broker's publish hook) is awaited after the problems are committed; if it
fails the request answers 502 and the problems stay stored (posting them again is harmless).
"""

from __future__ import annotations

import asyncio
import hmac
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import msgspec
from aiohttp import web
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError

from rstar.config import Config
from rstar.log import get_logger
from rstar.problems import answer_text, problem_limit_error
from rstar.schemas import Problem, problem_id
from store import queries
from store.db import current_revision, open_store
from store.metrics import CONTENT_TYPE_LATEST, ApiMetrics
from store.openapi import DEFAULT_SOURCE, MAX_BODY_BYTES, MAX_PROBLEMS_PER_POST, openapi_spec
from store.writer import InvalidProblemError, check_problem, upsert_problems

log = get_logger(__name__)

WEB_DIR = Path(__file__).resolve().parent / "web"

ProblemsHook = Callable[[Sequence[Problem]], Awaitable[None]]
CONFIG = web.AppKey("config", Config)
ENGINE = web.AppKey("engine", Engine)
METRICS = web.AppKey("metrics", ApiMetrics)
ON_PROBLEMS = web.AppKey[ProblemsHook | None]("on_problems")
BODY_TIMEOUT = web.AppKey("body_timeout_s", float)


class NewProblem(msgspec.Struct, forbid_unknown_fields=True):
    """A problem as posted: ``rstar.schemas.Problem`` without ``id`` (computed) and ``schema``;
    a numeric answer is stored as text, as problem files' are (``43.0`` -> ``"43"``)."""

    question: str
    source: str = DEFAULT_SOURCE
    answer: str | int | float | None = None
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


_INTEGER = re.compile(r"[+-]?[0-9]+")  # not int()'s "1_000", " 1" or other scripts' digits


def _int(request: web.Request, name: str, default: int | None = None) -> int | None:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    if not _INTEGER.fullmatch(raw):
        raise ApiError(400, f"{name} must be an integer, got {raw[:40]!r}", name)
    if len(raw.lstrip("+-").lstrip("0")) > 10 or not -_INT32 <= int(raw) <= _INT32:  # 32-bit columns
        raise ApiError(400, f"{name}={raw[:40]} is out of range", name)
    return int(raw)


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
        if e.status in (408, 413):  # the body was not read to its end: no next request on this connection
            resp.force_close()
    except queries.NotFoundError as e:
        resp = _error_response(404, str(e))
    except queries.BadQueryError as e:
        resp = _error_response(400, str(e), e.param)
    except OperationalError as e:  # the database is down, restarting or locked: the request may be retried
        log.warning("%s %s: database unavailable: %s", request.method, request.path, e.orig)
        resp = _error_response(503, "database unavailable; retry later", headers={"Retry-After": "5"})
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
        level=_str(request.query.get("level"), "level"),
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
    # Header bytes that are not UTF-8 arrive surrogate-escaped: encode them back, not fail (a 500).
    sent = given[7:].encode("utf-8", "surrogateescape")
    if not (given[:7].lower() == "bearer " and hmac.compare_digest(sent, token.encode())):
        raise ApiError(401, "missing or wrong bearer token", headers={"WWW-Authenticate": "Bearer"})


_TOO_DEEP = "body is nested too deeply to read (over about 1,000 levels)"


def _decode_problems(body: bytes) -> list[NewProblem]:
    """The posted list, or a 400 that says whether the body is not JSON or JSON of the wrong shape."""
    if not body.strip():
        raise ApiError(400, "body is empty: send a JSON list of problems", "body")
    try:
        return msgspec.json.decode(body, type=list[NewProblem])
    except msgspec.ValidationError as e:
        wrong_shape = e
    except msgspec.DecodeError as e:
        raise ApiError(400, f"body is not valid JSON: {e}", "body") from None
    except RecursionError:  # msgspec's depth limit, about 1,000 levels
        raise ApiError(400, _TOO_DEEP, "body") from None
    try:  # a typed decode stops at the first wrong field: is the rest JSON at all?
        msgspec.json.decode(body)
    except msgspec.ValidationError:  # JSON, with a number past 64 bits or a double
        pass
    except msgspec.DecodeError as e:
        raise ApiError(400, f"body is not valid JSON: {e}", "body") from None
    except RecursionError:
        raise ApiError(400, _TOO_DEEP, "body") from None
    raise ApiError(400, f"body must be a JSON list of problems: {wrong_shape}", "body")


def _new_problem(i: int, p: NewProblem) -> Problem:
    """The Problem to store, or a 400 naming ``body[i]`` and what is wrong with it."""
    answer = p.answer if p.answer is None or isinstance(p.answer, str) else answer_text(p.answer)
    too_large = problem_limit_error(p.question, p.source, answer, p.meta)
    if not p.question.strip():
        reason = "question is empty"
    elif too_large:
        reason = too_large
    else:
        problem = Problem(
            id=problem_id(p.source, p.question), source=p.source, question=p.question, answer=answer, meta=p.meta
        )
        try:
            check_problem(problem)
            return problem
        except InvalidProblemError as e:
            reason = e.reason
    raise ApiError(400, f"problem {i}: {reason} (nothing of this request was stored)", f"body[{i}]")


async def add_problems(request: web.Request) -> web.Response:
    _authorize(request)
    too_large = f"body is over the limit of {MAX_BODY_BYTES:,} bytes: post the problems in several requests"
    if (request.content_length or 0) > MAX_BODY_BYTES:  # refuse before reading it
        raise ApiError(413, too_large, "body")
    try:
        # Bounded: a slow client, or a Content-Encoding: deflate body that stops mid-stream and
        # arrives after the headers (aiohttp 3.14 then never ends the read; found by
        # tests/fuzz/test_fuzz_api.py), would hold the request forever.
        async with asyncio.timeout(request.app[BODY_TIMEOUT]):
            body = await request.read()
    except TimeoutError:
        raise ApiError(408, f"body not received within {request.app[BODY_TIMEOUT]:g} s", "body") from None
    except web.HTTPRequestEntityTooLarge:  # no or a false Content-Length: stopped at the limit
        raise ApiError(413, too_large, "body") from None
    except web.RequestPayloadError as e:  # e.g. a Content-Encoding: gzip body that is not gzip
        cause = e.__cause__ or e
        raise ApiError(400, f"body could not be read: {getattr(cause, 'message', cause)}", "body") from None
    posted = _decode_problems(body)
    if not 1 <= len(posted) <= MAX_PROBLEMS_PER_POST:
        raise ApiError(400, f"post 1 to {MAX_PROBLEMS_PER_POST} problems, got {len(posted)}", "body")
    problems = [_new_problem(i, p) for i, p in enumerate(posted)]
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


def create_app(
    cfg: Config, engine: Engine | None = None, on_problems: ProblemsHook | None = None, body_timeout_s: float = 60.0
) -> web.Application:
    """The API app. Without ``engine`` it opens (and migrates) ``cfg.store_url`` at startup and
    disposes the engine at cleanup; a given engine stays the caller's to dispose. A body not read
    within ``body_timeout_s`` is a 408."""
    app = web.Application(middlewares=[_errors_and_metrics], client_max_size=MAX_BODY_BYTES)
    app[CONFIG] = cfg
    app[BODY_TIMEOUT] = body_timeout_s
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
    # Ids may hold any character: aiohttp's default {id} pattern, [^{}/]+, made ids with braces
    # unreachable (a "/" arrives as %2F, which the pattern still sees encoded).
    app.router.add_get("/api/trees/{id:[^/]+}", tree)
    app.router.add_get("/api/problems/{id:[^/]+}", problem)
    app.router.add_post("/api/problems", add_problems)
    app.router.add_get("/api/rounds", rounds)
    app.router.add_get("/api/checkpoints", checkpoints)
    return app
