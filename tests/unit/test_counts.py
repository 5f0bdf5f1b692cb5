"""Counts that only move forward, and rates that are never negative."""

from __future__ import annotations

import pytest

from ramo_stream.core.counts import ForwardCounts, growth_rate


def test_a_key_not_read_this_time_keeps_its_last_value() -> None:
    ends: ForwardCounts[tuple[str, int]] = ForwardCounts()
    ends.update({("pairs", 0): 10, ("pairs", 1): 12, ("labels", 0): 7})
    assert ends.totals_by(lambda k: k[0], ["pairs", "labels", "dlq"]) == {
        "pairs": 22, "labels": 7, "dlq": 0,
    }  # fmt: skip
    ends.update({("pairs", 0): 11})  # partition 1 and labels not heard from this time
    assert ends.total() == 11 + 12 + 7
    assert ends.get(("pairs", 1)) == 12 and ends.get(("dlq", 0)) is None


def test_a_lower_reading_does_not_move_a_count_back() -> None:
    ends: ForwardCounts[str] = ForwardCounts()
    ends.update({"a": 40})
    ends.update({"a": 33})  # an old answer (a lower bound, a lagging scrape)
    assert ends.get("a") == 40 and ends.total(["a", "b"]) == 40
    ends.update({"a": 41, "b": 0})
    assert ends.get("a") == 41 and ends.known() == {"a", "b"}


def test_totals_never_go_down_over_any_sequence_of_partial_readings() -> None:
    import random

    rng = random.Random(7)
    true = [0, 0, 0, 0]
    ends: ForwardCounts[int] = ForwardCounts()
    last = 0
    for _ in range(500):
        true[rng.randrange(4)] += rng.randrange(5)
        # each partition read or not, and when read possibly from an old answer
        ends.update({p: rng.randint(0, v) for p, v in enumerate(true) if rng.random() < 0.6})
        assert last <= ends.total() <= sum(true)
        last = ends.total()
    ends.update(dict(enumerate(true)))
    assert ends.total() == sum(true)


def test_negative_counts_are_refused_with_the_key() -> None:
    with pytest.raises(ValueError, match=r"'p0' read as -1"):
        ForwardCounts[str]().update({"p0": -1})


def test_growth_rate_is_per_second_and_never_negative() -> None:
    assert growth_rate((0.0, 10), (4.0, 30)) == 5.0
    assert growth_rate((0.0, 30), (4.0, 10)) == 0.0  # a restarted counter is no growth
    assert growth_rate((2.0, 10), (2.0, 30)) is None
