"""The Rule Adapter report's agreement with human preferences: computed from the held-out
targets' own judgments, calibrated or not (the labeler's fake grader of test_labeling)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch", reason="the models extra is not installed")

from ramo_stream.core.rules import NULL_RULE_ID  # noqa: E402
from ramo_stream.label.rule_adapter.train import gold_agreement  # noqa: E402
from ramo_stream.schemas import LabeledPair  # noqa: E402
from tests.unit.test_labeling import IDS, PAIR1, labeler  # noqa: E402


@pytest.mark.parametrize("calibrate", [True, False])
def test_agreement_counts_calibrated_and_uncalibrated_targets(calibrate: bool) -> None:
    (lp,) = labeler(selector="all", calibrate=calibrate).label([PAIR1])
    assert (NULL_RULE_ID in {j.rule_id for j in lp.judgments}) is calibrate

    def with_gold(gold: str) -> LabeledPair:
        return lp.model_copy(update={"pair": PAIR1.model_copy(update={"metadata": {"gold": gold}})})

    # On vio-001 alone A wins (A1: Yes 6/8, B1: No 6/8; the content-free rule's score is
    # the same on both sides, so calibration does not change the winner).
    picks = {"vio": [["vio-001"]] * 3}
    out = gold_agreement([with_gold("a"), with_gold("b"), lp], picks)
    assert out == {"vio": (1, 2)}  # the pair without a gold side is not counted


def test_a_pair_calibrated_on_one_side_only_is_skipped() -> None:
    (lp,) = labeler(selector="all", calibrate=True).label([PAIR1])
    one_sided = [j for j in lp.judgments if not (j.rule_id == NULL_RULE_ID and j.side == "b")]
    pair = PAIR1.model_copy(update={"metadata": {"gold": "a"}})
    broken = lp.model_copy(update={"pair": pair, "judgments": one_sided})
    assert gold_agreement([broken], {"all": [list(IDS)]}) == {"all": (0, 0)}
