"""One thread owns the models; many coroutines share it through dynamic batching.

Every tree in flight awaits ``ModelWorker.generate(prompt, params)`` or ``score(texts)``. The
worker's dispatcher takes *everything queued* when the model becomes free — up to
``max_batch`` sequences — and runs it as one backend call in its thread, so the backend never
waits for the slowest tree (the lockstep trap: batches shrinking as trees finish;
``benchmarks/search_throughput.py`` compares the two). Generation and PPM scoring go through the same thread so they
never fight over the CPU cores.

The worker also counts what the benchmark reports: generated tokens, busy seconds, calls and
batch sizes. A model swap (``swap``) runs between two calls, never during one.

A failed backend call fails exactly the requests it carried (the worker keeps serving). No
request waits forever: when the worker is closed, or its dispatcher dies, every request still
queued or in the call gets ``WorkerClosedError``, and new ones are refused with it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from actors.backends.base import Backend, Generation, GenParams
from rstar.log import get_logger

log = get_logger(__name__)


@dataclass
class WorkerStats:
    started: float = field(default_factory=time.perf_counter)
    busy_s: float = 0.0
    gen_calls: int = 0
    gen_sequences: int = 0
    gen_tokens: int = 0
    score_calls: int = 0
    scored: int = 0

    def snapshot(self) -> dict:
        wall = time.perf_counter() - self.started
        return {
            "wall_s": round(wall, 3),
            "busy_s": round(self.busy_s, 3),
            "busy_fraction": round(self.busy_s / wall, 4) if wall > 0 else 0.0,
            "gen_calls": self.gen_calls,
            "gen_tokens": self.gen_tokens,
            "tokens_per_s": round(self.gen_tokens / wall, 2) if wall > 0 else 0.0,
            "mean_batch_sequences": round(self.gen_sequences / self.gen_calls, 2) if self.gen_calls else 0.0,
            "score_calls": self.score_calls,
        }


@dataclass
class _GenReq:
    prompt: str
    params: GenParams
    future: asyncio.Future
    seed: int | None = None


@dataclass
class _ScoreReq:
    texts: list[str]
    future: asyncio.Future


class WorkerClosedError(RuntimeError):
    """The worker was closed, or its dispatcher died, while this request waited."""


def _fail(reqs: list[_GenReq] | list[_ScoreReq], error: BaseException) -> None:
    """Deliver ``error`` to every request still waiting (a cancelled waiter is skipped)."""
    for r in reqs:
        if not r.future.done():
            r.future.set_exception(error)


class ModelWorker:
    """Serialises backend and PPM calls in one thread, batching concurrent requests."""

    def __init__(
        self, backend: Backend, scorer=None, max_batch: int = 64, linger_s: float = 1.0, linger_step_s: float = 0.02
    ):
        self.backend = backend
        # When the model frees up, the trees that just got their results are still running
        # their candidates in the sandbox; dispatching at once would send a batch of one tree.
        # So the dispatcher lingers while requests keep arriving (each step of linger_step_s
        # that brings a new one extends it, up to linger_s) — milliseconds against calls of
        # seconds (``benchmarks/search_throughput.py`` reports the mean batch it reaches).
        self.linger_s, self.linger_step_s = linger_s, linger_step_s
        self.linger_frac = 0.1
        self.clients = 0
        self._last_call_s = 1.0
        self._executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="model")
        self.scorer = scorer  # an object with .score(list[str]) -> list[float] and .version
        self.max_batch = max_batch
        self.stats = WorkerStats()
        self._gen: list[_GenReq] = []
        self._score: list[_ScoreReq] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._between_calls: list[Callable[[], None]] = []
        self._inflight: list[_GenReq] | list[_ScoreReq] = []  # the call the dispatcher is in
        self._closed = False

    @property
    def policy_version(self) -> str:
        return self.backend.version

    @property
    def ppm_version(self) -> str:
        return self.scorer.version if self.scorer is not None else ""

    async def __aenter__(self) -> ModelWorker:
        self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def start(self) -> None:
        self.stats = WorkerStats()
        self._closed = False
        self._task = asyncio.create_task(self._run(), name="model-worker")
        self._task.add_done_callback(self._fail_waiting)

    async def close(self) -> None:
        """Stop the dispatcher and release the model thread; re-raises a dead dispatcher's error."""
        self._closed = True
        try:
            if self._task is not None:
                self._task.cancel()
                try:
                    await self._task
                except asyncio.CancelledError:
                    pass
        finally:  # released even when the dispatcher's error is re-raised
            self._task = None
            self._executor.shutdown(wait=False)

    def _fail_waiting(self, task: asyncio.Task) -> None:
        """The dispatcher ended (closed, or crashed): no request may wait for it forever."""
        why = "closed" if task.cancelled() or task.exception() is None else f"dispatcher died: {task.exception()!r}"
        waiting = [*self._inflight, *self._gen, *self._score]
        self._inflight, self._gen, self._score = [], [], []
        _fail(waiting, WorkerClosedError(f"model worker {why}"))

    def _check_open(self) -> None:
        if self._closed or (self._task is not None and self._task.done()):
            raise WorkerClosedError("model worker is closed")

    def check(self) -> None:
        """Raise the dispatcher's error if it died (call from the owner's main loop)."""
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.result()

    async def generate(self, prompt: str, params: GenParams, seed: int | None = None) -> tuple[list[Generation], str]:
        """``params.n`` continuations of ``prompt`` and the policy version that produced them.

        With ``seed`` they do not depend on the requests batched with this one (on a backend that
        seeds prompts one by one: transformers, vLLM on a GPU, an OpenAI-compatible server).
        """
        self._check_open()
        fut = asyncio.get_running_loop().create_future()
        self._gen.append(_GenReq(prompt, params, fut, seed))
        self._wake.set()
        return await fut

    async def score(self, texts: list[str]) -> tuple[list[float | None], str]:
        """PPM scores in [-1, 1] for ``texts`` and the PPM version; Nones without a PPM."""
        if self.scorer is None or not texts:
            return [None] * len(texts), self.ppm_version
        self._check_open()
        fut = asyncio.get_running_loop().create_future()
        self._score.append(_ScoreReq(texts, fut))
        self._wake.set()
        return await fut

    def run_between_calls(self, fn: Callable[[], None]) -> None:
        """Queue ``fn`` (e.g. a weight swap) to run in the model thread before the next call."""
        self._between_calls.append(fn)
        self._wake.set()

    # --- dispatcher ----------------------------------------------------------------------
    def _take_gen_batch(self) -> tuple[GenParams, list[_GenReq]]:
        """All queued requests that share the first request's params, up to max_batch sequences."""
        params = self._gen[0].params
        take: list[_GenReq] = []
        keep: list[_GenReq] = []
        seqs = 0
        for req in self._gen:
            if req.params == params and (not take or seqs + params.n <= self.max_batch):
                take.append(req)
                seqs += params.n
            else:
                keep.append(req)
        self._gen = keep
        return params, take

    async def _run(self) -> None:
        while True:
            if not (self._gen or self._score or self._between_calls):
                self._wake.clear()
                await self._wake.wait()
            while self._between_calls:
                fn = self._between_calls.pop(0)
                await self._in_model_thread(fn)
            # Scoring first: a scored candidate unblocks a tree, which then queues more generation.
            if self._score:
                scored = self._inflight = self._score
                self._score = []
                await self._do_score(scored)
                self._inflight = []
            if self._gen:
                await self._linger()
                if self._between_calls:  # a swap arrived while lingering: it goes first
                    continue
                params, reqs = self._take_gen_batch()
                self._inflight = reqs
                await self._do_generate(params, reqs)
                self._inflight = []

    async def _in_model_thread(self, fn, *args):
        """Run ``fn`` on the worker's own thread: never queued behind other to_thread work
        (graders, DB writes), so model time is model time."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def _linger(self) -> None:
        """Wait (briefly) for the other clients' requests before dispatching a call.

        With registered clients (``client()``: every tree or chain in flight), wait until each
        has a request queued, or the batch is full, or ``linger_frac`` of the last call's time
        has passed (a tree stuck in a slow sandbox run must not stall the rest). Without
        clients, wait while new requests keep arriving every ``linger_step_s``.
        """
        loop = asyncio.get_running_loop()
        if self.clients:
            budget = min(self.linger_s, self.linger_frac * self._last_call_s)
        else:
            budget = self.linger_s
        deadline = loop.time() + budget
        while loop.time() < deadline and not self._score and not self._between_calls:
            if sum(r.params.n for r in self._gen) >= self.max_batch:
                return
            if self.clients and len(self._gen) >= self.clients:
                return
            seen = len(self._gen)
            await asyncio.sleep(self.linger_step_s / (4 if self.clients else 1))
            if not self.clients and len(self._gen) == seen:
                return

    @contextlib.asynccontextmanager
    async def client(self):
        """Mark one tree/chain as in flight for the linger rule (see ``_linger``)."""
        self.clients += 1
        try:
            yield
        finally:
            self.clients -= 1

    async def _do_generate(self, params: GenParams, reqs: list[_GenReq]) -> None:
        version = self.backend.version  # swaps run in this task, so it cannot change mid-call
        t0 = time.perf_counter()
        try:
            seeds = [r.seed if r.seed is not None else random.getrandbits(62) for r in reqs]
            if all(r.seed is None for r in reqs):
                outs = await self._in_model_thread(self.backend.generate, [r.prompt for r in reqs], params)
            else:
                outs = await self._in_model_thread(self.backend.generate, [r.prompt for r in reqs], params, seeds)
        except Exception as e:  # deliver the failure to every waiter, keep serving
            log.exception("backend.generate failed for %d prompts", len(reqs))
            _fail(reqs, e)
            return
        finally:
            self._last_call_s = time.perf_counter() - t0
            self.stats.busy_s += self._last_call_s
        self.stats.gen_calls += 1
        self.stats.gen_sequences += len(reqs) * params.n
        for r, out in zip(reqs, outs):
            self.stats.gen_tokens += sum(g.tokens for g in out)
            if not r.future.done():
                r.future.set_result((out, version))

    async def _do_score(self, reqs: list[_ScoreReq]) -> None:
        texts = [t for r in reqs for t in r.texts]
        version = self.ppm_version
        t0 = time.perf_counter()
        try:
            scores = await self._in_model_thread(self.scorer.score, texts)
        except Exception as e:  # deliver the failure to every waiter, keep serving
            log.exception("PPM scoring failed for %d texts", len(texts))
            _fail(reqs, e)
            return
        finally:
            self.stats.busy_s += time.perf_counter() - t0
        self.stats.score_calls += 1
        self.stats.scored += len(texts)
        i = 0
        for r in reqs:
            if not r.future.done():
                r.future.set_result((scores[i : i + len(r.texts)], version))
            i += len(r.texts)
