"""Small statistics for evaluation figures: the Wilson score interval and McNemar's exact test.

    wilson(16, 30)                        # (0.3614..., 0.6977...): 95 % interval of 16 correct of 30
    mcnemar_exact([1, 1, 0, 0], [1, 0, 0, 0])   # two-sided p that two paired methods differ

Pure Python, no dependencies; the figures of ``rstar rounds`` and its plot use them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.96  # two-sided 95 % quantile of the standard normal, as usually quoted


def wilson(correct: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion ``correct / n`` (95 % by default).

    ``(0.0, 1.0)`` when ``n`` is 0 (nothing is known). Raises ValueError unless
    ``0 <= correct <= n``.
    """
    if n < 0 or not 0 <= correct <= n:
        raise ValueError(f"need 0 <= correct <= n, got correct={correct}, n={n}")
    if n == 0:
        return 0.0, 1.0
    p = correct / n
    z2 = z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    # At p = 0 or 1 one bound is exact in theory; clamp the float noise.
    lo = 0.0 if correct == 0 else max(0.0, centre - half)
    hi = 1.0 if correct == n else min(1.0, centre + half)
    return lo, hi


def mcnemar_exact_counts(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p value from the discordant pairs: problems only method/round A
    got right (``only_a``) and only B got right (``only_b``). 1.0 when there are none."""
    if only_a < 0 or only_b < 0:
        raise ValueError(f"counts must be >= 0, got {only_a}, {only_b}")
    m = only_a + only_b
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, i) for i in range(min(only_a, only_b) + 1)) / 2**m
    return min(1.0, 2 * tail)


def mcnemar_exact(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Two-sided exact McNemar p value for paired outcomes (``a[i]``, ``b[i]``: the same problem
    under two methods or rounds, True when answered correctly)."""
    if len(a) != len(b):
        raise ValueError(f"paired outcomes must have the same length, got {len(a)} and {len(b)}")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    return mcnemar_exact_counts(only_a, only_b)
