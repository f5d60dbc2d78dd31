"""Generation through an OpenAI-compatible ``/v1/completions`` endpoint (vLLM serve, TGI, …).

Used for the bootstrap teacher: a large model served elsewhere writes the first verified
trajectories. One request per prompt carries ``n``, ``stop``, ``max_tokens``, ``temperature``,
``top_p`` (and ``seed`` when given); requests run concurrently, at most ``concurrency`` at once.

Why a private event loop on its own thread: ``generate()`` is synchronous and is called from the
model worker's thread (or from plain scripts, or even from inside a running loop). The backend
owns one loop running forever on a daemon thread and submits each call with
``run_coroutine_threadsafe``, so it works from any caller, and one ``aiohttp.ClientSession`` keeps
its connections alive across calls. ``close()`` stops the loop and the thread.

Failures: connection errors, timeouts, HTTP 429 and 5xx are retried with exponential backoff
(``backoff_s · 2^attempt``, up to ``retries`` times); any other HTTP error, a malformed response,
or exhausted retries raise ``BackendError`` naming the URL and status. The API key is read from
the environment variable named in the config, sent as a bearer token, and never logged.

Token counts: when a choice carries its own count (some servers add ``usage`` per choice) it is
used; with ``n == 1`` the response's ``usage.completion_tokens`` is exact; with ``n > 1`` that total
is shared among the choices in proportion to their text length (totals exact, per-sample counts
estimated). ``stopped``/``eos``: vLLM's ``stop_reason`` (the matched string, or null for EOS) tells
them apart; a server without it reports ``finish_reason == "stop"``, which is taken as a stop string.
"""

from __future__ import annotations

import asyncio
import os
import threading

import aiohttp

from actors.backends.base import Backend, BackendError, Generation, GenParams, prompt_seeds
from rstar.log import get_logger

log = get_logger(__name__)


class _Retryable(Exception):
    pass


class OpenAIBackend(Backend):
    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 120.0,
        retries: int = 4,
        backoff_s: float = 0.5,
        concurrency: int = 16,
    ):
        self.url = base_url.rstrip("/") + "/completions"
        self.model = model
        self.version = model
        self.tokenizer = None  # the served model's tokenizer is not available locally
        self._key = os.environ.get(key_env) or None
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.retries, self.backoff_s, self.concurrency = retries, backoff_s, concurrency
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="openai-backend", daemon=True)
        self._thread.start()
        self._session: aiohttp.ClientSession | None = None

    def generate(self, prompts: list[str], params: GenParams, seeds: list[int] | None = None) -> list[list[Generation]]:
        if not prompts:
            return []
        if self._loop.is_closed():
            raise BackendError("openai backend is closed")
        seeded = seeds is not None or params.seed is not None
        per_prompt: list[int | None] = [*prompt_seeds(len(prompts), params, seeds)] if seeded else [None] * len(prompts)
        return asyncio.run_coroutine_threadsafe(self._generate(prompts, params, per_prompt), self._loop).result()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        if self._session is not None:
            asyncio.run_coroutine_threadsafe(self._session.close(), self._loop).result()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)
        self._loop.close()

    def _client(self) -> aiohttp.ClientSession:
        """The HTTP session, opened on first use (inside the backend's own event loop)."""
        if self._session is None:
            headers = {"Authorization": f"Bearer {self._key}"} if self._key else {}
            self._session = aiohttp.ClientSession(timeout=self.timeout, headers=headers)
        return self._session

    async def _generate(self, prompts: list[str], params: GenParams, seeds: list[int | None]) -> list[list[Generation]]:
        self._client()
        gate = asyncio.Semaphore(self.concurrency)

        async def one(prompt: str, seed: int | None) -> list[Generation]:
            async with gate:
                return _parse(await self._post(_body(self.model, prompt, params, seed)), params)

        return list(await asyncio.gather(*(one(p, s) for p, s in zip(prompts, seeds))))

    async def _post(self, body: dict) -> dict:
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                await asyncio.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                async with self._client().post(self.url, json=body) as resp:
                    text = await resp.text()
                    if resp.status == 429 or resp.status >= 500:
                        raise _Retryable(f"HTTP {resp.status}: {text[:200]}")
                    if resp.status != 200:
                        raise BackendError(f"{self.url} answered HTTP {resp.status}: {text[:500]}")
                    try:
                        return await resp.json(content_type=None)
                    except ValueError:
                        raise BackendError(f"{self.url} sent invalid JSON: {text[:200]!r}") from None
            except (TimeoutError, _Retryable, aiohttp.ClientConnectionError) as e:
                last = str(e) or type(e).__name__
                log.warning("%s failed (%s), attempt %d/%d", self.url, last, attempt + 1, self.retries + 1)
        raise BackendError(f"{self.url} failed after {self.retries + 1} attempts: {last}")


def _body(model: str, prompt: str, params: GenParams, seed: int | None = None) -> dict:
    body = {
        "model": model,
        "prompt": prompt,
        "n": params.n,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "stop": list(params.stop),
    }
    if seed is not None:
        body["seed"] = seed
    return body


def _parse(data: dict, params: GenParams) -> list[Generation]:
    try:
        choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
        texts = [c["text"] for c in choices]
    except (KeyError, TypeError) as e:
        raise BackendError(f"completions response without choices/text: {str(data)[:200]}") from e
    if len(choices) != params.n:
        raise BackendError(f"asked for n={params.n} completions, got {len(choices)}")
    counts = _token_counts(choices, (data.get("usage") or {}).get("completion_tokens"))
    out = []
    for c, text, tokens in zip(choices, texts, counts):
        reason, stop_reason = c.get("finish_reason"), c.get("stop_reason")
        known = "stop_reason" in c  # vLLM's field; without it "stop" cannot say why
        stopped = reason == "stop" and (isinstance(stop_reason, str) or not known)
        cuts = [i for i in (text.find(s) for s in params.stop) if i >= 0]
        if stopped and cuts:  # servers exclude the stop string; cut if one included it
            text = text[: min(cuts)]
        out.append(
            Generation(
                text=text, tokens=tokens, stopped=stopped, eos=reason == "stop" and known and stop_reason is None
            )
        )
    return out


def _token_counts(choices: list[dict], total: int | None) -> list[int]:
    own = [(c.get("usage") or {}).get("completion_tokens") for c in choices]
    counts = [x for x in own if isinstance(x, int)]
    if len(counts) == len(own):
        return counts
    if total is None:
        raise BackendError("completions response has no usage.completion_tokens")
    weights = [max(1, len(c["text"])) for c in choices]
    shares = [total * w / sum(weights) for w in weights]
    counts = [int(s) for s in shares]
    # Largest remainders get the leftover tokens, so the counts sum to the server's total.
    for i in sorted(range(len(shares)), key=lambda i: counts[i] - shares[i])[: total - sum(counts)]:
        counts[i] += 1
    return counts
