"""``rstar eval``: accuracy of the policy (+PPM) on a dataset by greedy, majority@k, MCTS@k or
MCTS+PPM@k (``--method mcts+ppm``, needs ``model.ppm``; ``mcts`` never uses a PPM)."""

from __future__ import annotations

import asyncio
import contextlib
import json

import typer

from app.cli import ConfigOpt, PolicyOpt, PPMOpt, RoundOpt, SetOpt, get_model_config


def eval_cmd(
    dataset: str = typer.Option("synthetic", help="synthetic | gsm8k | math500 | mawps | svamp | asdiv | FILE.jsonl"),
    split: str = typer.Option(None, help="Dataset split (synthetic: heldout by default)."),
    limit: int = typer.Option(20, help="Number of problems."),
    method: str = typer.Option("greedy", help="greedy | majority | mcts | mcts+ppm (needs model.ppm)"),
    k: int = typer.Option(8, help="Samples for majority, rollouts for mcts / mcts+ppm."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON: accuracy, n, method, dataset, ..."),
    out: str = typer.Option(
        None,
        "--out",
        help="Append each problem's outcome to this JSONL file as it "
        "finishes; running the same command again resumes (skips those done).",
    ),
    round_no: int = RoundOpt,
    policy: str = PolicyOpt,
    ppm: str = PPMOpt,
    config: str = ConfigOpt,
    overrides: list[str] = SetOpt,
) -> None:
    """Evaluate on a dataset and print an accuracy table."""
    if method not in ("greedy", "majority", "mcts", "mcts+ppm"):
        raise typer.BadParameter("method must be greedy, majority, mcts or mcts+ppm", param_hint="--method")
    cfg = get_model_config(config, overrides, round_no, policy, ppm)
    if method == "mcts+ppm" and not cfg.model.ppm:
        raise typer.BadParameter(
            "mcts+ppm needs a PPM: --ppm DIR, or --round R of a round that has one", param_hint="--method"
        )
    from rstar.problems import ProblemFileError, load_problems

    if dataset == "synthetic" and split is None:
        split = "heldout"
    try:
        problems = load_problems(dataset, split=split, limit=limit, seed=cfg.search.seed)
    except (ProblemFileError, ValueError, FileNotFoundError) as e:
        raise typer.BadParameter(str(e), param_hint="--dataset") from None
    if not problems:
        raise typer.BadParameter(f"{dataset} gave no problems (--limit {limit})", param_hint="--limit")
    eval_log = None
    if out is not None:
        from learner.eval_log import EvalLog, EvalLogError, run_key

        try:
            eval_log = EvalLog(out, run_key(cfg, dataset, split, method, k))
        except (EvalLogError, OSError) as e:
            raise typer.BadParameter(str(e), param_hint="--out") from None
    result = asyncio.run(_eval(cfg, problems, dataset, method, k, as_json, eval_log))
    if as_json:
        summary = {f: getattr(result, f) for f in result.__struct_fields__ if f != "outcomes"}
        print(json.dumps(summary))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"rstar eval · {dataset}")
    for col in ("method", "k", "n", "correct", "accuracy", "seconds", "gen tokens"):
        t.add_column(col, justify="right")
    t.add_row(
        result.method,
        str(result.k),
        str(result.n),
        str(result.correct),
        f"{result.accuracy:.1%}",
        f"{result.seconds:.1f}",
        str(result.gen_tokens),
    )
    Console().print(t)


async def _eval(cfg, problems, dataset, method, k, as_json, eval_log):
    import time

    from rich.console import Console
    from rich.progress import Progress

    from actors.runtime import setup_search
    from learner.evaluate import evaluate

    todo = problems if eval_log is None else [p for p in problems if p.id not in eval_log.done]
    console = Console(stderr=True)
    if eval_log is not None and len(todo) < len(problems):
        console.print(
            f"resuming {eval_log.path}: {len(problems) - len(todo)} of {len(problems)} problems done", soft_wrap=True
        )
    async with contextlib.AsyncExitStack() as stack:  # the spinner covers loading only
        if todo:
            with console.status("loading model and sandbox…"):
                ctx = await stack.enter_async_context(setup_search(cfg))
        with Progress(console=console, transient=as_json) as bar:
            task = bar.add_task(f"{method} on {dataset}", total=len(problems), completed=len(problems) - len(todo))
            t0 = time.perf_counter()

            def done(outcome) -> None:
                if eval_log is not None:
                    eval_log.record(outcome, time.perf_counter() - t0, ctx.worker.stats.gen_tokens - tokens0)
                bar.advance(task)

            if todo:
                tokens0 = ctx.worker.stats.gen_tokens
                result = await evaluate(todo, ctx, method, k, dataset=dataset, on_done=done)
    if eval_log is None:
        return result
    return eval_log.result([p.id for p in problems], dataset, method, k)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
