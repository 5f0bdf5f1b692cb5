"""RAMO rule selection and label aggregation: plain functions over grader probabilities.

For a pair (A, B) and rule k the grader gives, per response, P(Yes), P(No), P(Irrelevant)
normalised over the three. From them:

    s_k(X)   = P(Yes) - P(No)                  score in [-1, 1]
    rho_k(X) = 1 - P(Irrelevant)               relevance in [0, 1]
    rho_k    = (rho_k(A) + rho_k(B)) / 2
    c_k      = rho_k + gamma * |s_k(A) - s_k(B)|

Selection keeps the top-k rules by c_k (k, gamma and epsilon come from the caller; their
defaults, RAMO's k = 5, gamma = 0.5, live in one place: ``config.LabelingSettings``). The label sums
each response's scores over the selected rules: A is preferred if sum_A > sum_B, the margin
is |sum_A - sum_B|, and a margin <= epsilon is a tie.

Calibration: a small grader's score tracks the response (its length, its tone) more than the
rule. Subtracting the score the grader gives the same response under a content-free rule
(``baseline``) leaves what the rule adds; the difference s_k(A) - s_k(B) then no longer
carries the response-only bias shared by all rules.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from ramo_stream.core.rules import NULL_RULE_ID
from ramo_stream.schemas import RuleJudgment

Selector = Literal["adapter", "max-discrepancy", "all", "random"]
SELECTORS: tuple[str, ...] = ("adapter", "max-discrepancy", "all", "random")


@dataclass(frozen=True)
class RuleScore:
    """One rule's scores on both responses (already calibrated if baselines were given)."""

    rule_id: str
    s_a: float
    s_b: float
    rho_a: float
    rho_b: float

    @property
    def relevance(self) -> float:
        return (self.rho_a + self.rho_b) / 2

    def discrepancy(self, gamma: float) -> float:
        """c_k = rho_k + gamma * |s_k(A) - s_k(B)|."""
        return self.relevance + gamma * abs(self.s_a - self.s_b)


def rule_scores(
    judgments: Iterable[RuleJudgment],
    baseline_a: float = 0.0,
    baseline_b: float = 0.0,
) -> dict[str, RuleScore]:
    """Pair up the A and B judgments of each rule; subtract each side's baseline score.

    Rules are kept in the order they first appear. A rule graded on one side only is an
    error: selection needs both.
    """
    sides: dict[str, dict[str, RuleJudgment]] = {}
    for j in judgments:
        sides.setdefault(j.rule_id, {})[j.side] = j
    out: dict[str, RuleScore] = {}
    for rule_id, by_side in sides.items():
        if set(by_side) != {"a", "b"}:
            missing = "b" if "a" in by_side else "a"
            raise ValueError(f"rule {rule_id!r} has no judgment for response {missing}")
        a, b = by_side["a"], by_side["b"]
        out[rule_id] = RuleScore(
            rule_id, a.score - baseline_a, b.score - baseline_b, a.relevance, b.relevance
        )
    return out


def calibrated_scores(judgments: Iterable[RuleJudgment]) -> dict[str, RuleScore]:
    """Rule scores of one pair's judgments, each side's score under the content-free rule
    (``NULL_RULE_ID``, when it was graded) subtracted; that rule itself is not scored."""
    judgments = list(judgments)
    null = {j.side: j.score for j in judgments if j.rule_id == NULL_RULE_ID}
    rules = [j for j in judgments if j.rule_id != NULL_RULE_ID]
    return rule_scores(rules, null.get("a", 0.0), null.get("b", 0.0))


def select_max_discrepancy(scores: dict[str, RuleScore], k: int, gamma: float) -> list[str]:
    """Top-k rule ids by c_k, highest first; ties keep pool order. k >= pool: all rules."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    order = {rule_id: i for i, rule_id in enumerate(scores)}
    ranked = sorted(scores.values(), key=lambda s: (-s.discrepancy(gamma), order[s.rule_id]))
    return [s.rule_id for s in ranked[:k]]


def select_random(rule_ids: Sequence[str], k: int, rng: random.Random) -> list[str]:
    """k rules drawn uniformly without replacement (the random-k baseline)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return rng.sample(list(rule_ids), min(k, len(rule_ids)))


@dataclass(frozen=True)
class Label:
    preferred: Literal["a", "b", "tie"]
    margin: float
    sum_a: float
    sum_b: float


def aggregate(
    scores: dict[str, RuleScore],
    selected: Sequence[str],
    epsilon: float,
) -> Label:
    """Sum each response's scores over the selected rules; the larger sum wins."""
    if not selected:
        raise ValueError("no rules selected: cannot aggregate an empty selection")
    unknown = [r for r in selected if r not in scores]
    if unknown:
        raise ValueError(f"selected rules {unknown} have no scores")
    sum_a = sum(scores[r].s_a for r in selected)
    sum_b = sum(scores[r].s_b for r in selected)
    margin = abs(sum_a - sum_b)
    if margin <= epsilon:
        return Label("tie", margin, sum_a, sum_b)
    return Label("a" if sum_a > sum_b else "b", margin, sum_a, sum_b)


def topk_recall(predicted: Sequence[Sequence[str]], target: Sequence[Sequence[str]]) -> float:
    """Mean over pairs of |predicted ∩ target| / |target|: how much of the full-pool top-k
    a cheaper selector recovers."""
    if len(predicted) != len(target):
        raise ValueError(f"{len(predicted)} predictions for {len(target)} targets")
    scored = [(set(p), set(t)) for p, t in zip(predicted, target, strict=True) if t]
    if not scored:
        raise ValueError("no non-empty targets to score")
    return sum(len(p & t) / len(t) for p, t in scored) / len(scored)
