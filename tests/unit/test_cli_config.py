"""``rstar config show``: values, their sources, docs, and secrets kept out of the output."""

import json

from typer.testing import CliRunner

from app.cli import app


def test_show_json_names_sources_and_masks_secrets(monkeypatch):
    monkeypatch.setenv("RSTAR_API__TOKEN", "123456")
    monkeypatch.setenv("RSTAR_STORE__URL", "postgresql://me:hunter2@db/rstar")
    res = CliRunner().invoke(app, ["config", "show", "--preset", "nano", "--set", "train.steps=7", "--json", "--doc"])
    assert res.exit_code == 0, res.output
    rows = {r["key"]: r for r in json.loads(res.output)}
    assert rows["train.steps"]["value"] == 7 and rows["train.steps"]["source"] == "--set"
    assert (
        rows["model.policy"]
        == {"key": "model.policy", "value": "nano", "source": "preset nano", "doc": rows["model.policy"]["doc"]}
        and rows["model.policy"]["doc"]
    )
    assert rows["search.c_uct"]["source"] == "default"
    assert rows["api.token"]["value"] == "***" and rows["store.url"]["value"] == "postgresql://me:***@db/rstar"
    assert "hunter2" not in res.output and "123456" not in res.output


def test_show_refuses_a_bad_value_clearly():
    res = CliRunner().invoke(app, ["config", "show", "--set", "search.rollouts=0"])
    assert res.exit_code == 2 and "rollouts" in res.output
    res = CliRunner().invoke(app, ["config", "show", "--preset", "nope"])
    assert res.exit_code == 2 and "unknown preset" in res.output
