"""``rstar problems add``: validate problems and queue them on the PROBLEMS stream, each id once.

    rstar problems add my_problems.jsonl
    rstar problems add --dataset gsm8k-train --limit 500
    rstar problems add --dataset synthetic:1-6 --split train --limit 2000 --seed 3
    rstar problems status

Held-out evaluation problems are never queued, and the teacher's demonstrated problems only with
``--include-teacher`` (``learner.pool``, the rule ``rstar up`` and the learner's re-queue follow too):
what is left out is counted (``held_out``, ``teacher``) and named on stderr. ``--limit N`` queues N
problems of the pool (a seeded sample of a file or a real set; the first N of the synthetic
generator that are not the teacher's).

A file with a bad line is refused whole (``path:line: reason``) and nothing is queued, unless
``--skip-invalid``: then every bad line is reported, counted as invalid, and the rest queued.
Adding the same problems again queues nothing (see ``broker.problems``).
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import typer

from app.cli import ConfigOpt, SetOpt, get_config

MAX_INVALID_LINES = 1000


def _read_skipping_invalid(path: Path) -> tuple[list, list[str]]:
    """Problems of a JSONL file, dropping bad lines; returns them and one message per bad line.

    ``read_problems_jsonl`` stops at the first bad line, so each bad line is blanked (blank lines
    are skipped, numbering is kept) and the file read again.
    """
    from rstar.problems import ProblemFileError, read_problems_jsonl

    lines = Path(path).read_text(encoding="utf-8").split("\n")  # as read_problems_jsonl: not splitlines()
    invalid: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp) / Path(path).name
        while True:
            scratch.write_text("\n".join(lines) + "\n", encoding="utf-8")
            try:
                return read_problems_jsonl(scratch), invalid
            except ProblemFileError as e:
                if e.line_no == 0 or len(invalid) >= MAX_INVALID_LINES:
                    raise ProblemFileError(path, e.line_no, e.reason) from None
                invalid.append(f"{path}:{e.line_no}: {e.reason}")
                lines[e.line_no - 1] = ""


def _load(
    cfg,
    source: str | None,
    dataset: str | None,
    split: str | None,
    limit: int | None,
    seed: int,
    skip_invalid: bool,
    include_teacher: bool | None,
) -> tuple:
    """``(pool, invalid lines)``: the problems to queue by the pool's rule (``learner.pool``)."""
    from learner.pool import pool_problems, select_pool, shuffled
    from rstar.problems import ProblemSourceError, load_problems

    if (source is None) == (dataset is None):
        raise typer.BadParameter("give a JSONL file or --dataset NAME (one of them)")
    if source is not None and not skip_invalid and not Path(source).is_file():  # so dataset is None
        dataset = source  # a built-in name as the argument: the same as --dataset
    if dataset is not None:
        return pool_problems(
            cfg, dataset, limit, split=split, seed=seed, sample=True, include_teacher=include_teacher
        ), []
    assert source is not None  # exactly one of source and dataset (checked above)
    if split is not None:
        raise ProblemSourceError(f"a problem file has no splits; got split={split!r} for {source}")
    problems, invalid = _read_skipping_invalid(Path(source)) if skip_invalid else (load_problems(source), [])
    if limit is not None:
        problems = shuffled(problems, seed)
    return select_pool(cfg, problems, limit, include_teacher), invalid


def add(
    source: str = typer.Argument(None, help="A JSONL file of problems."),
    dataset: str = typer.Option(
        None,
        "--dataset",
        "-d",
        help="A built-in set: gsm8k, gsm8k-train, math500, math-train, mawps, svamp, asdiv, synthetic[:levels].",
    ),
    split: str = typer.Option(None, help="Split of the set (synthetic: train or heldout)."),
    limit: int = typer.Option(None, min=0, help="At most this many of the pool (a seeded sample of a set or file)."),
    seed: int = typer.Option(0, help="Seed of the sample and of the synthetic generator."),
    skip_invalid: bool = typer.Option(False, help="Queue the good lines of a file with bad ones."),
    include_teacher: bool = typer.Option(
        None,
        "--include-teacher/--no-include-teacher",
        help="Queue the teacher's demonstrated problems too (default: "
        "learner.pool_include_teacher, off). Held-out evaluation "
        "problems are never queued.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the counts as JSON."),
    config: str = ConfigOpt,
    overrides: list[str] = SetOpt,
) -> None:
    """Validate problems and queue each one not queued before (Nats-Msg-Id = problem id).

    Held-out evaluation problems are left out, and the teacher's demonstrated problems unless
    --include-teacher (learner/pool.py); both are counted and named on stderr.
    """
    import asyncio

    from rich.console import Console
    from rich.markup import escape
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from broker.client import open_broker
    from broker.problems import add_problems
    from rstar.problems import ProblemFileError, ProblemSourceError

    cfg = get_config(config, overrides)
    err = Console(stderr=True, soft_wrap=True)  # error lines stay whole (greppable)
    try:
        pool, invalid = _load(cfg, source, dataset, split, limit, seed, skip_invalid, include_teacher)
    except (ProblemFileError, ProblemSourceError) as e:
        err.print(f"[red]error:[/] {e}")
        raise typer.Exit(2) from None
    for line in invalid[:20]:
        err.print(f"[yellow]invalid:[/] {line}")
    if len(invalid) > 20:
        err.print(f"[yellow]… and {len(invalid) - 20} more invalid lines[/]")
    for note in pool.notes():
        err.print(f"[yellow]left out:[/] {escape(note)}")
    problems = pool.problems

    async def run():
        async with open_broker(cfg, "rstar-problems-add") as b:
            with Progress(
                TextColumn("queueing"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=err,
                disable=as_json,
            ) as bar:
                task = bar.add_task("add", total=len(problems))
                return await add_problems(b, problems, progress=lambda _: bar.advance(task))

    counts = asyncio.run(run())
    left = pool.counts()
    result = {
        "published": counts.published,
        "duplicates": counts.duplicates,
        "invalid": len(invalid),
        **left,
        "total": len(problems) + len(invalid) + sum(left.values()),
    }
    if as_json:
        typer.echo(json.dumps(result))
        return
    from rich.table import Table

    table = Table("published", "duplicates skipped", "invalid", "held out", "teacher's", title="problems add")
    table.add_row(*(f"{result[k]:,}" for k in ("published", "duplicates", "invalid", "held_out", "teacher")))
    Console().print(table)


def status(
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
    config: str = ConfigOpt,
    overrides: list[str] = SetOpt,
) -> None:
    """How many problems wait, are being searched, and were ever queued."""
    import asyncio

    from broker.client import open_broker
    from broker.streams import ACTORS_CONSUMER, PROBLEMS_STREAM, SEEN_PROBLEMS_BUCKET

    cfg = get_config(config, overrides)

    async def run():
        async with open_broker(cfg, "rstar-problems-status") as b:
            info = await b.js.consumer_info(PROBLEMS_STREAM, ACTORS_CONSUMER)
            seen = await b.js.stream_info(f"KV_{SEEN_PROBLEMS_BUCKET}")
            return {
                "waiting": info.num_pending,
                "in_progress": info.num_ack_pending,
                "redelivered": info.num_redelivered,
                "ever_queued": seen.state.messages,
            }

    out = asyncio.run(run())
    if as_json:
        typer.echo(json.dumps(out))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(*out, title="problems")
    table.add_row(*(f"{v:,}" for v in out.values()))
    Console().print(table)


def register(app: typer.Typer) -> None:
    group = typer.Typer(no_args_is_help=True, help="Queue problems for the actors.")
    app.add_typer(group, name="problems")
    group.command("add")(add)
    group.command("status")(status)
