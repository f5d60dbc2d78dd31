"""``rstar eval|solve --round R``: a trained round's models and its run's settings, without --set flags."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from app.cli import app, get_model_config
from rstar.checkpoints import commit_dir
from rstar.config import dump_config, load_config


def _round(tmp_path, tiny_model_dir, r: int, with_ppm: bool = False):
    d = tmp_path / "learner" / f"round-{r}"
    for name in ["policy"] + (["ppm"] if with_ppm else []):
        tmp = tmp_path / f".tmp-{name}"
        shutil.copytree(tiny_model_dir, tmp)
        (tmp / "MANIFEST.json").unlink(missing_ok=True)
        d.mkdir(parents=True, exist_ok=True)
        commit_dir(tmp, d / name)
    return d


def test_round_picks_its_models_and_the_runs_settings(tmp_path, tiny_model_dir):
    d = _round(tmp_path, tiny_model_dir, 2, with_ppm=True)
    run = load_config(overrides=[f'data_dir="{tmp_path}"', "generation.max_step_tokens=24"], env={})
    dump_config(run, tmp_path / "run" / "config.json")
    cfg = get_model_config(None, [f'data_dir="{tmp_path}"'], 2, None, None)
    assert cfg.model.policy == str(d / "policy") and cfg.model.ppm == str(d / "ppm")
    assert cfg.search.ppm_init and not cfg.generation.few_shot
    assert cfg.generation.max_step_tokens == 24  # from the run's resolved config
    # --policy alone: that model, no PPM, no few-shot.
    cfg = get_model_config(None, [], None, str(d / "policy"), None)
    assert cfg.model.ppm is None and not cfg.search.ppm_init and not cfg.generation.few_shot


def test_eval_round_runs_and_a_missing_round_is_a_clear_error(tmp_path, tiny_model_dir):
    _round(tmp_path, tiny_model_dir, 0)
    sets = [
        "--set",
        f'data_dir="{tmp_path}"',
        "--set",
        "generation.max_step_tokens=8",
        "--set",
        "search.max_depth=2",
        "--set",
        "sandbox.workers=1",
        "--set",
        "model.threads=1",
    ]
    res = CliRunner().invoke(app, ["eval", "--round", "0", "--limit", "2", "--json", *sets])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout.strip().splitlines()[-1])["n"] == 2
    res = CliRunner().invoke(app, ["eval", "--round", "7", "--limit", "2", *sets])
    assert res.exit_code != 0 and "round 7 has no complete policy" in res.output
    res = CliRunner().invoke(app, ["solve", "--round", "0", "--policy", "x", *sets])
    assert res.exit_code != 0 and "not both" in res.output
