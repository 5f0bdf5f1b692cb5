"""RAMO rule selection and aggregation: every expected number is worked out by hand.

Most numbers are multiples of 1/8, so the float arithmetic is exact and the asserts can use
``==``; the few that are not use ``pytest.approx``.
"""

from __future__ import annotations

import random
import subprocess
import sys

import pytest

from ramo_stream.config import LabelingSettings
from ramo_stream.core.selection import (
    Label,
    RuleScore,
    aggregate,
    rule_scores,
    select_max_discrepancy,
    select_random,
)
from ramo_stream.schemas import RuleJudgment

# The defaults of the settings, the one place they are kept.
K, GAMMA, EPS = (LabelingSettings().k, LabelingSettings().gamma, LabelingSettings().tie_epsilon)


def judgment(rule_id: str, side: str, p_yes: float, p_no: float, p_irr: float) -> RuleJudgment:
    return RuleJudgment(rule_id=rule_id, side=side, p_yes=p_yes, p_no=p_no, p_irrelevant=p_irr)


def score(
    rule_id: str, s_a: float, s_b: float, rho_a: float = 1.0, rho_b: float = 1.0
) -> RuleScore:
    return RuleScore(rule_id, s_a, s_b, rho_a, rho_b)


def pool(*items: RuleScore) -> dict[str, RuleScore]:
    return {s.rule_id: s for s in items}


def test_defaults_match_the_ramo_paper() -> None:
    assert (K, GAMMA, EPS) == (5, 0.5, 1e-6)


# --------------------------------------------------------------------------- rule_scores

# r1, side a: p = (0.75, 0.125, 0.125) -> s_a = 0.75 - 0.125 = 0.625, rho_a = 1 - 0.125 = 0.875
# r1, side b: p = (0.25, 0.5, 0.25)    -> s_b = 0.25 - 0.5 = -0.25,   rho_b = 1 - 0.25 = 0.75
R1_A = judgment("r1", "a", 0.75, 0.125, 0.125)
R1_B = judgment("r1", "b", 0.25, 0.5, 0.25)


def test_rule_scores_builds_score_and_relevance_per_side() -> None:
    scores = rule_scores([R1_A, R1_B])

    assert list(scores) == ["r1"]
    assert scores["r1"] == RuleScore("r1", s_a=0.625, s_b=-0.25, rho_a=0.875, rho_b=0.75)


def test_rule_scores_does_not_depend_on_which_side_comes_first() -> None:
    assert rule_scores([R1_B, R1_A]) == rule_scores([R1_A, R1_B])


def test_rule_scores_subtracts_each_baseline_from_its_own_side_only() -> None:
    # baseline_a = 0.125, baseline_b = -0.5:
    #   s_a = 0.625 - 0.125    = 0.5
    #   s_b = -0.25 - (-0.5)   = 0.25
    # Swapped baselines would give s_a = 0.625 + 0.5 = 1.125 and s_b = -0.25 - 0.125 = -0.375.
    # rho is not a score: it stays 0.875 / 0.75.
    scores = rule_scores([R1_A, R1_B], baseline_a=0.125, baseline_b=-0.5)

    assert scores["r1"] == RuleScore("r1", s_a=0.5, s_b=0.25, rho_a=0.875, rho_b=0.75)


def test_rule_scores_one_baseline_leaves_the_other_side_alone() -> None:
    # Only baseline_a = 0.25: s_a = 0.625 - 0.25 = 0.375, s_b stays -0.25.
    only_a = rule_scores([R1_A, R1_B], baseline_a=0.25)["r1"]
    assert (only_a.s_a, only_a.s_b) == (0.375, -0.25)
    # Only baseline_b = 0.25: s_b = -0.25 - 0.25 = -0.5, s_a stays 0.625.
    only_b = rule_scores([R1_A, R1_B], baseline_b=0.25)["r1"]
    assert (only_b.s_a, only_b.s_b) == (0.625, -0.5)
    assert (only_a.rho_a, only_a.rho_b) == (only_b.rho_a, only_b.rho_b) == (0.875, 0.75)


def test_rule_scores_baselines_apply_to_every_rule() -> None:
    # r2, a: (0.5, 0.5, 0.0) -> s = 0.0;  r2, b: (0.0, 0.5, 0.5) -> s = -0.5
    # baseline_a = 0.25, baseline_b = 0.125:
    #   r2 -> s_a = 0 - 0.25 = -0.25,      s_b = -0.5 - 0.125 = -0.625
    #   r1 -> s_a = 0.625 - 0.25 = 0.375,  s_b = -0.25 - 0.125 = -0.375
    js = [R1_A, R1_B, judgment("r2", "a", 0.5, 0.5, 0.0), judgment("r2", "b", 0.0, 0.5, 0.5)]
    scores = rule_scores(js, baseline_a=0.25, baseline_b=0.125)

    assert (scores["r1"].s_a, scores["r1"].s_b) == (0.375, -0.375)
    assert (scores["r2"].s_a, scores["r2"].s_b) == (-0.25, -0.625)
    assert (scores["r2"].rho_a, scores["r2"].rho_b) == (1.0, 0.5)


def test_rule_scores_keeps_order_of_first_appearance() -> None:
    # First appearances: zeta (side b), alpha (side a), mid (side a). Not alphabetical, and
    # not the order in which a rule becomes complete (alpha is completed first, zeta last).
    js = [
        judgment("zeta", "b", 0.5, 0.25, 0.25),
        judgment("alpha", "a", 0.5, 0.25, 0.25),
        judgment("alpha", "b", 0.5, 0.25, 0.25),
        judgment("mid", "a", 0.5, 0.25, 0.25),
        judgment("mid", "b", 0.5, 0.25, 0.25),
        judgment("zeta", "a", 0.5, 0.25, 0.25),
    ]
    assert list(rule_scores(js)) == ["zeta", "alpha", "mid"]


def test_rule_scores_accepts_any_iterable() -> None:
    assert list(rule_scores(iter([R1_A, R1_B]))) == ["r1"]


def test_rule_scores_rule_with_only_side_a_names_rule_and_missing_side() -> None:
    js = [R1_A, R1_B, judgment("lonely", "a", 0.5, 0.25, 0.25)]
    with pytest.raises(ValueError, match=r"'lonely'.*response b"):
        rule_scores(js)


def test_rule_scores_rule_with_only_side_b_names_side_a() -> None:
    with pytest.raises(ValueError, match=r"'r1'.*response a"):
        rule_scores([R1_B])


# ---------------------------------------------------------------------- RuleScore.discrepancy


def test_discrepancy_worked_example() -> None:
    # rho = (0.75 + 0.5) / 2 = 0.625, |s_a - s_b| = |0.5 - (-0.25)| = 0.75
    # gamma = 0.5: c = 0.625 + 0.5 * 0.75 = 1.0
    # gamma = 2:   c = 0.625 + 2 * 0.75   = 2.125
    # (a sum instead of a mean would give rho = 1.25; a signed difference would give -0.75)
    rs = RuleScore("r", s_a=0.5, s_b=-0.25, rho_a=0.75, rho_b=0.5)

    assert rs.relevance == 0.625
    assert rs.discrepancy(0.5) == 1.0
    assert rs.discrepancy(GAMMA) == 1.0  # the default gamma is 0.5
    assert rs.discrepancy(2.0) == 2.125


def test_discrepancy_uses_absolute_difference() -> None:
    # Swapping the scores: |-0.25 - 0.5| = 0.75 again, so c = 0.625 + 0.5 * 0.75 = 1.0.
    rs = RuleScore("r", s_a=-0.25, s_b=0.5, rho_a=0.75, rho_b=0.5)
    assert rs.discrepancy(0.5) == 1.0


def test_discrepancy_with_gamma_zero_is_pure_relevance() -> None:
    # c = 0.625 + 0 * 0.75 = 0.625, whatever the scores are.
    rs = RuleScore("r", s_a=1.0, s_b=-1.0, rho_a=0.75, rho_b=0.5)
    assert rs.discrepancy(0.0) == rs.relevance == 0.625


# ------------------------------------------------------------------ select_max_discrepancy

# Four rules; rho = mean(rho_a, rho_b), d = |s_a - s_b|, c(gamma) = rho + gamma * d:
#   P: rho = (1 + 1)/2 = 1.0,        d = |0.25 - 0.25| = 0     c(0)=1.0   c(.5)=1.0    c(5)=1.0
#   S: rho = (1 + 0.75)/2 = 0.875,   d = |-0.5 - -0.5| = 0     c(0)=.875  c(.5)=.875   c(5)=.875
#   Q: rho = (0.5 + 1)/2 = 0.75,     d = |0.25 - -0.5| = 0.75  c(0)=.75   c(.5)=1.125  c(5)=4.5
#   R: rho = (0.25 + 0.25)/2 = 0.25, d = |-0.5 - 0.5|  = 1.0   c(0)=.25   c(.5)=.75    c(5)=5.25
# Top-2: gamma=0 -> [P, S] (relevance), gamma=0.5 -> [Q, P], gamma=5 -> [R, Q] (discrepancy).
P = RuleScore("P", s_a=0.25, s_b=0.25, rho_a=1.0, rho_b=1.0)
S = RuleScore("S", s_a=-0.5, s_b=-0.5, rho_a=1.0, rho_b=0.75)
Q = RuleScore("Q", s_a=0.25, s_b=-0.5, rho_a=0.5, rho_b=1.0)
R = RuleScore("R", s_a=-0.5, s_b=0.5, rho_a=0.25, rho_b=0.25)
# Pool order is the reverse of the relevance order, so pool order alone never passes.
FOUR = pool(R, Q, S, P)


def test_four_rule_example_values() -> None:
    assert [FOUR[r].discrepancy(0.0) for r in "PSQR"] == [1.0, 0.875, 0.75, 0.25]
    assert [FOUR[r].discrepancy(0.5) for r in "PSQR"] == [1.0, 0.875, 1.125, 0.75]
    assert [FOUR[r].discrepancy(5.0) for r in "PSQR"] == [1.0, 0.875, 4.5, 5.25]


def test_gamma_zero_selects_by_relevance_alone() -> None:
    assert select_max_discrepancy(FOUR, k=2, gamma=0.0) == ["P", "S"]


def test_gamma_half_mixes_relevance_and_discrepancy() -> None:
    assert select_max_discrepancy(FOUR, k=2, gamma=0.5) == ["Q", "P"]


def test_large_gamma_selects_by_discrepancy() -> None:
    assert select_max_discrepancy(FOUR, k=2, gamma=5.0) == ["R", "Q"]


def test_the_three_gammas_pick_three_different_sets() -> None:
    picks = {frozenset(select_max_discrepancy(FOUR, k=2, gamma=g)) for g in (0.0, 0.5, 5.0)}
    assert picks == {frozenset("PS"), frozenset("PQ"), frozenset("QR")}


def test_default_gamma_is_half() -> None:
    assert select_max_discrepancy(FOUR, k=2, gamma=GAMMA) == ["Q", "P"]


def test_default_k_is_five() -> None:
    # Six rules, each with d = 0 and relevance (1 + rho_b)/2 decreasing with i:
    # r0 (rho_b=1) > r1 (0.875) > ... > r5 (0.375); the default keeps the top five.
    six = pool(*(score(f"r{i}", 0.0, 0.0, 1.0, 1.0 - i / 8) for i in range(6)))
    assert select_max_discrepancy(six, K, GAMMA) == ["r0", "r1", "r2", "r3", "r4"]


def test_ties_keep_pool_order() -> None:
    # All three: c(0.5) = 1.0 + 0.5 * 0 = 1.0. Pool order z, m, a is kept (not sorted by id).
    tied = pool(score("z", 0.0, 0.0), score("m", 0.5, 0.5), score("a", -1.0, -1.0))
    assert select_max_discrepancy(tied, k=3, gamma=0.5) == ["z", "m", "a"]
    assert select_max_discrepancy(tied, k=2, gamma=0.5) == ["z", "m"]


def test_ties_from_different_mixes_keep_pool_order_behind_a_higher_rule() -> None:
    # low:  rho = 0.5,                 d = 0    -> c(0.5) = 0.5
    # t1:   rho = (0.5 + 0.5)/2 = 0.5, d = 1.0  -> c(0.5) = 0.5 + 0.5 * 1.0 = 1.0
    # top:  rho = 1.0,                 d = 1.0  -> c(0.5) = 1.0 + 0.5       = 1.5
    # t2:   rho = 1.0,                 d = 0    -> c(0.5) = 1.0
    # Ranking: top (1.5), then t1 and t2 tied at 1.0 in pool order, then low.
    mixed = pool(
        score("low", 0.0, 0.0, 0.5, 0.5),
        score("t1", 0.5, -0.5, 0.5, 0.5),
        score("top", 0.5, -0.5),
        score("t2", 0.25, 0.25),
    )
    assert select_max_discrepancy(mixed, k=4, gamma=0.5) == ["top", "t1", "t2", "low"]


def test_k_larger_than_pool_returns_all_rules_ranked() -> None:
    # c(0.5): Q 1.125 > P 1.0 > S 0.875 > R 0.75.
    assert select_max_discrepancy(FOUR, k=10, gamma=0.5) == ["Q", "P", "S", "R"]
    assert select_max_discrepancy(FOUR, k=4, gamma=0.5) == ["Q", "P", "S", "R"]


@pytest.mark.parametrize("k", [0, -1])
def test_k_below_one_raises(k: int) -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        select_max_discrepancy(FOUR, k=k, gamma=GAMMA)


def test_negative_gamma_raises() -> None:
    with pytest.raises(ValueError, match="gamma must be >= 0"):
        select_max_discrepancy(FOUR, k=2, gamma=-0.5)


def test_selection_from_judgments_end_to_end() -> None:
    # wide: a (1, 0, 0) -> s=1, rho=1;  b (0, 1, 0) -> s=-1, rho=1
    #       c(0.5) = 1 + 0.5 * |1 - -1| = 2.0
    # flat: a (0.5, 0.5, 0) -> s=0, rho=1; b same -> c(0.5) = 1 + 0 = 1.0
    # off:  a (0, 0, 1) -> s=0, rho=0;   b same -> c(0.5) = 0
    js = [
        judgment("off", "a", 0.0, 0.0, 1.0),
        judgment("off", "b", 0.0, 0.0, 1.0),
        judgment("flat", "a", 0.5, 0.5, 0.0),
        judgment("flat", "b", 0.5, 0.5, 0.0),
        judgment("wide", "a", 1.0, 0.0, 0.0),
        judgment("wide", "b", 0.0, 1.0, 0.0),
    ]
    assert select_max_discrepancy(rule_scores(js), k=2, gamma=0.5) == ["wide", "flat"]


# ------------------------------------------------------------------------- select_random

IDS = [f"rule-{i}" for i in range(10)]


def test_select_random_returns_k_distinct_ids_from_the_pool() -> None:
    picked = select_random(IDS, 3, random.Random(7))
    assert len(picked) == 3
    assert len(set(picked)) == 3
    assert set(picked) <= set(IDS)


def test_select_random_is_reproducible_with_the_same_seed() -> None:
    assert select_random(IDS, 4, random.Random(7)) == select_random(IDS, 4, random.Random(7))


def test_select_random_different_seeds_eventually_differ() -> None:
    picks = {tuple(select_random(IDS, 3, random.Random(seed))) for seed in range(20)}
    assert len(picks) > 1


def test_select_random_k_above_pool_returns_whole_pool() -> None:
    picked = select_random(IDS, 25, random.Random(7))
    assert sorted(picked) == sorted(IDS)


def test_select_random_does_not_mutate_the_pool() -> None:
    ids = list(IDS)
    select_random(ids, 5, random.Random(7))
    assert ids == IDS


@pytest.mark.parametrize("k", [0, -3])
def test_select_random_k_below_one_raises(k: int) -> None:
    with pytest.raises(ValueError, match="k must be >= 1"):
        select_random(IDS, k, random.Random(7))


# ------------------------------------------------------------------------------ aggregate

# r1: s_a = 0.5,    s_b = -0.25
# r2: s_a = -0.125, s_b = 0.25
# r3: s_a = 0.25,   s_b = 0.0
# huge: s_a = -1, s_b = 1, rho = 1 -> c(0.5) = 1 + 0.5 * 2 = 2.0, the largest discrepancy.
AGG = pool(
    score("r1", 0.5, -0.25),
    score("r2", -0.125, 0.25),
    score("r3", 0.25, 0.0),
    score("huge", -1.0, 1.0),
)


def test_aggregate_worked_example_prefers_a() -> None:
    # sum_a = 0.5 - 0.125 + 0.25 = 0.625
    # sum_b = -0.25 + 0.25 + 0.0 = 0.0
    # margin = |0.625 - 0.0| = 0.625 -> A
    assert aggregate(AGG, ["r1", "r2", "r3"], EPS) == Label("a", 0.625, 0.625, 0.0)


def test_aggregate_prefers_b_with_positive_margin() -> None:
    # sum_a = -0.125, sum_b = 0.25, margin = |-0.125 - 0.25| = 0.375 (not -0.375) -> B
    assert aggregate(AGG, ["r2"], EPS) == Label("b", 0.375, -0.125, 0.25)


def test_aggregate_only_counts_selected_rules() -> None:
    # "huge" alone would give sum_a = -1, sum_b = 1 -> B by 2.0. Left unselected it changes
    # nothing: the result is the worked example's A by 0.625.
    assert select_max_discrepancy(AGG, k=1, gamma=GAMMA) == ["huge"]
    assert aggregate(AGG, ["r1", "r2", "r3"], EPS) == aggregate(
        pool(AGG["r1"], AGG["r2"], AGG["r3"]), ["r1", "r2", "r3"], EPS
    )
    # Selected, it flips the label: sum_a = 0.625 - 1 = -0.375, sum_b = 0 + 1 = 1.0,
    # margin = 1.375 -> B.
    assert aggregate(AGG, ["r1", "r2", "r3", "huge"], EPS) == Label("b", 1.375, -0.375, 1.0)


def test_aggregate_selection_order_does_not_matter() -> None:
    assert aggregate(AGG, ("r3", "r1", "r2"), EPS) == Label("a", 0.625, 0.625, 0.0)


def test_aggregate_exactly_equal_sums_is_a_tie() -> None:
    # sum_a = 0.5 + (-0.25) = 0.25, sum_b = 0.0 + 0.25 = 0.25, margin = 0
    scores = pool(score("x", 0.5, 0.0), score("y", -0.25, 0.25))
    assert aggregate(scores, ["x", "y"], EPS) == Label("tie", 0.0, 0.25, 0.25)


@pytest.mark.parametrize(("s_a", "s_b"), [(0.5 + 1e-9, 0.5), (0.5, 0.5 + 1e-9)])
def test_aggregate_difference_within_default_epsilon_is_a_tie(s_a: float, s_b: float) -> None:
    # margin ~= 1e-9 <= 1e-6 (default epsilon) -> tie, whichever side is ahead
    label = aggregate(pool(score("x", s_a, s_b)), ["x"], EPS)
    assert label.preferred == "tie"
    assert label.margin == pytest.approx(1e-9, rel=1e-3)


def test_aggregate_margin_equal_to_epsilon_is_a_tie() -> None:
    # margin = |0.5 - 0.25| = 0.25 = epsilon exactly; the rule is margin <= epsilon.
    assert aggregate(pool(score("x", 0.5, 0.25)), ["x"], epsilon=0.25).preferred == "tie"


def test_aggregate_difference_just_above_epsilon_is_not_a_tie() -> None:
    # epsilon = 0.01; sum_a = 0.5, sum_b = 0.52, margin = 0.02 > 0.01 -> B
    label = aggregate(pool(score("x", 0.5, 0.52)), ["x"], epsilon=0.01)
    assert label.preferred == "b"
    assert label.margin == pytest.approx(0.02)
    assert (label.sum_a, label.sum_b) == (0.5, 0.52)


def test_aggregate_uses_the_given_epsilon_not_the_default() -> None:
    # margin = |0.5 - 0.505| = 0.005: over the default 1e-6 (-> B) but under 0.01 (-> tie).
    scores = pool(score("x", 0.5, 0.505))
    assert aggregate(scores, ["x"], EPS).preferred == "b"
    assert aggregate(scores, ["x"], epsilon=0.01).preferred == "tie"


@pytest.mark.parametrize(
    ("s_a", "s_b", "expected_margin"),
    [
        (0.75, -0.25, 1.0),  # |0.75 - -0.25| = 1.0
        (-0.25, 0.75, 1.0),  # |-0.25 - 0.75| = 1.0
        (-1.0, -0.5, 0.5),  # |-1 - -0.5| = 0.5
        (0.125, 0.125, 0.0),
    ],
)
def test_aggregate_margin_is_never_negative(s_a: float, s_b: float, expected_margin: float) -> None:
    label = aggregate(pool(score("x", s_a, s_b)), ["x"], EPS)
    assert label.margin >= 0
    assert label.margin == expected_margin


def test_aggregate_empty_selection_raises() -> None:
    with pytest.raises(ValueError, match="empty selection"):
        aggregate(AGG, [], EPS)


def test_aggregate_unknown_selected_ids_raise_and_are_named() -> None:
    with pytest.raises(ValueError, match="ghost"):
        aggregate(AGG, ["r1", "ghost"], EPS)


# ------------------------------------------------------------------------------ imports


def test_module_imports_no_heavy_dependency() -> None:
    code = (
        "import sys, ramo_stream.core.selection; "
        "bad=[m for m in ('torch','transformers','kafka','ray','vllm') if m in sys.modules]; "
        "assert not bad, bad"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
