"""The store API fuzzed from its own OpenAPI document, against the real server (aiohttp on a real
port, in a thread) and a real store: SQLite, and PostgreSQL when it is reachable.

The document is read from the running server's ``/openapi.json``. For every operation it
describes, requests are drawn from its declared schemas (``hypothesis_jsonschema``): valid
parameters and bodies, invalid ones (any text, any JSON), raw query strings, a method the path
does not take, raw body bytes (valid bodies cut short, spliced, a byte flipped, nested deep), a
problem over the question limit, bodies gzip- or deflate-compressed (or saying so falsely), and
Authorization headers of any bytes. Asserted:

- never a 5xx; every 4xx is JSON with an ``error`` message (but the plain-text 400 of aiohttp's
  parser for a request line over 8,190 bytes or a bad compressed stream, see ``store/api.py``);
- parameters the document allows get 200 (a well-formed id that is not stored, 404) and a body
  matching the response schema it declares; ones it does not allow get a 400 naming one of them;
- a valid body with the token is stored (200) and reads back; with no, a wrong or a junk token it
  is a 401, and a 403 on a server with no token configured;
- a body that is not JSON is told "body is not valid JSON", JSON of the wrong shape is not;
- a refused write stores nothing.

``RSTAR_FUZZ_SCALE=N`` multiplies the example counts (``tests/fuzz/fuzz_strategies.py``).
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import json
import random
import re
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from fuzz_strategies import big_digits, fuzz, json_values, mutated, nested
from hypothesis import given
from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema
from jsonschema import Draft202012Validator
from sqlalchemy import Engine, func, select
from store_helpers import store_engine

from rstar.config import load_config
from store import queries
from store.api import create_app
from store.models import ProblemRow
from store.openapi import MAX_QUESTION_CHARS, openapi_spec
from store.sample_trees import sample_problem, sample_tree
from store.writer import upsert_trees

TOKEN = "fuzz-token"
OPERATIONS = [(path, method) for path, ops in openapi_spec(queries.MAX_LIMIT)["paths"].items() for method in ops]


class Api:
    """The served app: ``call`` sends one raw request and returns (status, content type, body)."""

    def __init__(self, engine: Engine, port: int, closed_port: int, spec: dict[str, Any], ids: dict[str, list[str]]):
        self.engine, self.port, self.closed_port, self.spec, self.ids = engine, port, closed_port, spec, ids

    def call(self, method: str, url: str, body: bytes | None = None, headers: dict | None = None, port: int = 0):
        conn = http.client.HTTPConnection("127.0.0.1", port or self.port, timeout=60)
        try:
            conn.request(method, url, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.getheader("Content-Type", "").split(";")[0], r.read()
        finally:
            conn.close()

    def problems(self) -> int:
        with self.engine.connect() as c:
            return c.execute(select(func.count()).select_from(ProblemRow)).scalar_one()


@contextmanager
def _served(apps: list) -> Iterator[list[int]]:
    """Serve each app on a free port from an event loop in a thread; yield the ports."""
    from aiohttp import web

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    run = lambda coro: asyncio.run_coroutine_threadsafe(coro, loop).result(60)  # noqa: E731
    runners = [web.AppRunner(app, access_log=None) for app in apps]
    try:
        ports = []
        for runner in runners:
            run(runner.setup())
            run(web.TCPSite(runner, "127.0.0.1", 0).start())
            ports.append(runner.addresses[0][1])
        yield ports
    finally:
        for runner in runners:
            run(runner.cleanup())
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def api(request, tmp_path_factory) -> Iterator[Api]:
    tmp = tmp_path_factory.mktemp("fuzz-api")
    with store_engine(request.param, tmp, "fuzz_api") as engine:
        rng = random.Random(17)
        problems = [sample_problem(rng), sample_problem(rng, source="gsm8k/train")]
        trees = [sample_tree(rng, 8, round=i, problem=problems[i % 2]) for i in range(3)]
        upsert_trees(engine, trees)
        ids = {"tree": [t.tree_id for t in trees], "problem": [p.id for p in problems]}
        overrides = [f"data_dir='{tmp}'", "api.metrics_refresh_s=0"]
        cfg, closed = (load_config(overrides=overrides + extra, env={}) for extra in ([f"api.token='{TOKEN}'"], []))
        apps = [create_app(cfg, engine, body_timeout_s=2), create_app(closed, engine)]
        with _served(apps) as (port, closed_port):
            status, _, body = Api(engine, port, closed_port, {}, ids).call("GET", "/openapi.json")
            assert status == 200
            yield Api(engine, port, closed_port, json.loads(body), ids)


def _inline(node: Any, spec: dict[str, Any]) -> Any:
    """``node`` with every ``$ref`` replaced by what it names (the document has no cycles)."""
    if isinstance(node, dict):
        if "$ref" in node:
            target: Any = spec
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            return _inline(target, spec)
        return {k: _inline(v, spec) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline(v, spec) for v in node]
    return node


def _strategy(schema: dict[str, Any]) -> st.SearchStrategy:
    """Values of ``schema``: ``hypothesis_jsonschema.from_schema``, except arrays and objects, built
    here from their items, properties and required names; its own object strategy calls a Hypothesis
    internal that Hypothesis 6.1xx removed (AttributeError: 'many' object has no attribute 'more').
    Arrays are cut at 5 items: the valid space is wide, not long."""
    if schema.get("type") == "array":
        hi = min(schema.get("maxItems", 5), 5)
        return st.lists(_strategy(schema["items"]), min_size=schema.get("minItems", 0), max_size=hi)
    if schema.get("type") == "object":
        props, required = schema.get("properties", {}), set(schema.get("required", []))
        if not props:  # a free-form object
            return st.dictionaries(st.text(max_size=10), json_values, max_size=4)
        return st.fixed_dictionaries(
            {k: _strategy(v) for k, v in props.items() if k in required},
            optional={k: _strategy(v) for k, v in props.items() if k not in required},
        )
    return from_schema(schema)


def _check_error(status: int, ctype: str, body: bytes) -> str:
    """Every refusal is JSON with a message; returns the message."""
    assert status < 500, body[:300]
    assert ctype == "application/json", (status, ctype, body[:300])
    error = json.loads(body)["error"]
    assert isinstance(error, str) and error
    return error


junk = st.text(max_size=30) | big_digits | st.sampled_from(["", "-1", "0", "1.5", "true", "1_0", " 1", "１", "\x00"])
header_text = st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=30)
raw_query = st.text(alphabet="%0123456789ABCDEFabcdef=&+;.-_~", max_size=40)


def _query_value(v: Any) -> str:
    return ("true" if v else "false") if isinstance(v, bool) else str(v)


@st.composite
def _read_request(draw, spec: dict[str, Any], path: str, op: dict[str, Any], ids: dict[str, list[str]]):
    """(method, url, values, known id): each parameter (path, or query now and then) drawn from
    its schema or as junk; ``values`` maps its name to (text sent, schema, "path" or "query"),
    None after a raw query string is appended (which may hold anything)."""
    url, query, values, known = path, [], {}, False
    for p in op.get("parameters", []):
        schema, valid = _inline(p["schema"], spec), draw(st.booleans())
        if p["in"] == "path":
            kind = "tree" if path.startswith("/api/trees/") else "problem"
            known = valid and draw(st.booleans())
            value = draw(st.sampled_from(ids[kind]) if known else from_schema(schema) if valid else junk)
            url = url.replace("{" + p["name"] + "}", quote(value, safe=""))
        elif draw(st.booleans()):
            value = _query_value(draw(from_schema(schema))) if valid else draw(junk)
            query.append((p["name"], value))
        else:
            continue
        values[p["name"]] = (value, schema, p["in"])
    unknown = st.text(max_size=8).filter(lambda name: name not in values)
    query += draw(st.lists(st.tuples(unknown, junk), max_size=2))  # unknown names are ignored
    url += "?" + urlencode(query) if query else ""
    if draw(st.integers(0, 4)) == 0:
        url += ("&" if query else "?") + draw(raw_query)
        values = None
    method = draw(st.sampled_from(["GET"] * 6 + ["PUT", "DELETE", "PATCH"]))
    return method, url, values, known


def _conforms(value: str, schema: dict[str, Any], where: str) -> bool:
    """Whether ``value``, the text of a parameter, is what ``schema`` allows."""
    if value == "" and where == "query":  # an empty query value is the parameter left out
        return True
    if schema.get("type") == "integer":
        if not re.fullmatch(r"[+-]?[0-9]+", value) or len(value.lstrip("+-").lstrip("0")) > 12:
            return False
        return schema.get("minimum", -(2**63)) <= int(value) <= schema.get("maximum", 2**63)
    if schema.get("type") == "boolean":  # the description: 1/0 and yes/no too, any case
        return value.lower() in ("true", "false", "1", "0", "yes", "no")
    if "enum" in schema:
        return value in schema["enum"]
    length = schema.get("minLength", 0) <= len(value) <= schema.get("maxLength", len(value))
    return length and re.search(schema.get("pattern", ""), value) is not None


_VALIDATORS: dict[tuple[int, str], tuple[str, Draft202012Validator]] = {}


def _declared_200(spec: dict[str, Any], path: str) -> tuple[str, Draft202012Validator]:
    """The content type and a validator of the 200 answer the document declares (built once)."""
    if (id(spec), path) not in _VALIDATORS:
        declared = spec["paths"][path]["get"]["responses"]["200"]["content"]
        ctype = next(iter(declared))
        _VALIDATORS[id(spec), path] = ctype, Draft202012Validator(_inline(declared[ctype]["schema"], spec))
    return _VALIDATORS[id(spec), path]


@pytest.mark.parametrize("path", [path for path, method in OPERATIONS if method == "get"])
@fuzz(50)
@given(data=st.data())
def test_every_read_operation(api, path, data):
    op = api.spec["paths"][path]["get"]  # as the running server describes it
    ctype, validator = _declared_200(api.spec, path)
    method, url, values, known = data.draw(_read_request(api.spec, path, op, api.ids))
    status, got, body = api.call(method, url)
    if len(url) > 8000 and (status, got) == (400, "text/plain"):  # the one error that is not JSON:
        assert b"Got more than 8190 bytes" in body  # aiohttp's parser refuses the line (store/api.py)
        return
    unrouted = "{id}" in path and url.split("?")[0].endswith(("/", "/.", "/.."))  # an id no route matches
    if method != "GET":
        _check_error(status, got, body)
        assert status == 405 or (status == 404 and unrouted), (method, url, status)
        return
    if status >= 400:
        error = _check_error(status, got, body)
    if values is None:
        return  # a raw query string: anything but a 5xx or an error that is not JSON
    bad = {name for name, (value, schema, where) in values.items() if not _conforms(value, schema, where)}
    if unrouted:
        assert status == 404
    elif bad:  # the document says no: so does the server, naming one of them
        assert status == 400 and json.loads(body).get("param") in bad, (url, bad, status, body[:300])
    elif "id" in values and not known:
        assert status == 404, (url, status, body[:300])
    else:
        assert status == 200 and got == ctype, (url, status, got, body[:300])
        if ctype == "application/json":
            validator.validate(json.loads(body))
    assert status < 400 or error


_BODIES: dict[int, st.SearchStrategy] = {}


def _new_problems(spec: dict[str, Any]) -> st.SearchStrategy:
    """Bodies the document declares valid (built once per document)."""
    if id(spec) not in _BODIES:
        body = spec["paths"]["/api/problems"]["post"]["requestBody"]["content"]["application/json"]
        _BODIES[id(spec)] = _strategy(_inline(body["schema"], spec))
    return _BODIES[id(spec)]


def _is_json(data: bytes) -> bool | None:
    """Whether ``data`` is JSON, by the standard library (not the server's msgspec); None: too deep."""

    def refuse(name: str) -> None:
        raise ValueError(name)

    try:
        value = json.loads(data.decode("utf-8"), parse_constant=refuse)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # a lone surrogate escape is not text
    except RecursionError:
        return None
    except ValueError as e:  # JSONDecodeError and UnicodeError are ValueErrors; digits past 4,300 are JSON
        return "Exceeds the limit" in str(e)
    return True


_DEEP = (("[", "]"), ('[{"question": "q", "meta": {"a": ', "}}]"), ('{"a": ', "}"))


@fuzz(300)
@given(data=st.data(), auth=st.sampled_from(["token", "token", "token", "none", "wrong", "junk", "closed"]))
def test_posting_problems(api, data, auth):
    valid = _new_problems(api.spec)
    kind, problems, raw = data.draw(
        st.one_of(
            valid.map(lambda v: ("valid", v, json.dumps(v).encode())),
            valid.map(lambda v: ("over", v, json.dumps([*v, {"question": "x" * (MAX_QUESTION_CHARS + 1)}]).encode())),
            json_values.map(lambda v: ("json", v, json.dumps(v).encode())),
            mutated(valid.map(lambda v: json.dumps(v, ensure_ascii=False).encode())).map(lambda b: ("bytes", None, b)),
            st.binary(max_size=100).map(lambda b: ("bytes", None, b)),
            nested(valid.map(json.dumps), _DEEP).map(lambda t: ("bytes", None, t.encode())),
        )
    )
    headers = {"Content-Type": "application/json"}
    if auth in ("token", "wrong", "closed"):
        headers["Authorization"] = f"Bearer {TOKEN if auth != 'wrong' else 'not-' + TOKEN}"
    elif auth == "junk":  # any bytes a header value may hold (obs-text: not UTF-8 either)
        value = data.draw(st.tuples(st.sampled_from(["Bearer ", "bearer ", ""]), header_text).map("".join))
        headers["Authorization"] = value.encode("latin-1")
    coding, sent = data.draw(st.sampled_from(["", "", "", "gzip", "deflate", "corrupt"])), raw
    if coding in ("gzip", "deflate"):  # the same body, compressed: the same answers
        headers["Content-Encoding"], sent = coding, gzip.compress(raw) if coding == "gzip" else zlib.compress(raw)
    elif coding:  # a body that says it is compressed and is not
        headers["Content-Encoding"] = data.draw(st.sampled_from(["gzip", "deflate"]))
    before = api.problems()
    status, ctype, body = api.call("POST", "/api/problems", sent, headers, api.closed_port if auth == "closed" else 0)
    if coding == "corrupt" and ctype == "text/plain":
        # aiohttp's parser, when it meets the bad stream before the app reads it (store/api.py)
        assert status == 400 and api.problems() == before
        return
    if status != 200:
        error = _check_error(status, ctype, body)
        assert api.problems() == before, "a refused write stored something"
    if auth != "token":
        assert status == (403 if auth == "closed" else 401)
        return
    if coding == "corrupt":
        says = ("body could not be read", "body is empty", "body not received within")  # 400, 400, 408
        assert status in (400, 408) and error.startswith(says), error
        return
    if kind == "valid" and not any("\\u0000" in json.dumps(p.get("meta", {})) for p in problems):
        assert status == 200, body[:300]
    elif kind == "valid":  # the document's meta: "no NUL character in it"
        assert status == 400 and "NUL" in error, body[:300]
    elif kind == "over":  # the valid ones are refused with it (or a meta with NUL before it)
        assert status == 400 and "nothing of this request was stored" in error, body[:300]
        assert json.loads(body)["param"] in {f"body[{i}]" for i in range(len(problems) + 1)}
    if status == 200:
        answer = json.loads(body)
        assert answer["received"] == len(answer["ids"]) == len(json.loads(raw)) >= 1
        assert api.problems() == before + answer["new"]
        status, ctype, stored = api.call("GET", "/api/problems/" + quote(answer["ids"][0], safe=""))
        assert status == 200 and json.loads(stored)["id"] == answer["ids"][0]
        if kind == "valid":
            first = json.loads(stored)
            assert first["source"] == problems[0].get("source", "api")
            # the id hashes the stripped question; a problem already stored is kept as it was
            assert first["question"].strip() == problems[0]["question"].replace("\x00", "\ufffd").strip()
        return
    assert status == 400
    is_json = _is_json(raw)
    if not raw.strip():
        assert error.startswith("body is empty")
    elif is_json is False:
        assert error.startswith("body is not valid JSON"), (raw[:200], error)
    elif is_json:
        assert "not valid JSON" not in error, (raw[:200], error)
