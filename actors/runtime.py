"""Assemble a ready search from the config: backend, PPM, sandbox pool and model worker.

    async with setup_search(cfg) as ctx:
        tree = await search_tree(problem, ctx)

Used by ``rstar solve``, ``rstar eval``, the benchmarks and the actor service. Loading is the
slow part (model conversion on first use, weights, the sandbox workers), so progress is logged.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from actors.batcher import ModelWorker
from actors.search import SearchContext
from rstar.config import Config
from rstar.log import get_logger, timed

log = get_logger(__name__)


def chat_template_for(tokenizer):
    """The tokenizer's chat template as ``messages -> prompt text``, or None if it has none."""
    if tokenizer is None or not getattr(tokenizer, "chat_template", None):
        return None

    def apply(messages: list[dict]) -> str:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    return apply


def setup_scorer(cfg: Config):
    """The PPM scorer named by ``cfg.model.ppm``, or None to search without one."""
    if not cfg.model.ppm:
        return None
    from actors.ppm import PPMScorer, load_ppm

    with timed(log, f"loading PPM {cfg.model.ppm}"):
        ppm, tokenizer = load_ppm(cfg.model.ppm, device=cfg.model.device)
    return PPMScorer(ppm, tokenizer, max_batch=cfg.model.max_batch)


@asynccontextmanager
async def setup_search(
    cfg: Config, actor_id: str = "local", round_no: int = 0, backend=None
) -> AsyncIterator[SearchContext]:
    from actors.backends import setup_backend
    from actors.sandbox import SandboxPool

    # Off the event loop (seconds, on a loaded CPU): the loop keeps serving — heartbeats, ingest,
    # a stop signal — and a stop cancels the wait (the load itself is left to finish or be dropped
    # at exit, ``rstar.stopping``). vLLM builds its engine where it is called: the caller's thread.
    if backend is None:
        with timed(log, f"loading policy {cfg.model.policy} ({cfg.model.backend})"):
            if cfg.model.backend == "vllm":
                backend = setup_backend(cfg)
            else:
                backend = await asyncio.to_thread(setup_backend, cfg)
    scorer = await asyncio.to_thread(setup_scorer, cfg) if cfg.model.ppm else None
    tokenizer = getattr(backend, "tokenizer", None)
    async with (
        SandboxPool(cfg.sandbox) as sandbox,
        ModelWorker(backend, scorer, max_batch=cfg.model.max_batch) as worker,
    ):
        yield SearchContext(
            worker=worker,
            sandbox=sandbox,
            search=cfg.search,
            generation=cfg.generation,
            chat_template=chat_template_for(tokenizer),
            actor_id=actor_id,
            round=round_no,
        )
