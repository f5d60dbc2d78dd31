"""The store API served for real (aiohttp TestServer on a port) against SQLite and PostgreSQL:
every endpoint, pagination, auth on writes, bad input (never a 500), OpenAPI coverage, metrics,
and a sanity check of the web explorer (its HTML loads its JS; the JS asks only for real routes)."""

from __future__ import annotations

import asyncio
import json
import random
import re
import shutil
import subprocess
from datetime import UTC, datetime
from urllib.parse import quote

import msgspec
import pytest
from aiohttp.test_utils import TestClient, TestServer
from sqlalchemy import insert
from store_helpers import store_engine
from yarl import URL

from rstar.config import load_config
from rstar.problems import MAX_QUESTION_CHARS
from rstar.schemas import problem_id
from store.api import MAX_BODY_BYTES, WEB_DIR, create_app
from store.db import open_store
from store.models import CheckpointRow, RoundRow
from store.queries import stats
from store.sample_trees import sample_problem, sample_tree
from store.writer import upsert_trees

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def filled(request, tmp_path_factory):
    """A store with 12 trees over 3 rounds, 2 rounds and 3 checkpoints; yields (engine, trees)."""

    def fill(engine):
        rng = random.Random(21)
        problems = [sample_problem(rng) for _ in range(4)]
        trees = [sample_tree(rng, 20, round=i % 3, problem=problems[i % 4]) for i in range(12)]
        upsert_trees(engine, trees)
        now = datetime.now(UTC)
        with engine.begin() as c:
            c.execute(
                insert(RoundRow),
                [
                    {"round": 0, "state": "closed", "quota": 10, "eval": {"greedy": 0.1}, "closed_at": now},
                    {"round": 1, "state": "collecting", "quota": 20, "eval": {}, "closed_at": None},
                ],
            )
            c.execute(
                insert(CheckpointRow),
                [
                    {
                        "round": 0,
                        "kind": "policy",
                        "version": "p0",
                        "object": "o/p0",
                        "sha256": "a" * 64,
                        "metrics": {"loss": 1.5},
                        "base": "smollm2",
                    }
                ],
            )
            c.execute(
                insert(CheckpointRow),
                [
                    {
                        "round": 0,
                        "kind": "ppm",
                        "version": "m0",
                        "object": "o/m0",
                        "sha256": "b" * 64,
                        "metrics": {},
                        "parent_id": None,
                    },
                    {
                        "round": 1,
                        "kind": "policy",
                        "version": "p1",
                        "object": "o/p1",
                        "sha256": "c" * 64,
                        "metrics": {},
                        "parent_id": 1,
                    },
                ],
            )
        return engine, trees

    with store_engine(request.param, tmp_path_factory.mktemp("api"), "test_api") as engine:
        yield fill(engine)


def _cfg(tmp_path, token: str | None = TOKEN):
    return load_config(
        overrides=[f"data_dir='{tmp_path}'", "api.metrics_refresh_s=0"] + ([f"api.token='{token}'"] if token else []),
        env={},
    )


async def _client(app) -> TestClient:
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def client(filled, tmp_path):
    calls = []

    async def on_problems(problems):
        calls.append(list(problems))

    c = await _client(create_app(_cfg(tmp_path), filled[0], on_problems=on_problems))
    c.hook_calls = calls
    yield c
    await c.close()


async def test_read_endpoints(client, filled):
    engine, trees = filled
    r = await client.get("/api/stats")
    assert r.status == 200 and (await r.json()) == stats(engine)
    r = await client.get("/api/trees", params={"round": "1", "limit": "2"})
    page = await r.json()
    assert page["total"] == sum(t.round == 1 for t in trees) and len(page["items"]) == 2
    seen = []
    for offset in range(0, 12, 5):
        seen += [t["id"] for t in (await (await client.get(f"/api/trees?limit=5&offset={offset}")).json())["items"]]
    assert sorted(seen) == sorted(t.tree_id for t in trees)
    solved = await (await client.get("/api/trees?solved=false&limit=100")).json()
    assert solved["total"] == sum(not t.solved for t in trees)
    t = trees[3]
    body = await (await client.get(f"/api/trees/{t.tree_id}")).json()
    assert body["tree"]["id"] == t.tree_id and [n["idx"] for n in body["nodes"]] == sorted(n.idx for n in t.nodes)
    p = await (await client.get(f"/api/problems/{t.problem.id}")).json()
    assert p["question"] == t.problem.question and p["trees"] == sum(x.problem.id == t.problem.id for x in trees)
    rounds = (await (await client.get("/api/rounds")).json())["items"]
    assert [r["round"] for r in rounds] == [0, 1] and rounds[0]["eval"] == {"greedy": 0.1}
    cps = (await (await client.get("/api/checkpoints", params={"kind": "policy"})).json())["items"]
    assert [c["version"] for c in cps] == ["p0", "p1"] and cps[1]["parent_id"] == 1
    assert (await (await client.get("/health")).json())["status"] == "ok"


@pytest.mark.parametrize(
    "path, status, param",
    [
        ("/api/trees/no-such-tree", 404, None),
        ("/api/problems/no-such-problem", 404, None),
        ("/api/no-such-endpoint", 404, None),
        ("/api/trees?limit=abc", 400, "limit"),
        ("/api/trees?limit=0", 400, "limit"),
        ("/api/trees?limit=100000", 400, "limit"),
        ("/api/trees?offset=-3", 400, "offset"),
        ("/api/trees?round=1.5", 400, "round"),
        ("/api/trees?round=99999999999999999999", 400, "round"),
        ("/api/trees?solved=maybe", 400, "solved"),
        ("/api/trees?source=oracle", 400, "source"),
        ("/api/trees?problem=%00x", 400, "problem"),
        ("/api/trees/%00", 400, "id"),
        ("/api/checkpoints?kind=optimizer", 400, "kind"),
        ("/api/checkpoints?round=x", 400, "round"),
        ("/api/trees?limit=%EF%BC%91%EF%BC%92", 400, "limit"),  # fullwidth digits: int() took them
        ("/api/trees?round=1_000", 400, "round"),  # int() took the underscore and the spaces
        ("/api/trees?round=%20+1", 400, "round"),
        ("/api/trees?offset=" + "9" * 5000, 400, "offset"),
    ],
)
async def test_bad_input_gets_a_json_error_never_a_500(client, path, status, param):
    r = await client.get(path)
    assert r.status == status, await r.text()
    body = await r.json()
    assert body["error"] and body.get("param") == param


async def test_integers_may_have_leading_zeros(client):
    r = await client.get("/api/trees", params={"limit": "0000000000003", "offset": "+0"})
    assert r.status == 200 and (await r.json())["limit"] == 3


async def test_wrong_method_is_a_json_405(client):
    r = await client.delete("/api/trees")
    assert r.status == 405 and "error" in await r.json() and "GET" in r.headers["Allow"]


async def test_posting_problems_needs_the_token(client, filled):
    new = [
        {"source": "api-test", "question": "What is 2 + 3?", "answer": "5", "meta": {"level": 1}},
        {"source": "api-test", "question": "What is 7 * 6?"},
    ]
    assert (await client.post("/api/problems", json=new)).status == 401
    r = await client.post("/api/problems", json=new, headers={"Authorization": "Bearer wrong"})
    assert r.status == 401 and r.headers["WWW-Authenticate"] == "Bearer"
    r = await client.post("/api/problems", json=new, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 200, await r.text()
    body = await r.json()
    ids = [problem_id(p["source"], p["question"]) for p in new]
    assert body["ids"] == ids and body["received"] == 2
    again = await (await client.post("/api/problems", json=new, headers={"Authorization": f"Bearer {TOKEN}"})).json()
    assert (body["new"], again["new"]) == (2, 0)
    stored = await (await client.get(f"/api/problems/{ids[0]}")).json()
    assert (stored["answer"], stored["meta"]) == ("5", {"level": 1})
    assert [[p.id for p in call] for call in client.hook_calls] == [ids, ids]


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"{}",
        b"[]",
        b'[{"source": "no question"}]',
        b'[{"source": "s", "question": "q", "extra": 1}]',
        b'[{"source": "s", "question": "   "}]',
        b'[{"source": "s", "question": 5}]',
        b'[{"source": "' + b"s" * 150 + b'", "question": "q"}]',
    ],
)
async def test_bad_problem_bodies_are_400(client, body):
    r = await client.post("/api/problems", data=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert r.status == 400, await r.text()
    assert (await r.json())["param"].startswith("body")


async def test_a_problem_without_a_source_gets_the_default_and_a_numeric_answer_is_text(client):
    q = f"A new user's question {random.random()}: what is 2 + 3?"
    r = await client.post("/api/problems", json=[{"question": q, "answer": 5.0}], headers=AUTH)
    assert r.status == 200, await r.text()
    assert (await r.json())["ids"] == [problem_id("api", q)]
    stored = await (await client.get(f"/api/problems/{problem_id('api', q)}")).json()
    assert (stored["source"], stored["answer"]) == ("api", "5")
    spec = await (await client.get("/openapi.json")).json()
    new_problem = spec["components"]["schemas"]["NewProblem"]
    assert new_problem["required"] == ["question"] and new_problem["properties"]["source"]["default"] == "api"


@pytest.mark.parametrize(
    "body, says",
    [
        (b'[{"source": "s", "question": "q"}', "body is not valid JSON"),  # cut short
        (b'[{"source": 5, "question": "q"', "body is not valid JSON"),  # a wrong type before the cut
        (b'[{"question": "q", "answer": "\xff"}]', "body is not valid JSON"),  # not UTF-8
        (b"", "body is empty"),
        (b'{"question": "q"}', "body must be a JSON list of problems"),
        (b'[{"question": 5}]', "body must be a JSON list of problems"),
        (b'[{"question": "q", "answer": true}]', "body must be a JSON list of problems"),
        (b'[{"question": "q", "meta": {"x": 1e400}}]', "body must be a JSON list of problems"),
        # msgspec's RecursionError was a 500 (found while writing tests/fuzz/test_fuzz_api.py)
        (b'[{"question": "q", "meta": ' + b"[" * 5000 + b"]" * 5000 + b"}]", "body is nested too deeply"),
    ],
)
async def test_malformed_json_and_the_wrong_shape_are_told_apart(client, filled, body, says):
    before = stats(filled[0])["problems"]
    r = await client.post("/api/problems", data=body, headers=AUTH)
    assert r.status == 400 and r.content_type == "application/json", await r.text()
    error = (await r.json())["error"]
    assert error.startswith(says) and ("not valid JSON" in error) == (says == "body is not valid JSON")
    assert stats(filled[0])["problems"] == before


async def _chunks(total: int):
    for _ in range(total // 65536):
        yield b"x" * 65536


@pytest.mark.parametrize("chunked", [False, True])
async def test_an_oversized_body_is_a_json_413_and_nothing_is_stored(client, filled, chunked):
    before = stats(filled[0])["problems"]
    size = MAX_BODY_BYTES + 65536
    body = _chunks(size) if chunked else b'[{"question": "' + b"x" * size + b'"}]'
    r = await client.post("/api/problems", data=body, headers=AUTH)
    assert r.status == 413 and r.content_type == "application/json"
    assert (await r.json()) == {
        "error": f"body is over the limit of {MAX_BODY_BYTES:,} bytes: post the problems in several requests",
        "param": "body",
    }
    assert stats(filled[0])["problems"] == before


@pytest.mark.parametrize(
    "bad, says",
    [
        ({"question": "x" * (MAX_QUESTION_CHARS + 1)}, "question is 100,001 characters, over the limit of 100,000"),
        ({"question": "q", "answer": "7" * 2_001}, "answer is 2,001 characters, over the limit of 2,000"),
        ({"question": "q", "meta": {"notes": "n" * 70_000}}, "meta is over the limit of 65,536 bytes"),
        ({"question": "q", "source": "s" * 101}, "source must be 1 to 100 characters"),
        ({"question": "q", "source": "a\x00b"}, "source must be 1 to 100 characters without NUL"),
        ({"question": " \n\t"}, "question is empty"),
    ],
)
async def test_one_oversized_problem_refuses_the_request_and_nothing_of_it_is_stored(client, filled, bad, says):
    good = {"source": "oversize-test", "question": f"Fine question {random.random()}"}
    before = stats(filled[0])["problems"]
    r = await client.post("/api/problems", json=[good, bad], headers=AUTH)
    assert r.status == 400, await r.text()
    body = await r.json()
    assert (
        body["param"] == "body[1]" and says in body["error"] and "nothing of this request was stored" in body["error"]
    )
    assert (await client.get(f"/api/problems/{problem_id(good['source'], good['question'])}")).status == 404
    assert stats(filled[0])["problems"] == before


async def test_ids_with_any_character_read_back(tmp_path):
    """Found by tests/fuzz/test_fuzz_api.py: a problem whose source held "{" or "}" was stored but
    its id was a 404, as aiohttp's default {id} pattern excludes braces."""
    engine = open_store(f"sqlite:///{tmp_path / 'ids.db'}")
    tree = sample_tree(random.Random(5), 4, tree_id="t{0}/x")
    upsert_trees(engine, [tree])
    c = await _client(create_app(_cfg(tmp_path), engine))
    try:
        sources = ["{", "a{b}", "a/b", "%7B", "..", "x?y#z"]
        posted = [{"source": s, "question": "Braces?"} for s in sources]
        r = await c.post("/api/problems", json=posted, headers=AUTH)
        assert r.status == 200, await r.text()
        for pid in (await r.json())["ids"] + [tree.problem.id]:
            got = await c.get(URL(f"/api/problems/{quote(pid, safe='')}", encoded=True))
            assert got.status == 200 and (await got.json())["id"] == pid, pid
        got = await c.get(URL(f"/api/trees/{quote(tree.tree_id, safe='')}", encoded=True))
        assert got.status == 200 and (await got.json())["tree"]["id"] == "t{0}/x"
    finally:
        await c.close()
        engine.dispose()


async def test_a_database_that_is_down_is_a_503_to_retry_not_a_500(tmp_path):
    from sqlalchemy import create_engine

    # Nothing listens on port 1: every query fails to connect, as while PostgreSQL restarts.
    engine = create_engine("postgresql+psycopg://postgres@127.0.0.1:1/none", connect_args={"connect_timeout": 2})
    c = await _client(create_app(_cfg(tmp_path), engine))
    try:
        for r in [
            await c.get("/api/stats"),
            await c.get("/api/trees"),
            await c.post("/api/problems", json=[{"question": "Still there?"}], headers=AUTH),
        ]:
            assert r.status == 503 and r.headers["Retry-After"] == "5", await r.text()
            assert (await r.json())["error"] == "database unavailable; retry later"
        assert (await c.get("/health")).status == 503
    finally:
        await c.close()
        engine.dispose()


@pytest.mark.parametrize("value", [b"Bearer \xff", TOKEN.encode() + b"\xe9", b"Bearer", b"", b"Basic dTpw"])
async def test_a_wrong_authorization_header_is_a_401(client, value):
    """Found by tests/fuzz/test_fuzz_api.py: a header with bytes that are not UTF-8 was a 500."""
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(b"POST /api/problems HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n")
    writer.write(b"Authorization: " + value + b"\r\n\r\n[]")
    answer = await reader.read()
    writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401") and b"application/json" in head, answer[:300]
    assert json.loads(body) == {"error": "missing or wrong bearer token"}


async def test_the_bearer_scheme_is_case_insensitive(client):
    r = await client.post("/api/problems", data=b"[]", headers={"Authorization": f"bearer {TOKEN}"})
    assert r.status == 400 and (await r.json())["param"] == "body"


async def test_a_body_that_never_ends_is_a_408(filled, tmp_path):
    """Found by tests/fuzz/test_fuzz_api.py: a Content-Encoding: deflate body that stops mid-stream,
    arriving after the headers, left aiohttp's read waiting forever; now bounded by body_timeout_s."""
    c = await _client(create_app(_cfg(tmp_path), filled[0], body_timeout_s=0.5))
    try:
        reader, writer = await asyncio.open_connection(c.host, c.port)
        writer.write(b"POST /api/problems HTTP/1.1\r\nHost: x\r\nContent-Encoding: deflate\r\n")
        writer.write(f"Authorization: Bearer {TOKEN}\r\nContent-Length: 1\r\n\r\n".encode())
        await writer.drain()
        await asyncio.sleep(0.1)  # the body comes after the headers, as over a real network
        writer.write(b"x")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 408") and b"Connection: close" in head, head
        length = int(re.search(rb"Content-Length: (\d+)", head).group(1))
        assert json.loads(await reader.readexactly(length)) == {
            "error": "body not received within 0.5 s",
            "param": "body",
        }
        writer.close()
    finally:
        await c.close()


async def test_trees_filter_on_the_problems_level(tmp_path):
    engine = open_store(f"sqlite:///{tmp_path / 'levels.db'}")
    rng = random.Random(9)
    levels = [2, "2", 3, None]
    problems = [msgspec.structs.replace(sample_problem(rng), meta={} if lv is None else {"level": lv}) for lv in levels]
    problems = [msgspec.structs.replace(p, id=f"{p.id}-{i}") for i, p in enumerate(problems)]
    upsert_trees(engine, [sample_tree(rng, 3, problem=p) for p in problems])
    c = await _client(create_app(_cfg(tmp_path), engine))
    try:
        page = await (await c.get("/api/trees", params={"level": "2"})).json()
        assert page["total"] == 2 and sorted(str(t["level"]) for t in page["items"]) == ["2", "2"]
        assert (await (await c.get("/api/trees", params={"level": ""})).json())["total"] == 4  # empty: no filter
        r = await c.get("/api/trees", params={"level": "x" * 257})
        assert r.status == 400 and (await r.json())["param"] == "level"
    finally:
        await c.close()
        engine.dispose()


async def test_writes_are_forbidden_without_a_configured_token(filled, tmp_path):
    c = await _client(create_app(_cfg(tmp_path, token=None), filled[0]))
    try:
        r = await c.post(
            "/api/problems", json=[{"source": "s", "question": "q"}], headers={"Authorization": "Bearer anything"}
        )
        assert r.status == 403
    finally:
        await c.close()


async def test_a_failing_publish_hook_is_a_502_and_the_problems_stay(filled, tmp_path):
    async def broken(problems):
        raise ConnectionError("nats down")

    c = await _client(create_app(_cfg(tmp_path), filled[0], on_problems=broken))
    try:
        q = {"source": "hook-test", "question": f"What is {random.random()}?"}
        r = await c.post("/api/problems", json=[q], headers={"Authorization": f"Bearer {TOKEN}"})
        assert r.status == 502 and "nats down" in (await r.json())["error"]
        assert (await c.get(f"/api/problems/{problem_id(q['source'], q['question'])}")).status == 200
    finally:
        await c.close()


async def test_openapi_describes_exactly_the_routes(client):
    spec = await (await client.get("/openapi.json")).json()
    assert spec["openapi"].startswith("3.")
    described = {(path, method) for path, ops in spec["paths"].items() for method in ops}
    served = {
        (r.resource.canonical, r.method.lower())
        for r in client.server.app.router.routes()
        if r.method != "HEAD" and not r.resource.canonical.startswith("/static")
    }
    assert described == served


async def test_metrics_count_requests_and_store_rows(client, filled):
    await client.get("/api/stats")
    await client.get("/api/trees?limit=abc")
    text_ = await (await client.get("/metrics")).text()
    assert 'rstar_api_requests_total{method="GET",route="/api/stats",status="200"}' in text_
    assert 'route="/api/trees",status="400"' in text_
    assert f'rstar_store_rows{{what="trees"}} {float(len(filled[1]))}' in text_
    assert 'status="500"' not in text_


async def test_explorer_page_loads_its_script_which_asks_only_for_real_routes(client):
    html = await (await client.get("/")).text()
    scripts = re.findall(r'<script src="([^"]+)"', html)
    assert scripts == ["/static/app.js"]
    for src in scripts + re.findall(r'<link rel="stylesheet" href="([^"]+)"', html):
        assert (await client.get(src)).status == 200
    js = await (await client.get("/static/app.js")).text()
    fetched = set(re.findall(r'getJSON\(`?"?(/api/[a-z]+)', js))
    assert {"/api/stats", "/api/trees"} <= fetched  # and whatever else it asks for must exist:
    assert "`/api/trees/${encodeURIComponent(id)}`" in js  # the one-tree fetch
    canonical = {r.resource.canonical for r in client.server.app.router.routes()}
    assert fetched | {"/api/trees/{id}"} <= canonical
    if shutil.which("node"):
        subprocess.run(["node", "--check", str(WEB_DIR / "app.js")], check=True)


async def test_app_without_an_engine_opens_and_closes_its_own(tmp_path):
    cfg = _cfg(tmp_path)
    c = await _client(create_app(cfg))
    try:
        assert (await (await c.get("/api/stats")).json())["trees"] == 0
    finally:
        await c.close()
    assert (tmp_path / "rstar.db").is_file()
