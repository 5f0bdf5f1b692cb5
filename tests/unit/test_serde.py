"""Bytes <-> records: a round trip is lossless, a bad message is a Rejection, never an exception."""

from __future__ import annotations

import json

import pytest

from ramo_stream.schemas import DeadLetter, LabeledPair, Rejection, ResponsePair, RuleJudgment
from ramo_stream.stream.serde import MAX_MESSAGE_BYTES, decode, encode

GOOD = {"prompt": "Say hi.", "response_a": "Hi!", "response_b": "Hello there."}


def good_bytes(**changes: object) -> bytes:
    return json.dumps({**GOOD, **changes}).encode()


def test_round_trip_response_pair() -> None:
    p = ResponsePair(
        prompt=[{"role": "user", "content": "Déjà vu? 🤔"}],
        response_a="Oui.",
        response_b="Non.",
        source="demo",
        metadata={"gold": "b", "n": [1, 2.5, None]},
    )
    raw = encode(p)
    assert isinstance(raw, bytes)
    back = decode(raw, ResponsePair)
    assert not isinstance(back, Rejection)
    assert back == p
    assert back.pair_id == p.pair_id
    assert encode(back) == raw


def test_round_trip_labeled_pair_and_dead_letter() -> None:
    lp = LabeledPair(
        pair=ResponsePair(**GOOD),
        preferred="tie",
        margin=0.0,
        labeler="human",
        judgments=[RuleJudgment(rule_id="r1", side="a", p_yes=0.6, p_no=0.3, p_irrelevant=0.1)],
    )
    assert decode(encode(lp), LabeledPair) == lp
    d = DeadLetter.of(b"\xff\xfe raw", "bad", "gate", key=b"k")
    back = decode(encode(d), DeadLetter)
    assert back == d
    assert isinstance(back, DeadLetter) and back.original == b"\xff\xfe raw"


def test_decode_accepts_minimal_valid_bytes() -> None:
    out = decode(good_bytes(), ResponsePair)
    assert isinstance(out, ResponsePair)
    assert out.response_b == "Hello there."


def test_decode_none() -> None:
    out = decode(None, ResponsePair)
    assert isinstance(out, Rejection)
    assert out.raw == b""
    assert "null" in out.reason
    assert "JSON object" in out.reason


def test_decode_non_utf8() -> None:
    raw = b'{"prompt": "\xff\xfe"}'
    out = decode(raw, ResponsePair)
    assert isinstance(out, Rejection)
    assert out.raw == raw
    assert "not UTF-8" in out.reason
    assert "byte 12" in out.reason  # where the bad byte is


def test_decode_non_json() -> None:
    raw = b'{"prompt": "x", "response_a": '
    out = decode(raw, ResponsePair)
    assert isinstance(out, Rejection)
    assert out.raw == raw
    assert out.reason.startswith("not JSON")
    assert "line 1" in out.reason


def test_decode_empty_bytes() -> None:
    out = decode(b"", ResponsePair)
    assert isinstance(out, Rejection)
    assert out.raw == b""
    assert "not JSON" in out.reason


@pytest.mark.parametrize(
    "raw, kind", [(b"[1, 2, 3]", "list"), (b'"text"', "str"), (b"42", "int"), (b"null", "NoneType")]
)
def test_decode_non_object(raw: bytes, kind: str) -> None:
    out = decode(raw, ResponsePair)
    assert isinstance(out, Rejection)
    assert out.raw == raw
    assert "expected a JSON object" in out.reason
    assert kind in out.reason


def test_decode_missing_field_names_it() -> None:
    raw = json.dumps({"prompt": "p", "response_a": "a"}).encode()
    out = decode(raw, ResponsePair)
    assert isinstance(out, Rejection)
    assert out.raw == raw
    assert "ResponsePair" in out.reason
    assert "response_b" in out.reason
    assert "Field required" in out.reason
    assert "response_a" not in out.reason


def test_decode_wrong_type_names_field() -> None:
    raw = good_bytes(response_b=4)
    out = decode(raw, ResponsePair)
    assert isinstance(out, Rejection)
    assert out.raw == raw
    assert "response_b" in out.reason


def test_decode_unknown_field_names_it() -> None:
    raw = good_bytes(surprise=True)
    out = decode(raw, ResponsePair)
    assert isinstance(out, Rejection)
    assert "surprise" in out.reason


def test_decode_over_size() -> None:
    raw = good_bytes(response_a="x" * MAX_MESSAGE_BYTES)
    assert len(raw) > MAX_MESSAGE_BYTES
    out = decode(raw, ResponsePair)
    assert isinstance(out, Rejection)
    assert out.raw == raw
    assert str(len(raw)) in out.reason
    assert str(MAX_MESSAGE_BYTES) in out.reason
    assert "over the limit" in out.reason


def test_over_size_checked_before_parsing() -> None:
    # Not even JSON: the size alone must be the reason.
    raw = b"\xff" * (MAX_MESSAGE_BYTES + 1)
    out = decode(raw, ResponsePair)
    assert isinstance(out, Rejection)
    assert "over the limit" in out.reason


def test_at_size_limit_is_not_rejected_for_size() -> None:
    pad = MAX_MESSAGE_BYTES - len(good_bytes(metadata={"p": ""}))
    raw = good_bytes(metadata={"p": " " * pad})
    assert len(raw) == MAX_MESSAGE_BYTES
    out = decode(raw, ResponsePair)
    # too big for the metadata limit, but the rejection is a validation one, not the size one
    assert isinstance(out, Rejection)
    assert not out.reason.startswith("message is")
    assert "metadata" in out.reason


# --- poison: every class of bytes a producer can send ends as a Rejection --------------

HEAD = b'{"prompt": "p", "response_a": "a", "response_b": "b"'

POISON = {
    "array nested 1,000 deep": b"[" * 1000 + b"]" * 1000,
    "object nested 1,000 deep": b'{"a":' * 1000 + b"1" + b"}" * 1000,
    "deep metadata": HEAD + b', "metadata": {"x": ' + b"[" * 5000 + b"]" * 5000 + b"}}",
    "unclosed brackets": b"[" * 100_000,
    "5,000-digit integer": HEAD + b', "metadata": {"n": ' + b"9" * 5000 + b"}}",
    "5,000-digit schema_version": HEAD + b', "schema_version": ' + b"9" * 5000 + b"}",
    "NaN in metadata": HEAD + b', "metadata": {"x": NaN}}',
    "Infinity deep in metadata": HEAD + b', "metadata": {"x": [1, {"y": -Infinity}]}}',
    "float overflow": HEAD + b', "metadata": {"x": 1e999}}',
    "lone surrogate escape": HEAD + b', "source": "\\ud800"}',
    "overlong UTF-8": b'{"prompt": "\xc0\xaf"}',
    "NUL bytes": b"\x00" * 100,
    "BOM then object": b"\xef\xbb\xbf" + HEAD + b"}",
}


@pytest.mark.parametrize("name", sorted(POISON))
def test_poison_is_a_rejection_with_a_reason(name: str) -> None:
    out = decode(POISON[name], ResponsePair)
    assert isinstance(out, Rejection), name
    assert out.reason and out.raw == POISON[name]


def test_depth_and_non_finite_reasons_name_the_problem() -> None:
    deep = decode(POISON["deep metadata"], ResponsePair)
    assert isinstance(deep, Rejection) and "nested more than 64 levels" in deep.reason
    nan = decode(POISON["Infinity deep in metadata"], ResponsePair)
    assert isinstance(nan, Rejection) and "metadata.x[1].y" in nan.reason


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    raw = good_bytes(response_a="[" * 500 + "{" * 500, metadata={"s": '"]]]\\"[[['})
    out = decode(raw, ResponsePair)
    assert isinstance(out, ResponsePair) and out.response_a.startswith("[[[")


def test_finite_numbers_in_metadata_pass() -> None:
    out = decode(good_bytes(metadata={"x": [1.5, -2, 0.0, 1e300]}), ResponsePair)
    assert isinstance(out, ResponsePair)


def test_decode_survives_any_exception_from_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    def explode(raw: bytes) -> None:
        raise MemoryError("simulated")

    monkeypatch.setattr(ResponsePair, "model_validate_json", explode)
    out = decode(good_bytes(), ResponsePair)
    assert isinstance(out, Rejection) and "MemoryError" in out.reason
