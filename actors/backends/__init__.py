"""Generation backends behind one interface (``base.Backend``); ``setup_backend`` picks one by config.

Each backend module imports its heavy dependency (torch/transformers, vllm, aiohttp) only when
``setup_backend`` builds it, so importing this package is cheap.
"""

from __future__ import annotations

from actors.backends.base import Backend, BackendError, Generation, GenParams
from rstar.config import Config

__all__ = ["Backend", "BackendError", "GenParams", "Generation", "setup_backend"]


def setup_backend(cfg: Config) -> Backend:
    """The backend named by ``cfg.model.backend``, loaded with the configured policy."""
    m = cfg.model
    if m.backend == "openai":
        from actors.backends.openai_backend import OpenAIBackend

        return OpenAIBackend(
            m.openai_url,
            m.openai_model,
            key_env=m.openai_key_env,
            timeout_s=m.openai_timeout_s,
            retries=m.openai_retries,
        )
    from rstar.models import resolve_model_dir

    model_dir = resolve_model_dir(m.policy, m.cache_dir)
    if m.backend == "vllm":
        from actors.backends.vllm_backend import VLLMBackend

        return VLLMBackend(model_dir, device=m.device, dtype=m.dtype, max_batch=m.max_batch)
    from actors.backends.transformers_backend import TransformersBackend

    return TransformersBackend(
        model_dir,
        device=m.device,
        dtype=m.dtype,
        threads=m.threads,
        max_batch=m.max_batch,
        prefix_entries=m.prefix_cache,
    )
