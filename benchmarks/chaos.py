"""The chaos run: the whole system under SIGKILLs and load, then reconciled.

    .venv/bin/python benchmarks/chaos.py --json [--duration 1200] [--passes sqlite,postgres]
        [--actors 2] [--seed 0] [--gap 20,60] [--pair-p 0.25] [--post-every 4] [--drain-s 240]
        [--baseline] [--set key=value ...] [--keep DIR]

Each pass starts the real system as separate processes, the way the compose file does
(deploy/docker-compose.yml): its own ``nats-server`` with JetStream on a free port and a temp
store dir (never the machine's shared 4222), the store (a SQLite file; in the ``postgres`` pass a
throwaway PostgreSQL cluster, ``initdb`` + ``postgres`` on a free port in a temp dir, never the
shared 5432), then ``rstar learner``, ``--actors`` × ``rstar actor`` and ``rstar serve`` run
under ``app.supervisor.Supervisor`` — the supervisor ``rstar up`` uses, which restarts a child
that died (1 s, or an exponential backoff up to 60 s for one that died within 30 s of its
start). The NATS and PostgreSQL servers are restarted by this script 1 s after they die (compose's
``restart: unless-stopped``) on the same port and data dir. Config: the nano preset
(app/presets/nano.toml) sized down so a round takes a minute or two (``SMALL`` below; ``--set``
adds to it), with ``broker.problems_ack_wait_s`` at 60 s so a killed actor's problems come back
within the run.

The faults start once round 0 (the bootstrap) is published and the actors serve it (so every
component has a readiness probe), and go on for ``--duration`` seconds: every ``--gap`` seconds
(uniform, seeded) one target, or with probability ``--pair-p`` two different ones, gets SIGKILL
to its whole process group (as ``docker kill`` ends a container): ``actor`` (a random one),
``learner``, ``api``, ``nats``, and ``postgres`` in the postgres pass, the kinds drawn from a
deck shuffled each cycle so that every kind is hit in turn. Only a component that has recovered
from its last fault is a target. Meanwhile a poster POSTs new problems to the API
(1-3 problems of the nano pool every ``--post-every`` s, with the write token; a request that
fails — connection refused, 5xx, timeout — is retried until it is answered 200), and a reader
GETs ``/health``, ``/api/stats``, ``/api/trees``, ``/api/rounds``, ``/api/checkpoints`` and one
stored tree, about once a second.

Then the drain: posting stops, every component is up; the run waits (at most ``--drain-s``)
until no problem is pending or unacked in PROBLEMS, stops the actors (SIGTERM: they return what
they hold), waits until ingest has nothing pending or unacked in TREES, stops learner and API
(SIGTERM), and reconciles against the broker (still running) and the store.

Figures (one JSON object, headed by ``benchmarks.run_info``; one entry per pass in ``passes``):

- ``faults_injected``: SIGKILLs per kind; ``fault_events``: the number of fault moments and how
  many were pairs; ``faults``: each one (``at_s`` from the first fault, ``kind``, ``target``,
  ``recovery_s``).
- ``recovery_s`` of a fault: from the SIGKILL to the first moment its probe passes: ``nats``:
  the server answers a JetStream request; ``postgres``: ``SELECT 1`` succeeds; ``api``:
  ``GET /health`` answers 200 (so it needs the database too); ``learner``: its log has one more
  ``learner: ingesting into`` line (written once it is connected to both broker and store) than
  at the kill; ``actor``: a heartbeat of that actor written after the kill (it writes one only
  while serving). ``max_recovery_s``: the longest; ``never_recovered``: faults whose probe had
  not passed by the end of the drain (their recovery is ``null``). ``restarts``: the
  supervisor's restarts per component, which include exits the faults caused in others (an
  actor that gave up on a dead broker).
- problems, over the ids the API answered 200 for (``accepted``): ``stored`` (a row in the
  ``problems`` table), ``queued`` (its id in the broker's ``problems`` KV bucket, which records
  every id ever put on PROBLEMS), ``searched`` (at least one ``source='search'`` tree in the
  store), ``pending`` (its message still in the PROBLEMS work queue at the end: not yet
  delivered, or delivered and unacked), ``dead_lettered`` (in the DLQ: delivered
  ``problems_max_deliver`` times and never finished). ``problems_lost`` = accepted and neither
  searched nor pending nor dead-lettered. ``not_stored`` / ``not_queued``: accepted ids missing
  from the table / the KV bucket. ``posts``: requests answered 200, and failed attempts by cause.
- trees (actor searches only; the teacher's round-0 trees are written by the learner, not
  published): ``published`` = distinct tree ids among the TREES stream's messages (a tree in
  several parts counts once; its id is its ``Nats-Msg-Id``, or ``Rstar-Tree-Id`` for parts);
  ``stored`` = ``source='search'`` rows in ``trees``. ``trees_lost`` = published, not stored and
  not dead-lettered by ingest (``trees_dead_lettered``). ``trees_duplicated`` = stream messages
  whose ``Nats-Msg-Id`` an earlier message already had (the server's dedup failed) + stored
  trees whose node count differs from the published tree's (``trees_incomplete``: a tree written
  twice or in part) + stored search trees that were never published (``trees_unexplained``); a
  second row for one tree id is ruled out by the primary key. ``searched_again``: (problem,
  round) pairs with more than one stored tree — not a fault (an actor killed after publishing,
  before acking, has its problem searched again: DESIGN §4), reported for scale.
- checkpoints: ``pointers`` = every revision of the ``models`` KV key (its history);
  ``published`` = distinct (kind, version) pairs they name; ``verified`` = those whose Object
  Store object downloads and unpacks with the pointer's sha256 (``broker.checkpoints.
  fetch_checkpoint``) and whose ``checkpoints`` row has the same sha256; ``pointers_ok`` =
  pointers whose checkpoints (the policy; the PPM when the pointer names one) are verified and
  whose round - 1 (a pointer names the round the actors collect next) is ``published`` in
  ``rounds`` with the same versions.
- rounds: ``rounds_completed`` = rounds in state ``published`` (round 0 is the bootstrap);
  ``rounds_consistent`` = the rounds are numbered 0..n with no gap, every one but the last
  published, every published one has a policy version (and its PPM version, if any) with rows in
  ``checkpoints``, the current pointer is the one the last published round set, and every stored search tree was
  searched with a policy some published round names; ``rounds``: per round its state, trees and
  held-out greedy accuracy.
- ``reader``: GETs answered 200, by failure cause, and ``5xx_while_up``: 5xx answers while no
  fault was outstanding (every component had recovered) — should be 0.
- ``heldout_vs_undisturbed`` (``--baseline``): the same pass run first without faults for the
  same time; the held-out greedy accuracy of the last round after the bootstrap that both
  reached, and whether the difference is within 2 standard errors (binomial, both runs); not
  measured when no such round exists or both score 0. Without ``--baseline`` it is
  ``null`` with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.run_info import run_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "chaos-token"
PG_BIN = Path("/usr/local/bin")

# The nano preset, sized down so a round takes a minute or two on a shared 2-core machine.
SMALL = [
    "learner.teacher_problems=240",
    "learner.teacher_levels=[1,2,3,4]",
    "train.bootstrap_steps=80",
    "train.steps=20",
    "train.save_every=10",
    "train.ppm_max_pairs=200",
    "train.threads=1",
    "learner.round_quota=24",
    "learner.max_rounds=100",
    "learner.eval_synthetic_n=24",
    "learner.eval_sampled_n=0",
    'learner.eval_methods=["greedy"]',
    "learner.poll_s=1",
    "learner.stop_timeout_s=30",
    "search.rollouts=4",
    "search.n_children=3",
    "search.max_depth=6",
    "search.trees_in_flight=6",
    "generation.max_step_tokens=64",
    "model.threads=1",
    "sandbox.workers=1",
    "actor.heartbeat_s=2",
    "actor.grace_s=5",
    "actor.wait_for_model=true",
    "broker.problems_ack_wait_s=60",
    "broker.heartbeat_ttl_s=30",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def killpg(proc: subprocess.Popen | None) -> None:
    if proc is None or proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


class Postgres:
    """A throwaway PostgreSQL cluster (its own data dir and port), run as the ``postgres`` user."""

    def __init__(self, root: Path):
        self.dir = root / "pg"
        self.sock = root / "pgsock"
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        for d in (self.dir, self.sock):
            d.mkdir(parents=True)
            shutil.chown(d, "postgres", "postgres")
        shutil.chown(root, "postgres", "postgres")
        subprocess.run(
            [str(PG_BIN / "initdb"), "-D", str(self.dir), "-U", "postgres", "--auth=trust", "-E", "UTF8"],
            user="postgres",
            group="postgres",
            check=True,
            capture_output=True,
        )
        self.log = root / "postgres.log"

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        out = open(self.log, "ab")  # noqa: SIM115  (the child owns it)
        self.proc = subprocess.Popen(
            [str(PG_BIN / "postgres"), "-D", str(self.dir), "-p", str(self.port), "-k", str(self.sock)]
            + ["-c", "listen_addresses=127.0.0.1", "-c", "max_connections=100"],
            user="postgres",
            group="postgres",
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        out.close()

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(
                f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", connect_timeout=2
            ) as c:
                c.execute("SELECT 1")
            return True
        except psycopg.Error:
            return False

    def stop(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGINT)  # fast shutdown
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                killpg(self.proc)


@dataclass
class Fault:
    kind: str
    target: str
    at: float  # monotonic
    wall: float = 0.0  # time.time() of the kill (heartbeats carry wall-clock times)
    mark: Any = None  # what the probe compares against (the learner's log line count)
    recovered_at: float | None = None


@dataclass
class Tally:
    ok: int = 0
    failed: dict[str, int] = field(default_factory=dict)

    def fail(self, why: str) -> None:
        self.failed[why] = self.failed.get(why, 0) + 1


class ChaosPass:
    def __init__(self, store: str, args: argparse.Namespace, chaos: bool = True):
        self.store, self.args, self.chaos = store, args, chaos
        self.rng = random.Random(f"{args.seed}-{store}")  # the load: problems and reads
        self.fault_rng = random.Random(f"{args.seed}-{store}-faults")  # the fault schedule
        self.deck: list[str] = []
        self.root = Path(tempfile.mkdtemp(prefix=f"rstar-chaos-{store}-"))
        self.api_port = free_port()
        self.nats_port = free_port()
        self.nats: Any = None
        self.pg: Postgres | None = None
        self.faults: list[Fault] = []
        self.accepted: set[str] = set()
        self.posts = Tally()
        self.reader = Tally()
        self.reader_5xx_while_up = 0
        self.dead_since: dict[str, float] = {}  # nats / postgres: when this script saw them die

    # ---------------------------------------------------------------- processes
    def config_overrides(self) -> list[str]:
        store_url = self.pg.url if self.pg else f"sqlite:///{self.root / 'data' / 'rstar.db'}"
        return [
            *SMALL,
            *self.args.set,
            f'data_dir="{self.root / "data"}"',
            f'broker.url="nats://127.0.0.1:{self.nats_port}"',
            f'store.url="{store_url}"',
            f'api.token="{TOKEN}"',
            f"api.port={self.api_port}",
        ]

    def start_nats(self) -> None:
        from broker.server import start_server

        self.nats = start_server(self.root / "nats", port=self.nats_port)

    def setup(self) -> None:
        from app.supervisor import Supervisor, rstar_argv
        from app.up import preset_path
        from rstar.config import dump_config, load_config
        from store.db import open_store

        self.start_nats()
        if self.store == "postgres":
            self.pg = Postgres(self.root)
            self.pg.start()
            deadline = time.monotonic() + 60
            while not self.pg.ready():
                if time.monotonic() > deadline:
                    raise RuntimeError(f"postgres did not start: {self.pg.log.read_text()[-2000:]}")
                time.sleep(0.5)
        self.cfg = load_config(overrides=self.config_overrides(), env={}, preset=preset_path("nano"))
        self.config_file = self.root / "config.json"
        dump_config(self.cfg, self.config_file)
        open_store(self.cfg.store_url).dispose()  # migrate once, before the children race to
        env = {k: v for k, v in os.environ.items() if not k.startswith("RSTAR_")}
        env["PYTHONPATH"] = str(ROOT)
        self.sup = Supervisor(self.root / "logs", env)
        conf = str(self.config_file)
        self.sup.add("learner", rstar_argv(["learner"], conf, []))
        for i in range(self.args.actors):
            self.sup.add(f"actor-{i}", rstar_argv(["actor"], conf, [f"actor.id=actor-{i}"]))
        self.sup.add("api", rstar_argv(["serve"], conf, []))

    def child(self, name: str):
        return next(c for c in self.sup.children if c.name == name)

    def keep_infra_up(self) -> None:
        """compose's ``restart: unless-stopped`` for the two servers: 1 s after they die."""
        now = time.monotonic()
        if self.nats is not None and not self.nats.running():
            since = self.dead_since.setdefault("nats", now)
            if now - since >= 1.0:
                try:
                    self.start_nats()
                    self.dead_since.pop("nats", None)
                except Exception as e:  # retried on the next tick
                    print(f"nats restart failed: {e}", file=sys.stderr)
        if self.pg is not None and not self.pg.running():
            since = self.dead_since.setdefault("postgres", now)
            if now - since >= 1.0:
                self.pg.start()
                self.dead_since.pop("postgres", None)

    def tick(self) -> None:
        self.keep_infra_up()
        self.sup.poll()

    def kill(self, target: str) -> None:
        if target == "nats":
            self.nats.kill()
        elif target == "postgres":
            assert self.pg is not None
            killpg(self.pg.proc)
        else:
            killpg(self.child(target).proc)

    def learner_starts(self) -> int:
        try:
            return self.child("learner").log_path.read_text(errors="replace").count("learner: ingesting into")
        except OSError:
            return 0

    # ---------------------------------------------------------------- probes
    async def probe(self, f: Fault, b, http) -> bool:
        import aiohttp

        from actors.heartbeat import read_fleet
        from broker.streams import PROBLEMS_STREAM

        try:
            if f.kind == "nats":
                await asyncio.wait_for(b.js.stream_info(PROBLEMS_STREAM), 2)
                return True
            if f.kind == "postgres":
                assert self.pg is not None
                return await asyncio.to_thread(self.pg.ready)
            if f.kind == "api":
                async with http.get(f"http://127.0.0.1:{self.api_port}/health", timeout=aiohttp.ClientTimeout(3)) as r:
                    return r.status == 200
            if f.kind == "learner":
                return self.learner_starts() > f.mark
            if f.kind == "actor":
                fleet = await asyncio.wait_for(read_fleet(b), 3)
                return any(h.actor_id == f.target and h.at > f.wall for h in fleet)
        except Exception:
            return False
        return False

    async def check_recoveries(self, b, http) -> None:
        for f in self.faults:
            if f.recovered_at is None and await self.probe(f, b, http):
                f.recovered_at = time.monotonic()

    def outstanding(self) -> set[str]:
        return {f.target for f in self.faults if f.recovered_at is None}

    # ---------------------------------------------------------------- load
    async def poster(self, http, stop: asyncio.Event) -> None:
        import aiohttp

        from learner.pool import pool_problems

        pool = pool_problems(self.cfg, self.cfg.learner.pool, 5000).problems
        self.rng.shuffle(pool)
        i = 0
        url = f"http://127.0.0.1:{self.api_port}/api/problems"
        headers = {"Authorization": f"Bearer {TOKEN}"}
        while not stop.is_set() and i < len(pool):
            batch = pool[i : i + self.rng.randint(1, 3)]
            i += len(batch)
            body = [{"question": p.question, "answer": p.answer, "source": p.source, "meta": p.meta} for p in batch]
            while not stop.is_set():
                try:
                    async with http.post(url, json=body, headers=headers, timeout=aiohttp.ClientTimeout(90)) as r:
                        if r.status == 200:
                            self.accepted.update((await r.json())["ids"])
                            self.posts.ok += 1
                            break
                        self.posts.fail(str(r.status))
                except (aiohttp.ClientError, TimeoutError) as e:
                    self.posts.fail(type(e).__name__)
                await asyncio.sleep(1.0)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.args.post_every)

    async def read_api(self, http, stop: asyncio.Event) -> None:
        import aiohttp

        base = f"http://127.0.0.1:{self.api_port}"
        tree_id = None
        while not stop.is_set():
            path = self.rng.choice(
                ["/health", "/api/stats", "/api/trees?limit=5", "/api/rounds", "/api/checkpoints", "tree"]
            )
            if path == "tree":
                path = f"/api/trees/{tree_id}" if tree_id else "/api/trees?limit=1"
            up = not self.outstanding()
            try:
                async with http.get(base + path, timeout=aiohttp.ClientTimeout(30)) as r:
                    data = await r.read()
                    if r.status == 200:
                        self.reader.ok += 1
                        if path.startswith("/api/trees?"):
                            rows = json.loads(data).get("items") or []
                            tree_id = rows[0]["id"] if rows else tree_id
                    else:
                        self.reader.fail(str(r.status))
                        if r.status >= 500 and up and not self.outstanding():
                            self.reader_5xx_while_up += 1
            except (aiohttp.ClientError, TimeoutError) as e:
                self.reader.fail(type(e).__name__)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)

    # ---------------------------------------------------------------- the run
    async def wait_for_round0(self, b, limit_s: float) -> float:
        """Until round 0 is published and every actor's heartbeat reports serving it."""
        from actors.heartbeat import read_fleet
        from broker.checkpoints import get_pointer

        t0 = time.monotonic()
        while time.monotonic() - t0 < limit_s:
            self.tick()
            try:
                p = await get_pointer(b)
                fleet = await read_fleet(b)
            except Exception:
                p, fleet = None, []
            if p is not None and len({h.actor_id for h in fleet if h.policy_version == p.policy.version}) >= (
                self.args.actors
            ):
                return time.monotonic() - t0
            await asyncio.sleep(2)
        raise RuntimeError(f"round 0 not published and served within {limit_s:.0f}s (logs: {self.root / 'logs'})")

    def kinds(self) -> list[str]:
        return ["actor", "learner", "api", "nats"] + (["postgres"] if self.pg else [])

    def draw(self, exclude: set[str]) -> str | None:
        """The next target: kinds are taken from a shuffled deck (each kind once per cycle), so a
        short run still hits every kind; a kind whose component has not recovered is skipped."""
        busy = self.outstanding() | exclude
        for _ in range(2):
            for k in list(self.deck):
                if k == "actor":
                    free = [f"actor-{i}" for i in range(self.args.actors) if f"actor-{i}" not in busy]
                    if free:
                        self.deck.remove(k)
                        return self.fault_rng.choice(free)
                elif k not in busy:
                    self.deck.remove(k)
                    return k
            if self.deck and len(self.deck) == len(self.kinds()):
                return None
            self.deck = self.kinds()
            self.fault_rng.shuffle(self.deck)
        return None

    async def inject(self) -> None:
        n = 2 if self.fault_rng.random() < self.args.pair_p else 1
        picked: list[str] = []
        for _ in range(n):
            t = self.draw(set(picked))
            if t is not None:
                picked.append(t)
        now = time.monotonic()
        for t in picked:
            kind = "actor" if t.startswith("actor-") else t
            f = Fault(kind, t, now, wall=time.time(), mark=self.learner_starts() if kind == "learner" else None)
            self.faults.append(f)
            self.kill(t)
        if picked:
            print(f"[{self.store}] kill {', '.join(picked)}", file=sys.stderr)

    async def run(self) -> dict[str, Any]:
        import aiohttp

        from broker.client import open_broker

        started = time.monotonic()
        self.setup()
        async with open_broker(self.cfg, "chaos-probe", setup=False) as b, aiohttp.ClientSession() as http:
            warmup_s = await self.wait_for_round0(b, self.args.warmup_limit_s)
            print(
                f"[{self.store}] round 0 served after {warmup_s:.0f}s; chaos for {self.args.duration}s", file=sys.stderr
            )
            stop_load = asyncio.Event()
            load = [
                asyncio.create_task(self.poster(http, stop_load)),
                asyncio.create_task(self.read_api(http, stop_load)),
            ]
            t0 = time.monotonic()
            gap_lo, gap_hi = self.args.gap
            next_fault = t0 + self.fault_rng.uniform(gap_lo, gap_hi)
            while time.monotonic() - t0 < self.args.duration:
                self.tick()
                await self.check_recoveries(b, http)
                if self.chaos and time.monotonic() >= next_fault:
                    await self.inject()
                    next_fault = time.monotonic() + self.fault_rng.uniform(gap_lo, gap_hi)
                await asyncio.sleep(0.5)
            stop_load.set()
            await asyncio.gather(*load)
            drain = await self.drain(b, http)
            figures = await self.reconcile(b, t0)
        figures.update(
            {
                "store": self.store,
                "chaos": self.chaos,
                "warmup_s": round(warmup_s, 1),
                "duration_s": self.args.duration,
                "drain": drain,
                "wall_s": round(time.monotonic() - started, 1),
            }
        )
        return figures

    async def wait_consumer(self, b, stream: str, consumer: str, limit_s: float) -> dict[str, Any]:
        t = time.monotonic()
        info = None
        while time.monotonic() - t < limit_s:
            self.tick()
            with contextlib.suppress(Exception):
                info = await b.js.consumer_info(stream, consumer)
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    return {"drained": True, "s": round(time.monotonic() - t, 1)}
            await asyncio.sleep(1)
        left = {"pending": info.num_pending, "unacked": info.num_ack_pending} if info else {}
        return {"drained": False, "s": round(time.monotonic() - t, 1), **left}

    def stop_children(self, names: list[str]) -> dict[str, int | None]:
        codes: dict[str, int | None] = {}
        for n in names:
            c = self.child(n)
            c.done = True  # no restart from here on
            if c.proc is not None and c.proc.poll() is None:
                c.proc.send_signal(signal.SIGTERM)
        for n in names:
            p = self.child(n).proc
            try:
                codes[n] = p.wait(120) if p else None
            except subprocess.TimeoutExpired:
                killpg(p)
                codes[n] = None
        return codes

    async def drain(self, b, http) -> dict[str, Any]:
        from broker.streams import ACTORS_CONSUMER, INGEST_CONSUMER, PROBLEMS_STREAM, TREES_STREAM

        t = time.monotonic()
        while self.outstanding() and time.monotonic() - t < 180:  # every component back first
            self.tick()
            await self.check_recoveries(b, http)
            await asyncio.sleep(1)
        out: dict[str, Any] = {"recovered_s": round(time.monotonic() - t, 1)}
        out["problems"] = await self.wait_consumer(b, PROBLEMS_STREAM, ACTORS_CONSUMER, self.args.drain_s)
        actors = [f"actor-{i}" for i in range(self.args.actors)]
        out["actor_exit"] = self.stop_children(actors)
        out["trees"] = await self.wait_consumer(b, TREES_STREAM, INGEST_CONSUMER, 180)
        out["exit"] = self.stop_children(["learner", "api"])
        return out

    # ---------------------------------------------------------------- reconcile
    async def stream_messages(self, b, stream: str) -> list[Any]:
        from nats.js.errors import NotFoundError

        info = (await b.js.stream_info(stream)).state
        out: list[Any] = []
        if not info.messages:
            return out
        for seq in range(info.first_seq, info.last_seq + 1):
            try:
                out.append(await b.js.get_msg(stream, seq))
            except NotFoundError:  # acked off a work queue, or deleted
                continue
        return out

    async def reconcile(self, b, t0: float) -> dict[str, Any]:
        from sqlalchemy import text

        from broker.codec import MSG_ID, PART, PARTS, TREE_ID, decode_tree, unwrap
        from broker.streams import DLQ_STREAM, PROBLEMS_STREAM, SEEN_PROBLEMS_BUCKET, TREES_STREAM, kv_key
        from rstar.schemas import Problem, TreeResult, decode
        from store.db import open_store

        engine = open_store(self.cfg.store_url)
        try:
            with engine.connect() as c:
                stored_problems = {r[0] for r in c.execute(text("select id from problems"))}
                tree_rows = c.execute(
                    text(
                        "select t.id, t.problem_id, t.policy_version, count(n.idx) from trees t "
                        "left join nodes n on n.tree_id = t.id where t.source = 'search' "
                        "group by t.id, t.problem_id, t.policy_version"
                    )
                ).all()
                rounds = [
                    dict(r._mapping)
                    for r in c.execute(text("select round, state, policy_version, ppm_version, eval from rounds"))
                ]
                ckpts = {
                    (r[0], r[1]): r[2] for r in c.execute(text("select kind, version, sha256 from checkpoints")).all()
                }
                searched_again = c.execute(
                    text(
                        "select count(*) from (select problem_id, round from trees where source = 'search' "
                        "group by problem_id, round having count(*) > 1) d"
                    )
                ).scalar()
                trees_by_round: dict[int, int] = dict(
                    c.execute(text("select round, count(*) from trees where source = 'search' group by round")).all()
                )
        finally:
            engine.dispose()

        # Problems.
        kv = await b.js.key_value(SEEN_PROBLEMS_BUCKET)
        try:
            seen_keys = set(await kv.keys())
        except Exception:
            seen_keys = set()
        pending = set()
        for m in await self.stream_messages(b, PROBLEMS_STREAM):
            with contextlib.suppress(Exception):
                pending.add(decode(m.data, Problem).id)
        dlq = await self.stream_messages(b, DLQ_STREAM)
        dead_problems, dead_trees = set(), set()
        for m in dlq:
            h = m.headers or {}
            if ".problems." in (m.subject or ""):
                with contextlib.suppress(Exception):
                    dead_problems.add(decode(m.data, Problem).id)
            else:
                dead_trees.add(h.get(TREE_ID) or h.get(MSG_ID, "").split(":")[0])
        searched = {r[1] for r in tree_rows}
        acc = self.accepted
        problems = {
            "accepted": len(acc),
            "stored": len(acc & stored_problems),
            "queued": len({p for p in acc if kv_key(p) in seen_keys}),
            "searched": len(acc & searched),
            "pending": len(acc & pending),
            "dead_lettered": len(acc & dead_problems),
            "not_stored": len(acc - stored_problems),
            "not_queued": len({p for p in acc if kv_key(p) not in seen_keys}),
            "posts": {"ok": self.posts.ok, "failed": self.posts.failed},
        }
        problems_lost = len(acc - searched - pending - dead_problems)

        # Trees.
        seen_ids: set[str] = set()
        dup_msgs = 0
        parts: dict[str, dict[int, Any]] = {}
        published_nodes: dict[str, int] = {}
        for m in await self.stream_messages(b, TREES_STREAM):
            h = m.headers or {}
            mid = h.get(MSG_ID, "")
            dup_msgs += int(mid in seen_ids)
            seen_ids.add(mid)
            if PARTS in h:
                parts.setdefault(h[TREE_ID], {})[int(h[PART])] = m
                continue
            try:
                published_nodes[mid] = len(decode_tree(h, m.data).nodes)
            except Exception:
                published_nodes[mid] = -1
        for tid, ps in parts.items():
            try:
                first = ps[0].headers
                data = b"".join(ps[i].data for i in range(int(first[PARTS])))
                published_nodes[tid] = len(decode(unwrap(first, data, 1 << 28), TreeResult).nodes)
            except Exception:
                published_nodes[tid] = -1
        stored_nodes = {r[0]: r[3] for r in tree_rows}
        published, stored = set(published_nodes), set(stored_nodes)
        incomplete = sum(1 for t in published & stored if published_nodes[t] != stored_nodes[t])
        unexplained = len(stored - published)
        trees = {
            "published": len(published),
            "stored": len(stored),
            "dead_lettered": len(published & dead_trees),
            "duplicate_messages": dup_msgs,
            "trees_incomplete": incomplete,
            "trees_unexplained": unexplained,
            "searched_again": int(searched_again or 0),
        }
        trees_lost = len(published - stored - dead_trees)
        trees_duplicated = dup_msgs + incomplete + unexplained

        # Checkpoints and rounds.
        checkpoints = await self.check_pointers(b, rounds, ckpts)
        rounds.sort(key=lambda r: r["round"])
        published_rounds = [r for r in rounds if r["state"] == "published"]
        policies = {r["policy_version"] for r in published_rounds}
        problems_of_consistency = []
        if [r["round"] for r in rounds] != list(range(len(rounds))):
            problems_of_consistency.append("round numbers have a gap")
        if any(r["state"] != "published" for r in rounds[:-1]):
            problems_of_consistency.append("a round before the last is not published")
        for r in published_rounds:
            if not r["policy_version"] or ("policy", r["policy_version"]) not in ckpts:
                problems_of_consistency.append(f"round {r['round']}: policy checkpoint row missing")
            if r["ppm_version"] and ("ppm", r["ppm_version"]) not in ckpts:
                problems_of_consistency.append(f"round {r['round']}: PPM checkpoint row missing")
        if published_rounds and checkpoints["current_round"] != published_rounds[-1]["round"] + 1:
            problems_of_consistency.append("the current pointer is not the last published round")
        off_policy = sum(1 for r in tree_rows if r[2] not in policies)
        if off_policy:
            problems_of_consistency.append(f"{off_policy} trees searched with an unpublished policy")
        if checkpoints["pointers_ok"] != checkpoints["pointers"]:
            problems_of_consistency.append("a model pointer names an unverified pair")

        recov = [f.recovered_at - f.at for f in self.faults if f.recovered_at is not None]
        kinds: dict[str, int] = {}
        for f in self.faults:
            kinds[f.kind] = kinds.get(f.kind, 0) + 1
        moments: dict[float, list[Fault]] = {}
        for f in self.faults:
            moments.setdefault(f.at, []).append(f)
        return {
            "faults_injected": kinds,
            "fault_events": {"moments": len(moments), "pairs": sum(1 for v in moments.values() if len(v) > 1)},
            "trees_lost": trees_lost,
            "trees_duplicated": trees_duplicated,
            "problems_lost": problems_lost,
            "rounds_completed": len(published_rounds),
            "rounds_consistent": not problems_of_consistency,
            "consistency_problems": problems_of_consistency,
            "max_recovery_s": round(max(recov), 1) if recov else None,
            "never_recovered": [f.target for f in self.faults if f.recovered_at is None],
            "problems": problems,
            "trees": trees,
            "checkpoints": checkpoints,
            "rounds": [
                {
                    "round": r["round"],
                    "state": r["state"],
                    "search_trees": trees_by_round.get(r["round"], 0),
                    "heldout_greedy": _greedy(r["eval"]),
                }
                for r in rounds
            ],
            "reader": {"ok": self.reader.ok, "failed": self.reader.failed, "5xx_while_up": self.reader_5xx_while_up},
            "restarts": {c.name: c.restarts for c in self.sup.children},
            "faults": [
                {
                    "at_s": round(f.at - t0, 1),
                    "kind": f.kind,
                    "target": f.target,
                    "recovery_s": round(f.recovered_at - f.at, 1) if f.recovered_at else None,
                }
                for f in self.faults
            ],
        }

    async def check_pointers(self, b, rounds: list[dict], ckpts: dict) -> dict[str, Any]:
        from broker.checkpoints import fetch_checkpoint
        from broker.streams import MODELS_BUCKET, MODELS_KEY
        from rstar.schemas import ModelPointer, decode

        kv = await b.js.key_value(MODELS_BUCKET)
        try:
            history = [e for e in await kv.history(MODELS_KEY) if e.value]
        except Exception:
            history = []
        pointers = [decode(e.value, ModelPointer) for e in history]
        by_round = {r["round"]: r for r in rounds}
        verified: dict[tuple[str, str], bool] = {}
        with tempfile.TemporaryDirectory(dir=self.root) as tmp:
            for p in pointers:
                for kind, ref in (("policy", p.policy), ("ppm", p.ppm)):
                    if ref is None or (kind, ref.version) in verified:
                        continue
                    try:
                        await fetch_checkpoint(b, ref, Path(tmp) / f"{kind}-{len(verified)}")
                        verified[(kind, ref.version)] = ckpts.get((kind, ref.version)) == ref.sha256
                    except Exception:
                        verified[(kind, ref.version)] = False
        ok = 0
        for p in pointers:
            r = by_round.get(p.round - 1) or {}  # a pointer names the pair round - 1 published
            ok += bool(
                verified[("policy", p.policy.version)]
                and (p.ppm is None or (verified[("ppm", p.ppm.version)] and r.get("ppm_version") == p.ppm.version))
                and r.get("state") == "published"
                and r.get("policy_version") == p.policy.version
            )
        return {
            "pointers": len(pointers),
            "pointers_ok": ok,
            "published": len(verified),
            "verified": sum(verified.values()),
            "current_round": pointers[-1].round if pointers else None,
        }

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.sup.stop(grace_s=30)
        if self.pg is not None:
            self.pg.stop()
        if self.nats is not None:
            self.nats.stop()
        if self.args.keep:
            dest = Path(self.args.keep) / self.root.name
            shutil.copytree(self.root / "logs", dest / "logs", dirs_exist_ok=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _greedy(ev: Any) -> dict | None:
    """The held-out synthetic greedy accuracy of a round's eval document (``{correct, n, accuracy}``)."""
    if isinstance(ev, str):
        ev = json.loads(ev)
    if not isinstance(ev, dict):
        return None
    found = _find_greedy(ev)
    return found


def _find_greedy(d: Any) -> dict | None:
    if isinstance(d, dict):
        if "greedy" in d and isinstance(d["greedy"], dict) and "accuracy" in d["greedy"]:
            g = d["greedy"]
            return {k: g[k] for k in ("accuracy", "n", "correct") if k in g}
        for v in d.values():
            got = _find_greedy(v)
            if got:
                return got
    return None


def compare(chaos: dict, base: dict) -> dict[str, Any]:
    def acc(p: dict) -> dict[int, dict]:
        return {
            r["round"]: r["heldout_greedy"] for r in p["rounds"] if r["state"] == "published" and r["heldout_greedy"]
        }

    a, b = acc(chaos), acc(base)
    common = sorted((set(a) & set(b)) - {0})  # round 0 (the bootstrap) is trained before the faults
    if not common:
        return {"measured": False, "why": "no round after the bootstrap evaluated in both runs"}
    r = common[-1]
    x, y = a[r], b[r]
    if "n" not in x or "n" not in y:
        return {"measured": False, "why": "the eval document gives no n", "round": r}
    pa, pb = x["accuracy"], y["accuracy"]
    if pa == pb == 0:
        return {"measured": False, "why": f"round {r}: 0 correct in both runs, nothing to compare", "n": x["n"]}
    se = math.sqrt(pa * (1 - pa) / x["n"] + pb * (1 - pb) / y["n"]) or 1 / max(x["n"], y["n"])
    return {
        "measured": True,
        "round": r,
        "chaos": pa,
        "undisturbed": pb,
        "n": x["n"],
        "diff": round(pa - pb, 4),
        "two_se": round(2 * se, 4),
        "within_noise": abs(pa - pb) <= 2 * se,
        "undisturbed_rounds_completed": base["rounds_completed"],
    }


def run_pass(store: str, args: argparse.Namespace, chaos: bool = True) -> dict[str, Any]:
    p = ChaosPass(store, args, chaos)
    try:
        return asyncio.run(p.run())
    finally:
        p.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=1200.0, help="seconds of faults per pass")
    ap.add_argument("--passes", default="sqlite,postgres")
    ap.add_argument("--actors", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--gap", default="20,60", help="seconds between fault moments: lo,hi")
    ap.add_argument("--pair-p", type=float, default=0.25, help="probability that a moment kills two")
    ap.add_argument("--post-every", type=float, default=4.0)
    ap.add_argument("--drain-s", type=float, default=240.0, help="most seconds to wait for PROBLEMS to empty")
    ap.add_argument("--warmup-limit-s", type=float, default=900.0)
    ap.add_argument("--baseline", action="store_true", help="first run each pass undisturbed, to compare accuracy")
    ap.add_argument("--set", action="append", default=[], help="config override for every component")
    ap.add_argument("--keep", help="copy each pass's logs under this directory")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    args.gap = tuple(float(x) for x in args.gap.split(","))
    out: dict[str, Any] = {**run_info(), "config": SMALL + args.set, "passes": {}}
    for store in args.passes.split(","):
        base = run_pass(store, args, chaos=False) if args.baseline else None
        figures = run_pass(store, args)
        if base is not None:
            figures["heldout_vs_undisturbed"] = compare(figures, base)
            figures["undisturbed"] = {k: base[k] for k in ("rounds_completed", "rounds", "trees", "problems")}
        else:
            figures["heldout_vs_undisturbed"] = {"measured": False, "why": "not run (--baseline not given)"}
        out["passes"][store] = figures
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
