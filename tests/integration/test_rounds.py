"""The round controller against a real NATS server and a real store, with the tiny model.

- In process, on SQLite and PostgreSQL: the bootstrap round (curriculum teacher) trains and
  publishes a policy without a PPM; a published checkpoint round-trips bit-exactly; round 1 closes
  on its quota of searched trees, trains a policy and a PPM, is stopped mid-round and continued by
  a fresh controller without redoing the finished stage, publishes the pair (the PPM announced from
  ``ppm_init_from_round``) and re-queues its unsolved problem with a larger rollout budget.
- As a process: ``rstar learner`` stops cleanly on SIGTERM while waiting for trees, continues after
  a restart, ingests round-1 trees from TREES, publishes round 1 and exits (``--exit-when-done``).
- Stopped mid-training, the controller returns after the trainer saved its state; the next one
  resumes that training from the saved step.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import msgspec
import pytest
from stop_helpers import exit_note, stop_wait_s
from store_helpers import scratch_postgres_or_skip

from broker.checkpoints import fetch_checkpoint, get_pointer
from broker.client import open_broker, publish_tree
from broker.problems import fetch_problems, problems_subscription
from learner.round_stages import evaluate_published
from learner.rounds import step
from learner.state import make_learner, round_dir
from rstar.config import load_config
from rstar.curriculum import synthetic_problems
from rstar.schemas import Figures, LevelCount, MethodRecord, Node, RoundEval, TreeResult
from rstar.stopping import learner_stop_bound_s
from store import learner_tables as lt
from store.db import open_store
from store.queries import list_checkpoints

pytestmark = [pytest.mark.timeout(240), pytest.mark.slow]
SETTINGS = [
    "model.threads=1",
    "train.threads=1",
    "train.epochs=2",
    "train.ppm_epochs=2",
    "train.lr=1e-3",
    "train.ppm_lr=1e-3",
    "learner.teacher_problems=6",
    "learner.teacher_levels=[1]",
    "learner.eval_synthetic_n=2",
    'learner.eval_real="svamp"',
    "learner.eval_real_n=2",
    "learner.eval_k=2",
    "learner.round_quota=3",
    "learner.poll_s=0.2",
    "learner.ppm_init_from_round=2",
    "generation.max_step_tokens=16",
    "search.max_depth=2",
    "search.n_children=2",
    "search.rollouts=2",
    "sandbox.workers=1",
]


def settings(nats_url: str, tmp_path, store_url: str, tiny) -> list[str]:
    return [
        f'broker.url="{nats_url}"',
        f'data_dir="{tmp_path}"',
        f'store.url="{store_url}"',
        f'model.policy="{tiny}"',
        *SETTINGS,
    ]


def searched_trees() -> list[TreeResult]:
    """Round-1 trees as an actor would send them: two problems solved (beside wrong branches), one not."""
    probs = synthetic_problems(3, levels=(2,), seed=7)
    out = []
    for i, p in enumerate(probs):
        good = p.meta["reference_steps"]
        first, last = good[0], "\n".join(good[1:])
        wrong = "# A guess.\nanswer = 0\n"
        solved = i < 2
        spec = [
            (1, 0, 0.5 if solved else -0.5, first, False, None),
            (2, 1, 1 if solved else -1, last if solved else wrong, True, solved),
            (3, 1, -1, wrong, True, False),
            (4, 0, -1, "# Start over.\nx = 1\n", False, None),
            (5, 4, -1, "# Another guess.\nanswer = x\n", True, False),
        ]
        nodes = [Node(idx=0, parent=None, depth=0, visits=4)]
        for idx, parent, q, txt, term, correct in spec:
            nodes.append(
                Node(
                    idx=idx,
                    parent=parent,
                    depth=1 if parent == 0 else 2,
                    text=txt,
                    q=q,
                    visits=2,
                    terminal=term,
                    correct=correct,
                    answer="0" if term else None,
                    policy_version="policy-r0",
                )
            )
        now = time.time()
        out.append(
            TreeResult(
                tree_id=f"r1-{i}",
                problem=p,
                actor_id="actor-t",
                policy_version="policy-r0",
                ppm_version="",
                started_at=now - 1,
                finished_at=now,
                nodes=nodes,
                solved=solved,
                round=1,
                rollouts=8,
            )
        )
    return out


async def _steps_until(L, round: int, state: str, limit: int = 20) -> None:
    for _ in range(limit):
        row = lt.last_round(L.engine)
        if row is not None and row["round"] == round and row["state"] == state:
            return
        await step(L)
    raise AssertionError(f"round {round} never reached {state}: {lt.last_round(L.engine)}")


@pytest.mark.parametrize("db", ["sqlite", "postgresql"])
async def test_bootstrap_round_one_resume_publish_requeue(nats_server, tmp_path, tiny_model_dir, db):
    import contextlib

    with contextlib.ExitStack() as stack:
        url = (
            f"sqlite:///{tmp_path / 'store.db'}"
            if db == "sqlite"
            else stack.enter_context(scratch_postgres_or_skip("test_rounds"))
        )
        cfg = load_config(overrides=settings(nats_server.url, tmp_path, url, tiny_model_dir), env={})
        engine = open_store(url)
        stack.callback(engine.dispose)
        async with open_broker(cfg, "test-learner") as b:
            L = make_learner(cfg, engine, b)
            await _steps_until(L, 1, "collecting")
            # Publishing does not wait for evaluation: the evaluator fills in the figures after.
            assert "accuracy" not in lt.get_round(engine, 0)["eval"]
            assert lt.unevaluated_round(engine)["round"] == 0
            # An evaluation interrupted after its first figure resumes from it (not recomputed).
            partial = MethodRecord(
                accuracy=0.5, n=2, correct=1, by_level={"1": LevelCount(1, 1), "2": LevelCount(1, 0)}
            )
            figs = Figures({"synthetic": {"n": 2, "greedy": partial}}, seconds=1.0)
            with lt.begin(engine) as conn:
                lt.merge_eval(conn, 0, RoundEval(accuracy_partial=figs))
            await evaluate_published(L, lt.get_round(engine, 0))
            assert lt.unevaluated_round(engine) is None
            r0 = lt.get_round(engine, 0)
            syn = r0["eval"]["accuracy"]["sets"]["synthetic"]
            assert syn["greedy"] == msgspec.to_builtins(partial)  # kept as stored
            assert "accuracy_partial" not in r0["eval"] and r0["eval"]["accuracy"]["seconds"] > 1.0
            assert r0["state"] == "published" and r0["eval"]["bootstrap"]["stored"] == 6
            assert r0["eval"]["data"] == {"sft_examples": 6, "ppm_pairs": 0, "problems": 6, "solved_problems": 6}
            assert set(syn) == {"n", "greedy", "majority@2", "mcts@2"}  # no PPM in round 0: no MCTS+PPM
            for label in ("majority@2", "mcts@2"):  # records that add up, level by level
                rec = syn[label]
                assert rec["n"] == 2 and set(rec["by_level"]) == {"1", "2"} and 0 <= rec["correct"] <= 2
                assert sum(b["n"] for b in rec["by_level"].values()) == rec["n"]
                assert sum(b["correct"] for b in rec["by_level"].values()) == rec["correct"]
                assert len(rec["correct_ids"]) == rec["correct"]
            assert r0["eval"]["accuracy"]["sets"]["svamp"]["greedy"]["by_level"] == {}
            assert r0["ppm_version"] is None and "ppm_pairwise_acc" not in r0["eval"]
            pointer = await get_pointer(b)
            assert pointer.round == 1 and pointer.ppm is None and pointer.policy.version == r0["policy_version"]
            # Published bytes come back bit-exactly, file by file.
            got = await fetch_checkpoint(b, pointer.policy, tmp_path / "fetched")
            local = round_dir(cfg, 0) / "policy"
            names = sorted(p.name for p in local.iterdir())
            assert names == sorted(p.name for p in got.iterdir())
            assert all((local / n).read_bytes() == (got / n).read_bytes() for n in names)

            # Round 1: below quota it waits; at quota it closes and trains.
            trees = searched_trees()
            from store.writer import upsert_trees

            upsert_trees(engine, trees[:2])
            assert await step(L) is False
            upsert_trees(engine, trees[2:])
            await _steps_until(L, 1, "training_ppm")
            policy = round_dir(cfg, 1) / "policy" / "model.safetensors"
            before = (policy.stat().st_mtime_ns, policy.stat().st_ino, lt.get_round(engine, 1)["eval"]["sft"])

            # A restarted controller goes on from training_ppm: the policy is not trained again.
            L2 = make_learner(cfg, engine, b)
            await _steps_until(L2, 2, "collecting")
            await evaluate_published(L2, lt.unevaluated_round(engine))
            r1 = lt.get_round(engine, 1)
            assert (policy.stat().st_mtime_ns, policy.stat().st_ino, r1["eval"]["sft"]) == before
            assert r1["state"] == "published" and r1["eval"]["collect"]["solve_rate"] == round(2 / 3, 4)
            assert r1["eval"]["data"]["sft_examples"] == 2 and r1["eval"]["data"]["ppm_pairs"] > 0
            assert 0.0 <= r1["eval"]["ppm_pairwise_acc"] <= 1.0
            assert {"mcts@2", "mcts+ppm@2"} <= set(r1["eval"]["accuracy"]["sets"]["svamp"])  # both, same k
            pointer = await get_pointer(b)
            assert pointer.round == 2 and pointer.ppm is not None and pointer.ppm.version == r1["ppm_version"]
            ckpts = list_checkpoints(engine)
            by_version = {c["version"]: c for c in ckpts}
            ppm_row = by_version[r1["ppm_version"]]
            assert ppm_row["parent_id"] == by_version[r1["policy_version"]]["id"] and ppm_row["round"] == 1
            assert by_version[r1["policy_version"]]["base"] == str(tiny_model_dir)
            assert [c["kind"] for c in ckpts] == ["policy", "policy", "ppm"]
            # The unsolved problem is back in the queue with the larger budget.
            sub = await problems_subscription(b)
            got = await fetch_problems(b, sub, batch=10, timeout=2)
            assert [(p.id, p.meta["rollouts"]) for p, _ in got] == [(trees[2].problem.id, 64)]
            assert r1["eval"]["requeued"] == 1

        # The CLI reads the same rounds, and trains a stage by hand from the stored rows.
        from typer.testing import CliRunner

        from app.cli import app

        sets = sum((["--set", a] for a in settings(nats_server.url, tmp_path, url, tiny_model_dir)), [])
        res = CliRunner().invoke(app, ["rounds", "--json", *sets])
        rows = json.loads(res.stdout)
        assert [(r["round"], r["state"]) for r in rows] == [(0, "published"), (1, "published"), (2, "collecting")]
        assert rows[1]["eval"]["ppm_pairwise_acc"] == r1["eval"]["ppm_pairwise_acc"]
        got = rows[1]["accuracy"]["svamp"]["mcts+ppm@2"]
        stored = r1["eval"]["accuracy"]["sets"]["svamp"]["mcts+ppm@2"]
        assert (got["n"], got["correct"], got["by_level"]) == (stored["n"], stored["correct"], {})
        res = CliRunner(env={"COLUMNS": "160"}).invoke(app, ["rounds", *sets])
        assert res.exit_code == 0 and "published" in res.stdout and r1["policy_version"] in res.stdout
        res = CliRunner().invoke(
            app, ["train", "ppm", "--round", "1", "--out", str(tmp_path / "by-hand"), "--json", *sets]
        )
        assert res.exit_code == 0, res.output
        assert json.loads(res.stdout)["pairs"] == r1["eval"]["data"]["ppm_pairs"]


def _learner(cfg_args: list[str], *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "app", "learner", *extra, *sum((["--set", a] for a in cfg_args), [])],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        env={**os.environ, "RSTAR_LOG_JSON": "1"},
        start_new_session=True,
    )


async def _wait_round(engine, round: int, state: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        row = lt.get_round(engine, round) if lt.last_round(engine) else None
        if row and row["state"] == state:
            return
        assert proc.poll() is None, f"learner exited {proc.returncode}: {proc.stderr.read().decode()[-3000:]}"
        assert time.monotonic() < deadline, f"round {round} not {state} within {timeout}s: {row}"
        await asyncio.sleep(0.2)


async def test_learner_process_sigterm_restart_ingest_and_exit(nats_server, tmp_path, tiny_model_dir):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    args = settings(nats_server.url, tmp_path, url, tiny_model_dir) + ["learner.max_rounds=1"]
    engine = open_store(url)
    proc = _learner(args, "--exit-when-done")
    try:
        await _wait_round(engine, 1, "collecting", proc)
        bound = learner_stop_bound_s(load_config(overrides=args, env={}))
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=stop_wait_s(bound))
        assert code == 0, f"exit {code} {exit_note(code)}: {proc.stderr.read().decode()[-3000:]}"
        assert time.monotonic() - t0 <= bound
        proc.stderr.close()

        proc = _learner(args, "--exit-when-done")
        cfg = load_config(overrides=args, env={})
        async with open_broker(cfg, "test-actor") as b:
            for t in searched_trees():
                await publish_tree(b, t)
        await _wait_round(engine, 1, "published", proc)
        # max_rounds=1: done once round 1 is evaluated (a model load, a few problems), then it exits
        assert proc.wait(timeout=120) == 0, proc.stderr.read().decode()[-3000:]
        r1 = lt.get_round(engine, 1)
        assert r1["eval"]["collect"]["trees"] == 3 and lt.last_round(engine)["round"] == 1
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr and not proc.stderr.closed:
            proc.stderr.close()
        engine.dispose()


async def test_stop_mid_training_saves_and_the_next_controller_resumes_it(nats_server, tmp_path, tiny_model_dir):
    from learner.rounds import run_controller
    from learner.train_loop import LATEST

    url = f"sqlite:///{tmp_path / 'store.db'}"
    # Long enough to stop in the middle: 6 examples, 120 epochs of 2 batches, a save every 4 steps.
    args = settings(nats_server.url, tmp_path, url, tiny_model_dir) + ["train.epochs=120", "train.save_every=4"]
    cfg = load_config(overrides=args, env={})
    engine = open_store(url)
    work = round_dir(cfg, 0) / "sft-work"
    try:
        stop = asyncio.Event()
        task = asyncio.create_task(run_controller(make_learner(cfg, engine), stop))
        deadline = time.monotonic() + 120
        while not (work / LATEST).exists():
            assert not task.done() and time.monotonic() < deadline, "no training state saved"
            await asyncio.sleep(0.05)
        stop.set()
        await asyncio.wait_for(task, learner_stop_bound_s(cfg))  # the trainer saves at its next step
        assert lt.get_round(engine, 0)["state"] == "training_policy"
        assert (work / LATEST).exists() and not (round_dir(cfg, 0) / "policy").exists()

        stop = asyncio.Event()
        async with open_broker(cfg, "test-learner") as b:  # in case it gets as far as publishing
            task = asyncio.create_task(run_controller(make_learner(cfg, engine, b), stop))
            while lt.get_round(engine, 0)["state"] in ("collecting", "training_policy"):
                assert not task.done() and time.monotonic() < deadline + 120, "policy training did not finish"
                await asyncio.sleep(0.1)
            stop.set()
            await asyncio.wait_for(task, learner_stop_bound_s(cfg))
        assert lt.get_round(engine, 0)["eval"]["sft"]["resumed_from_step"] >= 4
    finally:
        engine.dispose()


async def test_fixed_budget_warm_start_and_the_control_trains_on_the_teacher_only(
    nats_server, tmp_path, tiny_model_dir
):
    """``learner.finetune_from = "previous"``, ``train.steps`` / ``bootstrap_steps`` and a control run.

    Round 0 trains from the base for its own budget; round 1 starts from round 0's policy and
    trains exactly ``train.steps`` optimizer steps; in a control run round 1's SFT set is the
    teacher's (6 demonstrations), not the actors' solved problems (2 in ``searched_trees``).
    """
    url = f"sqlite:///{tmp_path / 'store.db'}"
    args = settings(nats_server.url, tmp_path, url, tiny_model_dir) + [
        'learner.finetune_from="previous"',
        "learner.control=true",
        "train.steps=3",
        "train.bootstrap_steps=5",
        "train.bootstrap_lr=2e-3",
        "learner.eval_synthetic_n=0",
        "learner.eval_real_n=0",
    ]
    cfg = load_config(overrides=args, env={})
    engine = open_store(url)
    try:
        async with open_broker(cfg, "test-learner") as b:
            L = make_learner(cfg, engine, b)
            await _steps_until(L, 1, "collecting")
            from store.writer import upsert_trees

            upsert_trees(engine, searched_trees())
            await _steps_until(L, 2, "collecting")
        r0, r1 = lt.get_round(engine, 0), lt.get_round(engine, 1)
        assert r0["eval"]["sft"]["steps"] == 5 and r0["eval"]["sft"]["from"] == str(tiny_model_dir)
        assert r1["eval"]["sft"]["steps"] == 3 and r1["eval"]["sft"]["from"] == str(round_dir(cfg, 0) / "policy")
        assert r1["eval"]["data"]["sft_examples"] == 6 == r0["eval"]["data"]["sft_examples"]
        teacher = {r["tree_id"] for r in lt.sft_rows(engine, 0)}
        assert {r["tree_id"] for r in lt.sft_rows(engine, 1)} == teacher
        assert r1["eval"]["data"]["ppm_pairs"] == 0 and r1["ppm_version"] is None  # no actor trees, no PPM
        assert r1["eval"]["collect"]["solve_rate"] == round(2 / 3, 4)  # the actors searched all the same
    finally:
        engine.dispose()
