"""Wire records: validation limits, readable errors, content-derived pair ids, round trips."""

from __future__ import annotations

import base64
import json

import pytest
from pydantic import ValidationError

from ramo_stream.schemas import (
    MAX_ID_CHARS,
    MAX_MESSAGES,
    MAX_METADATA_BYTES,
    MAX_TEXT_CHARS,
    SCHEMA_VERSION,
    ChatMessage,
    DeadLetter,
    LabeledPair,
    ResponsePair,
    RuleJudgment,
    content_pair_id,
    describe_validation_error,
)

BASE = {
    "prompt": "How do I boil an egg?",
    "response_a": "Simmer it 9 minutes.",
    "response_b": "No.",
}


def pair(**changes: object) -> ResponsePair:
    return ResponsePair(**{**BASE, **changes})


def error_text(**changes: object) -> str:
    with pytest.raises(ValidationError) as exc:
        pair(**changes)
    return describe_validation_error(exc.value)


# ---------------------------------------------------------------- valid pairs


def test_valid_pair_with_text_prompt() -> None:
    p = pair()
    assert p.prompt == BASE["prompt"]
    assert p.prompt_text() == BASE["prompt"]
    assert p.response_a == BASE["response_a"]
    assert p.response_b == BASE["response_b"]
    assert p.source == "unknown"
    assert p.metadata == {}
    assert p.schema_version == SCHEMA_VERSION
    assert p.created_at.tzinfo is not None


def test_valid_pair_with_chat_prompt() -> None:
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Capital of France?"},
    ]
    p = pair(prompt=msgs)
    assert isinstance(p.prompt, list)
    assert all(isinstance(m, ChatMessage) for m in p.prompt)
    assert [m.role for m in p.prompt] == ["system", "user", "assistant", "user"]
    assert (
        p.prompt_text() == "system: Be brief.\nuser: Hi\nassistant: Hello\nuser: Capital of France?"
    )


def test_limits_are_inclusive() -> None:
    p = pair(
        response_a="x" * MAX_TEXT_CHARS, prompt=[{"role": "user", "content": "q"}] * MAX_MESSAGES
    )
    assert len(p.response_a) == MAX_TEXT_CHARS
    assert len(p.prompt) == MAX_MESSAGES


# ---------------------------------------------------------------- invalid pairs


@pytest.mark.parametrize("blank", ["", "   ", "\n\t "])
def test_blank_response_names_field(blank: str) -> None:
    text = error_text(response_b=blank)
    assert text.startswith("response_b:")
    assert "response_a" not in text


def test_whitespace_only_says_why() -> None:
    assert "non-whitespace" in error_text(response_a="  \n ")


def test_over_long_text_names_field_and_limit() -> None:
    text = error_text(response_a="x" * (MAX_TEXT_CHARS + 1))
    assert text.startswith("response_a:")
    assert str(MAX_TEXT_CHARS) in text
    assert f"{MAX_TEXT_CHARS + 1} chars" in text  # the value is summarised, not echoed


def test_over_long_prompt_names_field() -> None:
    assert error_text(prompt="p" * (MAX_TEXT_CHARS + 1)).startswith("prompt:")


def test_bad_role_names_field_and_value() -> None:
    text = error_text(prompt=[{"role": "moderator", "content": "Summarise."}])
    assert "prompt.0.role" in text
    assert "moderator" in text


def test_wrong_type_is_not_coerced() -> None:
    text = error_text(response_b=4)
    assert text.startswith("response_b:")
    assert "valid string" in text
    assert "(got 4)" in text


def test_unknown_extra_field_rejected() -> None:
    text = error_text(colour="red")
    assert "colour" in text
    assert "Extra inputs are not permitted" in text


def test_too_many_messages() -> None:
    text = error_text(prompt=[{"role": "user", "content": "q"}] * (MAX_MESSAGES + 1))
    assert "prompt" in text
    assert str(MAX_MESSAGES) in text


def test_empty_message_list_rejected() -> None:
    assert "prompt" in error_text(prompt=[])


def test_newer_schema_version_says_to_upgrade() -> None:
    text = error_text(schema_version=SCHEMA_VERSION + 1)
    assert text.startswith("schema_version:")
    assert "upgrade" in text
    assert str(SCHEMA_VERSION + 1) in text


def test_schema_version_zero_rejected() -> None:
    assert "schema_version" in error_text(schema_version=0)


def test_metadata_over_limit() -> None:
    text = error_text(metadata={"blob": "x" * MAX_METADATA_BYTES})
    assert text.startswith("metadata:")
    assert str(MAX_METADATA_BYTES) in text


def test_metadata_under_limit_kept() -> None:
    meta = {"gold": "a", "tags": ["x", "y"], "n": 3, "nested": {"ok": True, "v": None}}
    assert pair(metadata=meta).metadata == meta


def test_describe_validation_error_truncates() -> None:
    with pytest.raises(ValidationError) as exc:
        ResponsePair.model_validate({"a": 1, "b": 2, "c": 3, "d": 4, "e": 5, "f": 6, "g": 7})
    text = describe_validation_error(exc.value, limit=2)
    assert text.count("; ") == 2
    assert text.endswith("more")


# ---------------------------------------------------------------- pair_id


def test_pair_id_derived_when_absent() -> None:
    p = pair()
    assert p.pair_id.startswith("p-")
    assert p.pair_id == content_pair_id(BASE["prompt"], BASE["response_a"], BASE["response_b"])


def test_pair_id_derived_when_none() -> None:
    assert pair(pair_id=None).pair_id == pair().pair_id


def test_pair_id_stable_across_constructions() -> None:
    assert pair().pair_id == pair().pair_id
    # metadata, source and time are not content
    assert pair(source="other", metadata={"k": 1}).pair_id == pair().pair_id


@pytest.mark.parametrize(
    "field, value",
    [
        ("prompt", "How do I boil an egg? "),
        ("response_a", "Simmer it 10 minutes."),
        ("response_b", "No!"),
    ],
)
def test_pair_id_changes_with_content(field: str, value: str) -> None:
    assert pair(**{field: value}).pair_id != pair().pair_id


def test_pair_id_differs_when_sides_swapped() -> None:
    swapped = pair(response_a=BASE["response_b"], response_b=BASE["response_a"])
    assert swapped.pair_id != pair().pair_id


def test_pair_id_for_chat_prompt_is_stable_and_content_based() -> None:
    msgs = [{"role": "user", "content": "Hi"}]
    a = pair(prompt=msgs)
    b = pair(prompt=[ChatMessage(role="user", content="Hi")])
    assert a.pair_id == b.pair_id
    assert a.pair_id != pair(prompt=[{"role": "system", "content": "Hi"}]).pair_id
    assert a.pair_id != pair(prompt="Hi").pair_id


def test_explicit_pair_id_kept() -> None:
    assert pair(pair_id="demo-001:v2").pair_id == "demo-001:v2"


@pytest.mark.parametrize(
    "bad", ["has space", "x" * (MAX_ID_CHARS + 1), "-leading-dash", "", "tab\tid"]
)
def test_bad_explicit_pair_id_rejected(bad: str) -> None:
    assert error_text(pair_id=bad).startswith("pair_id:")


# ---------------------------------------------------------------- RuleJudgment


def test_rule_judgment_score_and_relevance() -> None:
    j = RuleJudgment(rule_id="vio-001", side="a", p_yes=0.7, p_no=0.2, p_irrelevant=0.1)
    assert j.score == pytest.approx(0.5)
    assert j.relevance == pytest.approx(0.9)
    k = RuleJudgment(rule_id="vio-001", side="b", p_yes=0.05, p_no=0.65, p_irrelevant=0.3)
    assert k.score == pytest.approx(-0.6)
    assert k.relevance == pytest.approx(0.7)


def test_rule_judgment_extremes() -> None:
    j = RuleJudgment(rule_id="r", side="a", p_yes=0.0, p_no=0.0, p_irrelevant=1.0)
    assert j.score == 0.0 and j.relevance == 0.0
    j = RuleJudgment(rule_id="r", side="a", p_yes=1.0, p_no=0.0, p_irrelevant=0.0)
    assert j.score == 1.0 and j.relevance == 1.0


@pytest.mark.parametrize("probs", [(0.5, 0.5, 0.5), (0.1, 0.1, 0.1), (0.0, 0.0, 0.0)])
def test_rule_judgment_must_sum_to_one(probs: tuple[float, float, float]) -> None:
    y, n, i = probs
    with pytest.raises(ValidationError, match="must be 1"):
        RuleJudgment(rule_id="r", side="a", p_yes=y, p_no=n, p_irrelevant=i)


def test_rule_judgment_probability_out_of_range() -> None:
    with pytest.raises(ValidationError, match="p_yes"):
        RuleJudgment(rule_id="r", side="a", p_yes=1.5, p_no=-0.5, p_irrelevant=0.0)


def test_rule_judgment_bad_side() -> None:
    with pytest.raises(ValidationError, match="side"):
        RuleJudgment(rule_id="r", side="c", p_yes=1.0, p_no=0.0, p_irrelevant=0.0)


# ---------------------------------------------------------------- round trips


def test_labeled_pair_json_round_trip() -> None:
    lp = LabeledPair(
        pair=pair(prompt=[{"role": "user", "content": "Hi"}], metadata={"gold": "a"}),
        preferred="a",
        margin=0.42,
        labeler="ramo",
        selector="topk",
        selected_rules=["vio-001", "tone-002"],
        judgments=[
            RuleJudgment(rule_id="vio-001", side="a", p_yes=0.7, p_no=0.2, p_irrelevant=0.1),
            RuleJudgment(rule_id="vio-001", side="b", p_yes=0.2, p_no=0.7, p_irrelevant=0.1),
        ],
        rule_pool_hash="0123456789abcdef",
        grader="smollm2-135m-instruct",
        template_version="t1",
    )
    back = LabeledPair.model_validate_json(lp.model_dump_json())
    assert back == lp
    assert back.pair_id == lp.pair.pair_id
    assert back.judgments[1].score == pytest.approx(-0.5)
    assert back.labeled_at == lp.labeled_at


def test_labeled_pair_negative_margin_rejected() -> None:
    with pytest.raises(ValidationError, match="margin"):
        LabeledPair(pair=pair(), preferred="a", margin=-0.1, labeler="human")


def test_dead_letter_keeps_arbitrary_bytes_and_key() -> None:
    original = bytes(range(256)) + b"\xff\xfe\x00not utf-8 \xc3"
    key = b"\x80\x81key\x00"
    d = DeadLetter.of(
        original, "line 3: bad", "ingest", key=key, source_topic="t", partition=2, offset=7
    )
    assert d.original == original
    assert base64.b64decode(d.key_b64 or "") == key
    back = DeadLetter.model_validate_json(d.model_dump_json())
    assert back == d
    assert back.original == original
    assert base64.b64decode(back.key_b64 or "") == key
    assert (back.reason, back.stage, back.source_topic, back.partition, back.offset) == (
        "line 3: bad",
        "ingest",
        "t",
        2,
        7,
    )
    # the JSON itself is plain ASCII whatever the payload was
    json.loads(d.model_dump_json().encode("ascii"))


def test_dead_letter_without_key() -> None:
    d = DeadLetter.of(b"", "empty", "gate")
    assert d.key_b64 is None
    assert d.original == b""
    assert d.attempts == 1


def test_dead_letter_needs_reason() -> None:
    with pytest.raises(ValidationError, match="reason"):
        DeadLetter.of(b"x", "", "gate")


def test_records_are_frozen() -> None:
    p = pair()
    with pytest.raises(ValidationError):
        p.response_a = "changed"  # type: ignore[misc]
