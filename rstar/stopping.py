"""Run a service's coroutine until SIGINT or SIGTERM asks it to stop.

    result = run_until_signal(lambda stop: run_actor(cfg, stop))

``main(stop)`` gets an ``asyncio.Event`` that is set by the first SIGINT or SIGTERM; it is
expected to finish its work in flight and return. The handlers live only as long as the loop
``asyncio.run`` makes, so the process's own handlers are back afterwards.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def run_until_signal(main: Callable[[asyncio.Event], Awaitable[T]]) -> T:
    async def guarded() -> T:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        return await main(stop)

    return asyncio.run(guarded())
