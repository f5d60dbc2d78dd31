"""How long a stop takes: SIGTERM -> process exit for the actor, the learner and ``rstar up``, busy.

    .venv/bin/python benchmarks/stop_time.py --json [--reps 3] [--hog 2] [--only actor,learner-train]

Each component runs as the real command in a subprocess (``python -m app actor|learner|up``) on
the nano preset with small settings (the nano policy, one model thread, one sandbox worker), and
is sent SIGTERM at a moment when it is busy, after a random extra delay (0 to ``--jitter`` s, seeded)
so the signal lands at a different point of the work each time:

- ``actor`` (``actor.grace_s=0``): searching — its heartbeat reports trees in flight and
  generated tokens. Its ``--json`` report says how many problems it returned (nak'ed).
- ``learner-train``: training round 0's policy (a ``step n/N`` log line seen; the step budget is
  large, so every repetition resumes the same training).
- ``learner-eval``: evaluating a published round 0 (no ``evaluated in`` line yet; the held-out
  set is large, so every repetition resumes the same evaluation).
- ``up``: ``rstar up --no-api --actors 1`` after its first tree is stored (actor searching,
  learner ingesting / evaluating / training); the time includes stopping the children and the
  embedded NATS server.

Every component is measured ``--reps`` times without a CPU hog and ``--reps`` times with
``--hog N`` processes spinning beside it (``--hog 0``: without only). A stop that has not ended
after ``--cap-s`` is SIGKILLed and counted as ``over_cap`` (its time is the cap).

Figures (one JSON object, headed by ``benchmarks.run_info``): per condition (``no_hog``,
``hog_N``) and component, ``stop_s`` (every repetition), ``max_s``, ``median_s``, ``exit_codes``,
``over_cap``, and for the actor ``returned`` (problems nak'ed at the stop). The bound these
figures check is documented in ``rstar/stopping.py``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.run_info import run_info  # noqa: E402
from tests.stop_helpers import CpuHog  # noqa: E402  (the stop tests' hog: the same load)

ROOT = Path(__file__).resolve().parents[1]
COMPONENTS = ("actor", "learner-train", "learner-eval", "up")


def child_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("RSTAR_")} | {"RSTAR_LOG_JSON": "1"}


def spawn(argv: list[str], log: Path, out: Path | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "app", *argv],
        cwd=ROOT,
        env=child_env(),
        stdin=subprocess.DEVNULL,
        stdout=open(out, "w") if out else subprocess.DEVNULL,  # noqa: SIM115  (the child owns it)
        stderr=open(log, "a"),  # noqa: SIM115
        start_new_session=True,
    )


def kill_group(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()


def stop_and_time(p: subprocess.Popen, cap_s: float) -> tuple[float, int | None]:
    """SIGTERM, then seconds until the process exited (``cap_s`` and None if it had to be killed)."""
    t0 = time.monotonic()
    print(f"SIGTERM to {p.args[3]} pid {p.pid} at {time.time():.3f}", file=sys.stderr, flush=True)
    p.send_signal(signal.SIGTERM)
    try:
        code = p.wait(cap_s)
    except subprocess.TimeoutExpired:
        kill_group(p)
        return cap_s, None
    return time.monotonic() - t0, code


class NotBusy(RuntimeError):
    """The child died or idled before it was busy: that repetition is started again."""


def wait_log(p: subprocess.Popen, log: Path, pattern: str, since: int, timeout_s: float) -> None:
    """Until a line after byte ``since`` of ``log`` matches ``pattern`` (the child must stay alive)."""
    rx = re.compile(pattern)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if p.poll() is not None:
            raise NotBusy(f"{p.args[3]} exited with {p.returncode} before /{pattern}/: see {log}")
        with open(log, "rb") as f:
            f.seek(since)
            if any(rx.search(line.decode(errors="replace")) for line in f):
                return
        time.sleep(0.3)
    raise NotBusy(f"no /{pattern}/ in {log} within {timeout_s:.0f}s")


def base_overrides(work: Path, url: str | None) -> list[str]:
    return [
        f'data_dir="{work}"',
        *([f'broker.url="{url}"'] if url else []),
        "model.threads=1",
        "train.threads=1",
        "sandbox.workers=1",
        "generation.max_step_tokens=64",
        "search.rollouts=8",
        "search.n_children=4",
        "search.max_depth=6",
        "search.trees_in_flight=8",
        "actor.heartbeat_s=0.5",
        "actor.grace_s=0",
        "actor.nice=0",
        "learner.poll_s=1",
        "learner.eval_real_n=0",
    ]


def write_config(path: Path, overrides: list[str]) -> Path:
    from app.up import preset_path
    from rstar.config import dump_config, load_config

    dump_config(load_config(overrides=overrides, env={}, preset=preset_path("nano")), path)
    return path


async def actor_busy(url: str, actor_id: str, p: subprocess.Popen, timeout_s: float) -> None:
    from actors.heartbeat import read_fleet
    from broker.client import open_broker
    from rstar.config import load_config

    cfg = load_config(overrides=[f'broker.url="{url}"'], env={})
    deadline = time.monotonic() + timeout_s
    async with open_broker(cfg, "stop-bench", setup=False) as b:
        while time.monotonic() < deadline:
            if p.poll() is not None:
                raise NotBusy(f"actor exited with {p.returncode} before it was busy")
            h = {x.actor_id: x for x in await read_fleet(b)}.get(actor_id)
            if h is not None and h.trees_in_flight > 0 and h.tokens_per_s > 0:
                return
            await asyncio.sleep(0.2)
    raise NotBusy(f"actor {actor_id} not busy within {timeout_s:.0f}s")


async def queue_problems(url: str, n: int) -> None:
    from broker.client import open_broker
    from broker.problems import add_problems
    from rstar.config import load_config
    from rstar.curriculum import synthetic_problems

    async with open_broker(load_config(overrides=[f'broker.url="{url}"'], env={}), "stop-bench") as b:
        await add_problems(b, synthetic_problems(n, "train", (3, 4, 5, 6), 1))


class Bench:
    def __init__(self, args, work: Path, url: str):
        self.args, self.work, self.url = args, work, url
        self.rng = random.Random(args.seed)
        self.n = 0
        self.start_failures = 0

    def stop_when_busy(self, p: subprocess.Popen, until_busy, spread: float = 1.0) -> tuple[float, int | None]:
        """``until_busy()``, a random 0 to ``spread`` × ``--jitter`` s more, then SIGTERM ``p`` and
        time its exit; ``p``'s group is killed whatever happens."""
        try:
            until_busy()
            time.sleep(self.rng.uniform(0, spread * self.args.jitter))
            return stop_and_time(p, self.args.cap_s)
        finally:
            if p.poll() is None:
                kill_group(p)

    def actor(self) -> dict:
        self.n += 1
        aid = f"bench-{self.n}"
        cfg = write_config(self.work / "actor.json", base_overrides(self.work / "actor", self.url))
        log, out = self.work / "actor.log", self.work / f"actor-{self.n}.out"
        p = spawn(["actor", "--config", str(cfg), "--id", aid, "--json"], log, out)
        s, code = self.stop_when_busy(p, lambda: asyncio.run(actor_busy(self.url, aid, p, self.args.busy_timeout_s)))
        returned = None
        if code == 0 and out.read_text().strip():
            returned = json.loads(out.read_text().strip().splitlines()[-1])["returned"]
        return {"s": s, "code": code, "returned": returned}

    def learner(self, which: str) -> dict:
        d = self.work / which
        extra = ["learner.teacher_problems=32", "learner.teacher_levels=[1, 2]", "train.log_every=1"]
        log = d / "learner.log"
        since = log.stat().st_size if log.exists() else 0
        if which == "learner-train":  # a step budget no repetition finishes: each resumes the training
            extra += ["train.bootstrap_steps=100000", "train.save_every=20"]
            busy = r"step \d+/"
        else:  # greedy on 3000 held-out problems: stored only when done, so each repetition redoes it
            extra += ["train.bootstrap_steps=4", "learner.eval_synthetic_n=3000", 'learner.eval_methods=["greedy"]']
            published = since and "-> published" in log.read_text(errors="replace")
            busy = r"ingesting into" if published else r"-> published"
        cfg = write_config(d / "config.json", base_overrides(d, self.url) + extra)
        p = spawn(["learner", "--config", str(cfg)], log)
        # The evaluation starts by loading its model: a wider spread lands some stops in that.
        spread = 3.0 if which == "learner-eval" else 1.0
        s, code = self.stop_when_busy(p, lambda: wait_log(p, log, busy, since, self.args.busy_timeout_s), spread)
        return {"s": s, "code": code}

    def up(self) -> dict:
        d = self.work / "up"
        d.mkdir(exist_ok=True)
        over = base_overrides(d, None) + [
            "learner.teacher_problems=32",
            "learner.teacher_levels=[1, 2]",
            "train.bootstrap_steps=10",
            "train.steps=10",
            "learner.round_quota=8",
            "learner.eval_synthetic_n=30",
            "learner.eval_sampled_n=6",
            "actor.nice=10",  # as the nano preset has it
        ]
        log = d / "up.log"
        since = log.stat().st_size if log.exists() else 0
        argv = ["up", "--preset", "nano", "--no-api", "--actors", "1", "--dataset", "synthetic:3-6", "--limit", "200"]
        p = spawn([*argv, *(x for o in over for x in ("--set", o))], log)
        s, code = self.stop_when_busy(
            p, lambda: wait_log(p, log, r"first tree stored after", since, self.args.busy_timeout_s)
        )
        return {"s": s, "code": code}

    def one(self, component: str) -> dict:
        """One stop of ``component``; a start that fails before the component is busy is retried."""
        for attempt in range(3):
            try:
                if component == "actor":
                    return self.actor()
                if component.startswith("learner"):
                    return self.learner(component)
                return self.up()
            except NotBusy as e:
                print(f"{component}: {e}; starting it again", file=sys.stderr, flush=True)
                self.start_failures += 1
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def summarize(runs: list[dict], cap_s: float) -> dict:
    xs = [round(r["s"], 2) for r in runs]
    out = {
        "stop_s": xs,
        "max_s": max(xs),
        "median_s": round(statistics.median(xs), 2),
        "exit_codes": [r["code"] for r in runs],
        "over_cap": sum(r["code"] is None for r in runs),
    }
    if any("returned" in r for r in runs):
        out["returned"] = [r.get("returned") for r in runs]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--hog", type=int, default=os.cpu_count() or 2, help="spinning processes beside (0: none)")
    ap.add_argument("--only", default=",".join(COMPONENTS), help=f"comma-separated subset of {COMPONENTS}")
    ap.add_argument("--jitter", type=float, default=3.0, help="random extra delay before SIGTERM, seconds")
    ap.add_argument("--cap-s", type=float, default=180.0, help="SIGKILL a stop that takes longer")
    ap.add_argument("--busy-timeout-s", type=float, default=900.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", type=Path, default=None, help="keep the run's files here (default: a temp dir)")
    ap.add_argument("--json", action="store_true", help="print the result as JSON")
    args = ap.parse_args()
    components = [c for c in args.only.split(",") if c]
    if bad := set(components) - set(COMPONENTS):
        ap.error(f"unknown components {sorted(bad)}")

    from broker.server import start_server
    from rstar.config import load_config
    from rstar.models import resolve_model_dir

    resolve_model_dir("nano", load_config(env={}).model.cache_dir)  # built once, before any timing
    result: dict = {**run_info(), "settings": {k: v for k, v in vars(args).items() if k not in ("json", "work")}}
    with tempfile.TemporaryDirectory(prefix="stop-bench-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        srv = start_server(work / "nats")
        try:
            asyncio.run(queue_problems(srv.url, 2000))
            bench = Bench(args, work, srv.url)
            for hog_n in [0] + ([args.hog] if args.hog else []):
                cond = "no_hog" if not hog_n else f"hog_{hog_n}"
                result[cond] = {}
                for comp in components:
                    runs = []
                    for i in range(args.reps):
                        with CpuHog(hog_n):
                            r = bench.one(comp)
                        print(f"{cond} {comp} #{i + 1}: {r}", file=sys.stderr, flush=True)
                        runs.append(r)
                    result[cond][comp] = summarize(runs, args.cap_s)
            result["start_failures"] = bench.start_failures
        finally:
            srv.stop()
    result["max_s"] = {
        comp: max(result[c][comp]["max_s"] for c in result if c == "no_hog" or c.startswith("hog_"))
        for comp in components
    }
    if args.json:
        print(json.dumps(result, indent=1))
    else:
        for c in [c for c in result if c == "no_hog" or c.startswith("hog_")]:
            for comp, s in result[c].items():
                print(f"{c:8s} {comp:14s} median {s['median_s']:6.1f}s  max {s['max_s']:6.1f}s  {s['stop_s']}")


if __name__ == "__main__":
    main()
