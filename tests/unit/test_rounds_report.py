"""``rstar rounds`` (table, ``--markdown``, ``--levels``, ``--json``) and ``--plot`` from rounds rows
(``store.queries.list_rounds``), with accuracy records and with figures stored as bare floats."""

import json

import pytest
from typer.testing import CliRunner

from app.cli import app
from app.cli.rounds import accuracy_cell, json_rows, load_rows_json, rounds_markdown
from app.dashboard import _last_eval, evaluated_through
from app.rounds_plot import accuracy_series, level_series, plot_rounds
from rstar.schemas import (
    CollectCounts,
    DataCounts,
    Figures,
    LevelCount,
    MethodRecord,
    RoundEval,
    method_record,
)


def _rec(correct, n, by_level=None):
    return {"n": n, "correct": correct, "accuracy": round(correct / n, 4), "by_level": by_level or {}}


def _row(r, sets=None, solve=None, state="published"):
    ev = {"collect": {"trees": 10, "solve_rate": solve}, "data": {"sft_examples": 4, "ppm_pairs": 2}}
    if sets is not None:
        ev["accuracy"] = {"sets": sets, "seconds": 5.0}
    return {"round": r, "state": state, "quota": 10, "eval": ev, "policy_version": f"policy-r{r}", "ppm_version": None}


OLD = _row(0, {"synthetic": {"n": 20, "greedy": 0.1, "majority@4": 0.15, "mcts@4": 0.2}}, 1.0)  # before records
NEW1 = _row(
    1,
    {
        "synthetic": {
            "n": 30,
            "greedy": _rec(6, 30, {"1": {"n": 15, "correct": 5}, "2": {"n": 15, "correct": 1}}),
            "majority@4": _rec(9, 30, {"1": {"n": 15, "correct": 6}, "2": {"n": 15, "correct": 3}}),
            "mcts@4": _rec(12, 30),
            "mcts+ppm@4": _rec(15, 30),
        },
        "svamp": {"n": 10, "greedy": _rec(0, 10)},
    },
    0.4,
)
NEW3 = _row(
    3,
    {"synthetic": {"n": 30, "greedy": _rec(30, 30, {"1": {"n": 15, "correct": 15}, "2": {"n": 15, "correct": 15}})}},
    0.6,
)
ROWS = [OLD, NEW1, _row(2, None, 0.5), NEW3]


def test_accuracy_cell_has_the_wilson_interval():
    assert accuracy_cell(method_record(_rec(6, 30))) == "20 [10–37]"  # wilson(6, 30) = (0.09505, 0.37306)
    assert accuracy_cell(method_record(_rec(0, 10))) == "0 [0–28]"
    assert accuracy_cell(method_record(0.15)) == "15"
    assert accuracy_cell(None) == "–"


def test_markdown_rounds_and_accuracy_tables():
    md = rounds_markdown(ROWS).split("\n\n")
    rounds = md[0].splitlines()
    assert rounds[0] == "| round | state | trees | solved | SFT ex | pairs | PPM acc | policy |"
    assert rounds[2] == "| 0 | published | 10 | 100.0% | 4 | 2 | – | policy-r0 |"
    assert rounds[4] == "| 2 | published | 10 | 50.0% | 4 | 2 | – | policy-r2 |" and len(rounds) == 6
    assert md[1] == "**held-out accuracy**"
    assert md[2].splitlines() == [
        "| round | set | n | greedy | majority@4 | mcts@4 | mcts+ppm@4 |",
        "|---:|:---|---:|---:|---:|---:|---:|",
        "| 0 | synthetic | 20 | 10 | 15 | 20 | – |",  # stored as floats
        "| 1 | synthetic | 30 | 20 [10–37] | 30 [17–48] | 40 [25–58] | 50 [33–67] |",
        "| 1 | svamp | 10 | 0 [0–28] | – | – | – |",
        "| 3 | synthetic | 30 | 100 [89–100] | – | – | – |",
    ]
    assert md[3] == ("accuracy % [95 % Wilson interval]; a figure without an interval was stored without its counts")
    assert len(md) == 4  # no levels table unless asked


def test_markdown_without_figures_has_only_the_rounds_table():
    md = rounds_markdown([_row(0, None, 0.5)])
    assert md.splitlines()[0].startswith("| round | state |") and "held-out" not in md
    assert "stored without its counts" not in rounds_markdown([NEW1])


def test_json_rows_keep_the_row_and_add_records():
    rows = json_rows(ROWS)
    assert [r["round"] for r in rows] == [0, 1, 2, 3]
    assert rows[1]["eval"] == NEW1["eval"] and rows[1]["policy_version"] == "policy-r1" and rows[1]["quota"] == 10
    g = rows[1]["accuracy"]["synthetic"]["greedy"]
    assert g == {
        "n": 30,
        "correct": 6,
        "accuracy": 0.2,
        "lo": 0.095,
        "hi": 0.3731,
        "by_level": {"1": {"n": 15, "correct": 5}, "2": {"n": 15, "correct": 1}},
    }
    assert rows[0]["accuracy"]["synthetic"]["majority@4"] == {
        "n": None,
        "correct": None,
        "accuracy": 0.15,
        "lo": None,
        "hi": None,
        "by_level": {},
    }
    assert rows[2]["accuracy"] == {}
    json.dumps(rows)


def test_series_keep_mcts_and_mcts_ppm_apart_with_intervals():
    s = accuracy_series(ROWS)["synthetic"]
    assert [(x, y) for x, y, _, _ in s["greedy"]] == [(0, 0.1), (1, 0.2), (3, 1.0)]
    assert s["greedy"][0][2:] == (None, None)
    assert s["greedy"][1][2] == pytest.approx(0.09505, abs=1e-5) and s["greedy"][1][3] == pytest.approx(
        0.37306, abs=1e-5
    )
    assert [x for x, *_ in s["mcts@4"]] == [0, 1] and [x for x, *_ in s["mcts+ppm@4"]] == [1]
    assert level_series(ROWS) == {"synthetic": {"1": [(1, 5, 15), (3, 15, 15)], "2": [(1, 1, 15), (3, 15, 15)]}}


def test_dashboard_last_eval_reads_both_shapes():
    assert _last_eval(ROWS) == "round 3 — synthetic: greedy 100% (30/30)"
    assert _last_eval(ROWS[:1]) == "round 0 — synthetic: greedy 10% / majority@4 15% / mcts@4 20%"
    assert _last_eval([]) == "none yet"


def test_a_run_is_evaluated_through_a_round_only_when_every_earlier_round_is():
    # ROWS: rounds 0, 1 and 3 have figures, round 2 not yet (the evaluator takes the newest first)
    assert evaluated_through(ROWS) == 1
    assert evaluated_through([r for r in ROWS if r["round"] != 2]) == 3
    assert evaluated_through([*ROWS[:2], _row(2, None, 0.5, state="training_policy")]) == 1
    assert evaluated_through([]) == -1


def test_plot_writes_a_png(tmp_path):
    out = plot_rounds(ROWS, tmp_path / "rounds.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_plot_with_a_control_run(tmp_path):
    control = [_row(r, {"synthetic": {"n": 30, "greedy": _rec(c, 30)}}, 0.3) for r, c in ((0, 3), (1, 4), (2, 5))]
    plain = plot_rounds(ROWS, tmp_path / "plain.png")
    out = plot_rounds(ROWS, tmp_path / "control.png", control_rows=control)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.read_bytes() != plain.read_bytes()


def test_plot_without_figures_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="no round has evaluation figures"):
        plot_rounds([{"round": 0, "state": "collecting", "eval": {}, "policy_version": None}], tmp_path / "x.png")


def test_load_rows_json(tmp_path):
    f = tmp_path / "control.json"
    f.write_text(json.dumps(json_rows(ROWS)))
    assert [r["round"] for r in load_rows_json(f)] == [0, 1, 2, 3]
    f.write_text(json.dumps({"round": 0}))
    with pytest.raises(ValueError, match="not a list of rounds"):
        load_rows_json(f)


def _store_with_rounds(url, rows):
    """A store with ``rows``' eval documents as they are (written by older versions: bare floats)."""
    from sqlalchemy import update

    from store import learner_tables as lt
    from store.db import open_store
    from store.models import RoundRow

    engine = open_store(url)
    with lt.begin(engine) as conn:
        for r in rows:
            lt.open_round(conn, r["round"], 10)
            conn.execute(update(RoundRow).where(RoundRow.round == r["round"]).values(eval=r["eval"]))
    engine.dispose()


def test_stages_write_typed_parts_that_merge_and_read_back_as_before(tmp_path):
    from store import learner_tables as lt
    from store.db import open_store
    from store.queries import list_rounds

    engine = open_store(f"sqlite:///{tmp_path / 'store.db'}")
    greedy = MethodRecord(accuracy=0.2, n=30, correct=6, by_level={"1": LevelCount(15, 5), "2": LevelCount(15, 1)})
    partial = Figures({"synthetic": {"n": 30, "greedy": greedy}}, seconds=2.0)
    done = Figures({"synthetic": {"n": 30, "greedy": greedy, "mcts@4": method_record(_rec(12, 30))}}, seconds=5.0)
    with lt.begin(engine) as conn:
        lt.open_round(conn, 1, 10)
        lt.merge_eval(conn, 1, RoundEval(collect=CollectCounts(trees=10, solve_rate=0.4), data=DataCounts(4, 2)))
        lt.merge_eval(conn, 1, RoundEval(ppm_pairwise_acc=0.75))
        lt.merge_eval(conn, 1, RoundEval(accuracy_partial=partial))
        doc = lt.merge_eval(conn, 1, RoundEval(accuracy=done, requeued=3), clear=("accuracy_partial",))
        # A part of the wrong type fails, and stores nothing: another stage's counts, a bare
        # dict where a struct belongs, a string where a figure belongs; so does an unknown part.
        for wrong in (
            RoundEval(collect=DataCounts(4, 2)),
            RoundEval(data=CollectCounts()),
            RoundEval(accuracy={"sets": {}, "seconds": 1.0}),
            RoundEval(accuracy=Figures({"synthetic": {"greedy": DataCounts()}})),
            RoundEval(ppm_pairwise_acc="0.5"),
        ):
            with pytest.raises(TypeError, match=r"RoundEval\.\w+ must be"):
                lt.merge_eval(conn, 1, wrong)
        with pytest.raises(ValueError, match="no such part"):
            lt.merge_eval(conn, 1, RoundEval(requeued=1), clear=("acuracy_partial",))
    assert lt.get_round(engine, 1)["eval"] == doc  # no part clobbered another, nothing wrong stored
    assert set(doc) == {"collect", "data", "ppm_pairwise_acc", "accuracy", "requeued"}
    assert doc["collect"] == {"trees": 10, "solved_trees": 0, "problems": 0, "solved_problems": 0, "solve_rate": 0.4}
    assert doc["data"] == {"sft_examples": 4, "ppm_pairs": 2, "problems": 0, "solved_problems": 0}
    assert doc["accuracy"]["sets"]["synthetic"]["n"] == 30 and doc["accuracy"]["seconds"] == 5.0
    assert doc["accuracy"]["sets"]["synthetic"]["greedy"]["by_level"] == {
        "1": {"n": 15, "correct": 5},
        "2": {"n": 15, "correct": 1},
    }
    assert RoundEval.of(doc).records()["synthetic"] == done.records()["synthetic"]
    # `rstar rounds --json` gives the same rows as for the same figures stored the old way (NEW1's)
    (row,) = json_rows(list_rounds(engine))
    old = json_rows([NEW1])[0]["accuracy"]["synthetic"]
    assert row["accuracy"]["synthetic"] == {"greedy": old["greedy"], "mcts@4": old["mcts@4"]}
    assert "| 1 | collecting | 10 | 40.0% | 4 | 2 | 75.0% |" in rounds_markdown([row])
    engine.dispose()


def test_cli_json_markdown_and_plot_with_a_control(tmp_path):
    url = f"sqlite:///{tmp_path / 'store.db'}"
    _store_with_rounds(url, [OLD, NEW1])
    runner = CliRunner()
    args = ["rounds", "--set", f'store.url="{url}"']
    res = runner.invoke(app, [*args, "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["round"] for r in rows] == [0, 1]
    assert rows[1]["accuracy"]["synthetic"]["mcts+ppm@4"]["correct"] == 15
    assert rows[0]["accuracy"]["synthetic"]["greedy"]["n"] is None and "eval" in rows[0] and "state" in rows[0]
    res = runner.invoke(app, [*args, "--markdown", "--levels"])
    assert res.exit_code == 0 and "| 1 | greedy | 5/15 | 1/15 | 6/30 |" in res.output
    (tmp_path / "control.json").write_text(json.dumps(rows))
    res = runner.invoke(
        app, [*args, "--plot", str(tmp_path / "p.png"), "--control-json", str(tmp_path / "control.json")]
    )
    assert res.exit_code == 0, res.output
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"
    res = runner.invoke(app, [*args, "--plot", str(tmp_path / "q.png"), "--control-store", url])
    assert res.exit_code == 0, res.output and (tmp_path / "q.png").exists()
    res = runner.invoke(app, [*args, "--control-json", str(tmp_path / "control.json")])
    assert res.exit_code != 0 and "--plot" in res.output


def test_a_method_run_on_fewer_problems_than_the_set_says_so():
    from app.cli.rounds import accuracy_cell

    rec = method_record({"n": 60, "correct": 9, "accuracy": 0.15})
    assert accuracy_cell(rec, 300) == "15 [8–26] n=60"
    assert accuracy_cell(rec, 60) == accuracy_cell(rec) == "15 [8–26]"


def test_the_tables_fit_80_columns_without_cutting_a_figure():
    from rich.console import Console

    from app.cli.rounds import accuracy_table, levels_tables, rounds_table

    busy = _row(4, None, 1.0, state="training_policy") | {"policy_version": "policy-r4-0123456789abcdef"}
    console = Console(width=80, record=True)
    for t in (rounds_table([*ROWS, busy]), accuracy_table(ROWS), *levels_tables(ROWS)):
        console.print(t)
    text = console.export_text()
    assert "training_policy" in text and "100.0%" in text and "40 [25–58]" in text
    assert all(len(line) <= 80 for line in text.splitlines())
    assert "…" not in text.replace("policy-r4-0123456789abcdef", "")
