"""Counter-based random numbers per generated row, so a sample does not depend on its batch.

A batched backend call mixes the prompts of many trees, and which prompts share a call depends on
timing. With one generator for the whole call, the draws a prompt gets depend on what else was in
the call, and a search is not reproducible. Here every row (sample ``j`` of prompt ``i``) has its
own 64-bit seed, and the uniform it uses at decode step ``t`` is a hash of (row seed, t)
(SplitMix64, Steele et al. 2014): the same prompt, seed, weights and parameters give the same
sample whatever else is batched with it, in whatever order.
"""

from __future__ import annotations

import numpy as np

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_MASK = (1 << 64) - 1


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on a uint64 array (arithmetic modulo 2**64)."""
    x = (x ^ (x >> np.uint64(30))) * _M1
    x = (x ^ (x >> np.uint64(27))) * _M2
    return x ^ (x >> np.uint64(31))


def row_seeds(prompt_seeds: list[int], counts: list[int], first: list[int] | None = None) -> np.ndarray:
    """One seed per row: ``counts[i]`` rows for prompt ``i``, samples ``first[i]`` (default 0) onwards,
    sample ``j`` mixed from (the prompt's seed, j)."""
    first = first or [0] * len(counts)
    base = np.repeat(np.array([s & _MASK for s in prompt_seeds], dtype=np.uint64), counts)
    sample = np.concatenate([np.arange(f + 1, f + c + 1, dtype=np.uint64) for f, c in zip(first, counts)])
    with np.errstate(over="ignore"):
        return _mix(base + sample * _GOLDEN)


def uniforms(seeds: np.ndarray, step: int) -> np.ndarray:
    """A uniform in [0, 1) per row seed for decode step ``step`` (float64, 53 random bits)."""
    with np.errstate(over="ignore"):
        x = _mix(seeds + np.uint64(step + 1) * _GOLDEN)
    return (x >> np.uint64(11)).astype(np.float64) * 2.0**-53
