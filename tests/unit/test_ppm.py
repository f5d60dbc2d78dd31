"""The PPM on the tiny model: scores, padding, save/load, batching, the scored text, trainability."""

from __future__ import annotations

import pytest
import torch

from actors.ppm import PPMError, PPMScorer, load_ppm, ppm_from_policy, ppm_text, save_ppm
from rstar.models import load_tokenizer
from rstar.steps import FEW_SHOT, build_prompt, render_steps

STEPS = ["# Tom starts with 3 apples.\napples = 3\n", "# He buys 5 more.\nanswer = apples + 5\n"]
TEXTS = [
    "short",
    "a somewhat longer text with several words in it",
    "x = 1\n<end_of_step>\n",
    "Problem: how many?\n# count\nanswer = 2\n",
    "z",
]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def ppm(tiny_model_dir):
    return ppm_from_policy(tiny_model_dir, seed=0).eval()


def _scores(ppm, tok, texts, side):
    tok.padding_side = side
    try:
        enc = tok(texts, return_tensors="pt", padding=True)
    finally:
        tok.padding_side = "left"
    with torch.inference_mode():
        return ppm(enc.input_ids, enc.attention_mask)


def test_fresh_head_scores_near_zero_in_range(ppm, tok):
    s = _scores(ppm, tok, TEXTS, "left")
    assert s.shape == (len(TEXTS),)
    assert bool((s.abs() < 0.05).all())


def test_score_ignores_padding_side_and_batch_company(ppm, tok):
    with torch.no_grad():
        ppm.head.weight.normal_(generator=torch.Generator().manual_seed(1))  # non-trivial scores
    alone = torch.cat([_scores(ppm, tok, [t], "left") for t in TEXTS])
    assert torch.allclose(_scores(ppm, tok, TEXTS, "left"), alone, atol=1e-5)
    assert torch.allclose(_scores(ppm, tok, TEXTS, "right"), alone, atol=1e-5)
    assert alone.abs().max() > 0.05  # the check above compared real signal, not zeros


def test_forward_is_tanh_of_reward(ppm, tok):
    enc = tok(TEXTS, return_tensors="pt", padding=True)
    with torch.inference_mode():
        r = ppm.reward(enc.input_ids, enc.attention_mask)
        assert torch.allclose(ppm(enc.input_ids, enc.attention_mask), torch.tanh(r))


def test_save_load_roundtrip_and_overwrite(ppm, tok, tmp_path):
    out = save_ppm(ppm, tmp_path / "ppm-v1", tok)
    assert {"config.json", "model.safetensors", "value_head.safetensors", "ppm.json", "tokenizer.json"} <= {
        p.name for p in out.iterdir()
    }
    loaded, ltok = load_ppm(out, device="cpu")
    assert torch.allclose(_scores(loaded, ltok, TEXTS, "left"), _scores(ppm, tok, TEXTS, "left"), atol=1e-6)
    with torch.no_grad():
        ppm.head.bias.fill_(0.5)
    save_ppm(ppm, out, tok)  # replaces the old directory atomically
    again, _ = load_ppm(out, device="cpu")
    assert torch.allclose(again.head.bias, torch.tensor([0.5]))
    assert [p.name for p in tmp_path.iterdir()] == ["ppm-v1"]  # no temp or old dirs left


def test_load_refuses_a_non_ppm_dir(tiny_model_dir):
    with pytest.raises(PPMError) as e:
        load_ppm(tiny_model_dir, device="cpu")
    assert e.value.path == tiny_model_dir


def test_scorer_batches_keep_order_and_swap(ppm, tok, tmp_path):
    path = save_ppm(ppm, tmp_path / "ppm-a", tok)
    big = PPMScorer(*load_ppm(path, device="cpu"), max_batch=64)
    small = PPMScorer(*load_ppm(path, device="cpu"), max_batch=2)
    assert big.version == "ppm-a"
    assert small.score(TEXTS) == pytest.approx(big.score(TEXTS), abs=1e-5)
    assert small.score([]) == []
    assert all(-1.0 <= s <= 1.0 for s in big.score(TEXTS))
    with torch.no_grad():
        ppm.head.bias.fill_(-2.0)
    other = save_ppm(ppm, tmp_path / "ppm-b", tok)
    before = big.score(TEXTS)
    big.load_weights(other, "b")
    assert big.version == "b"
    assert all(a < b for a, b in zip(big.score(TEXTS), before))


def test_ppm_text_is_the_prompt_without_few_shot(tok):
    text = ppm_text("Tom has 3 apples and buys 5. How many?", STEPS, tok)
    assert text.endswith(render_steps(STEPS))
    assert text.startswith("<|im_start|>user\n")
    assert FEW_SHOT[0][0] not in text
    assert text == build_prompt(
        "Tom has 3 apples and buys 5. How many?",
        STEPS,
        lambda m: tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
        few_shot=False,
    )


def test_one_pairwise_step_separates_the_pair(tiny_model_dir, tok):
    model = ppm_from_policy(tiny_model_dir, seed=0).train()
    enc = tok(
        [ppm_text("q", STEPS, tok), ppm_text("q", STEPS[:1] + ["answer = 7\n"], tok)], return_tensors="pt", padding=True
    )
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    gaps = []
    for _ in range(3):
        r = model.reward(enc.input_ids, enc.attention_mask)
        loss = -torch.nn.functional.logsigmoid(r[0] - r[1])
        gaps.append((r[0] - r[1]).item())
        opt.zero_grad()
        loss.backward()
        assert model.backbone.embed_tokens.weight.grad.abs().sum() > 0  # gradient reaches it
        opt.step()
    assert gaps[-1] > gaps[0]


def test_scorer_shared_prefix_path_equals_plain_forward(ppm, tok, monkeypatch):
    texts = [ppm_text("Tom has 3 apples and buys 5. How many?", STEPS[:k] + [f"x = {k}\n"], tok) for k in range(3)] + [
        ppm_text("A different question entirely?", STEPS, tok)
    ]
    with torch.no_grad():
        ppm.head.weight.normal_(generator=torch.Generator().manual_seed(2))
    want = _scores(ppm, tok, texts, "left").tolist()
    scorer = PPMScorer(ppm, tok, max_batch=3)
    assert scorer.score(texts) == pytest.approx(want, abs=1e-5)
    assert scorer.score(texts) == pytest.approx(want, abs=1e-5)  # prefix KV from the LRU
    assert scorer.prefixes.hits >= 1
    with pytest.raises(ValueError):
        scorer.score([""])
