"""Generation backends on the tiny model: the decode loop against HF generate(), stops, sampling, swaps."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from tiny_model import make_tiny_model

from actors.backends import row_seeds, setup_backend
from actors.backends import shared_prefix as sp
from actors.backends.base import BackendError, Generation, GenParams
from actors.backends.transformers_backend import TransformersBackend, _chunks, _sample
from rstar.config import Config, ModelConfig
from rstar.steps import build_prompt

QUESTIONS = [
    "Tom has 3 apples and buys 5 more. How many apples?",
    "A car drives 60 km per hour for 2 hours. How far does it go?",
    "Sam reads 12 pages a day for a week; how many pages?",
]


@pytest.fixture(scope="module")
def backend(tiny_model_dir):
    return TransformersBackend(tiny_model_dir, device="cpu")


def _prompts(tok, questions=QUESTIONS, steps=()):
    def template(messages):
        return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    return [build_prompt(q, list(steps), template) for q in questions]


def _hf_greedy(model_dir, prompts, max_new):
    """Reference: transformers' own generate(), greedy, stock SDPA attention."""
    from rstar.models import load_causal_lm, load_tokenizer

    tok, model = load_tokenizer(model_dir), load_causal_lm(model_dir, "cpu")
    enc = tok(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new, do_sample=False)
    texts = []
    for row in out[:, enc.input_ids.shape[1] :].tolist():
        if tok.eos_token_id in row:
            row = row[: row.index(tok.eos_token_id)]
        texts.append(tok.decode(row))
    return texts


@pytest.mark.parametrize("cpu_flash", [True, False], ids=["fused-cpu-kernel", "portable-matmul"])
def test_greedy_matches_hf_generate(tiny_model_dir, backend, monkeypatch, cpu_flash):
    if not cpu_flash:
        monkeypatch.setattr(sp, "_CPU_FLASH", None)
    backend.prefixes.clear()
    prompts = _prompts(backend.tokenizer)
    # Different suffix lengths after a shared few-shot head: exercises prefix, padding and slabs.
    prompts[1] += "# Speed times time.\n"
    params = GenParams(n=1, max_tokens=12, temperature=0.0, stop=())
    want = _hf_greedy(tiny_model_dir, prompts, 12)
    first = [g[0].text for g in backend.generate(prompts, params)]
    again = [g[0].text for g in backend.generate(prompts, params)]  # prefix KV now from the LRU
    assert first == want
    assert again == want
    assert backend.prefixes.hits >= 1


def test_grouped_prefill_without_prefix_cache_matches_hf(tiny_model_dir):
    b = TransformersBackend(tiny_model_dir, device="cpu", prefill_tokens=1, prefix_entries=0)
    prompts = _prompts(b.tokenizer)
    params = GenParams(n=2, max_tokens=6, temperature=0.0, stop=())
    want = _hf_greedy(tiny_model_dir, prompts, 6)
    assert [[g.text for g in x] for x in b.generate(prompts, params)] == [[w, w] for w in want]


def test_single_prompt_many_samples_share_one_prefill(tiny_model_dir, backend):
    prompt = _prompts(backend.tokenizer)[:1]
    want = _hf_greedy(tiny_model_dir, prompt, 8)[0]
    out = backend.generate(prompt, GenParams(n=4, max_tokens=8, temperature=0.0, stop=()))
    assert [g.text for g in out[0]] == [want] * 4


def test_stop_string_cuts_text_before_it(backend):
    prompt = _prompts(backend.tokenizer)[:1]
    free = backend.generate(prompt, GenParams(max_tokens=24, temperature=0.0, stop=()))[0][0]
    assert free.tokens == 24 and not free.stopped
    stop = free.text[len(free.text) // 2 : len(free.text) // 2 + 3]
    cut = free.text.index(stop)
    got = backend.generate(prompt, GenParams(max_tokens=24, temperature=0.0, stop=(stop,)))[0][0]
    assert got.stopped and not got.eos
    assert got.text == free.text[:cut]
    assert 0 < got.tokens < 24


def test_eos_ends_a_sample(backend):
    prompt = _prompts(backend.tokenizer)[:1]
    first = backend.generate(prompt, GenParams(max_tokens=1, temperature=0.0, stop=()))[0][0]
    first_id = backend.tokenizer.encode(first.text, add_special_tokens=False)[0]
    saved = backend.eos_ids
    backend.eos_ids = {first_id}
    try:
        got = backend.generate(prompt, GenParams(n=2, max_tokens=8, temperature=0.0, stop=()))[0]
    finally:
        backend.eos_ids = saved
    assert [(g.text, g.tokens, g.eos, g.stopped) for g in got] == [("", 1, True, False)] * 2


def test_n_per_prompt_in_order_with_chunking(tiny_model_dir):
    b = TransformersBackend(tiny_model_dir, device="cpu", max_batch=4)
    prompts = _prompts(b.tokenizer)
    params = GenParams(n=5, max_tokens=6, temperature=1.0, stop=(), seed=7)
    out = b.generate(prompts, params)
    assert [len(x) for x in out] == [5, 5, 5]
    assert all(1 <= g.tokens <= 6 for x in out for g in x)
    again = b.generate(prompts, params)
    assert [[g.text for g in x] for x in again] == [[g.text for g in x] for x in out]
    other = b.generate(prompts, GenParams(n=5, max_tokens=6, temperature=1.0, stop=(), seed=8))
    assert [[g.text for g in x] for x in other] != [[g.text for g in x] for x in out]


def test_a_seeded_prompt_samples_the_same_whatever_is_batched_beside_it(tiny_model_dir):
    wide = TransformersBackend(tiny_model_dir, device="cpu", max_batch=64)
    narrow = TransformersBackend(tiny_model_dir, device="cpu", max_batch=4)
    prompts = _prompts(wide.tokenizer)
    params = GenParams(n=6, max_tokens=8, temperature=1.0, stop=())

    def texts(out):
        return [[g.text for g in x] for x in out]

    alone = texts(wide.generate(prompts[:1], params, seeds=[11]))
    # Beside other prompts (other lengths, so other padding), in another order, split over chunks.
    beside = texts(wide.generate([prompts[2], prompts[0], prompts[1]], params, seeds=[5, 11, 6]))
    split = texts(narrow.generate([prompts[1], prompts[0]], params, seeds=[6, 11]))
    assert beside[1] == alone[0] and split[1] == alone[0]
    assert split[0] == beside[2]
    assert len(set(alone[0])) > 1  # the samples of one prompt differ from each other
    assert texts(wide.generate(prompts[:1], params, seeds=[12])) != alone
    with pytest.raises(ValueError, match="2 seeds for 1 prompts"):
        wide.generate(prompts[:1], params, seeds=[1, 2])


def test_row_uniforms_are_uniform_and_independent_of_the_batch():
    seeds = row_seeds.row_seeds([3, 4], [50000, 2])
    u = row_seeds.uniforms(seeds, 7)
    assert 0.0 <= u.min() and u.max() < 1.0 and abs(u.mean() - 0.5) < 0.01 and abs(u.var() - 1 / 12) < 0.005
    alone = row_seeds.uniforms(row_seeds.row_seeds([4], [2]), 7)
    assert (u[-2:] == alone).all()
    assert (row_seeds.row_seeds([4], [1], first=[1]) == seeds[-1:]).all()  # sample 1 of prompt 4
    assert len(set(row_seeds.uniforms(seeds[:1], t)[0] for t in range(100))) == 100  # a stream per step


def test_empty_and_bad_params(backend):
    assert backend.generate([], GenParams()) == []
    with pytest.raises(ValueError):
        backend.generate(["x"], GenParams(n=0))


def test_load_weights_swaps_and_refuses_a_bad_dir(tiny_model_dir, tmp_path):
    other_dir = make_tiny_model(tmp_path / "other", seed=1)
    b = TransformersBackend(tiny_model_dir, device="cpu")
    prompts = _prompts(b.tokenizer)[:2]
    params = GenParams(max_tokens=8, temperature=0.0, stop=())
    before = b.generate(prompts, params)
    b.load_weights(str(other_dir), "v1")
    assert b.version == "v1"
    swapped = b.generate(prompts, params)
    assert swapped == TransformersBackend(other_dir, device="cpu").generate(prompts, params)
    assert swapped != before
    with pytest.raises(BackendError, match="nowhere"):
        b.load_weights(str(tmp_path / "nowhere"), "v2")
    assert b.version == "v1"
    assert b.generate(prompts, params) == swapped


def test_setup_backend_builds_transformers_from_config(tiny_model_dir, tmp_path):
    cfg = Config(model=ModelConfig(policy=str(tiny_model_dir), device="cpu", cache_dir=tmp_path))
    b = setup_backend(cfg)
    assert isinstance(b, TransformersBackend) and b.version == tiny_model_dir.name


def test_chunks_respect_max_batch_and_keep_every_sample():
    chunks = _chunks([5, 5, 5], 4)
    assert all(sum(c for _, c in ch) <= 4 for ch in chunks)
    totals = {}
    for ch in chunks:
        for i, c in ch:
            totals[i] = totals.get(i, 0) + c
    assert totals == {0: 5, 1: 5, 2: 5}


def test_sampler_greedy_and_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.1, 0.06, 0.04]]))
    assert _sample(logits, 0.0, 0.9, None).item() == 0
    u = torch.from_numpy(row_seeds.uniforms(row_seeds.row_seeds([0], [20000]), 0))
    draws = _sample(logits.expand(20000, 5), 1.0, 0.85, u)
    freq = torch.bincount(draws, minlength=5).float() / 20000
    # Nucleus at 0.85: tokens 0, 1, 2 (0.5 + 0.3 < 0.85), renormalised over 0.9.
    assert freq[3:].sum() == 0
    assert torch.allclose(freq[:3], torch.tensor([0.5, 0.3, 0.1]) / 0.9, atol=0.015)


def test_vllm_missing_is_a_clear_error(tiny_model_dir):
    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vLLM is installed")
    from actors.backends.vllm_backend import VLLMBackend

    with pytest.raises(BackendError, match="pip install vllm"):
        VLLMBackend(tiny_model_dir, device="cpu")


def test_vllm_outputs_map_to_generations():
    """vLLM cannot run here; its CompletionOutput fields are mirrored by a plain dataclass."""
    from dataclasses import dataclass

    from actors.backends.vllm_backend import _generation

    @dataclass
    class Out:
        text: str
        token_ids: list[int]
        finish_reason: str | None
        stop_reason: int | str | None

    stop = ("<end_of_step>",)
    assert _generation(Out("x = 1\n", [1, 2, 3], "stop", "<end_of_step>"), stop) == Generation(
        text="x = 1\n", tokens=3, stopped=True, eos=False
    )
    assert _generation(Out("x = 1\n<end_of_step>\nmore", [1] * 5, "stop", "<end_of_step>"), stop).text == "x = 1\n"
    assert _generation(Out("done", [1, 2], "stop", None), stop) == Generation(
        text="done", tokens=2, stopped=False, eos=True
    )
    assert _generation(Out("abc", [1] * 4, "length", None), stop) == Generation(
        text="abc", tokens=4, stopped=False, eos=False
    )
