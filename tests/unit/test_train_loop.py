"""The run's batch order (``learner.train_loop.batch_order``): epochs, a fixed step budget, length grouping."""

from __future__ import annotations

from learner.train_loop import GROUP_BATCHES, batch_order


def test_epochs_cover_every_item_once_per_pass():
    batches = batch_order(10, 2, 4, seed=1)
    assert [len(b) for b in batches] == [4, 4, 2, 4, 4, 2]
    assert sorted(sum(batches[:3], [])) == list(range(10)) == sorted(sum(batches[3:], []))
    assert batches[:3] != batches[3:]  # reshuffled each pass


def test_a_step_budget_gives_exactly_that_many_batches_whatever_the_data_size():
    assert len(batch_order(10, 1, 4, seed=0, total=7)) == 7  # 3 batches a pass: 2 passes and a bit
    assert len(batch_order(1000, 5, 4, seed=0, total=7)) == 7  # less than one pass
    assert batch_order(10, 1, 4, seed=0, total=7)[:3] == batch_order(10, 1, 4, seed=0)  # same first pass


def test_length_grouping_keeps_every_item_and_cuts_the_padding():
    n, bs = 40 * GROUP_BATCHES, 4
    lengths = [(i * 37) % 500 + 10 for i in range(n)]  # lengths 10..509, spread out
    grouped = batch_order(n, 1, bs, seed=3, lengths=lengths)
    plain = batch_order(n, 1, bs, seed=3)
    assert sorted(sum(grouped, [])) == list(range(n))

    def padded(batches):
        return sum(len(b) * max(lengths[i] for i in b) for b in batches)

    assert padded(grouped) < 0.8 * padded(plain)
    assert grouped == batch_order(n, 1, bs, seed=3, lengths=lengths)  # deterministic: a resume sees the same


def test_a_tied_models_state_saves_without_the_shared_tensor_warning_and_reloads_tied(tiny_model_dir, tmp_path, caplog):
    import logging

    import torch
    from accelerate import Accelerator
    from transformers import LlamaForCausalLM

    from learner.train_loop import _save

    acc = Accelerator(cpu=True)
    model = acc.prepare(LlamaForCausalLM.from_pretrained(tiny_model_dir))  # tied embeddings
    with caplog.at_level(logging.WARNING):
        _save(acc, tmp_path, 3, "fp")
    assert not [r for r in caplog.records if "shared tensor" in r.getMessage()]
    acc2 = Accelerator(cpu=True)  # a resumed run: a new process's accelerator and model
    fresh = acc2.prepare(LlamaForCausalLM.from_pretrained(tiny_model_dir))
    with torch.no_grad():
        fresh.model.embed_tokens.weight.add_(1.0)
    assert not torch.equal(fresh.lm_head.weight, model.lm_head.weight)
    acc2.load_state(str(tmp_path / "state-00000003"))
    assert fresh.lm_head.weight.data_ptr() == fresh.model.embed_tokens.weight.data_ptr()
    assert torch.equal(fresh.lm_head.weight, model.lm_head.weight)
