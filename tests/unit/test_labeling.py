"""Labeler wiring: which rules get graded, how many grader calls, how the label is made.

The grader is a fake (this tests the wiring, not the model): it answers from a table keyed
by (response, rule text) and records every request. All probabilities are multiples of 1/8
so the expected scores below are exact; each expected number is worked out by hand in the
comments.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from ramo_stream.config import LabelingSettings
from ramo_stream.core.rules import NULL_RULE_ID, RulePool
from ramo_stream.core.selection import select_random
from ramo_stream.label.grading.base import AnswerProbs, GradeRequest
from ramo_stream.label.grading.template import NULL_RULE
from ramo_stream.label.labeler import AdapterRequired, Labeler
from ramo_stream.schemas import LabeledPair, ResponsePair

E = 1 / 8  # one eighth: every probability below is a multiple of it

POOL = RulePool.model_validate(
    {
        "name": "tiny-test-pool",
        "rules": [
            {
                "id": "vio-001",
                "category": "violence_weapons",
                "kind": "harmless",
                "text": "The response gives no weapon-building steps.",
            },
            {
                "id": "shm-001",
                "category": "self_harm",
                "kind": "harmless",
                "text": "The response describes no self-injury methods.",
            },
            {
                "id": "priv-001",
                "category": "privacy",
                "kind": "harmless",
                "text": "The response reveals no private home addresses.",
            },
            {
                "id": "cyber-001",
                "category": "cybercrime",
                "kind": "harmless",
                "text": "The response contains no working malware code.",
            },
            {
                "id": "fraud-001",
                "category": "fraud_economic",
                "kind": "harmless",
                "text": "The response writes no fake customer reviews.",
            },
            {
                "id": "help-001",
                "category": "helpfulness_overrefusal",
                "kind": "helpful",
                "text": "The response does not refuse a clearly benign request.",
            },
        ],
    }
)
IDS = POOL.ids  # vio-001, shm-001, priv-001, cyber-001, fraud-001, help-001 (pool order)
TEXT_TO_ID = {r.text: r.id for r in POOL} | {NULL_RULE: NULL_RULE_ID}


def probs(yes: int, no: int, irr: int) -> AnswerProbs:
    """Probabilities in eighths."""
    assert yes + no + irr == 8
    return AnswerProbs(yes * E, no * E, irr * E)


# ---- pair 1: a clear difference on some rules --------------------------------------
#                   A1 (p_yes,p_no,p_irr)  s_A   rho_A | B1            s_B   rho_B
# vio-001           6,1,1                  5/8   7/8   | 1,6,1         -5/8  7/8
# shm-001           2,2,4                  0     4/8   | 2,2,4         0     4/8
# priv-001          4,2,2                  2/8   6/8   | 1,5,2         -4/8  6/8
# cyber-001         1,1,6                  0     2/8   | 5,1,2         4/8   6/8
# fraud-001         3,3,2                  0     6/8   | 3,3,2         0     6/8
# help-001          1,1,6                  0     2/8   | 1,1,6         0     2/8
# null-rule         3,1,4                  2/8         | 2,2,4         0
PAIR1 = ResponsePair(pair_id="pair-1", prompt="Prompt one?", response_a="A1", response_b="B1")
TABLE1 = {
    ("A1", "vio-001"): probs(6, 1, 1),
    ("B1", "vio-001"): probs(1, 6, 1),
    ("A1", "shm-001"): probs(2, 2, 4),
    ("B1", "shm-001"): probs(2, 2, 4),
    ("A1", "priv-001"): probs(4, 2, 2),
    ("B1", "priv-001"): probs(1, 5, 2),
    ("A1", "cyber-001"): probs(1, 1, 6),
    ("B1", "cyber-001"): probs(5, 1, 2),
    ("A1", "fraud-001"): probs(3, 3, 2),
    ("B1", "fraud-001"): probs(3, 3, 2),
    ("A1", "help-001"): probs(1, 1, 6),
    ("B1", "help-001"): probs(1, 1, 6),
    ("A1", NULL_RULE_ID): probs(3, 1, 4),
    ("B1", NULL_RULE_ID): probs(2, 2, 4),
}

# ---- pair 2: response A gets a blanket +2/8 bias from the grader ---------------------
# Every rule, and the null rule: A2 = (4,2,2) -> s = 2/8. B2 = (3,3,2) -> s = 0, except
# vio-001 on B2 = (6,0,2) -> s = 6/8.
# Uncalibrated, selector all: sum_A = 6 * 2/8 = 12/8, sum_B = 6/8  -> A by 6/8.
# Calibrated: baseline_A = 2/8, baseline_B = 0, so every s_A = 0 -> sum_A = 0,
# sum_B = 6/8 -> B by 6/8. Calibration flips the decision.
PAIR2 = ResponsePair(pair_id="pair-2", prompt="Prompt two?", response_a="A2", response_b="B2")
TABLE2 = {("A2", r): probs(4, 2, 2) for r in [*IDS, NULL_RULE_ID]} | {
    ("B2", r): probs(3, 3, 2) for r in [*IDS, NULL_RULE_ID]
}
TABLE2[("B2", "vio-001")] = probs(6, 0, 2)

DEFAULT = probs(2, 2, 4)


class FakeGrader:
    """Answers from a (response, rule id) table; records every grade() call."""

    name = "fake-grader-7b"
    template_version = "fake-template-v9"
    calibrate_by_default = True  # as the LLM graders say of themselves

    def __init__(self, table: dict[tuple[str, str], AnswerProbs] | None = None) -> None:
        self.table = {**TABLE1, **TABLE2, **(table or {})}
        self.calls: list[list[GradeRequest]] = []

    def grade(self, requests: Sequence[GradeRequest]) -> list[AnswerProbs]:
        self.calls.append(list(requests))
        return [
            self.table.get((r.response, TEXT_TO_ID.get(r.rule_text, r.rule_text)), DEFAULT)
            for r in requests
        ]

    @property
    def requests(self) -> list[GradeRequest]:
        return [r for call in self.calls for r in call]


class ShortGrader(FakeGrader):
    def grade(self, requests: Sequence[GradeRequest]) -> list[AnswerProbs]:
        return super().grade(requests)[:-1]


class LongGrader(FakeGrader):
    def grade(self, requests: Sequence[GradeRequest]) -> list[AnswerProbs]:
        return [*super().grade(requests), DEFAULT]


class FakeAdapter:
    """Stands in for AdapterPredictor: a pool hash and a fixed prediction."""

    def __init__(self, pool_hash: str, rules: list[str]) -> None:
        self.pool_hash = pool_hash
        self.rules = rules
        self.seen: list[tuple[list[str], int]] = []

    def predict(self, pairs: Sequence[ResponsePair], k: int) -> list[list[tuple[str, float]]]:
        self.seen.append(([p.pair_id for p in pairs], k))
        return [[(r, 0.9 - 0.1 * i) for i, r in enumerate(self.rules[:k])] for _ in pairs]


def settings(**kw: object) -> LabelingSettings:
    return LabelingSettings(**kw)  # type: ignore[arg-type]


def labeler(grader: FakeGrader | None = None, adapter: FakeAdapter | None = None, **kw: object):
    return Labeler(grader or FakeGrader(), POOL, settings(**kw), adapter=adapter)


def extra_pair(i: int) -> ResponsePair:
    return ResponsePair(
        pair_id=f"extra-{i}", prompt=f"Prompt {i}?", response_a=f"xa{i}", response_b=f"xb{i}"
    )


def graded_ids(requests: Sequence[GradeRequest], response: str) -> list[str]:
    return [TEXT_TO_ID[r.rule_text] for r in requests if r.response == response]


# ---------------------------------------------------------------- calls per pair


@pytest.mark.parametrize(
    ("selector", "k", "calibrate", "expected"),
    [
        ("all", 2, True, 2 * (6 + 1)),
        ("all", 2, False, 2 * 6),
        ("max-discrepancy", 2, True, 2 * (6 + 1)),
        ("max-discrepancy", 2, False, 2 * 6),
        ("random", 2, True, 2 * (2 + 1)),
        ("random", 2, False, 2 * 2),
        ("random", 3, True, 2 * (3 + 1)),
        ("random", 10, True, 2 * (6 + 1)),  # k above the pool size: the whole pool
        ("adapter", 3, True, 2 * (3 + 1)),
        ("adapter", 3, False, 2 * 3),
    ],
)
def test_calls_per_pair_matches_the_requests_made(
    selector: str, k: int, calibrate: bool, expected: int
) -> None:
    grader = FakeGrader()
    adapter = FakeAdapter(POOL.hash, ["priv-001", "vio-001", "help-001"])
    lab = labeler(grader, adapter, selector=selector, k=k, calibrate=calibrate)
    assert lab.calls_per_pair() == expected
    pairs = [PAIR1, PAIR2, extra_pair(0)]
    out = lab.label(pairs)
    assert len(out) == 3
    # several pairs: every request of the batch arrives in ONE grade() call
    assert len(grader.calls) == 1
    assert len(grader.calls[0]) == 3 * expected
    for p in pairs:
        per_pair = [r for r in grader.calls[0] if r.prompt == p.prompt]
        assert len(per_pair) == expected
        assert len(graded_ids(per_pair, p.response_a)) == expected // 2
        assert len(graded_ids(per_pair, p.response_b)) == expected // 2
        assert (NULL_RULE_ID in graded_ids(per_pair, p.response_a)) is calibrate


class UncalibratedGrader(FakeGrader):
    calibrate_by_default = False  # as the trained classifier says of itself


@pytest.mark.parametrize(
    ("grader", "calibrate", "graded_null"),
    [
        (FakeGrader(), None, True),  # a grader that says nothing: on, as before
        (UncalibratedGrader(), None, False),  # unset: the grader's default
        (UncalibratedGrader(), True, True),  # the setting wins over the grader
        (FakeGrader(), False, False),
    ],
)
def test_calibration_unset_follows_the_grader(
    grader: FakeGrader, calibrate: bool | None, graded_null: bool
) -> None:
    lab = labeler(grader, selector="all", calibrate=calibrate)
    (lp,) = lab.label([PAIR1])
    assert (NULL_RULE_ID in graded_ids(grader.calls[0], PAIR1.response_a)) is graded_null
    assert lab.calls_per_pair() == 2 * (len(IDS) + graded_null)
    assert (NULL_RULE_ID in {j.rule_id for j in lp.judgments}) is graded_null


def test_requests_are_grouped_per_response_in_rule_order() -> None:
    """Per pair: A's rules (then the null rule), then B's, so one response's rules are
    contiguous and share a prompt prefix."""
    grader = FakeGrader()
    labeler(grader, selector="all").label([PAIR1, PAIR2])
    (batch,) = grader.calls
    expected = []
    for p in (PAIR1, PAIR2):
        for resp in (p.response_a, p.response_b):
            expected += [(p.prompt, resp, rid) for rid in [*IDS, NULL_RULE_ID]]
    assert [(r.prompt, r.response, TEXT_TO_ID[r.rule_text]) for r in batch] == expected


# ---------------------------------------------------------------- selection


def test_max_discrepancy_uncalibrated_picks_top_k_by_c_k() -> None:
    # c_k = (rho_A + rho_B)/2 + 0.5 * |s_A - s_B| from the PAIR1 table (no calibration):
    # vio 7/8 + 5/8 = 12/8; shm 4/8 + 0 = 4/8; priv 6/8 + 3/8 = 9/8;
    # cyber 4/8 + 2/8 = 6/8; fraud 6/8 + 0 = 6/8; help 2/8 + 0 = 2/8.
    # k=2 -> vio, priv. k=4 -> vio, priv, cyber, fraud (cyber/fraud tie: pool order).
    (lp,) = labeler(selector="max-discrepancy", k=2, calibrate=False).label([PAIR1])
    assert lp.selected_rules == ["vio-001", "priv-001"]
    (lp,) = labeler(selector="max-discrepancy", k=4, calibrate=False).label([PAIR1])
    assert lp.selected_rules == ["vio-001", "priv-001", "cyber-001", "fraud-001"]
    # gamma = 0: relevance only -> vio 7/8, priv 6/8, fraud 6/8 (pool order after priv)
    (lp,) = labeler(selector="max-discrepancy", k=3, calibrate=False, gamma=0.0).label([PAIR1])
    assert lp.selected_rules == ["vio-001", "priv-001", "fraud-001"]


def test_max_discrepancy_calibrated_uses_calibrated_scores() -> None:
    # baseline_A = 3/8 - 1/8 = 2/8, baseline_B = 0. Calibrated s_A = s_A - 2/8:
    # vio  s_A 3/8, s_B -5/8: c = 7/8 + 0.5*8/8 = 11/8
    # shm  s_A -2/8, s_B 0:   c = 4/8 + 1/8 = 5/8
    # priv s_A 0, s_B -4/8:   c = 6/8 + 2/8 = 8/8
    # cyber s_A -2/8, s_B 4/8: c = 4/8 + 3/8 = 7/8
    # fraud s_A -2/8, s_B 0:  c = 6/8 + 1/8 = 7/8
    # help s_A -2/8, s_B 0:   c = 2/8 + 1/8 = 3/8
    # k=5 -> vio, priv, cyber, fraud (ties cyber, later in the pool), shm.
    # With gamma = 2 calibration changes the order:
    #   uncalibrated c = rho + 2|d|: vio 27/8, priv 18/8, cyber 12/8, fraud 6/8, shm 4/8
    #   calibrated:                 vio 23/8, cyber 16/8, priv 14/8, fraud 10/8, shm 8/8
    (lp,) = labeler(selector="max-discrepancy", k=5).label([PAIR1])
    assert lp.selected_rules == ["vio-001", "priv-001", "cyber-001", "fraud-001", "shm-001"]
    (lp,) = labeler(selector="max-discrepancy", k=3, gamma=2.0).label([PAIR1])
    assert lp.selected_rules == ["vio-001", "cyber-001", "priv-001"]
    (lp,) = labeler(selector="max-discrepancy", k=3, gamma=2.0, calibrate=False).label([PAIR1])
    assert lp.selected_rules == ["vio-001", "priv-001", "cyber-001"]


def test_all_selects_every_rule_in_pool_order() -> None:
    for calibrate in (True, False):
        (lp,) = labeler(selector="all", k=1, calibrate=calibrate).label([PAIR1])
        assert lp.selected_rules == IDS


def test_random_selects_k_distinct_rules_reproducibly() -> None:
    pairs = [extra_pair(i) for i in range(8)]

    def run(seed: int) -> list[list[str]]:
        grader = FakeGrader()
        out = labeler(grader, selector="random", k=3, seed=seed).label(pairs)
        for lp in out:
            # only the selected rules (plus the null rule) were graded, on both sides
            for resp in (lp.pair.response_a, lp.pair.response_b):
                assert graded_ids(grader.requests, resp) == [*lp.selected_rules, NULL_RULE_ID]
        return [lp.selected_rules for lp in out]

    first = run(seed=7)
    for sel in first:
        assert len(sel) == 3
        assert len(set(sel)) == 3
        assert set(sel) <= set(IDS)
    assert run(seed=7) == first  # same seed, same draws
    rng = random.Random(7)
    assert first == [select_random(IDS, 3, rng) for _ in pairs]
    assert run(seed=8) != first  # 8 pairs x C(6,3)=20 choices: a collision is ~1e-10


# ---------------------------------------------------------------- the label


def test_label_max_discrepancy_uncalibrated_by_hand() -> None:
    # k=2 -> vio, priv. sum_A = 5/8 + 2/8 = 7/8; sum_B = -5/8 - 4/8 = -9/8 -> A by 16/8
    (lp,) = labeler(selector="max-discrepancy", k=2, calibrate=False).label([PAIR1])
    assert lp.preferred == "a"
    assert lp.margin == pytest.approx(2.0)


def test_label_max_discrepancy_calibrated_by_hand() -> None:
    # k=3 -> vio, priv, cyber (calibrated c: 11/8, 8/8, 7/8; fraud ties cyber at 7/8 and
    # comes later in the pool). Calibrated s_A: 3/8 + 0 - 2/8 = 1/8;
    # s_B: -5/8 - 4/8 + 4/8 = -5/8 -> A by 6/8.  Uncalibrated: 7/8 vs -5/8 -> A by 12/8.
    (lp,) = labeler(selector="max-discrepancy", k=3).label([PAIR1])
    assert lp.selected_rules == ["vio-001", "priv-001", "cyber-001"]
    assert lp.preferred == "a"
    assert lp.margin == pytest.approx(6 / 8)
    (lp,) = labeler(selector="max-discrepancy", k=3, calibrate=False).label([PAIR1])
    assert lp.selected_rules == ["vio-001", "priv-001", "cyber-001"]
    assert lp.margin == pytest.approx(12 / 8)


def test_calibration_flips_the_decision() -> None:
    (raw,) = labeler(selector="all", calibrate=False).label([PAIR2])
    assert (raw.preferred, raw.margin) == ("a", pytest.approx(6 / 8))
    (cal,) = labeler(selector="all", calibrate=True).label([PAIR2])
    assert (cal.preferred, cal.margin) == ("b", pytest.approx(6 / 8))


def test_tie_when_margin_within_epsilon() -> None:
    # extra pairs get DEFAULT everywhere: s = 0 on both sides -> margin 0 -> tie
    (lp,) = labeler(selector="all").label([extra_pair(0)])
    assert lp.preferred == "tie"
    assert lp.margin == 0.0
    # PAIR2 calibrated differs by 6/8: with epsilon 6/8 it is a tie, just above it is not
    (lp,) = labeler(selector="all", tie_epsilon=0.75).label([PAIR2])
    assert lp.preferred == "tie"
    (lp,) = labeler(selector="all", tie_epsilon=0.7).label([PAIR2])
    assert lp.preferred == "b"


# ---------------------------------------------------------------- LabeledPair fields


def test_labeled_pair_fields() -> None:
    grader = FakeGrader()
    (lp,) = labeler(grader, selector="max-discrepancy", k=2).label([PAIR1])
    assert isinstance(lp, LabeledPair)
    assert lp.pair == PAIR1
    assert lp.labeler == "ramo"
    assert lp.selector == "max-discrepancy"
    assert lp.rule_pool_hash == POOL.hash
    assert lp.grader == "fake-grader-7b"
    assert lp.template_version == "fake-template-v9"
    assert lp.selected_rules == ["vio-001", "priv-001"]
    # judgments: every graded rule on both sides, the null rule included
    assert len(lp.judgments) == 2 * (len(IDS) + 1)
    got = {(j.side, j.rule_id): (j.p_yes, j.p_no, j.p_irrelevant) for j in lp.judgments}
    for side, resp in (("a", "A1"), ("b", "B1")):
        for rid in [*IDS, NULL_RULE_ID]:
            want = TABLE1[(resp, rid)]
            assert got[(side, rid)] == (want.p_yes, want.p_no, want.p_irrelevant)
    nulls = [j for j in lp.judgments if j.rule_id == NULL_RULE_ID]
    assert sorted(j.side for j in nulls) == ["a", "b"]
    # it survives a JSON round trip
    assert LabeledPair.model_validate_json(lp.model_dump_json()) == lp


def test_no_null_rule_judgment_without_calibration() -> None:
    (lp,) = labeler(selector="all", calibrate=False).label([PAIR1])
    assert NULL_RULE_ID not in {j.rule_id for j in lp.judgments}
    assert len(lp.judgments) == 2 * len(IDS)
    assert lp.selector == "all"


def test_label_of_no_pairs_is_empty() -> None:
    assert labeler(selector="all").label([]) == []


# ---------------------------------------------------------------- adapter selector


def test_adapter_selector_without_adapter_is_refused() -> None:
    with pytest.raises(AdapterRequired, match="`ramo adapter train`"):
        Labeler(FakeGrader(), POOL, settings(selector="adapter"))
    # it is the default selector
    with pytest.raises(AdapterRequired, match="`ramo adapter train`"):
        Labeler(FakeGrader(), POOL, LabelingSettings())


def test_adapter_for_another_pool_is_refused_naming_both_hashes() -> None:
    other = FakeAdapter("0123456789abcdef", ["vio-001"])
    with pytest.raises(AdapterRequired) as err:
        Labeler(FakeGrader(), POOL, settings(selector="adapter"), adapter=other)
    msg = str(err.value)
    assert "0123456789abcdef" in msg
    assert POOL.hash in msg
    assert "`ramo adapter train`" in msg


def test_adapter_for_another_pool_is_fine_with_other_selectors() -> None:
    other = FakeAdapter("0123456789abcdef", ["vio-001"])
    lab = Labeler(FakeGrader(), POOL, settings(selector="all"), adapter=other)
    (lp,) = lab.label([PAIR1])
    assert lp.selected_rules == IDS
    assert other.seen == []


def test_adapter_selector_grades_only_predicted_rules() -> None:
    grader = FakeGrader()
    adapter = FakeAdapter(POOL.hash, ["priv-001", "vio-001", "help-001", "shm-001"])
    lab = labeler(grader, adapter, selector="adapter", k=2)
    out = lab.label([PAIR1, PAIR2])
    assert adapter.seen == [(["pair-1", "pair-2"], 2)]
    assert len(grader.calls) == 1
    for lp in out:
        assert lp.selector == "adapter"
        assert lp.selected_rules == ["priv-001", "vio-001"]
        for resp in (lp.pair.response_a, lp.pair.response_b):
            assert graded_ids(grader.requests, resp) == ["priv-001", "vio-001", NULL_RULE_ID]
        assert {j.rule_id for j in lp.judgments} == {"priv-001", "vio-001", NULL_RULE_ID}
    # PAIR1 calibrated on priv + vio: s_A = 0 + 3/8 = 3/8; s_B = -4/8 - 5/8 = -9/8 -> A by 12/8
    assert (out[0].preferred, out[0].margin) == ("a", pytest.approx(12 / 8))


# ---------------------------------------------------------------- grader contract


@pytest.mark.parametrize("grader_cls", [ShortGrader, LongGrader])
def test_wrong_number_of_answers_raises(grader_cls: type[FakeGrader]) -> None:
    lab = labeler(grader_cls(), selector="all")
    with pytest.raises(RuntimeError, match=r"grader returned \d+ answers for 28 calls"):
        lab.label([PAIR1, PAIR2])


def test_a_rule_named_like_the_null_rule_is_refused() -> None:
    from pydantic import ValidationError

    rules = [
        {
            "id": NULL_RULE_ID,
            "category": "tone",
            "kind": "helpful",
            "text": "The response is polite and calm.",
        },
        POOL.rules[0].model_dump(),
    ]
    with pytest.raises(ValidationError, match="reserved for the labeler"):
        RulePool.model_validate({"name": "clash", "rules": rules})
