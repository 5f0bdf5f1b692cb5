"""The labeling budget as a rate: the labeler's measured pace, the per-poll conversion, and
`ramo up`'s auto decision."""

from __future__ import annotations

import math

import pytest

from ramo_stream.core.label_rate import LabelerPace, RateBudget, auto_gate


def test_pace_is_pairs_per_busy_second_over_the_last_batches() -> None:
    pace = LabelerPace(keep=2)
    assert pace.rate() is None
    pace.observe(4, 8.0)
    assert pace.rate() == 0.5
    pace.observe(0, 30.0)  # nothing labeled (all done before): ignored, not a slow batch
    assert pace.rate() == 0.5
    pace.observe(4, 2.0)
    pace.observe(2, 1.0)  # the first batch falls out of the window of 2
    assert pace.rate() == pytest.approx(6 / 3.0)
    assert pace.pairs == 10 and pace.busy_s == 11.0
    pace.observe(1, 0.0)
    pace.observe(1, 0.0)
    assert pace.rate() == math.inf
    with pytest.raises(ValueError, match="pairs >= 0"):
        pace.observe(-1, 1.0)


def test_rate_budget_earns_per_second_shares_a_poll_by_size_and_caps_a_quiet_spell() -> None:
    b = RateBudget(started=0.0, max_gap_s=30.0)
    # 10 s at 0.5/s earn 5 pairs, split 2.5 / 2.5 over two windows of 100: 2, then 3.
    assert b.allowances([100, 100], now=10.0, per_s=0.5) == [2, 3]
    # A window smaller than its share takes all its pairs; the unused credit lapses (the
    # labeler's idle capacity cannot be banked): the next poll gets its own share + 1 at most.
    assert b.allowances([2], now=20.0, per_s=1.0) == [2]
    assert b.allowances([100], now=20.5, per_s=1.0) == [1]
    # Fractions carry: 0.4 pairs per poll select one pair every 2-3 polls.
    got = [b.allowances([50], now=20.0 + 0.4 * (i + 1), per_s=1.0)[0] for i in range(10)]
    assert sum(got) == 4 and max(got) == 1
    # An hour of quiet earns 30 s of labeling, not 3600.
    assert b.allowances([1000], now=4000.0, per_s=1.0) == [30]
    assert b.allowances([10], now=4000.0, per_s=1.0) == [0]  # ...and banks nothing after
    assert b.allowances([7, 3], now=4000.0, per_s=math.inf) == [7, 3]
    with pytest.raises(ValueError, match=">= 0 labels per second"):
        b.allowances([1], now=4001.0, per_s=-1.0)


def test_rate_budget_long_run_rate_equals_the_budget() -> None:
    b = RateBudget(started=0.0)
    total = sum(sum(b.allowances([37, 12], now=1.3 * i, per_s=0.8)) for i in range(1, 1001))
    assert abs(total - 0.8 * 1.3 * 1000) <= 1


def test_auto_gate_compares_waiting_pairs_with_what_the_labeler_labels_in_the_horizon() -> None:
    on, why = auto_gate(backlog=100, rate=1.0, horizon_s=60)
    assert on and "100 pairs waiting" in why and "60" in why
    on, why = auto_gate(backlog=60, rate=1.0, horizon_s=60)
    assert not on and "no more than" in why
    on, why = auto_gate(backlog=10**6, rate=None, horizon_s=60)
    assert not on and "not known" in why and "select.enabled=on" in why
