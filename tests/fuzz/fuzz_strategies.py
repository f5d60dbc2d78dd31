"""Hypothesis strategies and settings shared by the fuzz tests (``tests/fuzz``).

Every fuzz test runs a bounded number of examples so the directory takes seconds, and the same
examples on every run (derandomized): the suite and CI pass or fail on the code, not on the draw.
To search for new failures, ``RSTAR_FUZZ_EXPLORE=1`` draws fresh examples each run and
``RSTAR_FUZZ_SCALE=N`` multiplies each count (``RSTAR_FUZZ_EXPLORE=1 RSTAR_FUZZ_SCALE=20 pytest
tests/fuzz --hypothesis-show-statistics`` prints the cases each property ran); a failure found
that way gets fixed and, where the fixed examples do not reach it, a regular test.

Besides Hypothesis' own text and bytes, the strategies here build what hostile input looks like:
arbitrary JSON values, deep nesting (brackets, braces, signs: what blows a recursive parser's
stack), numbers of hundreds of digits, and mutations of valid encodings (truncated, cut, spliced,
a byte flipped).
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

SCALE = max(1, int(os.environ.get("RSTAR_FUZZ_SCALE", "1")))
EXPLORE = os.environ.get("RSTAR_FUZZ_EXPLORE", "") not in ("", "0")


def fuzz(examples: int, **kw: Any) -> settings:
    """Settings for one property: ``examples`` cases (times ``RSTAR_FUZZ_SCALE``), no per-example
    deadline (a loaded 2-core CI box makes timing flaky; tests that bound time measure it)."""
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        derandomize=not EXPLORE,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
        **kw,
    )


# ---------------------------------------------------------------- JSON

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12,
)


# ---------------------------------------------------------------- hostile text

# Numbers of up to 5,000 digits (past Python's 4,300-digit int/str limit): a few random digits repeated.
big_digits = st.builds(
    lambda n, d: (d * n)[:n], st.integers(1, 60) | st.integers(60, 5000), st.text("0123456789", min_size=1, max_size=8)
)


@st.composite
def nested(draw, core: st.SearchStrategy[str], pairs: tuple[tuple[str, str], ...]) -> str:
    """``core`` wrapped ``depth`` times in one of ``pairs`` (open, close): 0 to 1,200 levels."""
    depth = draw(st.integers(0, 50) | st.integers(50, 1200))
    left, right = draw(st.sampled_from(pairs))
    return left * depth + draw(core) + right * depth


def mutated(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    """Valid bytes cut short, cut in the middle, extended, spliced or with one byte changed."""

    @st.composite
    def mutate(draw) -> bytes:
        data = draw(valid)
        i = draw(st.integers(0, len(data)))
        j = draw(st.integers(i, len(data)))
        how = draw(st.sampled_from(["truncate", "cut", "append", "flip", "splice"]))
        if how == "truncate":
            return data[:i]
        if how == "cut":
            return data[:i] + data[j:]
        if how == "append":
            return data + draw(st.binary(min_size=1, max_size=20))
        if how == "flip" and data:
            k = min(i, len(data) - 1)
            return data[:k] + bytes([data[k] ^ draw(st.integers(1, 255))]) + data[k + 1 :]
        return data[:i] + draw(st.binary(max_size=20)) + data[j:]

    return mutate()
