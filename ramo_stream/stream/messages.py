"""What a stage's handler receives (``Message``) and what ``StreamProcessor`` counts
(``ProcessorStats``): the records of the consuming side, apart from its logic."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from pydantic import BaseModel

from ramo_stream.stream.health import Health

R = TypeVar("R", bound=BaseModel)


@dataclass(frozen=True)
class Message(Generic[R]):
    """A decoded record and where it came from."""

    record: R
    topic: str
    partition: int
    offset: int
    key: bytes | None
    raw: bytes


Handler = Callable[[list[Message[R]]], None]
"""Processes a batch; returns only after its downstream writes are acknowledged."""


@dataclass
class ProcessorStats:
    polled: int = 0
    handled: int = 0
    duplicates: int = 0
    conflicts: int = 0
    already_written: int = 0
    dead_lettered: int = 0
    undeliverable: int = 0
    commits: int = 0
    committed: dict[tuple[str, int], int] = field(default_factory=dict)
    health: Health = field(default_factory=Health)


class ServiceUnavailable(Exception):
    """Raised by a handler when a service it calls (not a record) failed and stayed down past
    its wait: the processor neither retries the batch record by record nor dead-letters it;
    the error leaves ``process_once`` with the poll uncommitted, so the stage stops and every
    record of the poll is delivered again to the next run."""


def describe_error(e: BaseException) -> str:
    """'Type: message' of a handler's error. An error raised in a Ray task (the labeler's
    deployment) carries the remote traceback in its text, which would push the message out
    of a dead letter's reason; its ``cause`` is the error itself."""
    cause = getattr(e, "cause", None)
    if isinstance(cause, BaseException):
        e = cause
    return f"{type(e).__name__}: {e}"
