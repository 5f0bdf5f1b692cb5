"""Labeling a batch of pairs the RAMO way: choose rules, grade both sides, aggregate.

Grader calls per pair, by selector (|P| = pool size, +2 with calibration):

    adapter          2k      the Rule Adapter predicts the top-k rules; only those are graded
    random           2k      k rules drawn at random (baseline)
    max-discrepancy  2|P|    the whole pool is graded; the top-k by c_k are kept
    all              2|P|    the whole pool is graded and kept

All calls of a batch of pairs go to the grader in one ``grade()`` call, grouped so the
rules of one response share a prompt prefix.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ramo_stream.config import LabelingSettings
from ramo_stream.core.rules import NULL_RULE_ID, RulePool
from ramo_stream.core.selection import (
    aggregate,
    calibrated_scores,
    select_max_discrepancy,
    select_random,
)
from ramo_stream.label.grading.base import AnswerProbs, Grader, GradeRequest
from ramo_stream.label.grading.template import NULL_RULE
from ramo_stream.schemas import LabeledPair, ResponsePair, RuleJudgment


class RulePredictor(Protocol):
    """The Rule Adapter as the labeler sees it."""

    pool_hash: str

    def predict(self, pairs: Sequence[ResponsePair], k: int) -> list[list[tuple[str, float]]]:
        """Per pair, the top-k (rule_id, probability), most probable first."""
        ...


class AdapterRequired(ValueError):
    """The adapter selector was asked for without a (matching) adapter."""


@dataclass
class _Plan:
    pair: ResponsePair
    graded: list[str]  # rule ids to grade on both sides
    start: int = 0  # index of this pair's first request in the batch


class Labeler:
    def __init__(
        self,
        grader: Grader,
        pool: RulePool,
        settings: LabelingSettings,
        adapter: RulePredictor | None = None,
    ) -> None:
        if settings.selector == "adapter":
            if adapter is None:
                raise AdapterRequired(
                    "selector 'adapter' needs a trained Rule Adapter: run `ramo adapter train`,"
                    " or choose --labeling-selector max-discrepancy|all|random"
                )
            if adapter.pool_hash != pool.hash:
                raise AdapterRequired(
                    f"the Rule Adapter was trained on rule pool {adapter.pool_hash}, but the pool"
                    f" in use is {pool.hash} ({pool.name}); retrain it with `ramo adapter train`"
                )
        self.grader = grader
        self.pool = pool
        self.settings = settings
        # Unset: the grader's own default.
        self.calibrate: bool = (
            settings.calibrate
            if settings.calibrate is not None
            else grader.calibrate_by_default  # every Grader says (a wrapper must pass it on)
        )
        self.adapter = adapter
        self.rng = random.Random(settings.seed)

    def calls_per_pair(self) -> int:
        per_side = (
            self.settings.k if self.settings.selector in ("adapter", "random") else len(self.pool)
        )
        per_side = min(per_side, len(self.pool))
        return 2 * (per_side + (1 if self.calibrate else 0))

    def _plan(self, pairs: Sequence[ResponsePair]) -> list[_Plan]:
        s = self.settings
        if s.selector == "adapter":
            assert self.adapter is not None
            predicted = self.adapter.predict(pairs, s.k)
            return [_Plan(p, [r for r, _ in top]) for p, top in zip(pairs, predicted, strict=True)]
        if s.selector == "random":
            return [_Plan(p, select_random(self.pool.ids, s.k, self.rng)) for p in pairs]
        return [_Plan(p, list(self.pool.ids)) for p in pairs]

    def label(self, pairs: Sequence[ResponsePair]) -> list[LabeledPair]:
        plans = self._plan(pairs)
        requests: list[GradeRequest] = []
        for plan in plans:
            plan.start = len(requests)
            rules = [self.pool[r].text for r in plan.graded]
            if self.calibrate:
                rules.append(NULL_RULE)
            for response in (plan.pair.response_a, plan.pair.response_b):
                requests += [GradeRequest(plan.pair.prompt, response, text) for text in rules]
        answers = self.grader.grade(requests)
        if len(answers) != len(requests):
            raise RuntimeError(f"grader returned {len(answers)} answers for {len(requests)} calls")
        return [self._finish(plan, answers) for plan in plans]

    def _finish(self, plan: _Plan, answers: list[AnswerProbs]) -> LabeledPair:
        s = self.settings
        ids = plan.graded + ([NULL_RULE_ID] if self.calibrate else [])
        n = len(ids)
        judgments: list[RuleJudgment] = []
        for side, offset in (("a", 0), ("b", n)):
            for i, rule_id in enumerate(ids):
                a = answers[plan.start + offset + i]
                judgments.append(
                    RuleJudgment(
                        rule_id=rule_id,
                        side=side,  # type: ignore[arg-type]
                        p_yes=a.p_yes,
                        p_no=a.p_no,
                        p_irrelevant=a.p_irrelevant,
                    )
                )
        scores = calibrated_scores(judgments)
        if s.selector == "max-discrepancy":
            selected = select_max_discrepancy(scores, s.k, s.gamma)
        else:
            selected = plan.graded
        label = aggregate(scores, selected, s.tie_epsilon)
        return LabeledPair(
            pair=plan.pair,
            preferred=label.preferred,
            margin=label.margin,
            labeler="ramo",
            selector=s.selector,
            selected_rules=selected,
            judgments=judgments,
            rule_pool_hash=self.pool.hash,
            grader=self.grader.name,
            template_version=self.grader.template_version,
        )
