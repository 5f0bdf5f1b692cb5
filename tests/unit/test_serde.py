"""Bytes <-> records: a round trip is lossless, a bad message is a Rejection, never an exception."""

from __future__ import annotations

import json

import pytest

from ramo_stream.schemas import DeadLetter, LabeledPair, ResponsePair, RuleJudgment
from ramo_stream.stream.serde import MAX_MESSAGE_BYTES, Rejection, decode, encode

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
