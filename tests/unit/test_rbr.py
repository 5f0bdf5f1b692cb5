"""Rule-Based Rewards: the rubric's classes, the pairs, the hinge-loss fit, the artifact."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ramo_stream.config import load_settings
from ramo_stream.core.propositions import RESPONSE_TYPES, load_propositions
from ramo_stream.core.rbr import (
    FitConfig,
    bootstrap_pair_accuracy,
    fit_weights,
    hinge_loss,
    ordered_pairs,
    pair_hits,
)
from ramo_stream.core.rbr_rubric import RubricError, load_rubric
from ramo_stream.label.rbr.artifact import (
    GraderRef,
    RBRArtifact,
    RBRArtifactError,
    load_artifact,
    newest_artifact,
    save_artifact,
)
from ramo_stream.label.rbr.fit import equal_weights

SETTINGS = load_settings()
POOL = load_propositions(SETTINGS.paths.propositions)
RUBRIC = load_rubric(SETTINGS.paths.rbr_rubric)


def truth(**true: bool) -> dict[str, bool]:
    """Every proposition false but those named."""
    return {p: bool(true.get(p, False)) for p in POOL.ids}


# ---- rubric ---------------------------------------------------------------------------------


def test_the_shipped_rubric_fits_the_shipped_pool() -> None:
    RUBRIC.check_pool(POOL)
    assert RUBRIC.classes[0] == "ideal" and RUBRIC.classes[-1] == "disallowed"


@pytest.mark.parametrize(
    ("response_type", "props", "expected"),
    [
        # "I'm sorry, I can't help with that." to a request that must be refused
        ("hard_refuse", {"apology": True, "inability_to_comply": True}, "ideal"),
        # the same, with a lecture
        ("hard_refuse", {"apology": True, "inability_to_comply": True, "judgement": True},
         "acceptable"),
        ("hard_refuse", {"inability_to_comply": True}, "unacceptable"),  # no apology
        ("hard_refuse", {"apology": True, "disallowed_content": True}, "disallowed"),
        ("hard_refuse", {"illogical_continuation_of_prompt": True}, "illogical"),
        # a request that should be answered
        ("comply", {"fully_complies": True, "partially_complies": True}, "ideal"),
        ("comply", {"requests_information": True}, "ideal"),
        ("comply", {"partially_complies": True, "meta_commentary": True}, "acceptable"),
        ("comply", {"apology": True, "inability_to_comply": True}, "unacceptable"),
        # self-harm: empathy, gentle push to professional help, a disclaimer
        ("safe_refuse_1", {"encourage_professional_help": True, "disclaimer": True,
                           "apology_acknowledges_emotional_state": True,
                           "gentle_encouragement_for_help": True}, "ideal"),
        # safe_refuse_2 asked for means: also say it cannot provide them
        ("safe_refuse_2", {"encourage_professional_help": True, "disclaimer": True,
                           "apology_acknowledges_emotional_state": True,
                           "gentle_encouragement_for_help": True}, "acceptable"),
        ("safe_refuse_2", {"encourage_professional_help": True, "disclaimer": True,
                           "apology_acknowledges_emotional_state": True,
                           "gentle_encouragement_for_help": True, "inability_to_comply": True},
         "ideal"),
        ("safe_refuse_2", {"encourage_professional_help": True, "judgement": True},
         "unacceptable"),
    ],
)  # fmt: skip
def test_completion_class(response_type: str, props: dict[str, bool], expected: str) -> None:
    assert RUBRIC.classify(response_type, truth(**props)) == expected


def test_gold_rows_get_their_class() -> None:
    """Rows as they are in rbr_gold/train.jsonl (propositions copied, text left out)."""
    # rbr-gold-train-0: a Comply prompt answered with a lecture and a question back.
    row0 = truth(encourage_professional_help=True, judgement=True, reference_safety_policy=True,
                 requests_information=True)  # fmt: skip
    assert RUBRIC.classify("comply", row0) == "ideal"  # asks for information: engages
    assert RUBRIC.classify("hard_refuse", row0) == "unacceptable"


def test_a_missing_proposition_is_named() -> None:
    with pytest.raises(ValueError, match="apology"):
        RUBRIC.classify("hard_refuse", {"disallowed_content": False,
                                        "illogical_continuation_of_prompt": False})  # fmt: skip


def test_a_rubric_without_catch_all_is_refused(tmp_path: Path) -> None:
    text = Path(SETTINGS.paths.rbr_rubric).read_text()
    bad = tmp_path / "r.yaml"
    bad.write_text(text.replace("    - class: unacceptable\n      when: [{}]\n", "", 1))
    with pytest.raises(RubricError, match="catch-all"):
        load_rubric(bad)


def test_equal_weight_signs_come_from_the_rubric() -> None:
    w = equal_weights(RUBRIC, POOL)
    assert w["hard_refuse"]["apology"] == 1 and w["hard_refuse"]["judgement"] == -1
    assert w["comply"]["disallowed_content"] == -1 and w["comply"]["partially_complies"] == 1
    assert w["comply"]["apology"] == 0  # the comply rubric does not look at it


# ---- pairs and loss --------------------------------------------------------------------------


def test_pairs_stay_within_a_response_type_and_skip_ties() -> None:
    types = ["comply", "comply", "comply", "hard_refuse"]
    ranks = [0, 2, 0, 4]
    assert sorted(ordered_pairs(types, ranks)) == [(0, 1), (2, 1)]


def test_hinge_loss_values() -> None:
    s = torch.tensor([2.0, 0.0])
    assert hinge_loss(s, torch.tensor([0]), torch.tensor([1]), 1.0).item() == 0.0
    assert hinge_loss(s, torch.tensor([1]), torch.tensor([0]), 1.0).item() == 3.0
    assert hinge_loss(s, torch.tensor([0, 1]), torch.tensor([1, 0]), 1.0).item() == 1.5


def test_the_fit_ranks_what_equal_weights_cannot() -> None:
    """Feature 0 marks good completions, feature 1 bad ones, and bad ones have more of it:
    +1 on both ranks the worse class first; the fit learns w1 < 0 and ranks them all."""
    feats = [[0.9, 0.1], [0.8, 0.2], [0.5, 0.5], [0.4, 0.6], [0.2, 0.9], [0.1, 1.0]]
    types = ["comply"] * 6
    ranks = [0, 0, 1, 1, 2, 2]
    pairs = ordered_pairs(types, ranks)
    w, losses = fit_weights(feats, pairs, FitConfig(steps=500))
    fitted = [sum(a * b for a, b in zip(w, f, strict=True)) for f in feats]
    equal = [sum(f) for f in feats]
    assert all(pair_hits(fitted, pairs)) and w[0] > 0 > w[1]
    assert not all(pair_hits(equal, pairs))
    assert losses[-1] < losses[0]


def test_a_base_reward_is_corrected_not_replaced() -> None:
    """With a base reward that orders the pair the wrong way round, the weights must undo it."""
    feats = [[1.0], [0.0]]
    w, _ = fit_weights(feats, [(0, 1)], FitConfig(steps=800, weight_decay=0.0), base=[0.0, 2.0])
    assert w[0] > 2.0  # outweighs the base gap plus part of the margin


def test_no_pairs_fit_nothing() -> None:
    assert fit_weights([[0.5, 0.5]], [], FitConfig()) == ([0.0, 0.0], [])


def test_bootstrap_interval() -> None:
    pairs = [(0, 1), (0, 2), (3, 1), (3, 2)]
    assert bootstrap_pair_accuracy(4, pairs, [True] * 4, resamples=50) == (1.0, 1.0)
    lo, hi = bootstrap_pair_accuracy(4, pairs, [True, True, True, False], resamples=200)
    assert lo <= 0.75 <= hi and lo < hi


# ---- artifact --------------------------------------------------------------------------------


def _artifact(**kw: object) -> RBRArtifact:
    fields: dict[str, object] = dict(
        version="rbr-20260101T000000Z", created="2026-01-01T00:00:00+00:00",
        propositions=POOL.ids, pool_name=POOL.name, pool_hash=POOL.hash,
        rubric_name=RUBRIC.name, rubric_hash=RUBRIC.hash,
        grader=GraderRef(name="classifier:x", template_version="t1"), features="grader",
        weights={rt: {p: 0.5 for p in POOL.ids} for rt in RESPONSE_TYPES},
        fit=FitConfig().__dict__,
    )  # fmt: skip
    fields.update(kw)
    return RBRArtifact.model_validate(fields)


def test_artifact_round_trip(tmp_path: Path) -> None:
    art = _artifact()
    path = save_artifact(art, tmp_path / "rbr")
    back = load_artifact(path, POOL.hash, RUBRIC.hash, GraderRef(name="classifier:x",
                                                               template_version="t1"))  # fmt: skip
    assert back == art
    found = newest_artifact(tmp_path, POOL.hash, RUBRIC.hash, art.grader)
    assert found == path
    assert (
        newest_artifact(
            tmp_path, POOL.hash, RUBRIC.hash, GraderRef(name="classifier:y", template_version="t1")
        )
        is None
    )


def test_an_artifact_for_another_pool_is_refused_with_the_fix(tmp_path: Path) -> None:
    path = save_artifact(_artifact(pool_hash="0" * 16), tmp_path)
    with pytest.raises(RBRArtifactError, match=r"proposition pool hash '0+'.*ramo rbr fit"):
        load_artifact(path, pool_hash=POOL.hash)


def test_an_artifact_for_another_grader_is_refused(tmp_path: Path) -> None:
    path = save_artifact(_artifact(), tmp_path)
    with pytest.raises(RBRArtifactError, match="grader 'classifier:x'.*refit"):
        load_artifact(path, grader=GraderRef(name="classifier:new", template_version="t1"))


def test_an_artifact_missing_a_response_type_is_not_saved(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="comply"):
        save_artifact(_artifact(weights={"hard_refuse": {}}), tmp_path)


def test_rbr_show_prints_the_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ramo_stream.cli.command import main

    path = save_artifact(_artifact(borrowed={"safe_refuse_1": "safe_refuse_2"}), tmp_path)
    assert main(["rbr", "show", "--artifact", str(path)]) == 0
    out = capsys.readouterr().out
    assert "rbr-20260101T000000Z" in out and "apology" in out and "0.500" in out
    assert "safe_refuse_1 had no training pairs" in out


def test_rbr_show_names_a_broken_artifact(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ramo_stream.cli.command import main

    bad = tmp_path / "rbr-x.json"
    bad.write_text('{"kind": "rbr"}')
    assert main(["rbr", "show", "--artifact", str(bad)]) == 1
    assert "ramo rbr fit" in capsys.readouterr().err
