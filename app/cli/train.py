"""``rstar train sft|ppm --round R``: one training step of a round, by hand.

    rstar train sft --round 2 [--reselect] [--out DIR]
    rstar train ppm --round 2 [--policy DIR] [--out DIR]

Trains on the round's rows in ``sft_examples`` / ``ppm_pairs`` (selected from the store first when
the round has none, or with ``--reselect``), into the directory the round controller uses
(``data_dir/learner/round-R/policy`` and ``…/ppm``) unless ``--out`` says otherwise, with the
same resumable work dir: a killed run continues when run again, and a controller that later
reaches this stage finds the model done. Round states are left alone. Prints the training report.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from app.cli import ConfigOpt, SetOpt, get_config

RoundOpt = typer.Option(..., "--round", "-r", min=0, help="The round whose data to train on.")
OutOpt = typer.Option(None, "--out", help="Model directory to write (default: the round's).")
JsonOpt = typer.Option(False, "--json", help="Print the report as JSON.")


def _setup(config, overrides, round_no: int, reselect: bool, read, what: str):
    """The config, the round's rows ``read(engine, round_no)`` (selected from the store first when
    the round has none, or with ``reselect``) and the round's directory."""
    from learner import data
    from learner.round_eval import eval_ids, eval_sets
    from learner.state import round_dir
    from store import learner_tables as lt
    from store.db import open_store

    cfg = get_config(config, overrides)
    engine = open_store(cfg.store_url)
    if reselect or not (lt.sft_rows(engine, round_no) or lt.pair_rows(engine, round_no)):
        sel = data.round_selection(engine, cfg, round_no, eval_ids(eval_sets(cfg)))
        with lt.begin(engine) as conn:
            data.write_selection(conn, round_no, sel)
    rows = read(engine, round_no)
    if not rows:
        raise typer.BadParameter(f"round {round_no} has no {what} in the store", param_hint="--round")
    return cfg, rows, round_dir(cfg, round_no)


def _work_dir(round_d: Path, out: Path | None, name: str) -> Path:
    """The resumable work dir: ``name`` in the round's dir, or ``OUT-work`` beside ``--out``."""
    return round_d / name if out is None else out.with_name(out.name + "-work")


def _report(rep, as_json: bool, title: str) -> None:
    from dataclasses import asdict

    doc = asdict(rep)
    if as_json:
        typer.echo(json.dumps(doc))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table("field", "value", title=title)
    for k, v in doc.items():
        t.add_row(k, str(v))
    Console().print(t)


def sft(
    round_no: int = RoundOpt,
    out: Path = OutOpt,
    reselect: bool = typer.Option(False, "--reselect", help="Select the round's data from the store again first."),
    as_json: bool = JsonOpt,
    config: str = ConfigOpt,
    overrides: list[str] = SetOpt,
) -> None:
    """Fine-tune the round's starting policy (``learner.finetune_from``) on its SFT examples."""
    from learner import data
    from learner.round_stages import round_train_config, start_model
    from learner.sft import train_sft

    cfg, examples, d = _setup(config, overrides, round_no, reselect, data.sft_examples, "SFT examples")
    try:
        start = start_model(cfg, round_no)
    except RuntimeError as e:
        raise typer.BadParameter(str(e), param_hint="--round") from None
    rep = train_sft(
        examples,
        start,
        out or d / "policy",
        round_train_config(cfg, round_no),
        _work_dir(d, out, "sft-work"),
        progress=not as_json,
    )
    _report(rep, as_json, f"SFT round {round_no}")


def ppm(
    round_no: int = RoundOpt,
    out: Path = OutOpt,
    policy: Path = typer.Option(None, "--policy", help="Policy dir to start from (default: the round's)."),
    as_json: bool = JsonOpt,
    config: str = ConfigOpt,
    overrides: list[str] = SetOpt,
) -> None:
    """Train the PPM on the round's preference pairs, from the round's policy."""
    from learner import data
    from learner.ppm_train import train_ppm

    cfg, pairs, d = _setup(config, overrides, round_no, False, data.ppm_pairs, "PPM pairs")
    rep = train_ppm(
        pairs,
        policy or d / "policy",
        out or d / "ppm",
        cfg.train,
        _work_dir(d, out, "ppm-work"),
        progress=not as_json,
    )
    _report(rep, as_json, f"PPM round {round_no}")


def register(app: typer.Typer) -> None:
    group = typer.Typer(no_args_is_help=True, help="Run one training step of a round by hand.")
    app.add_typer(group, name="train")
    group.command("sft")(sft)
    group.command("ppm")(ppm)
