"""Rows of a scoring file: ``{"prompt", "response"}`` or RewardBench ``{"prompt", "chosen",
"rejected", "subset"?}``, checked as the reward service checks them. Used by ``ramo score``
and ``ramo eval``."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

from pydantic import Field, TypeAdapter, ValidationError

from ramo_stream.schemas import (
    MAX_TEXT_CHARS,
    Prompt,
    describe_validation_error,
    rewardbench_missing,
)

T = TypeVar("T")


@dataclass
class Row:
    """One usable line: a plain (prompt, response), or a RewardBench (prompt, chosen, rejected)."""

    line: int
    prompt: Any
    responses: list[str]  # [response] or [chosen, rejected]
    subset: str | None = None

    @property
    def is_pair(self) -> bool:
        return len(self.responses) == 2


_PROMPT = TypeAdapter(Prompt)
# A response may be empty: the service scores it like any other.
_RESPONSE = TypeAdapter(Annotated[str, Field(max_length=MAX_TEXT_CHARS)])


def load_object(line: int, raw: str) -> dict[str, Any] | str:
    """The JSON object on line ``line``, or why it is not one."""
    try:
        d = json.loads(raw)
    except json.JSONDecodeError as e:
        return f"line {line}: not JSON ({e})"
    if not isinstance(d, dict):
        return f"line {line}: expected a JSON object, got {type(d).__name__}"
    return d


def parse_row(line: int, raw: str) -> Row | str:
    """A Row, or the reason the line cannot be scored."""
    d = load_object(line, raw)
    return d if isinstance(d, str) else row_from(line, d)


def row_from(line: int, d: dict[str, Any]) -> Row | str:
    """A Row from a line's JSON object, or the reason it cannot be scored."""
    rewardbench = "chosen" in d or "rejected" in d
    problem = rewardbench_missing(d)
    if problem:
        return f"line {line}: {problem}"
    keys = ["chosen", "rejected"] if rewardbench else ["response"]
    missing = [k for k in ["prompt", *keys] if k not in d]
    if missing:
        return (
            f"line {line}: missing {missing}; a row is prompt + response, or prompt + chosen +"
            " rejected (RewardBench)"
        )
    key = "prompt"
    try:
        prompt = _PROMPT.validate_python(d[key])
        texts = []
        for key in keys:
            texts.append(_RESPONSE.validate_python(d[key]))
    except ValidationError as e:
        return f"line {line}: {key}: {describe_validation_error(e).removeprefix('record: ')}"
    wire = prompt if isinstance(prompt, str) else [m.model_dump() for m in prompt]
    subset = d.get("subset")
    return Row(line, wire, texts, str(subset) if subset is not None else None)


def read_parsed(
    path: Path, limit: int | None, parse: Callable[[int, str], T | str]
) -> tuple[list[T], list[str]]:
    """``parse`` applied to the first ``limit`` non-blank lines: what parsed, and the
    reasons of the lines that did not (``parse`` returns a reason as a str)."""
    parsed: list[T] = []
    rejected: list[str] = []
    with path.open(encoding="utf-8", errors="replace") as f:
        for no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            if limit is not None and len(parsed) + len(rejected) >= limit:
                break
            one = parse(no, raw)
            if isinstance(one, str):
                rejected.append(one)
            else:
                parsed.append(one)
    return parsed, rejected


def read_rows(path: Path, limit: int | None) -> tuple[list[Row], list[str]]:
    return read_parsed(path, limit, parse_row)
