"""PPM training on the tiny model: it learns to rank held-out pairs, holds out by tree, resumes."""

from __future__ import annotations

import random
import threading

import pytest

from actors.ppm import PPMScorer, load_ppm, ppm_text
from learner.ppm_train import PPMPair, split_by_tree, train_ppm
from learner.train_loop import LATEST, TrainingInterrupted
from rstar.checkpoints import verify_dir
from rstar.config import TrainConfig


def pairs(n_trees: int = 24, per_tree: int = 2, seed: int = 0) -> list[PPMPair]:
    """Learnable preferences: the positive adds what the question says is found, the negative subtracts."""
    rng = random.Random(seed)
    out = []
    for t in range(n_trees):
        for _ in range(per_tree):
            a, b = rng.randint(2, 30), rng.randint(2, 30)
            out.append(
                PPMPair(
                    tree_id=f"tree-{t}",
                    question=f"Mia has {a} coins and finds {b} more. How many coins does she have?",
                    prefix=(f"# Mia starts with {a} coins.\ncoins = {a}\n",),
                    pos=(f"# She finds {b} more, so add them.\nanswer = coins + {b}\n",),
                    neg=(f"# She finds {b} more, so take them away.\nanswer = coins - {b}\n",),
                )
            )
    return out


def swapped(ps: list[PPMPair]) -> list[PPMPair]:
    return [PPMPair(p.tree_id, p.question, p.prefix, p.neg, p.pos) for p in ps]


def cfg(**kw) -> TrainConfig:
    base = dict(
        ppm_lr=3e-3,
        ppm_epochs=3,
        ppm_batch_size=4,
        ppm_heldout_fraction=0.25,
        save_every=4,
        threads=1,
        warmup_ratio=0.0,
    )
    return TrainConfig(**{**base, **kw})


def test_split_holds_out_whole_trees_deterministically():
    ps = pairs()
    train, held = split_by_tree(ps, 0.25)
    assert held and train and len(train) + len(held) == len(ps)
    assert not {p.tree_id for p in train} & {p.tree_id for p in held}
    assert split_by_tree(ps, 0.25) == (train, held)
    few = pairs(n_trees=2)
    assert len({p.tree_id for p in split_by_tree(few, 0.01)[1]}) == 1  # a small round still gets a figure
    assert split_by_tree(few, 0.0)[1] == []


@pytest.mark.parametrize("flip", [False, True])
def test_ppm_learns_to_rank_heldout_pairs_either_way_round(tiny_model_dir, tmp_path, flip):
    # Trained on the preference and, separately, on its opposite, the PPM gets the held-out pairs
    # right both times: it learned the preference (a fixed scorer cannot pass both).
    ps = swapped(pairs()) if flip else pairs()
    rep = train_ppm(ps, tiny_model_dir, tmp_path / "ppm", cfg(), tmp_path / "work", progress=False)
    assert rep.heldout_pairs > 0 and rep.train_pairs + rep.heldout_pairs == len(ps)
    assert rep.last_loss < 0.5 * rep.first_loss, rep
    assert rep.heldout_accuracy >= 0.9, rep
    verify_dir(tmp_path / "ppm")
    ppm, tok = load_ppm(tmp_path / "ppm", "cpu")
    p = ps[0]
    hi, lo = PPMScorer(ppm, tok).score([ppm_text(p.question, list(p.prefix + s), tok) for s in (p.pos, p.neg)])
    assert -1 <= lo < hi <= 1


def test_stopped_training_saves_and_resumes(tiny_model_dir, tmp_path):
    stop = threading.Event()
    stop.set()
    with pytest.raises(TrainingInterrupted) as e:
        train_ppm(pairs(), tiny_model_dir, tmp_path / "ppm", cfg(), tmp_path / "work", progress=False, stop=stop)
    assert e.value.batches_done == 1 and (tmp_path / "work" / LATEST).exists()
    assert not (tmp_path / "ppm").exists()
    rep = train_ppm(pairs(), tiny_model_dir, tmp_path / "ppm", cfg(), tmp_path / "work", progress=False)
    assert rep.resumed_from_step == 1
    verify_dir(tmp_path / "ppm")


def test_max_pairs_caps_the_training_pairs_not_the_heldout_ones(tiny_model_dir, tmp_path):
    full = split_by_tree(pairs(), 0.25)
    rep = train_ppm(
        pairs(), tiny_model_dir, tmp_path / "ppm", cfg(ppm_max_pairs=5, ppm_epochs=1), tmp_path / "work", progress=False
    )
    assert rep.train_pairs == 5 and rep.heldout_pairs == len(full[1]) and rep.pairs == len(pairs())


def test_no_training_pairs_is_a_clear_error(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match="no PPM pairs"):
        train_ppm([], tiny_model_dir, tmp_path / "ppm", cfg(), tmp_path / "work", progress=False)


def test_seconds_per_pair_counts_the_pairs_trained_not_the_padding(tiny_model_dir, tmp_path, monkeypatch):
    # 5 pairs in batches of 4: the loop runs 4 + 1 pairs, not 2 full batches of 4.
    import learner.ppm_train as ppm_train

    real = ppm_train.run_loop

    def timed(*a, **kw):
        res = real(*a, **kw)
        res.seconds = 10.0
        return res

    monkeypatch.setattr(ppm_train, "run_loop", timed)
    rep = train_ppm(
        pairs(n_trees=5, per_tree=1),
        tiny_model_dir,
        tmp_path / "ppm",
        cfg(ppm_epochs=1, ppm_heldout_fraction=0.0),
        tmp_path / "work",
        progress=False,
    )
    assert rep.train_pairs == 5 and rep.seconds_per_pair == 2.0
