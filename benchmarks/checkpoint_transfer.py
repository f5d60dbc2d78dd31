"""A checkpoint through the broker: seconds and peak memory of put + fetch, streamed vs in memory.

    .venv/bin/python benchmarks/checkpoint_transfer.py --json [--model smollm2-135m]

One run: a nats-server of its own (temp store); the model directory (the default policy, ~540 MB
of safetensors) is saved as a checkpoint, then each variant runs in a fresh subprocess (so its
peak RSS is its own), puts the checkpoint as a new object and fetches it into a new directory:
- ``streamed``: ``broker.checkpoints.put_checkpoint`` / ``fetch_checkpoint`` (the tar goes
  through a temp file, and is fetched a few chunks at a time by a pull consumer; what rstar does);
- ``in_memory`` (baseline, what rstar did before): the tar built as bytes and put from them;
  fetched by nats-py's ``ObjectStore.get`` (an ordered push consumer) into a temp file, read
  back into bytes and unpacked from them.
Figures per variant: ``put_s``, ``fetch_s``, ``peak_rss_mb`` and ``rss_over_baseline_mb`` (peak
minus the same subprocess's RSS after imports), plus ``checkpoint_mb``, after
``benchmarks.run_info`` (command, date, machine with its load average).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def _variant(name: str, url: str, ckpt: Path, out: Path) -> dict:
    from nats.js.api import ObjectMeta

    from broker.checkpoints import fetch_checkpoint, put_checkpoint
    from broker.client import open_broker
    from broker.streams import CHECKPOINTS_BUCKET
    from rstar.checkpoints import pack, unpack
    from rstar.config import load_config
    from rstar.schemas import ModelRef

    cfg = load_config(overrides=[f'broker.url="{url}"'], env={})
    base = _rss_mb()
    async with open_broker(cfg, f"bench-{name}") as b:
        t0 = time.perf_counter()
        if name == "streamed":
            ref = await put_checkpoint(b, ckpt, name)
        else:
            buf = io.BytesIO()
            digest = pack(ckpt, buf)
            data = buf.getvalue()
            del buf
            obs = await b.js.object_store(CHECKPOINTS_BUCKET)
            await obs.put(name, data, meta=ObjectMeta(name=name, headers={"Rstar-Sha256": digest}))
            ref = ModelRef(version=name, object=name, sha256=digest)
            del data
        put_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        if name == "streamed":
            await fetch_checkpoint(b, ref, out)
        else:
            obs = await b.js.object_store(CHECKPOINTS_BUCKET)
            with tempfile.TemporaryFile(dir=out.parent) as f:  # obs.get() into bytes is quadratic
                await obs.get(ref.object, writeinto=f)
                f.seek(0)
                data = f.read()
            unpack(io.BytesIO(data), ref.sha256, out)
        fetch_s = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "put_s": round(put_s, 2),
        "fetch_s": round(fetch_s, 2),
        "peak_rss_mb": round(peak),
        "rss_over_baseline_mb": round(peak - base),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    ap.add_argument("--url", help=argparse.SUPPRESS)
    ap.add_argument("--ckpt", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(asyncio.run(_variant(args.variant, args.url, Path(args.ckpt), Path(args.out)))))
        return

    from broker.server import start_server
    from rstar.checkpoints import atomic_dir, commit_dir
    from rstar.config import load_config
    from rstar.models import resolve_model_dir

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        src = resolve_model_dir(args.model, load_config(env={}).model.cache_dir)
        ckpt, staging = tmp / "ckpt", atomic_dir(tmp / "ckpt")
        for p in Path(src).iterdir():
            if p.is_file() and p.name != "MANIFEST.json":
                shutil.copyfile(p, staging / p.name)
        commit_dir(staging, ckpt)
        size_mb = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file()) / 2**20
        srv = start_server(tmp / "nats")
        try:
            figures = {}
            for name in ("streamed", "in_memory"):
                r = subprocess.run(
                    [
                        sys.executable,
                        __file__,
                        "--variant",
                        name,
                        "--url",
                        srv.url,
                        "--ckpt",
                        str(ckpt),
                        "--out",
                        str(tmp / f"out-{name}"),
                    ],
                    capture_output=True,
                    text=True,
                    check=True,
                    timeout=900,
                )
                figures[name] = json.loads(r.stdout.strip().splitlines()[-1])
        finally:
            srv.stop()
    from benchmarks.run_info import run_info

    out = {
        **run_info(),
        "checkpoint_mb": round(size_mb),
        **figures,
        "memory_saved_mb": figures["in_memory"]["rss_over_baseline_mb"] - figures["streamed"]["rss_over_baseline_mb"],
    }
    print(json.dumps(out) if args.json else json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
