"""Bytes <-> records. Decoding never raises: it returns a record or a ``Rejection``.

Every class of poison a producer can send ends as a Rejection with a reason: null,
oversize, not UTF-8, not JSON, nested too deep (a 2 KB ``[[[[...`` once killed the gate
with a RecursionError), integers too long to convert, NaN/Infinity, wrong shape, and
anything else a parser raises (caught last, named by its type).
"""

from __future__ import annotations

import json
import logging
from typing import TypeVar

from pydantic import BaseModel, ValidationError

from ramo_stream.schemas import MAX_TEXT_CHARS, Rejection, describe_validation_error

log = logging.getLogger(__name__)

R = TypeVar("R", bound=BaseModel)

# A whole message may hold a prompt of many turns and two responses; anything far
# beyond that is rejected before JSON parsing spends memory on it.
MAX_MESSAGE_BYTES = 4 * (MAX_TEXT_CHARS * 4 + 16_384)
# No record of ours nests deeper than ~10 levels outside metadata; metadata is free-form
# but small. 64 leaves room and keeps every recursive walker far from Python's limit.
MAX_DEPTH = 64


def encode(record: BaseModel) -> bytes:
    return record.model_dump_json().encode("utf-8")


def decode(raw: bytes | None, model: type[R]) -> R | Rejection:
    """Parse one message value into ``model``; a bad message becomes a Rejection."""
    if raw is None:
        return Rejection("empty message value (null); producers must send a JSON object", b"")
    try:
        return _decode(bytes(raw), model)
    except Exception as e:  # noqa: BLE001 - the contract: poison is a value, never a crash
        log.warning("decode: unexpected %s on a %d-byte message", type(e).__name__, len(raw))
        return Rejection(f"could not be decoded: {type(e).__name__}: {str(e)[:200]}", bytes(raw))


def _decode(raw: bytes, model: type[R]) -> R | Rejection:
    if len(raw) > MAX_MESSAGE_BYTES:
        return Rejection(f"message is {len(raw)} bytes, over the limit of {MAX_MESSAGE_BYTES}", raw)
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Rejection(f"not UTF-8 text: {e.reason} at byte {e.start}", raw)
    if nesting_depth(raw) > MAX_DEPTH:
        return Rejection(
            f"JSON nested more than {MAX_DEPTH} levels deep (the limit); flatten the record"
            " (metadata especially)",
            raw,
        )
    try:
        return model.model_validate_json(raw)  # the hot path: one parse, in Rust
    except ValidationError as e:
        return Rejection(_why(raw, model, e), raw)


def nesting_depth(raw: bytes) -> int:
    """Deepest bracket nesting outside strings, without parsing; stops counting once
    past ``MAX_DEPTH``. Brackets inside strings (``"[[["``) do not count. The common case
    costs two C-speed counts: a message with few brackets cannot be deep."""
    opens = raw.count(b"[") + raw.count(b"{")
    if opens <= MAX_DEPTH:
        return opens  # an upper bound that is already within the limit
    depth = deepest = 0
    in_string = escaped = False
    for byte in raw:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > MAX_DEPTH:
                    return deepest  # enough to reject; poison should cost little

        elif byte in (0x5D, 0x7D):  # ] }
            depth -= 1
    return deepest


def _why(raw: bytes, model: type[BaseModel], err: ValidationError) -> str:
    """The reason for a rejection; json.loads gives clearer syntax errors than pydantic."""
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError as e:
        return f"not JSON: {e.msg} at line {e.lineno} column {e.colno}"
    except (ValueError, RecursionError) as e:  # e.g. an integer of 5,000 digits
        return f"not acceptable JSON: {str(e)[:200]}"
    if not isinstance(parsed, dict):
        return f"expected a JSON object, got {type(parsed).__name__}"
    return f"invalid {model.__name__}: {describe_validation_error(err)}"
