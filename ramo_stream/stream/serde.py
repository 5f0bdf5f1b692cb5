"""Bytes <-> records. Decoding never raises: it returns a record or a ``Rejection``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from ramo_stream.schemas import MAX_TEXT_CHARS, describe_validation_error

R = TypeVar("R", bound=BaseModel)

# A whole message may hold a prompt of many turns and two responses; anything far
# beyond that is rejected before JSON parsing spends memory on it.
MAX_MESSAGE_BYTES = 4 * (MAX_TEXT_CHARS * 4 + 16_384)


@dataclass(frozen=True)
class Rejection:
    """Why a message could not be decoded, with its original bytes."""

    reason: str
    raw: bytes


def encode(record: BaseModel) -> bytes:
    return record.model_dump_json().encode("utf-8")


def decode(raw: bytes | None, model: type[R]) -> R | Rejection:
    """Parse one message value into ``model``; a bad message becomes a Rejection."""
    if raw is None:
        return Rejection("empty message value (null); producers must send a JSON object", b"")
    if len(raw) > MAX_MESSAGE_BYTES:
        return Rejection(f"message is {len(raw)} bytes, over the limit of {MAX_MESSAGE_BYTES}", raw)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Rejection(f"not UTF-8 text: {e.reason} at byte {e.start}", raw)
    try:
        return model.model_validate_json(raw)  # the hot path: one parse, in Rust
    except ValidationError as e:
        return Rejection(_why(raw, model, e), raw)


def _why(raw: bytes, model: type[BaseModel], err: ValidationError) -> str:
    """The reason for a rejection; json.loads gives clearer syntax errors than pydantic."""
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as e:
        return f"not JSON: {e.msg} at line {e.lineno} column {e.colno}"
    if not isinstance(parsed, dict):
        return f"expected a JSON object, got {type(parsed).__name__}"
    return f"invalid {model.__name__}: {describe_validation_error(err)}"
