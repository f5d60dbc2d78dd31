"""What a new user meets: a clone, the install, the first minutes of ``rstar up --preset quick``.

    .venv/bin/python benchmarks/fresh_clone.py --json --up-duration 8m --set model.threads=1 --set train.threads=1
    .venv/bin/python benchmarks/fresh_clone.py --json --up-duration 0 --ci     # the suite's time, by .ci/run

Each step runs in a temp dir (``--keep DIR`` keeps it), as the README's commands do:

1. ``git clone`` of this repository at ``--ref`` (HEAD): committed files only.
2. ``bash deploy/install.sh`` in the clone, timed (``install_s``). pip takes its wheels from this
   machine's configured index and wheel caches, as any install here does.
3. With ``--up-duration`` (e.g. ``8m``; ``0`` skips it): ``.venv/bin/rstar up --preset quick
   --duration D`` in the clone (``--preset``, ``--set`` passed on), with ``RSTAR_LOG_JSON=1``. The
   model cache is a fresh folder in the clone (``--warm-model-cache`` keeps the machine's), so the
   first start converts the model as a new user's does. From ``rstar up``'s own log:
   ``first_tree_s`` and ``first_swap_s`` (its milestones "first tree stored after" and "first
   checkpoint swap observed after", seconds after its children started), ``stop_s`` ("--duration
   reached" -> the process's exit, children and NATS included), ``exit_code``; from the store,
   read by the clone's ``benchmarks/loop_rates.py`` and ``rstar rounds --json``: the rounds
   (``rounds_published``, per-round wall and phase times, held-out accuracy).
4. With ``--ci``: ``bash .ci/run`` in the clone (``CI=true``), timed (``ci_s``), with pytest's
   closing line (``pytest_summary``; its "in N s" is the suite's own time, ``pytest_s``) and the
   exit code. This is the whole suite, the learning test included: ~15-20 min on 2 cores.

One JSON object, headed by ``benchmarks.run_info`` (the command, date, machine and load average
at the start); ``loadavg_end`` is the 1-minute load average when it finished. Absolute times
depend on the machine and its load: other work on a shared CPU slows every step.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.run_info import run_info  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse_duration(s: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smh]?)", s.strip())
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {s!r} (e.g. 90s, 8m, 1h, 0)")
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600}[m.group(2)]


def clean_env() -> dict[str, str]:
    """The machine's environment without this project's own settings or an active venv."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSTAR_") and k != "VIRTUAL_ENV"}
    env.pop("PYTHONPATH", None)
    return env


def timed_run(argv: list[str], cwd: Path, log: Path, env: dict[str, str] | None = None) -> tuple[float, int]:
    t0 = time.monotonic()
    with open(log, "w") as f:
        code = subprocess.call(argv, cwd=cwd, env=env or clean_env(), stdin=subprocess.DEVNULL, stdout=f, stderr=f)
    return round(time.monotonic() - t0, 1), code


def tail(path: Path, n: int = 15) -> list[str]:
    return path.read_text(errors="replace").splitlines()[-n:]


def run_up(clone: Path, args, work: Path) -> dict:
    overrides = list(args.set)
    if not args.warm_model_cache:
        overrides.append(f'model.cache_dir="{work / "model-cache"}"')
    argv = [str(clone / ".venv/bin/rstar"), "up", "--preset", args.preset, "--duration", f"{int(args.up_duration)}s"]
    argv += [x for o in overrides for x in ("--set", o)]
    env = clean_env() | {"RSTAR_LOG_JSON": "1"}
    log = work / "up.log"
    t0 = time.time()
    with open(log, "w") as f:
        p = subprocess.Popen(
            argv,
            cwd=clone,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=f,
            start_new_session=True,
        )
        try:
            # rstar up stops itself after --duration, within its documented stop bound
            code = p.wait(timeout=args.up_duration + args.up_start_cap_s + args.stop_cap_s)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            code = p.wait()
            killed = True
        else:
            killed = False
    exited = time.time()
    events = []
    for line in log.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict) and "msg" in rec and "t" in rec:
            events.append(rec)

    def first(pattern: str) -> dict | None:
        return next((e for e in events if re.search(pattern, e["msg"])), None)

    def secs(pattern: str) -> float | None:
        e = first(pattern)
        m = re.search(r"after (\d+(?:\.\d+)?)s", e["msg"]) if e else None
        return float(m.group(1)) if m else None

    reached = first(r"--duration reached")
    out: dict = {
        "command": " ".join(["rstar", *argv[1:]]),
        "first_tree_s": secs(r"first tree stored after"),
        "first_swap_s": secs(r"first checkpoint swap observed after"),
        "duration_reached": reached is not None,
        "stop_s": round(exited - reached["t"], 1) if reached else None,
        "process_s": round(exited - t0, 1),
        "exit_code": code,
        "killed_after_cap": killed,
        "warnings": [e["msg"] for e in events if e.get("level") in ("WARNING", "ERROR", "CRITICAL")][:20],
    }
    store = f"sqlite:///{(clone / 'data' / 'rstar.db').resolve()}"
    py = str(clone / ".venv/bin/python")
    rates = subprocess.run(
        [py, "benchmarks/loop_rates.py", "--store", store, "--json"],
        cwd=clone,
        env=clean_env(),
        capture_output=True,
        text=True,
    )
    if rates.returncode == 0:
        r = json.loads(rates.stdout)
        out["rounds"] = r["rounds"]
        out["rounds_published"] = sum(1 for x in r["rounds"] if x["state"] == "published")
        out["rounds_per_hour"] = r["rounds_per_hour"]
    else:
        out["loop_rates_error"] = rates.stderr[-2000:]
    acc = subprocess.run(
        [str(clone / ".venv/bin/rstar"), "rounds", "--json"], cwd=clone, env=clean_env(), capture_output=True, text=True
    )
    if acc.returncode == 0:
        rows = json.loads(acc.stdout)
        out["rounds_accuracy"] = [{k: r.get(k) for k in ("round", "state", "accuracy")} for r in rows]
    else:
        out["rounds_error"] = acc.stderr[-2000:]
    return out


def run_ci(clone: Path, work: Path) -> dict:
    log = work / "ci.log"
    s, code = timed_run(["bash", ".ci/run"], clone, log, clean_env() | {"CI": "true"})
    summary = next((x for x in reversed(tail(log, 400)) if re.search(r"\b(passed|failed)\b.* in [\d.]+s", x)), None)
    m = re.search(r" in ([\d.]+)s", summary or "")
    return {
        "ci_s": s,
        "exit_code": code,
        "pytest_summary": summary.strip("= ") if summary else None,
        "pytest_s": float(m.group(1)) if m else None,
        "log_tail": tail(log, 10),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", action="store_true", help="one JSON object (default: indented)")
    ap.add_argument("--ref", default="HEAD", help="the commit to clone (default: HEAD)")
    ap.add_argument(
        "--up-duration", type=parse_duration, default=parse_duration("8m"), help="rstar up's --duration; 0 skips it"
    )
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--set", action="append", default=[], help="config override for rstar up (repeatable)")
    ap.add_argument("--warm-model-cache", action="store_true", help="use the machine's model cache, not a fresh one")
    ap.add_argument(
        "--up-start-cap-s", type=float, default=300.0, help="allowance for rstar up's start before --duration counts"
    )
    ap.add_argument(
        "--stop-cap-s", type=float, default=300.0, help="SIGKILL rstar up if it has not exited this long after"
    )
    ap.add_argument("--ci", action="store_true", help="also run bash .ci/run in the clone (the whole suite)")
    ap.add_argument("--keep", type=Path, default=None, help="work here and keep it (default: a temp dir, removed)")
    args = ap.parse_args()

    commit = subprocess.run(["git", "rev-parse", args.ref], cwd=ROOT, capture_output=True, text=True, check=True)
    result: dict = {
        **run_info(),
        "commit": commit.stdout.strip(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("json", "keep")},
    }
    with tempfile.TemporaryDirectory(prefix="fresh-clone-") as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        clone = work / "rstar"
        s, code = timed_run(["git", "clone", "-q", "--no-checkout", str(ROOT), str(clone)], work, work / "clone.log")
        if code == 0:
            code = subprocess.call(["git", "checkout", "-q", result["commit"]], cwd=clone)
        result["clone_s"] = s
        if code != 0:
            sys.exit(f"git clone failed: {(work / 'clone.log').read_text()}")
        result["install_s"], code = timed_run(["bash", "deploy/install.sh"], clone, work / "install.log")
        result["install_exit_code"] = code
        result["install_log_tail"] = tail(work / "install.log", 3)
        if code == 0 and args.up_duration > 0:
            result["up"] = run_up(clone, args, work)
        if code == 0 and args.ci:
            result["ci"] = run_ci(clone, work)
    result["loadavg_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result) if args.json else json.dumps(result, indent=2))
    if code != 0:
        sys.exit(1)


if __name__ == "__main__":
    main()
