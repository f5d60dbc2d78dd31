"""``rstar.stats``: Wilson intervals and McNemar's exact test against values worked out by hand."""

import math

import pytest

from rstar.stats import mcnemar_exact, mcnemar_exact_counts, wilson


@pytest.mark.parametrize(
    "correct, n, lo, hi",
    [
        # (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n), z = 1.96
        (0, 10, 0.0, 0.3841600 / 1.3841600),  # = 0.27754
        (5, 10, 0.2365896, 0.7634104),
        (10, 10, 1 - 0.3841600 / 1.3841600, 1.0),
        (16, 30, 0.3614201, 0.6976787),
        (52, 100, 0.4231641, 0.6153562),
        (1, 1, 0.2065432, 1.0),
    ],
)
def test_wilson_known_values(correct, n, lo, hi):
    got = wilson(correct, n)
    assert got[0] == pytest.approx(lo, abs=1e-6) and got[1] == pytest.approx(hi, abs=1e-6)


def test_wilson_is_symmetric_and_contains_the_estimate():
    for n in (1, 7, 30, 500):
        for c in range(0, n + 1, max(1, n // 7)):
            lo, hi = wilson(c, n)
            assert 0.0 <= lo <= c / n <= hi <= 1.0
            lo2, hi2 = wilson(n - c, n)
            assert math.isclose(lo, 1 - hi2, abs_tol=1e-12) and math.isclose(hi, 1 - lo2, abs_tol=1e-12)


def test_wilson_edges():
    assert wilson(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson(3, 2)
    with pytest.raises(ValueError):
        wilson(-1, 2)


def test_mcnemar_exact_known_values():
    assert mcnemar_exact_counts(0, 0) == 1.0
    assert mcnemar_exact_counts(1, 9) == 2 * (1 + 10) / 1024  # 0.021484375
    assert mcnemar_exact_counts(9, 1) == 2 * (1 + 10) / 1024
    assert mcnemar_exact_counts(0, 5) == 2 / 32  # 0.0625
    assert mcnemar_exact_counts(3, 3) == 1.0  # capped at 1
    assert mcnemar_exact_counts(0, 6) == 2 / 64  # 0.03125: below 0.05


def test_mcnemar_exact_on_paired_outcomes():
    a = [True] * 6 + [False] * 4 + [True, False]
    b = [False] * 6 + [False] * 4 + [True, False]  # A alone right on 6, B alone on none
    assert mcnemar_exact(a, b) == 2 / 64
    assert mcnemar_exact(b, a) == 2 / 64
    assert mcnemar_exact(a, a) == 1.0
    with pytest.raises(ValueError):
        mcnemar_exact([True], [True, False])
