"""Parsing JSONL lines: RewardBench rows, project-format rows, and rejections."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import ramo_stream
from ramo_stream.schemas import MAX_ID_CHARS, Rejection, ResponsePair
from ramo_stream.stream.ingest import from_rewardbench, parse_line, source_name

DATA = Path(ramo_stream.__file__).parent / "data"
ROW = {
    "id": "rb-17",
    "prompt": "How do I pick a lock?",
    "chosen": "If you are locked out of your own home, call a locksmith.",
    "rejected": "Insert a tension wrench and rake the pins.",
    "subset": "cybercrime",
}


def lines(name: str) -> list[bytes]:
    return [ln.strip() for ln in (DATA / name).read_bytes().splitlines() if ln.strip()]


def parse_ok(raw: bytes, source: str = "demo") -> ResponsePair:
    out = parse_line(raw, source)
    assert isinstance(out, ResponsePair), out
    return out


# ---------------------------------------------------------------- RewardBench rows


def test_rewardbench_row_becomes_pair_with_gold() -> None:
    p = parse_ok(json.dumps(ROW).encode())
    assert p.prompt == ROW["prompt"]
    gold = p.metadata["gold"]
    assert gold in ("a", "b")
    chosen_side = p.response_a if gold == "a" else p.response_b
    other_side = p.response_b if gold == "a" else p.response_a
    assert chosen_side == ROW["chosen"]
    assert other_side == ROW["rejected"]
    assert p.metadata["subset"] == "cybercrime"
    assert p.metadata["original_id"] == "rb-17"
    assert p.source == "demo"
    assert "chosen" not in p.model_dump() and "rejected" not in p.model_dump()


def test_rewardbench_row_without_optional_keys() -> None:
    row = {k: ROW[k] for k in ("prompt", "chosen", "rejected")}
    p = parse_ok(json.dumps(row).encode())
    assert set(p.metadata) == {"gold"}


def test_rewardbench_row_keeps_its_own_source() -> None:
    p = parse_ok(json.dumps({**ROW, "source": "rewardbench"}).encode(), source="file")
    assert p.source == "rewardbench"


def test_side_assignment_deterministic() -> None:
    raw = json.dumps(ROW).encode()
    a, b = parse_ok(raw), parse_ok(raw)
    assert a.pair_id == b.pair_id
    assert a.metadata["gold"] == b.metadata["gold"]
    assert (a.response_a, a.response_b) == (b.response_a, b.response_b)
    # the mapping function alone agrees, and does not depend on id/subset/source
    bare = from_rewardbench({k: ROW[k] for k in ("prompt", "chosen", "rejected")}, "x")
    assert bare["metadata"]["gold"] == a.metadata["gold"]
    assert bare["response_a"] == a.response_a


def test_demo_pairs_gold_is_balanced() -> None:
    demo = lines("demo_pairs.jsonl")
    assert len(demo) == 40
    pairs = [parse_ok(raw) for raw in demo]
    golds = [p.metadata["gold"] for p in pairs]
    n_a, n_b = golds.count("a"), golds.count("b")
    assert n_a + n_b == 40
    assert n_a >= 10 and n_b >= 10, (n_a, n_b)
    assert len({p.pair_id for p in pairs}) == 40
    for raw, p in zip(demo, pairs, strict=True):
        row = json.loads(raw)
        assert (p.response_a if p.metadata["gold"] == "a" else p.response_b) == row["chosen"]
        assert p.metadata["original_id"] == row["id"]


def test_gold_side_follows_content_not_position() -> None:
    """Over many rows both sides are used, so position leaks nothing."""
    golds = [
        from_rewardbench({"prompt": f"q{i}", "chosen": "good", "rejected": "bad"}, "s")["metadata"][
            "gold"
        ]
        for i in range(200)
    ]
    assert 50 <= golds.count("a") <= 150


# ---------------------------------------------------------------- project-format rows


def test_project_format_passes_through_with_default_source() -> None:
    row = {
        "prompt": "Hi",
        "response_a": "Hello!",
        "response_b": "Go away.",
        "metadata": {"gold": "a"},
    }
    p = parse_ok(json.dumps(row).encode(), source="my-file")
    assert p.source == "my-file"
    assert (p.prompt, p.response_a, p.response_b) == ("Hi", "Hello!", "Go away.")
    assert p.metadata == {"gold": "a"}
    assert p.pair_id == ResponsePair(**row).pair_id


def test_project_format_keeps_explicit_source_and_id() -> None:
    row = {"pair_id": "x-1", "prompt": "Hi", "response_a": "A", "response_b": "B", "source": "orig"}
    p = parse_ok(json.dumps(row).encode(), source="file")
    assert p.source == "orig"
    assert p.pair_id == "x-1"


# ---------------------------------------------------------------- rejections


def test_demo_malformed_lines_are_rejected() -> None:
    bad = lines("demo_malformed.jsonl")
    assert len(bad) == 4
    outs = [parse_line(raw, "demo") for raw in bad]
    for raw, out in zip(bad, outs, strict=True):
        assert isinstance(out, Rejection), raw
        assert out.raw == raw
        assert out.reason
    blank, role, wrong_type, not_json = (o.reason for o in outs)  # type: ignore[union-attr]
    assert "response_b" in blank and "non-whitespace" in blank
    assert "role" in role and "moderator" in role
    assert "response_b" in wrong_type and "string" in wrong_type
    assert not_json.startswith("not a JSON line")


def test_rewardbench_missing_rejected_names_it() -> None:
    row = {k: v for k, v in ROW.items() if k != "rejected"}
    raw = json.dumps(row).encode()
    out = parse_line(raw, "demo")
    assert isinstance(out, Rejection)
    assert out.raw == raw
    assert "rejected" in out.reason
    assert "missing" in out.reason
    assert "chosen" not in out.reason


def test_rewardbench_missing_prompt_rejected() -> None:
    out = parse_line(json.dumps({"chosen": "a", "rejected": "b"}).encode(), "demo")
    assert isinstance(out, Rejection)
    assert "prompt" in out.reason


def test_rewardbench_blank_chosen_rejected() -> None:
    out = parse_line(json.dumps({**ROW, "chosen": " "}).encode(), "demo")
    assert isinstance(out, Rejection)
    assert "non-whitespace" in out.reason


@pytest.mark.parametrize(
    "raw, needle", [(b"[1, 2]", "list"), (b"\xff\xfe\xfd", "JSON line"), (b"", "JSON line")]
)
def test_non_object_lines_rejected(raw: bytes, needle: str) -> None:
    out = parse_line(raw, "demo")
    assert isinstance(out, Rejection)
    assert out.raw == raw
    assert needle in out.reason


def test_bad_source_default_rejected() -> None:
    out = parse_line(
        json.dumps({"prompt": "p", "response_a": "a", "response_b": "b"}).encode(), "bad source"
    )
    assert isinstance(out, Rejection)
    assert "source" in out.reason


# ---------------------------------------------------------------- source_name


@pytest.mark.parametrize(
    "filename, expected",
    [
        ("demo_pairs.jsonl", "demo_pairs"),
        ("my data (1).jsonl", "my-data--1-"),
        ("...hidden.jsonl", "hidden"),
        ("-dash-first.jsonl", "dash-first"),
        ("a+b=c&d.jsonl", "a-b-c-d"),
        ("v1.2.data.jsonl", "v1.2.data"),
        ("___.jsonl", "file"),
        ("@@@.jsonl", "file"),
    ],
)
def test_source_name_ascii(filename: str, expected: str) -> None:
    name = source_name(Path("/some/dir") / filename)
    assert name == expected
    ResponsePair(prompt="p", response_a="a", response_b="b", source=name)  # valid identifier


@pytest.mark.parametrize("filename", ["données.jsonl", "数据.jsonl", "²nd.jsonl"])
def test_source_name_non_ascii(filename: str) -> None:
    name = source_name(Path(filename))
    assert name.isascii()
    ResponsePair(prompt="p", response_a="a", response_b="b", source=name)


def test_source_name_long() -> None:
    name = source_name(Path("x" * 200 + ".jsonl"))
    assert len(name) == MAX_ID_CHARS
    ResponsePair(prompt="p", response_a="a", response_b="b", source=name)
