"""``rstar rounds --markdown`` and ``--plot`` from rounds rows (``store.queries.list_rounds``)."""

import pytest

from rstar.cli.rounds import rounds_markdown
from rstar.rounds_plot import accuracy_series, plot_rounds


def _row(r, acc=None, solve=None):
    ev = {"collect": {"trees": 10, "solve_rate": solve}, "data": {"sft_examples": 4, "ppm_pairs": 2}}
    if acc is not None:
        ev["accuracy"] = {"sets": {"synthetic": {"n": 20, "greedy": acc, "majority@4": acc + .05,
                                                 f"mcts{'+ppm' if r >= 3 else ''}@4": acc + .1}}}
    return {"round": r, "state": "published", "eval": ev, "policy_version": f"policy-r{r}"}


ROWS = [_row(0, .1, 1.0), _row(1, .2, .4), _row(2, None, .5), _row(3, .3, .6)]


def test_markdown_table_has_a_row_per_round_and_the_methods():
    md = rounds_markdown(ROWS).splitlines()
    assert md[0].startswith("| round | state | trees") and "synthetic %" in md[0]
    assert md[2].startswith("| 0 | published | 10 | 100.0% |") and "10/15/20" in md[2]
    assert "| 2 | published" in md[4] and "–/–/–" in md[4]
    assert md[-1] == "held-out accuracy (%) per set: synthetic = greedy / majority@4 / mcts(+ppm)@4"


def test_series_joins_mcts_with_and_without_ppm_and_skips_unevaluated_rounds():
    s = accuracy_series(ROWS)["synthetic"]
    assert s["greedy"] == [(0, .1), (1, .2), (3, .3)]
    assert [x for x, _ in s["mcts(+ppm)@4"]] == [0, 1, 3]


def test_plot_writes_a_png(tmp_path):
    out = plot_rounds(ROWS, tmp_path / "rounds.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 10_000


def test_plot_without_figures_is_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="no round has evaluation figures"):
        plot_rounds([{"round": 0, "state": "collecting", "eval": {}, "policy_version": None}], tmp_path / "x.png")
