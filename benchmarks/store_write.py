"""How fast ``store.writer.upsert_trees`` writes search trees into SQLite and PostgreSQL.

    .venv/bin/python benchmarks/store_write.py --json                # both backends
    .venv/bin/python benchmarks/store_write.py --backend sqlite --trees 500 --nodes 200 --batch 50

Each backend gets a fresh, migrated store: a temporary SQLite file, or a scratch PostgreSQL
database created through ``--pg-admin-url`` and dropped afterwards. Trees (``store.sample_trees``,
~200 nodes each by default) are built and encoded before the clock starts; the timed part is
decoding nothing and writing everything: ``upsert_trees`` per batch, one transaction each. A second
pass writes the same batches again to time the idempotent skip (nothing is written). With
``--json``, prints one JSON object per backend (one a line) with nodes/s and trees/s for both
passes, each starting with ``benchmarks.run_info`` (command, date, machine with its load average).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sqlalchemy import func, select  # noqa: E402

from benchmarks.run_info import run_info  # noqa: E402
from store.db import open_store  # noqa: E402
from store.models import NodeRow  # noqa: E402
from store.sample_trees import sample_problem, sample_tree  # noqa: E402
from store.scratch import DEFAULT_ADMIN_URL, scratch_postgres  # noqa: E402
from store.writer import upsert_trees  # noqa: E402


@contextmanager
def scratch_url(backend: str, pg_admin_url: str):
    if backend == "postgresql":
        with scratch_postgres(pg_admin_url, tag="bench") as url:
            yield url
        return
    with tempfile.TemporaryDirectory() as d:
        yield f"sqlite:///{Path(d) / 'bench.db'}"


def run(backend: str, args) -> dict:
    rng = random.Random(args.seed)
    problems = [sample_problem(rng) for _ in range(max(1, args.trees // 4))]  # ~4 trees per problem
    trees = [sample_tree(rng, args.nodes, round=1, problem=rng.choice(problems)) for _ in range(args.trees)]
    batches = [trees[i : i + args.batch] for i in range(0, len(trees), args.batch)]
    n_nodes = sum(len(t.nodes) for t in trees)
    with scratch_url(backend, args.pg_admin_url) as url:
        engine = open_store(url)
        try:
            t0 = time.perf_counter()
            written = sum(upsert_trees(engine, b) for b in batches)
            first = time.perf_counter() - t0
            t0 = time.perf_counter()
            rewritten = sum(upsert_trees(engine, b) for b in batches)
            second = time.perf_counter() - t0
            with engine.connect() as c:
                stored = c.scalar(select(func.count()).select_from(NodeRow))
        finally:
            engine.dispose()
    assert written == len(trees) and rewritten == 0 and stored == n_nodes, (written, rewritten, stored)
    return {
        **run_info(),
        "backend": backend,
        "trees": len(trees),
        "nodes": n_nodes,
        "batch": args.batch,
        "write_s": round(first, 3),
        "nodes_per_s": round(n_nodes / first),
        "trees_per_s": round(len(trees) / first, 1),
        "batch_ms": round(1000 * first / len(batches), 1),
        "skip_s": round(second, 3),
        "skip_nodes_per_s": round(n_nodes / second),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    p.add_argument("--pg-admin-url", default=DEFAULT_ADMIN_URL, help="a PostgreSQL URL allowed to CREATE/DROP DATABASE")
    p.add_argument("--trees", type=int, default=500)
    p.add_argument("--nodes", type=int, default=200, help="nodes per tree")
    p.add_argument("--batch", type=int, default=50, help="trees per upsert_trees call")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="one JSON object per line only")
    args = p.parse_args()
    for backend in ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]:
        result = run(backend, args)
        if args.json:
            print(json.dumps(result))
        else:
            print(
                f"{backend:10s} {result['nodes_per_s']:>8,} nodes/s  {result['trees_per_s']:>7} trees/s  "
                f"{result['batch_ms']} ms/batch of {args.batch}  (re-write skipped at "
                f"{result['skip_nodes_per_s']:,} nodes/s)"
            )


if __name__ == "__main__":
    main()
