"""Policy SFT on the tiny model: solution-only loss, a falling loss, LoRA, and resume after SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from learner.sft import SFTExample, encode_examples, train_sft
from learner.train_loop import LATEST
from rstar.checkpoints import verify_dir
from rstar.config import TrainConfig
from rstar.curriculum import synthetic_problems
from rstar.models import load_causal_lm, load_tokenizer
from rstar.steps import build_prompt, render_steps

EXAMPLES = [SFTExample(p.question, tuple(p.meta["reference_steps"])) for p in synthetic_problems(12, levels=(1,))]


def cfg(**kw) -> TrainConfig:
    base = dict(lr=3e-3, epochs=4, batch_size=2, save_every=3, threads=1, warmup_ratio=0.0)
    return TrainConfig(**{**base, **kw})


def weights(d: Path) -> dict[str, torch.Tensor]:
    return load_file(str(d / "model.safetensors"))


def test_labels_mask_the_prompt_and_end_with_eos(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    data, dropped = encode_examples(EXAMPLES[:3], tok, max_len=4096)
    assert dropped == 0
    for ex, row in zip(EXAMPLES, data):

        def chat(m):
            return tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)

        n_prompt = len(tok(build_prompt(ex.question, [], chat, few_shot=False), add_special_tokens=False)["input_ids"])
        assert row["labels"][:n_prompt] == [-100] * n_prompt
        solution = row["labels"][n_prompt:]
        assert solution[-1] == tok.eos_token_id and -100 not in solution
        assert tok.decode(solution[:-1]) == render_steps(list(ex.steps))
    short, dropped = encode_examples(EXAMPLES[:3], tok, max_len=40)
    assert short == [] and dropped == 3


def test_loss_falls_and_the_model_is_saved_with_its_manifest(tiny_model_dir, tmp_path):
    rep = train_sft(EXAMPLES, tiny_model_dir, tmp_path / "out", cfg(), tmp_path / "work", progress=False)
    assert rep.examples == 12 and rep.steps == 24 and rep.resumed_from_step == 0
    assert rep.last_loss < 0.8 * rep.first_loss, rep
    verify_dir(tmp_path / "out")
    assert not (tmp_path / "work").exists()  # resumable state dropped once the model is written
    load_causal_lm(tmp_path / "out", device="cpu")


def test_lora_saves_a_plain_merged_model(tiny_model_dir, tmp_path):
    rep = train_sft(
        EXAMPLES,
        tiny_model_dir,
        tmp_path / "out",
        cfg(method="lora", lora_r=4, epochs=2),
        tmp_path / "work",
        progress=False,
    )
    assert rep.last_loss < rep.first_loss
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert "adapter_config.json" not in files and "model.safetensors" in files
    base, tuned = weights(tiny_model_dir), weights(tmp_path / "out")
    assert set(tuned) <= set(base)  # same plain parameter names, no lora_A/lora_B
    assert any(not torch.equal(base[k], tuned[k]) for k in tuned)


def test_gradient_accumulation_steps_on_a_partial_last_group(tiny_model_dir, tmp_path):
    # 2 batches with grad_accum 4: only a partial group, which must still update the model.
    rep = train_sft(
        EXAMPLES[:4], tiny_model_dir, tmp_path / "out", cfg(epochs=1, grad_accum=4), tmp_path / "work", progress=False
    )
    assert rep.steps == 1
    base, tuned = weights(tiny_model_dir), weights(tmp_path / "out")
    assert any(not torch.equal(base[k], tuned[k]) for k in tuned)


SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    from learner.sft import SFTExample, train_sft
    from rstar.config import TrainConfig
    from rstar.curriculum import synthetic_problems
    ex = [SFTExample(p.question, tuple(p.meta["reference_steps"])) for p in synthetic_problems(12, levels=(1,))]
    cfg = TrainConfig(lr=3e-3, epochs=10, batch_size=2, save_every=3, threads=1, warmup_ratio=0.0)
    train_sft(ex, Path(sys.argv[1]), Path(sys.argv[2]), cfg, Path(sys.argv[3]), progress=False)
""")


@pytest.mark.slow  # a trainer subprocess (~15 s, mostly imports)
def test_a_run_killed_after_a_save_resumes_there_and_ends_where_an_unbroken_run_ends(tiny_model_dir, tmp_path):
    work = tmp_path / "work"
    proc = subprocess.Popen(
        [sys.executable, "-c", SCRIPT, str(tiny_model_dir), str(tmp_path / "killed"), str(work)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "RSTAR_LOG_LEVEL": "WARNING"},
    )
    deadline = time.monotonic() + 120
    while not (work / LATEST).exists():
        assert proc.poll() is None, f"trainer ended before its first save: {proc.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "no training state saved within 120 s"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert not (tmp_path / "killed").exists()

    c = cfg(epochs=10)
    resumed = train_sft(EXAMPLES, tiny_model_dir, tmp_path / "killed", c, work, progress=False)
    assert resumed.resumed_from_step >= 3 and resumed.resumed_from_step % 3 == 0
    whole = train_sft(EXAMPLES, tiny_model_dir, tmp_path / "whole", c, tmp_path / "work2", progress=False)
    assert whole.resumed_from_step == 0
    a, b = weights(tmp_path / "killed"), weights(tmp_path / "whole")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_state_for_other_data_is_not_resumed(tiny_model_dir, tmp_path):
    import threading

    from learner.train_loop import TrainingInterrupted

    stop = threading.Event()
    stop.set()  # stop after the first optimizer step, saving the state
    with pytest.raises(TrainingInterrupted):
        train_sft(EXAMPLES, tiny_model_dir, tmp_path / "out", cfg(), tmp_path / "work", progress=False, stop=stop)
    assert (tmp_path / "work" / LATEST).exists()
    rep = train_sft(EXAMPLES[:6], tiny_model_dir, tmp_path / "out", cfg(), tmp_path / "work", progress=False)
    assert rep.resumed_from_step == 0 and rep.examples == 6


def test_searched_share_repeats_the_searchs_examples_until_they_reach_it():
    from learner.sft import mix_searched

    teacher = EXAMPLES[:9]
    found = [SFTExample(e.question, e.steps, searched=True) for e in EXAMPLES[9:11]]
    mixed = mix_searched(teacher + found, 0.5)
    # 2 searched against 9 teacher: each repeated 5 times (10 of 19 >= 0.5; 4 times would be 8 of 17).
    assert mixed[:11] == teacher + found and len(mixed) == 19
    assert sum(e.searched for e in mixed) == 10 and {mixed.count(f) for f in found} == {5}
    assert mix_searched(teacher + found, 0.1) == teacher + found  # already 2 of 11 >= 0.1
    assert mix_searched(teacher + found, 0.0) == teacher + found
    assert mix_searched(teacher, 0.5) == teacher  # a control: nothing to repeat
    assert mix_searched(found, 0.5) == found  # no teacher examples: nothing to balance


def test_bf16_autocast_trains_and_saves_float32_weights(tiny_model_dir, tmp_path):
    rep = train_sft(EXAMPLES, tiny_model_dir, tmp_path / "out", cfg(autocast="bf16"), tmp_path / "work", progress=False)
    assert rep.last_loss < 0.8 * rep.first_loss, rep
    assert {w.dtype for w in weights(tmp_path / "out").values()} == {torch.float32}
