"""Labels to training pairs, the held-out split and token-bounded micro-batches."""

from __future__ import annotations

import json

import pytest

from ramo_stream.schemas import ChatMessage, LabeledPair, Rejection, ResponsePair
from ramo_stream.train.data import (
    MicroBatcher,
    TrainPair,
    is_heldout,
    parse_label,
    to_train_pair,
)

PAIR = ResponsePair(
    pair_id="p-1",
    prompt=[ChatMessage(role="user", content="hi")],
    response_a="A",
    response_b="B",
)


def label(preferred: str, margin: float = 0.75) -> LabeledPair:
    return LabeledPair(pair=PAIR, preferred=preferred, margin=margin, labeler="ramo-test")


def row(**fields: str) -> bytes:
    return json.dumps(fields).encode()


# --------------------------------------------------------------------------- parse_label


def test_labeled_pair_line_round_trips() -> None:
    original = label("b")

    assert parse_label(original.model_dump_json().encode()) == original


@pytest.mark.parametrize("prompt", ["p1", "p2"])  # the content hash puts the gold on a, then b
def test_rewardbench_row_is_a_human_label_for_its_chosen_text(prompt: str) -> None:
    parsed = parse_label(row(prompt=prompt, chosen="good", rejected="bad"))

    assert isinstance(parsed, LabeledPair)
    assert parsed.labeler == "human" and parsed.margin == 0.0
    assert parsed.preferred == parsed.pair.metadata["gold"]
    assert to_train_pair(parsed) == TrainPair(parsed.pair_id, prompt, "good", "bad", 0.0)


def test_the_two_rewardbench_cases_put_the_gold_on_different_sides() -> None:
    golds = {
        parse_label(row(prompt=p, chosen="good", rejected="bad")).preferred for p in ("p1", "p2")
    }
    assert golds == {"a", "b"}


def test_bad_json_is_rejected_with_its_bytes() -> None:
    raw = b'{"prompt": "p", "chosen":'
    parsed = parse_label(raw)

    assert isinstance(parsed, Rejection)
    assert parsed.reason.startswith("not a JSON line") and parsed.raw == raw


def test_invalid_labeled_pair_is_rejected_naming_the_field() -> None:
    bad = json.loads(label("a").model_dump_json()) | {"preferred": "c"}
    parsed = parse_label(json.dumps(bad).encode())

    assert isinstance(parsed, Rejection)
    assert parsed.reason.startswith("invalid LabeledPair: preferred:")
    assert "'c'" in parsed.reason


def test_rewardbench_row_with_an_empty_response_is_rejected() -> None:
    parsed = parse_label(row(prompt="p", chosen="", rejected="bad"))

    assert isinstance(parsed, Rejection)
    assert "at least 1 character" in parsed.reason


# --------------------------------------------------------------------------- to_train_pair


def test_preferred_a_makes_a_the_chosen_response() -> None:
    assert to_train_pair(label("a")) == TrainPair("p-1", PAIR.prompt, "A", "B", 0.75)


def test_preferred_b_makes_b_the_chosen_response() -> None:
    assert to_train_pair(label("b", margin=2.5)) == TrainPair("p-1", PAIR.prompt, "B", "A", 2.5)


def test_a_tie_gives_no_training_pair() -> None:
    assert to_train_pair(label("tie")) is None


# --------------------------------------------------------------------------- is_heldout


def test_heldout_split_is_deterministic_and_about_one_in_every() -> None:
    ids = [f"p-{i}" for i in range(4000)]
    first = [i for i in ids if is_heldout(i, 20)]

    assert first == [i for i in ids if is_heldout(i, 20)]
    assert len(first) == 221  # sha256-based, so fixed for these ids
    assert 100 <= len(first) <= 300  # 0.5 / 20 .. 1.5 / 20 of 4000


# --------------------------------------------------------------------------- MicroBatcher


def batcher(max_pairs: int = 10, max_tokens: int = 1000, *tokens: int) -> MicroBatcher:
    b = MicroBatcher(max_pairs, max_tokens, clock=lambda: 0.0)
    for i, n in enumerate(tokens):
        b.add(f"x{i}", n)
    return b


def test_pair_bound_takes_the_oldest_first() -> None:
    b = batcher(3, 1000, 10, 10, 10, 10)

    assert b.ready()
    assert b.take() == ["x0", "x1", "x2"]
    assert len(b) == 1


def test_padded_tokens_bound_the_batch() -> None:
    # 5, 5 -> 2 * 2 * 5 = 20; adding 40 pads all three to 40: 2 * 3 * 40 = 240 > 100
    b = batcher(10, 100, 5, 5, 40)

    assert b.take() == ["x0", "x1"]
    assert b.take(force=True) == ["x2"]  # 2 * 1 * 40 = 80 fits


def test_padded_tokens_equal_to_the_bound_fit() -> None:
    # 2 * 2 * 25 = 100 <= 100; a third would be 150
    assert batcher(10, 100, 25, 25, 25).take() == ["x0", "x1"]


def test_a_single_over_long_pair_is_a_batch_of_one() -> None:
    b = batcher(10, 100, 500, 10)

    assert b.take() == ["x0"]
    assert b.take(force=True) == ["x1"]


def test_not_ready_while_everything_queued_fits() -> None:
    b = batcher(3, 1000, 10, 10)

    assert not b.ready()
    assert b.take() == []
    assert len(b) == 2
    assert b.take(force=True) == ["x0", "x1"]
    assert b.take(force=True) == []


def test_oldest_age_follows_the_clock() -> None:
    now = [1.0]
    b = MicroBatcher(1, 1000, clock=lambda: now[0])
    assert b.oldest_age() == 0.0  # empty

    b.add("x0", 10)
    now[0] = 3.0
    b.add("x1", 10)
    now[0] = 4.5
    assert b.oldest_age() == 3.5

    assert b.take() == ["x0"]
    assert b.oldest_age() == 1.5
