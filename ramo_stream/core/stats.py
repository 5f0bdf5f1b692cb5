"""Uncertainty of an accuracy measured on n pairs: the 95% Wilson score interval.

For k hits out of n, p = k/n and z = 1.96::

    centre = (p + z^2 / 2n) / (1 + z^2 / n)
    half   = z * sqrt(p (1 - p) / n + z^2 / 4n^2) / (1 + z^2 / n)
    [centre - half, centre + half]

Unlike p +- z sqrt(p(1-p)/n), it stays inside [0, 1] and does not collapse to a point at
p = 0 or 1, which matters for the handful of held-out pairs a young model has.
"""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the 97.5th percentile of the standard normal
# Below this many held-out pairs an accuracy says next to nothing: at n = 10 the interval
# around 0.5 is [0.24, 0.76].
MIN_HELDOUT = 10


def wilson_interval(hits: int, n: int, z: float = Z95) -> tuple[float, float]:
    """(low, high) of the Wilson interval of hits/n; (nan, nan) when n is 0."""
    if n < 0 or hits < 0 or hits > n:
        raise ValueError(f"need 0 <= hits <= n, got hits={hits}, n={n}")
    if n == 0:
        return (math.nan, math.nan)
    p = hits / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def accuracy_with_interval(accuracy: float | None, n: int, min_n: int = MIN_HELDOUT) -> str:
    """'0.625 [0.31, 0.86]' (the 95% interval), or 'too few held-out pairs yet' below
    ``min_n`` pairs (a manifest stores the share; hits = round(share * n) is exact)."""
    if accuracy is None or n < max(1, min_n):
        return "too few held-out pairs yet"
    lo, hi = wilson_interval(round(accuracy * n), n)
    return f"{accuracy:.3f} [{lo:.2f}, {hi:.2f}]"


def describe_accuracy(accuracy: float | None, n: int, min_n: int = MIN_HELDOUT) -> str:
    """An accuracy for people: '0.625 [0.31, 0.86] on 40 held-out pairs (95% interval)',
    or, below ``min_n`` pairs, 'too few held-out pairs yet (8 of 10)'."""
    if accuracy is None or n < max(1, min_n):
        return f"too few held-out pairs yet ({n} of {min_n})"
    return f"{accuracy_with_interval(accuracy, n, min_n)} on {n} held-out pairs (95% interval)"
