"""Which Kafka errors are the broker's fault (wait, rebuild, retry) and which a record's
(dead-letter it), and the health state a stage shows while it waits for the broker."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from kafka.errors import (
    CorruptRecordError,
    InvalidRecordError,
    InvalidTimestampError,
    KafkaError,
    MessageSizeTooLargeError,
    RecordListTooLargeError,
)

# Errors that are about one record: retrying cannot help, the record goes to the DLQ.
RECORD_ERRORS = (
    MessageSizeTooLargeError,
    RecordListTooLargeError,
    CorruptRecordError,
    InvalidRecordError,
    InvalidTimestampError,
)


def is_record_error(e: BaseException) -> bool:
    return isinstance(e, RECORD_ERRORS)


def is_broker_error(e: BaseException) -> bool:
    """A Kafka error that is not about one record: the broker is gone, restarting, moved
    its coordinator, forgot our producer id, or timed out. Retrying later helps."""
    return isinstance(e, KafkaError) and not is_record_error(e)


class BrokerTrouble(Exception):
    """Raised out of a unit of work that must be retried once the broker is back."""


State = Literal["ok", "broker-unavailable"]


@dataclass
class Health:
    """What a stage's view or metrics show: ``state``, since when, why, and how often.

    Plain attributes, written by the stage's thread and safe to read from another.
    """

    state: State = "ok"
    since: float = field(default_factory=time.time)
    detail: str = ""
    broker_errors: int = 0
    rebuilds: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def trouble(self, detail: str) -> None:
        with self._lock:
            self.broker_errors += 1
            if self.state != "broker-unavailable":
                self.state, self.since = "broker-unavailable", time.time()
            self.detail = detail

    def recovered(self) -> None:
        with self._lock:
            if self.state != "ok":
                self.state, self.since, self.detail = "ok", time.time(), ""

    def line(self) -> str:
        """One line for logs and views: 'ok' or 'broker-unavailable for 12s: <why>'."""
        if self.state == "ok":
            return "ok"
        return f"{self.state} for {time.time() - self.since:.0f}s: {self.detail}"
