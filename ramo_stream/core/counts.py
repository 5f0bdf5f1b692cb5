"""Counts that only move forward, for a view that samples growing things now and then.

A topic's record count is the sum of its partitions' end offsets, and an end offset never
goes down. A sample can still miss a partition (its fetch did not come back in time, the
broker was away for a moment), and a view that then counted that partition as 0, or as a
lower bound, would show the total dropping and coming back on the next sample: a count
that flips, and a rate that goes negative. So each key keeps the largest value ever read,
and a key not read this time keeps its last one.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class ForwardCounts(Generic[K]):
    """The largest value read so far for each key (a partition, a counter)."""

    def __init__(self) -> None:
        self._last: dict[K, int] = {}

    def update(self, read: Mapping[K, int]) -> None:
        """Take the values read this time; a lower one than before is an old reading (a
        lagging replica, a stale answer), not a count going down, so it is ignored."""
        for key, value in read.items():
            if value < 0:
                raise ValueError(f"a count cannot be negative: {key!r} read as {value}")
            if value > self._last.get(key, -1):
                self._last[key] = value

    def get(self, key: K) -> int | None:
        """The last known value of ``key``, None if it was never read."""
        return self._last.get(key)

    def known(self) -> set[K]:
        return set(self._last)

    def total(self, keys: Iterable[K] | None = None) -> int:
        """Sum of the last known values of ``keys`` (all keys if None; unknown ones add 0)."""
        chosen = self._last.keys() if keys is None else keys
        return sum(self._last.get(k, 0) for k in chosen)

    def totals_by(self, group: Callable[[K], str], groups: Iterable[str]) -> dict[str, int]:
        """Sums per group (say, per topic for (topic, partition) keys); every name in
        ``groups`` is present, 0 when none of its keys were ever read."""
        sums = dict.fromkeys(groups, 0)
        for key, value in self._last.items():
            name = group(key)
            if name in sums:
                sums[name] += value
        return sums


def growth_rate(first: tuple[float, int], last: tuple[float, int]) -> float | None:
    """Per-second growth between two (time, count) readings; None when no time passed.

    Never negative: the counts come from ``ForwardCounts``, and a counter that restarted
    (a restarted process's Prometheus counter) is no growth, not negative growth."""
    (t0, c0), (t1, c1) = first, last
    if t1 <= t0:
        return None
    return max(0, c1 - c0) / (t1 - t0)
