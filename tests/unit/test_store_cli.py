"""``rstar store …`` against a real SQLite store (typer's runner, the real command functions)."""

from __future__ import annotations

import json
import random

import pytest
from typer.testing import CliRunner

from app.cli import app
from store.db import open_store
from store.sample_trees import sample_problem, sample_tree
from store.writer import upsert_trees

runner = CliRunner()


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    url = f"sqlite:///{tmp_path_factory.mktemp('cli') / 'store.db'}"
    engine = open_store(url)
    rng = random.Random(11)
    problems = [sample_problem(rng) for _ in range(3)]
    trees = [sample_tree(rng, 25, round=i % 2, problem=problems[i % 3]) for i in range(8)]
    upsert_trees(engine, trees)
    engine.dispose()
    return url, trees


def _run(url: str, *args: str):
    result = runner.invoke(app, ["store", *args, "--set", f"store.url={url}"])
    return result


def test_stats_json(store):
    url, trees = store
    r = _run(url, "stats", "--json")
    assert r.exit_code == 0, r.output
    s = json.loads(r.stdout)
    assert (s["trees"], s["nodes"]) == (len(trees), sum(len(t.nodes) for t in trees))


def test_trees_filters_and_json(store):
    url, trees = store
    r = _run(url, "trees", "--round", "1", "--unsolved", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    want = {t.tree_id for t in trees if t.round == 1 and not t.solved}
    assert out["total"] == len(want) and {i["id"] for i in out["items"]} == want
    r = _run(url, "trees", "--limit", "2")
    assert r.exit_code == 0 and "2 of 8 trees" in r.stdout


def test_show_draws_every_node(store):
    url, trees = store
    t = trees[0]
    r = runner.invoke(app, ["store", "show", t.tree_id, "--set", f"store.url={url}"], terminal_width=200)
    assert r.exit_code == 0, r.output
    for n in t.nodes:
        assert f"#{n.idx} " in r.stdout
    marks = sum(n.terminal and n.correct is True for n in t.nodes)
    assert r.stdout.count("✓") == marks
    full = runner.invoke(app, ["store", "show", t.tree_id, "--full", "--set", f"store.url={url}"], terminal_width=200)
    assert t.nodes[1].code_output in full.stdout and "<end_of_step>" in full.stdout


def test_show_unknown_tree_is_a_clean_error(store):
    r = _run(store[0], "show", "no-such-tree")
    assert r.exit_code == 2 and "no tree with id 'no-such-tree'" in r.output


def test_export_writes_one_line_per_trajectory(store, tmp_path):
    url, trees = store
    out = tmp_path / "sub" / "t.jsonl"
    r = _run(url, "export", "--out", str(out), "--only-correct")
    assert r.exit_code == 0, r.output
    lines = [json.loads(ln) for ln in out.read_text().splitlines()]
    want = sum(n.terminal and n.correct is True for t in trees for n in t.nodes)
    assert len(lines) == want > 0
    assert all(ln["correct"] is True and len(ln["steps"]) == len(ln["q"]) == len(ln["ppm"]) for ln in lines)
    assert {"question", "gold", "steps", "answer", "correct", "q", "tree_id"} <= set(lines[0])
    assert [p.name for p in out.parent.iterdir()] == ["t.jsonl"]  # no temp file left behind


def test_store_url_from_the_environment(store, monkeypatch):
    url, trees = store
    monkeypatch.setenv("RSTAR_STORE__URL", url)
    r = runner.invoke(app, ["store", "stats", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["trees"] == len(trees)
