"""The Kafka clients as the stages use them: a consumer and a producer protocol, small on
purpose. kafka-python's ``KafkaConsumer`` and ``KafkaProducer`` (built in ``kafka_io``, with
the project's settings) satisfy them; unit tests hand ``StreamProcessor`` and
``TopicWriter`` in-memory fakes instead (tests/unit/test_processor.py).

Outside ``stream/`` nothing imports kafka-python: the partition and offset records it
passes around are re-exported here (plain named tuples, no client code).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from kafka.errors import CommitFailedError
from kafka.structs import OffsetAndMetadata, TopicPartition

__all__ = [
    "CommitFailedError",
    "Consumer",
    "OffsetAndMetadata",
    "Producer",
    "SendResult",
    "TopicPartition",
    "offsets_to_commit",
]


@runtime_checkable
class SendResult(Protocol):
    """What ``Producer.send`` returns: ``get`` blocks until the broker acknowledged the
    record, and raises the broker's error when it did not."""

    def get(self, timeout: float) -> Any: ...


@runtime_checkable
class Producer(Protocol):
    def send(self, topic: str, value: bytes, key: bytes | None = None) -> SendResult: ...

    def flush(self, timeout: float) -> None: ...

    def close(self, timeout: float) -> None: ...


@runtime_checkable
class Consumer(Protocol):
    """A group member with manual commits (what ``StreamProcessor`` reads with)."""

    def poll(self, timeout_ms: int, max_records: int) -> Mapping[TopicPartition, list[Any]]:
        """Records (``topic``, ``partition``, ``offset``, ``key``, ``value``, ``timestamp``)
        by partition."""
        ...

    def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata]) -> None: ...

    def assignment(self) -> set[TopicPartition]: ...

    def subscription(self) -> set[str] | None: ...

    def highwater(self, partition: TopicPartition) -> int | None: ...

    def position(self, partition: TopicPartition) -> int: ...

    def close(self, autocommit: bool) -> None: ...


def offsets_to_commit(records: list[Any]) -> dict[TopicPartition, OffsetAndMetadata]:
    """The offsets that mark ``records`` consumed: per partition, one past the highest."""
    offsets: dict[TopicPartition, OffsetAndMetadata] = {}
    for m in records:
        tp = TopicPartition(m.topic, m.partition)
        if tp not in offsets or offsets[tp].offset <= m.offset:
            offsets[tp] = OffsetAndMetadata(m.offset + 1, "", -1)
    return offsets
