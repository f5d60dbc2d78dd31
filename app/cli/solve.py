"""``rstar solve "QUESTION"``: search one question and print the answer, trajectory and tree stats."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import typer

from app.cli import ConfigOpt, PolicyOpt, PPMOpt, RoundOpt, SetOpt, get_model_config

EXAMPLE = "A baker makes 24 muffins. She sells 3 boxes of 6 muffins each. How many muffins are left?"


def best_path(tree) -> list[int]:
    """Without an answer: node path of the most promising unfinished line (deepest, best Q)."""
    leaves = [n.idx for n in tree.nodes if not n.children and n.idx]
    if not leaves:
        return []
    return tree.path(max(leaves, key=lambda i: (tree.nodes[i].depth, tree.mean_q(i))))


def solve(
    question: str = typer.Argument(EXAMPLE, help="The math question."),
    answer: str = typer.Option(None, help="Reference answer: grade terminals (training-style search)."),
    rollouts: int = typer.Option(None, help="MCTS rollouts (default: search.rollouts)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON object instead of text."),
    round_no: int = RoundOpt,
    policy: str = PolicyOpt,
    ppm: str = PPMOpt,
    config: str = ConfigOpt,
    overrides: list[str] = SetOpt,
) -> None:
    """Search one QUESTION with MCTS and print the answer, best trajectory and tree stats."""
    cfg = get_model_config(config, overrides, round_no, policy, ppm)
    asyncio.run(_solve(cfg, question, answer, rollouts, as_json))


async def _solve(cfg, question, answer, rollouts, as_json) -> None:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.syntax import Syntax

    from actors.mcts import Tree
    from actors.runtime import setup_search
    from actors.search import rollout
    from rstar.schemas import Problem, problem_id

    console = Console(stderr=as_json)
    n_rollouts = rollouts or cfg.search.rollouts
    problem = Problem(id=problem_id("cli", question), source="cli", question=question, answer=answer)
    async with contextlib.AsyncExitStack() as stack:  # the spinner covers loading only
        with console.status("loading model and sandbox…"):
            ctx = await stack.enter_async_context(setup_search(cfg))
        s = cfg.search
        tree = Tree(problem, c_uct=s.c_uct, max_depth=s.max_depth, ppm_init=s.ppm_init, seed=s.seed)
        t0 = time.perf_counter()
        with Progress(
            TextColumn("[bold]rollouts"),
            BarColumn(),
            TextColumn("{task.completed}/{task.total}"),
            TextColumn("nodes {task.fields[nodes]}"),
            TimeElapsedColumn(),
            console=console,
            transient=as_json,
        ) as bar:
            task = bar.add_task("search", total=n_rollouts, nodes=1)
            for _ in range(n_rollouts):
                await rollout(tree, ctx, use_reference=answer is not None)
                bar.update(task, advance=1, nodes=len(tree.nodes))
        elapsed = time.perf_counter() - t0
        stats = ctx.worker.stats.snapshot()

    best = tree.answer_node()
    path = tree.path(best) if best is not None else best_path(tree)
    final = tree.nodes[best].answer if best is not None else None
    out = {
        "question": question,
        "answer": final,
        "correct": tree.nodes[best].correct if best is not None else None,
        "trajectory": [tree.nodes[i].text for i in path],
        "outputs": [tree.nodes[i].code_output for i in path],
        "stats": {
            "nodes": len(tree.nodes),
            "depth": tree.max_depth_reached(),
            "rollouts": tree.rollouts,
            "terminals": len(tree.terminals()),
            "seconds": round(elapsed, 2),
            "gen_tokens": stats["gen_tokens"],
            "tokens_per_s": round(stats["gen_tokens"] / elapsed, 1) if elapsed else 0.0,
        },
    }
    if as_json:
        print(json.dumps(out, indent=2))
        return
    from rstar.steps import render_steps

    console.rule("best trajectory")
    if path:
        console.print(Syntax(render_steps(out["trajectory"]), "python", word_wrap=True))
    else:
        console.print("[yellow]no step of the policy ran in the sandbox[/]")
    console.rule()
    shown = final if final is not None else "[red]no answer found[/]"
    console.print(
        f"[bold]answer:[/] {shown}"
        + (f"  (reference {answer}: {'correct' if out['correct'] else 'wrong'})" if answer is not None else "")
    )
    st = out["stats"]
    console.print(
        f"nodes {st['nodes']} · depth {st['depth']} · rollouts {st['rollouts']} · "
        f"terminals {st['terminals']} · {st['seconds']} s · {st['tokens_per_s']} tok/s"
    )


def register(app: typer.Typer) -> None:
    app.command("solve")(solve)
