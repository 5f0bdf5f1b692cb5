"""The Wilson interval and how held-out accuracy is described."""

from __future__ import annotations

import math

import pytest

from ramo_stream.core.stats import (
    MIN_HELDOUT,
    accuracy_with_interval,
    describe_accuracy,
    wilson_interval,
)


def test_wilson_matches_published_values() -> None:
    # Wilson (1927) / Newcombe (1998) table: 81 of 263 -> [0.2553, 0.3662]; 15 of 148 ->
    # [0.0624, 0.1605]
    lo, hi = wilson_interval(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    lo, hi = wilson_interval(15, 148)
    assert (round(lo, 4), round(hi, 4)) == (0.0624, 0.1605)


def test_wilson_stays_inside_0_1_and_is_wide_at_the_edges() -> None:
    lo, hi = wilson_interval(0, 8)
    assert lo == 0.0 and 0.3 < hi < 0.4  # 0 of 8 does not mean "never"
    lo, hi = wilson_interval(8, 8)
    assert hi == 1.0 and 0.6 < lo < 0.7
    assert all(math.isnan(x) for x in wilson_interval(0, 0))
    with pytest.raises(ValueError, match="hits <= n"):
        wilson_interval(3, 2)


def test_below_the_minimum_it_says_too_few() -> None:
    assert describe_accuracy(0.0, 1) == f"too few held-out pairs yet (1 of {MIN_HELDOUT})"
    assert describe_accuracy(None, 0).startswith("too few held-out pairs yet")
    assert accuracy_with_interval(0.625, 8) == "too few held-out pairs yet"
    text = describe_accuracy(0.5, 20)
    assert text == "0.500 [0.30, 0.70] on 20 held-out pairs (95% interval)"
