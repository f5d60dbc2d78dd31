"""ModelWorker's error paths: a failed call reaches every waiter, and closing the worker (or its
dispatcher dying) never leaves a request waiting. Batching itself is exercised by test_search."""

import asyncio
import threading

import pytest

from actors.backends.base import Backend, Generation, GenParams
from actors.batcher import ModelWorker, WorkerClosedError

pytestmark = pytest.mark.timeout(30)
PARAMS = GenParams(n=1, max_tokens=8, temperature=0.0, top_p=1.0, stop=())


class GatedBackend(Backend):
    """Each call waits for ``gate``; ``fail`` makes it raise, ``bad`` return a malformed batch."""

    name = "gated"

    def __init__(self, fail: bool = False, bad: bool = False):
        self.version, self.fail, self.bad = "v1", fail, bad
        self.gate, self.entered = threading.Event(), threading.Event()

    def generate(self, prompts, params, seeds=None):
        self.entered.set()
        self.gate.wait(10)
        if self.fail:
            raise RuntimeError("backend exploded")
        if self.bad:
            return [[object()] for _ in prompts]  # no .tokens: the dispatcher itself fails
        return [[Generation(text=p, tokens=1, stopped=True)] for p in prompts]


async def test_a_failed_call_reaches_every_waiter_and_the_worker_keeps_serving():
    backend = GatedBackend(fail=True)
    backend.gate.set()
    async with ModelWorker(backend, linger_s=0.01) as w:
        results = await asyncio.gather(*(w.generate(f"p{i}", PARAMS) for i in range(3)), return_exceptions=True)
        assert [str(r) for r in results] == ["backend exploded"] * 3
        backend.fail = False
        gens, version = await w.generate("again", PARAMS)
        assert gens[0].text == "again" and version == "v1"


async def _one_in_flight_one_queued(backend: GatedBackend):
    """A started worker whose backend holds one call at its gate, with a second request queued."""
    w = ModelWorker(backend, linger_s=0.0)
    w.start()
    first = asyncio.create_task(w.generate("in flight", PARAMS))
    await asyncio.to_thread(backend.entered.wait, 5)
    queued = asyncio.create_task(w.generate("queued", PARAMS))
    await asyncio.sleep(0.05)
    return w, first, queued


async def test_close_fails_the_call_in_flight_and_the_queued_requests():
    backend = GatedBackend()
    w, first, queued = await _one_in_flight_one_queued(backend)
    await w.close()
    backend.gate.set()
    for t in (first, queued):
        with pytest.raises(WorkerClosedError, match="closed"):
            await asyncio.wait_for(t, 5)
    with pytest.raises(WorkerClosedError):
        await w.generate("late", PARAMS)


async def test_a_dead_dispatcher_fails_its_waiters_and_check_raises():
    backend = GatedBackend(bad=True)
    w, first, queued = await _one_in_flight_one_queued(backend)
    backend.gate.set()
    for t in (first, queued):
        with pytest.raises(WorkerClosedError, match="dispatcher died: AttributeError"):
            await asyncio.wait_for(t, 5)
    with pytest.raises(AttributeError):
        w.check()
    with pytest.raises(AttributeError):  # close reports it too, and still releases the thread
        await w.close()
    assert w._executor._shutdown
