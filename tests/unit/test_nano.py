"""The built-in nano policy (``rstar.nano``): a from-scratch tokenizer and Llama, built once per cache."""

from __future__ import annotations

import pytest

from rstar.models import is_model_dir, load_causal_lm, load_tokenizer, resolve_model_dir
from rstar.nano import NanoSpec, build_nano, corpus, nano_key
from rstar.steps import STEP_END, build_prompt, render_steps

# A small spec keeps the test in seconds; the shape rules are the same as the default's.
SPEC = NanoSpec(hidden=32, layers=1, heads=2, kv_heads=1, mlp=64, vocab=400, corpus_problems=200)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    return build_nano(tmp_path_factory.mktemp("nano") / "nano", SPEC)


def test_digits_are_single_tokens_and_text_round_trips(built):
    tok = load_tokenizer(built)
    text = build_prompt("Mia has 1234 apples and buys 56 more.", [], None, few_shot=False) + render_steps(
        ["# Add them.\nanswer = 1234 + 56\n"]
    )
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids) == text
    pieces = tok.convert_ids_to_tokens(ids)
    assert all(len(p.lstrip("Ġ")) == 1 for p in pieces if p.lstrip("Ġ").isdigit() or any(c.isdigit() for c in p))
    assert tok(STEP_END, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(STEP_END)]
    assert tok.decode(tok(STEP_END)["input_ids"], skip_special_tokens=True) == STEP_END  # decoded as text
    assert tok.eos_token_id is not None and tok.pad_token_id == tok.eos_token_id
    assert len(tok) <= SPEC.vocab + 1


def test_the_model_has_the_spec_shape_and_tied_embeddings(built):
    model = load_causal_lm(built, device="cpu")
    c = model.config
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads) == (32, 1, 2, 1)
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight
    assert c.vocab_size == len(load_tokenizer(built))


def test_the_same_spec_builds_the_same_weights(built, tmp_path):
    again = build_nano(tmp_path / "again", SPEC)
    assert (again / "model.safetensors").read_bytes() == (built / "model.safetensors").read_bytes()
    assert (again / "tokenizer.json").read_text() == (built / "tokenizer.json").read_text()


def test_the_cache_key_follows_the_spec_and_the_corpus():
    texts = corpus(SPEC)
    assert nano_key(SPEC, texts) == nano_key(SPEC, list(texts))
    assert nano_key(SPEC, texts) != nano_key(NanoSpec(hidden=64, vocab=400, corpus_problems=200), texts)
    assert nano_key(SPEC, texts) != nano_key(SPEC, texts[:-1])


def test_resolve_builds_the_default_nano_once(tmp_path, monkeypatch):
    import rstar.nano as nano

    calls = []
    real = nano.build_nano

    def small(target, spec=NanoSpec(), texts=None):
        calls.append(target)
        return real(target, SPEC, texts=corpus(SPEC))

    monkeypatch.setattr(nano, "corpus", lambda spec: corpus(SPEC))
    monkeypatch.setattr(nano, "build_nano", small)
    first = resolve_model_dir("nano", tmp_path)
    assert is_model_dir(first) and first.parent == tmp_path / "models" and first.name.startswith("nano-")
    assert resolve_model_dir("nano", tmp_path) == first and len(calls) == 1
