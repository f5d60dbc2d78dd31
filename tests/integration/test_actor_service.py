"""Actors as a service against a real NATS server: real `rstar actor` processes, SIGKILL, SIGTERM,
checkpoint pointers changed mid-run, bad checkpoints refused.

The policy is the tiny test model taught (a few seconds of training) to write one two-step
solution, so trees have real nodes whose versions can be checked; its "fine-tuned" successors are
slightly perturbed copies published through the Object Store.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from stop_helpers import exit_note, stop_wait_s

from actors.heartbeat import read_fleet
from actors.ppm import ppm_from_policy, save_ppm
from actors.service import ActorReport, run_actor
from broker.checkpoints import put_checkpoint, set_pointer
from broker.client import open_broker
from broker.codec import decode_tree
from broker.problems import add_problems, fetch_problems, problems_subscription
from broker.streams import TREES_STREAM, TREES_SUBJECT
from rstar.checkpoints import save_model_dir, write_manifest
from rstar.config import load_config
from rstar.models import load_tokenizer
from rstar.schemas import ModelPointer, ModelRef, Problem, problem_id
from rstar.steps import STEP_END, build_prompt, normalize_step
from rstar.stopping import actor_stop_bound_s

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]  # a hang guard: the waits inside are the checks
ROOT = Path(__file__).resolve().parents[2]
RSTAR = Path(sys.executable).parent / "rstar"
STEPS = ["# Add the two numbers.\nx = 2 + 3\n", "# The sum is the answer.\nanswer = x\n"]
N = 64  # problems in the fleet test
POLICIES = ["taught", "policy-r1", "policy-r2"]  # versions by round
PPMS = ["ppm0", "ppm-r1", "ppm-r2"]


def _teach(src: Path, out: Path, steps: int = 40) -> Path:
    """Train the random tiny model until it writes STEPS (few-shot-free prompt) for any question."""
    from transformers import AutoModelForCausalLM

    from actors.runtime import chat_template_for

    torch.manual_seed(0)
    tok = load_tokenizer(src)
    model = AutoModelForCausalLM.from_pretrained(src)
    names, things = ["Tom", "Mia", "Ana", "Raj", "Li", "Sam"], ["pens", "coins", "apples", "cards"]
    rows = []
    for i in range(16):
        q = f"{names[i % 6]} has {i + 2} {things[i % 4]} and gets {3 * i % 7 + 1} more. How many now?"
        for k in range(len(STEPS)):
            prompt = tok(build_prompt(q, STEPS[:k], chat_template_for(tok), few_shot=False)).input_ids
            target = tok(normalize_step(STEPS[k]) + STEP_END, add_special_tokens=False).input_ids
            rows.append((prompt, target + ([tok.eos_token_id] if k == len(STEPS) - 1 else [])))
    width = max(len(p) + len(t) for p, t in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, (p, t) in enumerate(rows):
        ids[i, : len(p) + len(t)] = torch.tensor(p + t)
        labels[i, len(p) : len(p) + len(t)] = torch.tensor(t)
        mask[i, : len(p) + len(t)] = 1
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
    return save_model_dir(model.eval(), tok, out)


def _perturbed(src: Path, out: Path, seed: int) -> Path:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(src)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 1e-4)
    return save_model_dir(model, load_tokenizer(src), out)


def _ppm(policy: Path, out: Path, seed: int) -> Path:
    ppm = ppm_from_policy(policy, "cpu", seed=seed)
    save_ppm(ppm, out, load_tokenizer(policy))
    write_manifest(out)
    return out


@pytest.fixture(scope="module")
def models(tiny_model_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("actor-models")
    taught = _teach(Path(tiny_model_dir), root / POLICIES[0])
    out = {"policy": [taught], "ppm": [_ppm(taught, root / PPMS[0], 0)]}
    for r in (1, 2):
        out["policy"].append(_perturbed(taught, root / POLICIES[r], seed=r))
        out["ppm"].append(_ppm(out["policy"][r], root / PPMS[r], seed=r))
    bad = root / "unloadable"  # a model dir whose weights are garbage, with a consistent manifest
    bad.mkdir()
    for f in taught.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "model.safetensors").write_bytes(b"\0" * 256)
    write_manifest(bad)
    out["unloadable"] = bad
    from tiny_model import make_tiny_model

    other = make_tiny_model(root / "other-base", vocab_size=400)
    out["foreign_ppm"] = _ppm(other, root / "foreign-ppm", 0)
    return out


def _overrides(url: str, data_dir: Path, models, *extra: str) -> list[str]:
    return [
        f'broker.url="{url}"',
        f'data_dir="{data_dir}"',
        f'model.policy="{models["policy"][0]}"',
        f'model.ppm="{models["ppm"][0]}"',
        "model.device=cpu",
        "model.threads=1",
        "generation.few_shot=false",
        "generation.max_step_tokens=32",
        "search.rollouts=2",
        "search.n_children=2",
        "sandbox.workers=1",
        "actor.trees_in_flight=2",
        "actor.heartbeat_s=0.5",
        "actor.fetch_timeout_s=0.3",
        "broker.problems_ack_wait_s=4",
        "broker.heartbeat_ttl_s=3",
        *extra,
    ]


def _problems(a: int, b: int) -> list[Problem]:
    return [
        Problem(
            id=problem_id("actor-test", f"q{i}"),
            source="actor-test",
            answer="5",
            question=f"Tom has {i} pens and gets {i + 1} more. How many now?",
        )
        for i in range(a, b)
    ]


async def _until(pred, timeout: float, what: str, every: float = 0.1):
    deadline = time.monotonic() + timeout
    while True:
        got = await pred()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(every)


async def _trees(b) -> list:
    """Every message in TREES, decoded (an ephemeral consumer reads the stream from the start)."""
    n = (await b.js.stream_info(TREES_STREAM)).state.messages
    if not n:
        return []
    sub = await b.js.pull_subscribe(TREES_SUBJECT, stream=TREES_STREAM)
    try:
        msgs = []
        while len(msgs) < n:
            msgs += await sub.fetch(n - len(msgs), timeout=5)
        return [decode_tree(m.headers, m.data) for m in msgs]
    finally:
        await sub.unsubscribe()


async def _publish_pair(b, models, r: int) -> ModelPointer:
    pol = await put_checkpoint(b, models["policy"][r], POLICIES[r])
    ppm = await put_checkpoint(b, models["ppm"][r], PPMS[r])
    return ModelPointer(round=r, policy=pol, ppm=ppm)


class Proc:
    def __init__(self, name: str, overrides: list[str], tmp_path: Path):
        self.name, self.err, self.out = name, tmp_path / f"actor-{name}.err", tmp_path / f"actor-{name}.out"
        cmd = [str(RSTAR), "actor", "--id", name, "--json"] + [x for o in overrides for x in ("--set", o)]
        env = {k: v for k, v in os.environ.items() if not k.startswith("RSTAR_")} | {"RSTAR_LOG_JSON": "1"}
        self.p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=open(self.out, "w"), stderr=open(self.err, "w"))

    def alive(self) -> bool:
        if self.p.poll() is not None:
            raise AssertionError(f"actor {self.name} exited with {self.p.returncode}: {self.log()[-3000:]}")
        return True

    def log(self) -> str:
        return self.err.read_text()  # JSON lines


async def _queued(b, n: int, within_s: float = 60.0) -> list:
    """The ``n`` problems expected back in the queue (fetched until all came or ``within_s``)."""
    sub, got = await problems_subscription(b), []
    deadline = time.monotonic() + within_s
    while len(got) < n and time.monotonic() < deadline:
        got += await fetch_problems(b, sub, n - len(got), timeout=2)
    return got


async def _fleet(b) -> dict:
    return {h.actor_id: h for h in await read_fleet(b)}


async def test_fleet_survives_sigkill_two_swaps_a_bad_pointer_and_sigterm(nats_server, models, tmp_path):
    overrides = _overrides(nats_server.url, tmp_path, models, "actor.grace_s=0")
    cfg = load_config(overrides=overrides, env={})
    procs: list[Proc] = []
    try:
        async with open_broker(cfg, "test") as b:
            r1, r2 = await _publish_pair(b, models, 1), await _publish_pair(b, models, 2)
            # A searches with a huge budget at a high temperature: its trees outlast the kill below.
            slow = overrides + ["search.rollouts=400", "generation.temperature=3.0"]
            a, bb = Proc("A", slow, tmp_path), Proc("B", overrides, tmp_path)
            procs += [a, bb]
            await _until(lambda: _has(b, procs, {"A", "B"}), 90, "actors A and B to start")
            await add_problems(b, _problems(0, 8))
            await _until(lambda: _n_trees(b, 2), 60, "the first trees")
            await set_pointer(b, r1)
            await _until(lambda: _in_flight(b, procs, "A"), 30, "A to hold a problem")
            a.p.kill()  # SIGKILL mid-tree: its unacked problems come back after ack_wait
            a.p.wait()
            assert a.p.returncode == -signal.SIGKILL
            procs.remove(a)
            procs.append(Proc("C", overrides + ["actor.nice=5"], tmp_path))  # joins late: starts on the pointer's pair
            await add_problems(b, _problems(8, 14))
            await _until(lambda: _logged(procs, "redelivered"), 30, "A's problems to be picked up")
            await _until(lambda: _serving(b, procs, {"B"}, POLICIES[1]), 60, "B to swap to round 1")
            await set_pointer(b, r2)
            await _until(lambda: _serving(b, procs, {"B", "C"}, POLICIES[2]), 90, "B and C on round 2")
            base = os.getpriority(os.PRIO_PROCESS, bb.p.pid)  # what the test runs at
            assert os.getpriority(os.PRIO_PROCESS, procs[-1].p.pid) == min(19, base + 5)  # actor.nice
            await add_problems(b, _problems(14, 20))
            corrupt = ModelRef(version="policy-r3", object=r2.policy.object, sha256="0" * 64)
            await set_pointer(b, ModelPointer(round=3, policy=corrupt, ppm=r2.ppm))
            await _until(lambda: _logged(procs, "refusing checkpoint round 3"), 30, "the refusal")
            await add_problems(b, _problems(20, 24))
            await _until(lambda: _n_trees(b, 24), 90, "a tree for each of 24 problems")
            status = json.loads(
                subprocess.run(
                    [str(RSTAR), "status", "--json"] + [x for o in overrides for x in ("--set", o)],
                    cwd=ROOT,
                    capture_output=True,
                    text=True,
                    timeout=60,
                    check=True,
                ).stdout
            )
            # SIGTERM while both actors are busy with a long queue (grace 0: return what you hold).
            await add_problems(b, _problems(24, N))
            await _until(lambda: _n_trees(b, 26), 30, "the last batch under way")
            for p in procs:
                p.p.send_signal(signal.SIGTERM)
            returned = 0
            wait_s = stop_wait_s(actor_stop_bound_s(cfg))  # the documented bound, not a guess
            for p in procs:
                code = p.p.wait(wait_s)
                assert code == 0, f"{p.name}: exit {code} {exit_note(code)}: {p.log()[-3000:]}"
                returned += json.loads(p.out.read_text().strip().splitlines()[-1])["returned"]
            # What they held was returned (nak): all of it is in the queue again. A pull request
            # the server fills after the client has gone (a moment's race) holds its problem until
            # ack_wait: nothing is lost, it comes back later (``_queued`` waits for it).
            trees = await _trees(b)
            back = await _queued(b, N - len({t.problem.id for t in trees}))
            assert not await read_fleet(b)  # clean exits removed their heartbeats at once
    finally:
        for p in procs:
            if p.p.poll() is None:
                p.p.kill()
                p.p.wait()

    # Every problem has exactly one tree, or (the last batch) is back in the queue, not held.
    per_problem = Counter(t.problem.id for t in trees)
    assert max(per_problem.values()) == 1, per_problem.most_common(3)
    assert {p.id for p in _problems(0, 24)} <= set(per_problem) <= {p.id for p in _problems(0, N)}
    assert set(per_problem) | {p.id for p, _ in back} == {p.id for p in _problems(0, N)}
    assert returned >= 1
    # Returned problems come back delivered again. Not one for one: the other actor, stopping at
    # the same moment, may fetch a problem just returned and return it once more (counted twice).
    assert sum(m.metadata.num_delivered >= 2 for _, m in back) >= 1
    # Provenance: the tree names the pair it started on; nodes were made by that pair or a newer one.
    assert {t.actor_id for t in trees} >= {"B", "C"}
    with_nodes = 0
    for t in trees:
        assert t.policy_version == POLICIES[t.round] and t.ppm_version == PPMS[t.round], t
        steps = t.nodes[1:]
        with_nodes += bool(steps)
        for n in steps:
            assert POLICIES.index(n.policy_version) >= t.round and PPMS.index(n.ppm_version) >= t.round
        if t.actor_id == "C":
            assert t.round >= 1  # started from the pointer, never from its configured model
    assert with_nodes >= len(trees) // 2
    late = {p.id for p in _problems(14, 24)}
    assert all(t.round == 2 for t in trees if t.problem.id in late)  # round 3 was refused
    assert any(n.policy_version == POLICIES[2] for t in trees for n in t.nodes)
    # rstar status saw the fleet on round 2 while the pointer named the refused round 3.
    assert status["pointer"]["round"] == 3
    seen = {a["actor_id"]: a for a in status["actors"]}
    assert {"B", "C"} <= set(seen) and "A" not in seen  # A's heartbeat expired with its TTL
    assert all(seen[x]["policy_version"] == POLICIES[2] and seen[x]["stale"] for x in ("B", "C"))


def _alive(procs) -> None:
    for p in procs:
        p.alive()


async def _has(b, procs, names) -> bool:
    _alive(procs)
    return names <= set(await _fleet(b))


async def _n_trees(b, n: int) -> bool:
    return (await b.js.stream_info(TREES_STREAM)).state.messages >= n


async def _in_flight(b, procs, name: str) -> bool:
    _alive(procs)
    h = (await _fleet(b)).get(name)
    return h is not None and h.trees_in_flight > 0


async def _serving(b, procs, names, version: str) -> bool:
    _alive(procs)
    fleet = await _fleet(b)
    return all(n in fleet and fleet[n].policy_version == version for n in names)


async def _logged(procs, text: str) -> bool:
    _alive(procs)
    return any(text in p.log() for p in procs)


async def test_bad_checkpoints_are_refused_and_the_actor_keeps_serving(nats_server, models, tmp_path):
    cfg = load_config(overrides=_overrides(nats_server.url, tmp_path, models, "actor.grace_s=60"), env={})
    stop, ready = asyncio.Event(), asyncio.Event()
    async with open_broker(cfg, "test") as b:
        good = await _publish_pair(b, models, 1)
        unloadable = await put_checkpoint(b, models["unloadable"], "unloadable")
        foreign = await put_checkpoint(b, models["foreign_ppm"], "foreign-ppm")
        report = ActorReport("solo")  # filled in while the actor runs
        actor = asyncio.create_task(run_actor(cfg, stop, ready, report))
        await asyncio.wait_for(ready.wait(), 60)
        bad = {  # what is wrong -> the pointer, and a word of the logged reason
            "digest": (
                ModelPointer(
                    round=1, policy=ModelRef(version="x1", object=good.policy.object, sha256="0" * 64), ppm=good.ppm
                ),
                "digest",
            ),
            "missing": (
                ModelPointer(round=2, policy=ModelRef(version="x2", object="nowhere", sha256=good.policy.sha256)),
                "not in the store",
            ),
            "base": (ModelPointer(round=3, policy=good.policy, ppm=foreign), "base does not match"),
            "weights": (ModelPointer(round=4, policy=unloadable, ppm=good.ppm), "cannot load"),
        }
        n = 0
        for what, (pointer, reason) in bad.items():
            await set_pointer(b, pointer)
            ev = await _until(lambda p=pointer: _event(actor, report, p.round), 60, f"the {what} pointer handled")
            assert ev.refused and reason in ev.refused and ev.swapped_at is None, (what, ev)
            await add_problems(b, _problems(n, n + 2))  # still serving, on the configured pair
            n += 2
            await _until(lambda k=n: _n_trees(b, k), 60, f"trees after the {what} pointer")
        good = ModelPointer(round=5, policy=good.policy, ppm=good.ppm)
        await set_pointer(b, good)
        ev = await _until(lambda: _event(actor, report, 5), 60, "the good pointer")
        assert ev.refused is None and ev.swapped_at >= ev.ready_at >= ev.seen_at
        await add_problems(b, _problems(n, n + 4))
        await _until(lambda: _n_trees(b, n + 1), 60, "a tree on the new pair")
        stop.set()  # with a long grace, trees in flight finish and are published
        assert await asyncio.wait_for(actor, 120) is report
        trees = await _trees(b)
    assert report.failed == 0 and report.published == len(trees) > n  # in-flight trees finished
    old = [t for t in trees if t.round == 0]
    assert len(old) >= n and all(x.policy_version == POLICIES[0] for t in old for x in t.nodes[1:])
    assert any(len(t.nodes) > 1 for t in old)
    new = [x for t in trees if t.round == 5 for x in t.nodes[1:]]
    assert new and all(x.policy_version == POLICIES[1] and x.ppm_version == PPMS[1] for x in new)


async def _event(actor_task, report, rnd: int):
    if actor_task.done():
        actor_task.result()
        raise AssertionError("the actor stopped")
    return next((ev for ev in report.swaps if ev.round == rnd and (ev.refused or ev.swapped_at)), None)
