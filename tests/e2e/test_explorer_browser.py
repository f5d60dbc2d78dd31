"""The web explorer at ``/`` in a real browser: headless Debian ``chromium`` driven by selenium.

The real API (``store.api.create_app``) serves on a free port over a real SQLite store: curriculum
problems (with their ``meta["level"]``), sample search trees of rounds 1-2 (a policy swap in the
middle of some), round 0's teacher chains, the nano learning run's round rows
(``docs/nano-run/rounds.json``) and the training rows the learner's own data selection
(``learner.data.select_round``) picks from those trees. The browser must load the page with no
console error, list the trees, draw one with its SFT trajectories and PPM pairs, show a clicked
node's code, output, Q, visits, PPM score and model versions, filter the list, and plot the rounds'
learning curve with a point per round. Skipped, saying why, where chromium or chromedriver is not
installed (``.ci/run`` installs them with apt-get). A second test checks the same store through
``store.queries`` alone: each tree's level, the level filter, and the SFT rows and PPM pairs each
tree reports against the learner's tables.

The same helpers take the README's screenshot of a store's tree::

    .venv/bin/python tests/e2e/test_explorer_browser.py --store sqlite:///data/rstar.db --out docs/explorer.png
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import shutil
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest
from sqlalchemy import Engine, insert

from rstar.config import load_config
from rstar.curriculum import synthetic_problems
from rstar.schemas import TreeResult
from store.db import open_store
from store.models import RoundRow
from store.queries import TreeFilter
from store.sample_trees import sample_tree
from store.writer import upsert_trees

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
NANO_ROUNDS = ROOT / "docs" / "nano-run" / "rounds.json"
XSS = "<img src=x onerror=\"document.title='pwned'\">"


def _browser_paths() -> tuple[str, str] | None:
    browser = next((p for n in ("chromium", "chromium-browser", "google-chrome") if (p := shutil.which(n))), None)
    driver = shutil.which("chromedriver")
    return (browser, driver) if browser and driver else None


@contextlib.contextmanager
def serve(engine: Engine, data_dir: Path) -> Iterator[str]:
    """The real API app on a free port of 127.0.0.1, in a thread with its own event loop; yields its URL."""
    from aiohttp import web

    from store.api import create_app

    cfg = load_config(overrides=[f"data_dir='{data_dir}'", "api.metrics_refresh_s=0"], env={})
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(create_app(cfg, engine))
    loop.run_until_complete(runner.setup())
    site = web.TCPSite(runner, "127.0.0.1", 0)
    loop.run_until_complete(site.start())
    port = runner.addresses[0][1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.run_until_complete(runner.cleanup())
        loop.close()


@contextlib.contextmanager
def chromium(width: int = 1500, height: int = 950) -> Iterator[Any]:
    """Headless chromium through chromedriver, keeping the browser's console log."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    paths = _browser_paths()
    assert paths is not None, "chromium and chromedriver are not installed"
    opts = webdriver.ChromeOptions()
    opts.binary_location = paths[0]
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--disable-extensions", "--no-first-run"):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=opts, service=Service(executable_path=paths[1]))
    try:
        yield driver
    finally:
        driver.quit()


# --- the store ------------------------------------------------------------------------------------------
def _swap_midway(tree: TreeResult, policy: str, ppm: str) -> TreeResult:
    """The tree as if the actor swapped to the pair ``policy``/``ppm`` halfway: later nodes are theirs."""
    half = len(tree.nodes) // 2
    nodes = [
        msgspec.structs.replace(n, policy_version=policy, ppm_version=ppm) if n.idx >= half else n for n in tree.nodes
    ]
    return msgspec.structs.replace(tree, nodes=nodes)


def fill_store(engine: Engine) -> dict[str, Any]:
    """Problems, trees, rounds and training rows as a nano run leaves them; returns what was written."""
    from learner.data import select_round, write_selection
    from store import learner_tables as lt

    rng = random.Random(17)
    problems = synthetic_problems(12, "train", (1, 2, 3), seed=5)
    rows = [r for r in json.loads(NANO_ROUNDS.read_text()) if r["round"] <= 2]
    version = {r["round"]: (r["policy_version"], r["ppm_version"] or "none") for r in rows}  # round 0: no PPM
    trees: list[TreeResult] = []
    for p in problems[:6]:  # round 0: the teacher's one-path demonstrations
        t = sample_tree(rng, 4, branching=1, max_depth=3, problem=p, policy_version="teacher", ppm_version="none")
        trees.append(msgspec.structs.replace(t, source="teacher"))
    swapped = []
    for r in (1, 2):
        policy, ppm = version[r - 1]
        for i, p in enumerate(problems):
            t = sample_tree(rng, rng.randint(18, 40), round=r, problem=p, policy_version=policy, ppm_version=ppm)
            # Step 1 carries markup, to be shown as text; every third tree spans a model swap.
            nodes = [msgspec.structs.replace(n, text=f"# {XSS}\n{n.text}") if n.idx == 1 else n for n in t.nodes]
            t = msgspec.structs.replace(t, nodes=nodes)
            if i % 3 == 0:
                t = _swap_midway(t, *version[r])
                swapped.append(t.tree_id)
            trees.append(t)
    upsert_trees(engine, trees)
    columns = set(RoundRow.__table__.c.keys())
    with engine.begin() as c:
        c.execute(
            insert(RoundRow),
            [
                {
                    **{k: v for k, v in r.items() if k in columns},
                    "started_at": datetime.fromisoformat(r["started_at"]),
                    "closed_at": datetime.fromisoformat(r["closed_at"]) if r["closed_at"] else None,
                }
                for r in rows
            ],
        )
    train = load_config(env={}).train
    for r in (1, 2):
        with lt.begin(engine) as conn:
            write_selection(conn, r, select_round(engine, r, train))
    return {"trees": trees, "rounds": [r["round"] for r in rows], "problems": problems, "swapped": swapped}


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Iterator[tuple[str, Engine, dict[str, Any]]]:
    if _browser_paths() is None:
        pytest.skip("no chromium and chromedriver on PATH: apt-get install chromium chromium-driver (.ci/run does)")
    pytest.importorskip("selenium", reason="selenium is not installed: pip install -e '.[dev]'")
    tmp = tmp_path_factory.mktemp("explorer")
    engine = open_store(f"sqlite:///{tmp / 'store.db'}")
    filled = fill_store(engine)
    with serve(engine, tmp) as url:
        yield url, engine, filled
    engine.dispose()


# --- the tests --------------------------------------------------------------------------------------------
def test_the_store_gives_levels_and_what_training_took(tmp_path):
    """What the explorer draws, from ``store.queries`` alone (no browser needed)."""
    from store import learner_tables as lt
    from store.queries import count_trees, get_tree, list_trees

    engine = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    filled = fill_store(engine)
    level = {p.id: p.meta["level"] for p in filled["problems"]}
    rows, total = list_trees(engine, limit=1000)
    assert total == len(filled["trees"]) and all(r["level"] == level[r["problem_id"]] for r in rows)
    rows, total = list_trees(engine, level="2", solved=False, limit=1000)
    want = [t for t in filled["trees"] if level[t.problem.id] == 2 and not t.solved]
    assert total == len(want) > 0 and {r["id"] for r in rows} == {t.tree_id for t in want}
    assert count_trees(engine, TreeFilter(level="9")) == 0
    sft = {(r["tree_id"], r["leaf_idx"]): r for rnd in (1, 2) for r in lt.sft_rows(engine, rnd)}
    pairs = [r for rnd in (1, 2) for r in lt.pair_rows(engine, rnd)]
    assert sft and pairs
    for t in filled["trees"]:
        tree, _ = get_tree(engine, t.tree_id)
        assert {(t.tree_id, s["leaf_idx"]) for s in tree["sft"]} == {k for k in sft if k[0] == t.tree_id}
        assert sorted((p["pos_idx"], p["neg_idx"], p["kind"]) for p in tree["ppm_pairs"]) == sorted(
            (p["pos_idx"], p["neg_idx"], p["kind"]) for p in pairs if p["tree_id"] == t.tree_id
        )
    engine.dispose()


def _console_errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def test_explorer_in_chromium(site):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    from store.queries import get_tree

    url, engine, filled = site
    with chromium() as d:
        wait = WebDriverWait(d, 15)
        css = lambda sel: d.find_elements(By.CSS_SELECTOR, sel)  # noqa: E731

        d.get(url + "/")
        wait.until(lambda _: len(css("#trees tbody tr[data-id]")) == min(50, len(filled["trees"])))
        wait.until(lambda _: "problems" in d.find_element(By.ID, "stats").text)
        assert _console_errors(d) == []

        # Pick a tree that spans a model swap and that data selection took SFT rows and PPM pairs from.
        picked = (get_tree(engine, tid) for tid in filled["swapped"])
        tree, nodes = next((t, n) for t, n in picked if t["sft"] and t["ppm_pairs"])
        d.find_element(By.CSS_SELECTOR, f'#trees tr[data-id="{tree["id"]}"]').click()
        wait.until(lambda _: len(css("#canvas circle")) == len(nodes))
        assert d.find_element(By.CSS_SELECTOR, "#trees tr.sel").get_attribute("data-id") == tree["id"]
        head = d.find_element(By.ID, "tree-head").text
        assert tree["question"] in head and f"level {tree['level']}" in head
        assert f"SFT: {len(tree['sft'])} trajector" in head and f"PPM pairs: {len(tree['ppm_pairs'])}" in head
        assert len(css("#canvas path.pair")) == len(tree["ppm_pairs"])
        on_sft = {int(i) for s in tree["sft"] for i in nodes[s["leaf_idx"]]["path"].split(".")[1:]}
        assert len(css("#canvas line.sft")) == len(on_sft)
        radii = {int(c.get_attribute("data-idx")): float(c.get_attribute("r")) for c in css("#canvas circle")}
        busiest = max(nodes, key=lambda n: n["visits"])["idx"]
        assert radii[busiest] == max(radii.values())  # sized by visits

        # Click the SFT leaf: its code, output, Q, visits, PPM score and versions appear.
        leaf = nodes[tree["sft"][0]["leaf_idx"]]
        d.find_element(By.CSS_SELECTOR, f'#canvas circle[data-idx="{leaf["idx"]}"]').click()
        wait.until(lambda _: css("#detail pre.code"))
        detail = d.find_element(By.ID, "detail")
        assert detail.find_element(By.CSS_SELECTOR, "pre.code").text == leaf["text"].strip()
        assert detail.find_element(By.CSS_SELECTOR, "pre.output").text == leaf["code_output"]
        field = lambda name: detail.find_element(By.CSS_SELECTOR, f"dd.f-{name}").text  # noqa: E731
        assert field("Q") == f"{leaf['q']:.4f}" and field("visits") == str(leaf["visits"])
        assert field("PPM-score") == f"{leaf['ppm_score']:.4f}"
        assert (field("policy"), field("PPM")) == (leaf["policy_version"], leaf["ppm_version"])
        assert f"trained the round {tree['sft'][0]['round']} policy" in detail.text

        # A step whose text is markup is shown as text, not run.
        d.find_element(By.CSS_SELECTOR, '#canvas circle[data-idx="1"]').click()
        wait.until(lambda _: XSS in d.find_element(By.CSS_SELECTOR, "#detail pre.code").text)
        assert css("#detail img") == [] and d.title == "rstar explorer"

        # Colour by policy version: the swapped tree's steps show both versions (the root has none).
        Select(d.find_element(By.ID, "color-by")).select_by_value("policy")
        fills = {c.get_attribute("fill") for c in css("#canvas circle") if c.get_attribute("data-idx") != "0"}
        versions = {n["policy_version"] for n in nodes if n["policy_version"]}
        assert len(fills) == len(versions) == 2
        assert all(v in d.find_element(By.ID, "key").text for v in versions)

        # Filter: unsolved trees of level-2 problems.
        form = d.find_element(By.ID, "filters")
        form.find_element(By.NAME, "level").send_keys("2")
        Select(form.find_element(By.NAME, "solved")).select_by_value("false")
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        level = {p.id: p.meta["level"] for p in filled["problems"]}
        want = sum(level[t.problem.id] == 2 and not t.solved for t in filled["trees"])
        assert want > 0
        wait.until(lambda _: d.find_element(By.ID, "page").text.endswith(f"of {want}"))
        cells = [r.find_elements(By.TAG_NAME, "td") for r in css("#trees tbody tr[data-id]")]
        assert len(cells) == want and all(c[1].text == "2" and c[2].text == "✗" for c in cells)

        # The rounds: a point per round on the pool solve rate and on each held-out method.
        d.find_element(By.ID, "tab-rounds").click()
        wait.until(lambda _: css("#curve svg g.series"))
        series = {g.get_attribute("data-series"): g for g in css("#curve svg g.series")}
        assert {"pool solve rate", "synthetic greedy", "synthetic mcts@4", "PPM pairwise"} <= set(series)
        points = lambda name: [  # noqa: E731
            int(c.get_attribute("data-round")) for c in series[name].find_elements(By.CSS_SELECTOR, "circle.pt")
        ]
        assert points("pool solve rate") == filled["rounds"] == points("synthetic greedy")
        assert points("synthetic mcts+ppm@4") == [1, 2] and points("PPM pairwise") == [1, 2]
        assert len(css("#rounds tbody tr")) == len(filled["rounds"])
        row = d.find_element(By.CSS_SELECTOR, '#rounds tr[data-round="2"]')
        titles = [td.get_attribute("title") for td in row.find_elements(By.TAG_NAME, "td")]
        greedy = next(r for r in json.loads(NANO_ROUNDS.read_text()) if r["round"] == 2)["eval"]["accuracy"]
        greedy = greedy["sets"]["synthetic"]["greedy"]
        assert f"{100 * greedy['correct'] / greedy['n']:.1f} %" in row.text
        assert any(t.startswith(f"{greedy['correct']} / {greedy['n']} correct; level 1: ") for t in titles)

        # A round's row lists its trees.
        d.find_element(By.CSS_SELECTOR, '#rounds tr[data-round="1"]').click()
        want = sum(t.round == 1 for t in filled["trees"])
        wait.until(lambda _: d.find_element(By.ID, "page").text.endswith(f"of {want}"))
        assert d.find_element(By.ID, "trees-view").is_displayed()
        assert _console_errors(d) == []


# --- the README's screenshot ----------------------------------------------------------------------------
def screenshot(url: str, tree_id: str, node_idx: int | None, out: Path) -> None:
    """A PNG of the explorer showing tree ``tree_id`` (and node ``node_idx``'s detail)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    with chromium(1400, 820) as d:
        d.get(f"{url}/#tree={tree_id}")
        WebDriverWait(d, 15).until(lambda _: d.find_elements(By.CSS_SELECTOR, "#canvas circle"))
        if node_idx is not None:
            d.find_element(By.CSS_SELECTOR, f'#canvas circle[data-idx="{node_idx}"]').click()
        d.save_screenshot(str(out))


def main() -> None:
    ap = argparse.ArgumentParser(description="Screenshot the explorer on a store's tree.")
    ap.add_argument("--store", help="store URL (default: a scratch store filled as the test fills it)")
    ap.add_argument("--tree", help="tree id (default: the most-visited search tree with SFT rows and PPM pairs)")
    ap.add_argument("--node", type=int, help="node to click (default: the tree's first SFT leaf)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "explorer.png")
    args = ap.parse_args()
    import tempfile

    from sqlalchemy import func, select

    from store.models import PpmPairRow, SftExampleRow, TreeRow
    from store.queries import get_tree

    with tempfile.TemporaryDirectory() as tmp:
        engine = open_store(args.store or f"sqlite:///{tmp}/store.db")
        if not args.store:
            fill_store(engine)
        tree_id = args.tree
        if tree_id is None:
            with engine.connect() as c:
                both = select(SftExampleRow.tree_id).where(SftExampleRow.tree_id.in_(select(PpmPairRow.tree_id)))
                tree_id = c.scalar(
                    select(TreeRow.id).where(TreeRow.id.in_(both)).order_by(func.abs(TreeRow.n_nodes - 30)).limit(1)
                )
        assert tree_id, "no tree has both SFT rows and PPM pairs: name one with --tree"
        tree, _ = get_tree(engine, tree_id)
        node = args.node if args.node is not None else (tree["sft"][0]["leaf_idx"] if tree["sft"] else None)
        with serve(engine, Path(tmp)) as url:
            screenshot(url, tree_id, node, args.out)
        engine.dispose()
    print(f"{args.out}: tree {tree_id}, {args.out.stat().st_size:,} bytes")


if __name__ == "__main__":
    main()
