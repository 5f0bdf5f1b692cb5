"""The consuming side of every stage: decode -> dead-letter the bad -> dedup -> handle -> commit.

Delivery is at-least-once. One poll is one unit of work: the handler's downstream writes
and the dead letters are acknowledged before the offsets of that poll are committed, and
the next poll (where a consumer-group rebalance can happen) starts only after the commit.
So a crash at any point re-delivers at most the uncommitted poll, never skips a record, and
no more than ``max_in_flight`` records are ever held uncommitted (the backpressure bound).
Duplicates (re-deliveries, producers sending twice) are dropped by ``pair_id`` within a
bounded window; downstream consumers are idempotent by ``pair_id`` as well.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from kafka import KafkaConsumer, TopicPartition
from kafka.errors import CommitFailedError
from kafka.structs import OffsetAndMetadata
from pydantic import BaseModel

from ramo_stream.schemas import DeadLetter
from ramo_stream.stream.kafka_io import TopicWriter
from ramo_stream.stream.serde import Rejection, decode

log = logging.getLogger(__name__)

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


class SeenIds:
    """The last ``capacity`` ids, forgetting the oldest first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._ids

    def add(self, key: str) -> None:
        if self.capacity == 0:
            return
        self._ids[key] = None
        self._ids.move_to_end(key)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids)


@dataclass
class ProcessorStats:
    polled: int = 0
    handled: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    commits: int = 0
    committed: dict[tuple[str, int], int] = field(default_factory=dict)


class StreamProcessor(Generic[R]):
    def __init__(
        self,
        consumer: KafkaConsumer,
        writer: TopicWriter,
        model: type[R],
        handler: Handler[R],
        *,
        dlq_topic: str,
        stage: str,
        key_of: Callable[[R], str] = lambda r: r.pair_id,  # type: ignore[attr-defined]
        max_in_flight: int = 1000,
        dedup_window: int = 100_000,
        retries: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        self.consumer = consumer
        self.writer = writer
        self.model = model
        self.handler = handler
        self.dlq_topic = dlq_topic
        self.stage = stage
        self.key_of = key_of
        self.max_in_flight = max_in_flight
        self.seen = SeenIds(dedup_window)
        self.retries = retries
        self.backoff_s = backoff_s
        self.stats = ProcessorStats()

    # -- one unit of work ---------------------------------------------------------------

    def process_once(self, timeout_ms: int = 500) -> int:
        """Poll once, process, commit. Returns the number of records polled."""
        polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.max_in_flight)
        raw_msgs = [m for batch in polled.values() for m in batch]
        if not raw_msgs:
            return 0
        self.stats.polled += len(raw_msgs)

        good: list[Message[R]] = []
        letters: list[DeadLetter] = []
        batch_keys: set[str] = set()
        for m in raw_msgs:
            out = decode(m.value, self.model)
            if isinstance(out, Rejection):
                letters.append(self._letter(m, out.raw, out.reason))
                continue
            key = self.key_of(out)
            if key in self.seen or key in batch_keys:
                self.stats.duplicates += 1
                continue
            batch_keys.add(key)
            good.append(Message(out, m.topic, m.partition, m.offset, m.key, m.value))

        failed = self._handle(good)
        for msg, error, attempts in failed:
            letters.append(self._letter(msg, msg.raw, error, attempts=attempts))
        self.writer.send_dead_letters(self.dlq_topic, letters)
        self.writer.flush()  # dead letters acknowledged before the offsets move
        self.stats.dead_lettered += len(letters)
        self.stats.handled += len(good) - len(failed)
        failed_ids = {id(f[0]) for f in failed}
        for msg in good:
            if id(msg) not in failed_ids:
                self.seen.add(self.key_of(msg.record))
        self._commit(raw_msgs)
        return len(raw_msgs)

    def _handle(self, batch: list[Message[R]]) -> list[tuple[Message[R], str, int]]:
        """Run the handler with retries; return (message, error, attempts) of what failed."""
        if not batch:
            return []
        delay = self.backoff_s
        for attempt in range(1, self.retries + 2):
            try:
                self.handler(batch)
                return []
            except Exception as e:  # noqa: BLE001 - any handler error is retried, then DLQ'd
                log.warning(
                    "%s: batch of %d failed (attempt %d): %r", self.stage, len(batch), attempt, e
                )
                if attempt <= self.retries:
                    time.sleep(delay)
                    delay *= 2
        # The batch keeps failing: find the records at fault one by one, so one poison
        # record does not send its healthy neighbours to the dead-letter topic.
        failed = []
        for msg in batch:
            try:
                self.handler([msg])
            except Exception as e:  # noqa: BLE001
                failed.append((msg, f"handler failed: {type(e).__name__}: {e}", self.retries + 2))
        return failed

    def _letter(self, m: object, raw: bytes, reason: str, attempts: int = 1) -> DeadLetter:
        return DeadLetter.of(
            raw,
            reason,
            self.stage,
            key=getattr(m, "key", None),
            source_topic=getattr(m, "topic", None),
            partition=getattr(m, "partition", None),
            offset=getattr(m, "offset", None),
            attempts=attempts,
        )

    def _commit(self, msgs: list) -> None:  # type: ignore[type-arg]
        offsets: dict[TopicPartition, OffsetAndMetadata] = {}
        for m in msgs:
            tp = TopicPartition(m.topic, m.partition)
            if tp not in offsets or offsets[tp].offset <= m.offset:
                offsets[tp] = OffsetAndMetadata(m.offset + 1, "", -1)
        try:
            self.consumer.commit(offsets)
        except CommitFailedError as e:
            # The group rebalanced while we worked: another member re-reads this poll.
            # Harmless for correctness (consumers are idempotent by pair_id).
            log.warning(
                "%s: commit failed after a rebalance, records will be re-read: %s", self.stage, e
            )
            return
        self.stats.commits += 1
        for tp, om in offsets.items():
            self.stats.committed[(tp.topic, tp.partition)] = om.offset

    # -- the loop -----------------------------------------------------------------------

    def caught_up(self) -> bool:
        """True when this member holds partitions and has consumed up to their end.

        The end is the high watermark of the last fetch response, not ``end_offsets()``:
        tansu 0.6 answers ListOffsets(latest) with the base offset of the last record
        batch, which would stop a reader short of the final batch.
        """
        # Only partitions of the topics we subscribe to: a group whose members once read
        # other topics can hand out stale partitions for a moment during a rebalance.
        topics = self.consumer.subscription() or set()
        assigned = [tp for tp in self.consumer.assignment() if tp.topic in topics]
        if not assigned:
            return False
        for tp in assigned:
            high = self.consumer.highwater(tp)
            if high is None or self.consumer.position(tp) < high:
                return False
        return True

    def run(
        self,
        stop: threading.Event | None = None,
        max_records: int | None = None,
        idle_timeout_s: float | None = None,
        until_caught_up: bool = False,
        on_progress: Callable[[int], None] | None = None,
        finish: threading.Event | None = None,
    ) -> ProcessorStats:
        """Process until ``stop`` is set, ``max_records`` were polled, idle too long, or
        (``until_caught_up``, or once ``finish`` is set) nothing is left on the assigned
        partitions. ``finish`` is how a caller asks for a drain: everything already on the
        topic is handled first, whereas ``stop`` ends after the poll in hand."""
        idle_since = time.monotonic()
        while not (stop and stop.is_set()):
            if max_records is not None and self.stats.polled >= max_records:
                break
            n = self.process_once()
            if n:
                idle_since = time.monotonic()
                if on_progress:
                    on_progress(n)
                continue
            if (until_caught_up or (finish and finish.is_set())) and self.caught_up():
                break
            if idle_timeout_s is not None and time.monotonic() - idle_since > idle_timeout_s:
                break
        return self.stats

    def close(self) -> None:
        self.consumer.close(autocommit=False)
