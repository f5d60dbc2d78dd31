"""The openai backend against a real local aiohttp server speaking ``/v1/completions``.

The server writes canned, deterministic text, applies ``stop`` and ``max_tokens`` (one token per
whitespace-separated word), reports ``usage``, and can fail on purpose (503 / 400) per prompt.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from dataclasses import dataclass, field

import pytest
from aiohttp import web

from actors.backends import setup_backend
from actors.backends.base import BackendError, GenParams
from actors.backends.openai_backend import OpenAIBackend
from rstar.config import Config, ModelConfig

KEY_ENV, KEY = "RSTAR_TEST_OPENAI_KEY", "sekrit-key-123"
BODY = "# add the numbers\nx = 2 + 3\n<end_of_step>\n# text after the stop\n"


@dataclass
class Server:
    url: str
    seen: list[dict] = field(default_factory=list)
    fail_503: dict[str, int] = field(default_factory=dict)  # prompt marker -> failures left
    vllm_fields: bool = True


def _complete(body: dict, vllm_fields: bool) -> dict:
    choices, total = [], 0
    for j in range(body["n"]):
        text = f"sample {j} of {body['prompt'][-8:]}\n" + BODY
        finish, reason = "stop", None  # EOS unless a stop string or the length limit hits first
        cuts = [(text.find(s), s) for s in body["stop"] if s in text]
        if "EOS" in body["prompt"]:
            text = f"sample {j} done"
        elif cuts:
            at, reason = min(cuts)
            text = text[:at]
        words = text.split(" ")
        if len(words) > body["max_tokens"]:
            text, finish, reason = " ".join(words[: body["max_tokens"]]), "length", None
        total += len(text.split(" "))
        choice = {"index": j, "text": text, "finish_reason": finish}
        if vllm_fields:
            choice["stop_reason"] = reason
        choices.append(choice)
    return {
        "object": "text_completion",
        "model": body["model"],
        "choices": choices,
        "usage": {"prompt_tokens": 5, "completion_tokens": total, "total_tokens": total + 5},
    }


@pytest.fixture
async def server():
    state: Server | None = None

    async def completions(request: web.Request) -> web.Response:
        if request.headers.get("Authorization") != f"Bearer {KEY}":
            return web.json_response({"error": "bad key"}, status=401)
        body = await request.json()
        state.seen.append(body)
        for marker, left in state.fail_503.items():
            if marker in body["prompt"] and left > 0:
                state.fail_503[marker] = left - 1
                return web.json_response({"error": "overloaded"}, status=503)
        if "BAD" in body["prompt"]:
            return web.json_response({"error": "prompt rejected"}, status=400)
        return web.json_response(_complete(body, state.vllm_fields))

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    state = Server(url=f"http://127.0.0.1:{port}/v1")
    yield state
    await runner.cleanup()


@pytest.fixture
def backend(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    b = OpenAIBackend(server.url, "teacher", key_env=KEY_ENV, retries=3, backoff_s=0.01)
    yield b
    b.close()


async def test_n_samples_cut_at_stop_with_token_counts(server, backend):
    params = GenParams(n=3, max_tokens=64, temperature=0.7, top_p=0.9, stop=("<end_of_step>",), seed=11)
    out = await asyncio.to_thread(backend.generate, ["first prompt", "second prompt"], params)
    assert [len(x) for x in out] == [3, 3]
    for i, gens in enumerate(out):
        tail = ["first prompt", "second prompt"][i][-8:]
        for j, g in enumerate(gens):
            assert g.text == f"sample {j} of {tail}\n# add the numbers\nx = 2 + 3\n"
            assert g.stopped and not g.eos
    for gens in out:  # totals match the server's usage exactly
        assert sum(g.tokens for g in gens) == sum(len(g.text.split(" ")) for g in gens)
    sent = server.seen[0]
    assert (
        sent["model"],
        sent["n"],
        sent["max_tokens"],
        sent["temperature"],
        sent["top_p"],
        sent["stop"],
        sent["seed"],
    ) == ("teacher", 3, 64, 0.7, 0.9, ["<end_of_step>"], 11)


async def test_length_limit_and_eos(server, backend):
    short = await asyncio.to_thread(backend.generate, ["p"], GenParams(max_tokens=3))
    assert (short[0][0].text, short[0][0].tokens, short[0][0].stopped) == ("sample 0 of", 3, False)
    eos = await asyncio.to_thread(backend.generate, ["EOS now"], GenParams(max_tokens=30))
    assert eos[0][0].eos and not eos[0][0].stopped


async def test_server_without_stop_reason_counts_stop_as_stop_string(server, backend):
    server.vllm_fields = False
    out = await asyncio.to_thread(backend.generate, ["plain"], GenParams(max_tokens=64))
    assert out[0][0].stopped and not out[0][0].eos and "<end_of_step>" not in out[0][0].text


async def test_transient_failures_are_retried(server, backend):
    server.fail_503["FLAKY"] = 2
    out = await asyncio.to_thread(backend.generate, ["FLAKY prompt"], GenParams(max_tokens=64))
    assert out[0][0].stopped
    assert sum("FLAKY" in b["prompt"] for b in server.seen) == 3


async def test_client_error_fails_at_once_and_never_logs_the_key(server, backend, caplog):
    logging.getLogger("rstar").addHandler(caplog.handler)
    try:
        with pytest.raises(BackendError, match="HTTP 400"):
            await asyncio.to_thread(backend.generate, ["BAD prompt"], GenParams())
        assert len(server.seen) == 1
        server.fail_503["DOWN"] = 100
        with pytest.raises(BackendError, match="after 4 attempts"):
            await asyncio.to_thread(backend.generate, ["DOWN"], GenParams())
        assert sum("DOWN" in b["prompt"] for b in server.seen) == 4
    finally:
        logging.getLogger("rstar").removeHandler(caplog.handler)
    assert "HTTP 503" in caplog.text  # retries were logged ...
    assert KEY not in caplog.text  # ... without the key


async def test_unreachable_endpoint_is_a_backend_error(monkeypatch):
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    b = OpenAIBackend(f"http://127.0.0.1:{port}/v1", "m", retries=1, backoff_s=0.01)
    try:
        with pytest.raises(BackendError, match="after 2 attempts"):
            await asyncio.to_thread(b.generate, ["x"], GenParams())
    finally:
        b.close()


async def test_setup_backend_picks_openai(server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, KEY)
    cfg = Config(
        model=ModelConfig(backend="openai", openai_url=server.url, openai_model="teacher", openai_key_env=KEY_ENV)
    )
    b = setup_backend(cfg)
    try:
        assert isinstance(b, OpenAIBackend) and b.version == "teacher"
        out = await asyncio.to_thread(b.generate, ["via config"], GenParams(n=2))
        assert len(out[0]) == 2
    finally:
        b.close()
