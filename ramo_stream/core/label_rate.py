"""The labeling budget as a rate: what the labeler sustains, measured, and converted per window.

The selection gate's budget can be a number of pairs per window (``fisher.Budget``) or a
rate, labels per second. A rate is what an operator knows ("the grader does 0.8 pairs/s",
"we pay for 3,000 labels an hour") and what the labeler can be measured at, so:

    LabelerPace   the labeler's sustained rate: pairs labeled / seconds spent labeling them,
                  over its last few batches (busy time only, so an idle labeler that waits
                  for pairs still reads at its capacity, not at the rate pairs reached it);
    RateBudget    a poll of the gate that closes at ``now`` earns per_s x (seconds since
                  the previous poll), shared among the poll's windows by their size; the
                  fraction of a pair left over carries, at most one pair beyond the share,
                  and a quiet spell earns at most ``max_gap_s`` seconds of labeling, so the
                  labeler is never handed a backlog that would age on the selected topic;
    auto_gate     whether ``ramo up`` should put the gate in front of the labeler at all.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Sequence


class LabelerPace:
    """The labeler's rate in pairs per second of labeling, over its last ``keep`` batches."""

    def __init__(self, keep: int = 20) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1 batch, got {keep}")
        self._batches: deque[tuple[int, float]] = deque(maxlen=keep)
        self.pairs = 0  # every pair observed, for reports
        self.busy_s = 0.0

    def observe(self, pairs: int, seconds: float) -> None:
        """One labeled batch: ``pairs`` labeled in ``seconds`` of the labeler's time."""
        if pairs < 0 or seconds < 0:
            raise ValueError(f"a batch has pairs >= 0 and seconds >= 0, got {pairs}, {seconds}")
        if pairs == 0:  # nothing labeled (all already done): says nothing about the rate
            return
        self._batches.append((pairs, seconds))
        self.pairs += pairs
        self.busy_s += seconds

    def rate(self) -> float | None:
        """Pairs per second over the batches kept; None before the first one."""
        pairs = sum(n for n, _ in self._batches)
        seconds = sum(s for _, s in self._batches)
        if not pairs:
            return None
        return pairs / seconds if seconds > 0 else math.inf


class RateBudget:
    """Pairs each window of a poll may select under a budget of ``per_s`` labels a second."""

    def __init__(self, started: float, max_gap_s: float = 30.0) -> None:
        if not max_gap_s > 0:
            raise ValueError(f"max_gap_s must be > 0 seconds, got {max_gap_s}")
        self._last = started  # the gate's start: the first poll earns the time since
        self.max_gap_s = max_gap_s
        self.credit = 0.0

    def allowances(self, sizes: Sequence[int], now: float, per_s: float) -> list[int]:
        """One allowance per window (``sizes``: pairs per window, in order) of the poll
        that closes at ``now`` (seconds, monotonic)."""
        if per_s < 0:
            raise ValueError(f"a budget is >= 0 labels per second, got {per_s}")
        elapsed = min(max(0.0, now - self._last), self.max_gap_s)
        self._last = now
        if math.isinf(per_s):  # a labeler faster than the clock can time: no limit
            self.credit = 0.0
            return list(sizes)
        total = sum(sizes)
        out = []
        for n in sizes:
            earned = per_s * elapsed * (n / total) if total else 0.0
            # As fisher.Budget: carry at most one pair beyond this window's own share.
            self.credit = min(self.credit + earned, earned + 1.0)
            k = min(n, math.floor(self.credit + 1e-9))
            self.credit -= k
            out.append(k)
        return out


def auto_gate(backlog: int, rate: float | None, horizon_s: float) -> tuple[bool, str]:
    """``ramo up``'s select.enabled=auto: gate when the pairs waiting to be labeled at start
    (``backlog``: on the pairs topic and in the files to ingest) are more than the labeler
    can label (``rate``, pairs/s; None: not known) within ``horizon_s`` seconds (the
    trainer's publish period: what is not labeled by then misses the next version). Returns
    (on, the reason in words)."""
    if rate is None:
        return False, (
            "off: the labeler's rate is not known yet (this run measures it; or set"
            " select.budget_per_s, or select.enabled=on)"
        )
    can = rate * horizon_s
    if backlog > can:
        return True, (
            f"on: {backlog} pairs waiting, more than the {can:.0f} the labeler labels at"
            f" {rate:.2f}/s in {horizon_s:g} s"
        )
    return False, (
        f"off: {backlog} pairs waiting, no more than the {can:.0f} the labeler labels at"
        f" {rate:.2f}/s in {horizon_s:g} s"
    )
