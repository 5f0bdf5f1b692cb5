"""The consuming side of every stage: decode -> dead-letter the bad -> dedup -> handle -> commit.

Delivery is at-least-once. One poll is one unit of work: the handler's downstream writes
and the dead letters are acknowledged before the offsets of that poll are committed, and
the next poll (where a consumer-group rebalance can happen) starts only after the commit.
So a crash at any point re-delivers at most the uncommitted poll, never skips a record, and
no more than ``max_in_flight`` records are ever held uncommitted (the backpressure bound).
Duplicates (re-deliveries, producers sending twice) are dropped by ``pair_id`` within a
bounded window; the same ``pair_id`` with different content is a conflict and goes to the
DLQ. With an ``OutputLedger``, inputs whose output is already on the output topic (written
before a crash, not yet committed) are skipped, so a restart writes nothing twice.

Broker loss is not a record's fault: a unit of work that fails on the broker is neither
split nor dead-lettered. The stage rebuilds its producer (and, if it keeps failing, its
consumer), backs off, and retries the same unit until the broker answers, showing
``health`` meanwhile. A record that cannot even be dead-lettered is logged and counted.
Nor is a service the handler calls (``ServiceUnavailable``, raised once the handler gave up
waiting for it): that error stops the stage with the poll uncommitted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Generic, TypeVar

from pydantic import BaseModel

from ramo_stream.schemas import DEAD_LETTER_ORIGINAL_BYTES, DeadLetter, Rejection
from ramo_stream.stream.clients import (
    CommitFailedError,
    Consumer,
    TopicPartition,
    offsets_to_commit,
)
from ramo_stream.stream.dead_letters import make_letter
from ramo_stream.stream.dedup import OutputLedger, SeenIds, content_digest
from ramo_stream.stream.health import BrokerTrouble, Health, is_broker_error
from ramo_stream.stream.kafka_io import TopicWriter
from ramo_stream.stream.messages import (
    Handler,
    Message,
    ProcessorStats,
    ServiceUnavailable,
    describe_error,
)
from ramo_stream.stream.serde import decode

log = logging.getLogger(__name__)

__all__ = ["Message", "ProcessorStats", "SeenIds", "StreamProcessor"]

R = TypeVar("R", bound=BaseModel)

MAX_BACKOFF_S = 30.0
REBUILD_CONSUMER_AFTER = 3  # consecutive broker failures before the consumer is rebuilt too


class StreamProcessor(Generic[R]):
    def __init__(
        self,
        consumer: Consumer,
        writer: TopicWriter,
        model: type[R],
        handler: Handler[R],
        *,
        dlq_topic: str,
        stage: str,
        key_of: Callable[[R], str] = lambda r: r.pair_id,  # type: ignore[attr-defined]
        digest_of: Callable[[R], str] = content_digest,
        max_in_flight: int = 1000,
        dedup_window: int = 100_000,
        retries: int = 3,
        backoff_s: float = 0.5,
        ledger: OutputLedger | None = None,
        make_consumer: Callable[[], Consumer] | None = None,
        dlq_original_bytes: int = DEAD_LETTER_ORIGINAL_BYTES,
        spill_dir: Path | None = None,
    ) -> None:
        self.consumer = consumer
        self.writer = writer
        self.model = model
        self.handler = handler
        self.dlq_topic = dlq_topic
        self.stage = stage
        self.key_of = key_of
        self.digest_of = digest_of
        self.max_in_flight = max_in_flight
        self.seen = SeenIds(dedup_window)
        self.retries = retries
        self.backoff_s = backoff_s
        self.ledger = ledger
        self.make_consumer = make_consumer
        self.dlq_original_bytes = dlq_original_bytes
        self.spill_dir = spill_dir
        self.stats = ProcessorStats()
        self.before_commit: Callable[[list[Any]], None] | None = None
        """Test hook: runs after outputs and dead letters are acknowledged, before the
        commit (the gap a crash-safety test kills the stage in)."""
        self._stop: threading.Event | None = None
        self._recovered: set[TopicPartition] = set()
        self._troubles = 0

    @property
    def health(self) -> Health:
        return self.stats.health

    # -- one unit of work ---------------------------------------------------------------

    def process_once(self, timeout_ms: int = 500) -> int:
        """Poll once, process, commit. Returns the number of records polled."""
        try:
            polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=self.max_in_flight)
        except Exception as e:
            if not is_broker_error(e):
                raise
            self._wait_for_broker(e, "poll")
            return 0
        raw_msgs = [m for batch in polled.values() for m in batch]
        if not raw_msgs:
            return 0
        self.stats.polled += len(raw_msgs)
        sorted_: tuple[list[Message[R]], list[DeadLetter]] | None = None
        done = {"handled": False, "lettered": False}
        while True:
            try:
                if sorted_ is None:
                    self._recover_outputs(raw_msgs)
                    sorted_ = self._sort(raw_msgs)
                self._finish(raw_msgs, *sorted_, done)
                self._troubles = 0
                self.health.recovered()
                return len(raw_msgs)
            except BrokerTrouble as e:
                cause = e.__cause__ or e
                if self._wait_for_broker(cause, "write") == "consumer-rebuilt" or self.stopping():
                    # The batch stays uncommitted: it is delivered again, and its outputs
                    # already written are skipped by the ledger (or were idempotent).
                    return 0

    def _sort(self, raw_msgs: list[Any]) -> tuple[list[Message[R]], list[DeadLetter]]:
        """Decode; split into records to handle and dead letters; drop duplicates."""
        good: list[Message[R]] = []
        letters: list[DeadLetter] = []
        in_batch: dict[str, str] = {}
        for m in raw_msgs:
            out = decode(m.value, self.model)
            if isinstance(out, Rejection):
                letters.append(self._letter(m, out.raw, out.reason))
                continue
            key, digest = self.key_of(out), self.digest_of(out)
            before = in_batch.get(key, self.seen.digest(key))
            if before is not None and before != digest:
                self.stats.conflicts += 1
                reason = (
                    f"conflict: pair_id {key!r} was seen before with content sha256:{before},"
                    f" this record has sha256:{digest}; a pair_id must name one (prompt,"
                    " response_a, response_b). Give the changed pair a new id"
                )
                letters.append(self._letter(m, m.value, reason))
                continue
            if before is not None:
                self.stats.duplicates += 1
                continue
            if self.ledger is not None and self.ledger.done(key):
                self.stats.already_written += 1  # written before a crash, never committed
                self.seen.add(key, digest)
                continue
            in_batch[key] = digest
            good.append(Message(out, m.topic, m.partition, m.offset, m.key, m.value))
        return good, letters

    def _finish(
        self,
        raw_msgs: list[Any],
        good: list[Message[R]],
        letters: list[DeadLetter],
        done: dict[str, bool],
    ) -> None:
        """Handle, dead-letter, commit; each step once, even when the unit is retried."""
        if not done["handled"]:
            failed = self._handle(good)
            letters.extend(self._letter(m, m.raw, err, attempts=n) for m, err, n in failed)
            failed_ids = {id(f[0]) for f in failed}
            self.stats.handled += len(good) - len(failed)
            for msg in good:
                if id(msg) not in failed_ids:
                    self.seen.add(self.key_of(msg.record), self.digest_of(msg.record))
            done["handled"] = True
        if not done["lettered"]:
            self._send_letters(letters)  # acknowledged before the offsets move
            done["lettered"] = True
        if self.before_commit is not None:
            self.before_commit(raw_msgs)
        self._commit(raw_msgs)

    def _handle(self, batch: list[Message[R]]) -> list[tuple[Message[R], str, int]]:
        """Run the handler with retries; return (message, error, attempts) of what failed.

        A broker error is raised as BrokerTrouble at once: it is nobody's record's fault."""
        if not batch:
            return []
        delay = self.backoff_s
        for attempt in range(1, self.retries + 2):
            try:
                self.handler(batch)
                return []
            except ServiceUnavailable:  # the handler waited already; no record is at fault
                raise
            except Exception as e:  # noqa: BLE001 - any handler error is retried, then DLQ'd
                if is_broker_error(e):
                    raise BrokerTrouble(f"{type(e).__name__}: {e}") from e
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
            except ServiceUnavailable:
                raise
            except Exception as e:  # noqa: BLE001
                if is_broker_error(e):
                    raise BrokerTrouble(describe_error(e)) from e
                failed.append((msg, f"handler failed: {describe_error(e)}", self.retries + 2))
        return failed

    def _send_letters(self, letters: list[DeadLetter]) -> None:
        if not letters:
            return
        unsent: list[tuple[DeadLetter, BaseException]] = []
        for letter in letters:
            try:
                self.writer.send(self.dlq_topic, letter)
            except Exception as e:
                if is_broker_error(e):
                    raise BrokerTrouble(f"{type(e).__name__}: {e}") from e
                unsent.append((letter, e))
        sent = [x for x in letters if all(x is not u for u, _ in unsent)]
        for i, err in self.writer.flush_each():
            if is_broker_error(err):
                raise BrokerTrouble(f"{type(err).__name__}: {err}") from err
            unsent.append((sent[i], err))
        for letter, why in unsent:
            # Nothing more can be done for it: log it whole, count it, move on. Never
            # retried forever, never allowed to stop the records behind it.
            self.stats.undeliverable += 1
            log.error("%s: a dead letter could not be written to %s (%s: %s); skipped:"
                      " %s at %s[%s]@%s, %s bytes, sha256 %s", self.stage, self.dlq_topic,
                      type(why).__name__, why, letter.reason[:300], letter.source_topic,
                      letter.partition, letter.offset, letter.original_size,
                      letter.original_sha256)  # fmt: skip
        self.stats.dead_lettered += len(letters) - len(unsent)

    def _letter(self, m: object, raw: bytes, reason: str, attempts: int = 1) -> DeadLetter:
        return make_letter(
            raw,
            reason,
            self.stage,
            max_original_bytes=self.dlq_original_bytes,
            spill_dir=self.spill_dir,
            key=getattr(m, "key", None),
            source_topic=getattr(m, "topic", None),
            partition=getattr(m, "partition", None),
            offset=getattr(m, "offset", None),
            attempts=attempts,
        )

    # -- idempotent output and broker loss ----------------------------------------------

    def _recover_outputs(self, raw_msgs: list[Any]) -> None:
        """On the first records of a newly assigned partition (they start at its committed
        offset), read what was written since they were produced into the ledger."""
        if self.ledger is None:
            return
        self._recovered &= set(self.consumer.assignment())
        fresh = [m for m in raw_msgs if TopicPartition(m.topic, m.partition) not in self._recovered]
        if not fresh:
            return
        since = min(m.timestamp for m in fresh)
        try:
            n = self.ledger.recover(since)
        except Exception as e:
            if is_broker_error(e):
                raise BrokerTrouble(f"reading {self.ledger.topic}: {type(e).__name__}: {e}") from e
            raise
        log.info("%s: %d records already on %s checked for outputs of the uncommitted inputs",
                 self.stage, n, self.ledger.topic)  # fmt: skip
        self._recovered |= {TopicPartition(m.topic, m.partition) for m in fresh}

    def stopping(self) -> bool:
        """A stop was asked for (a handler waiting on a service gives up at once)."""
        return self._stop is not None and self._stop.is_set()

    def _wait_for_broker(self, e: BaseException, during: str) -> str:
        """Record the trouble, rebuild what needs it, back off. Returns what was rebuilt."""
        self._troubles += 1
        detail = f"{during}: {type(e).__name__}: {e}"
        self.health.trouble(detail)
        delay = min(MAX_BACKOFF_S, max(self.backoff_s, 0.1) * 2 ** (self._troubles - 1))
        rebuilt = "nothing"
        if self.writer.factory is not None:
            self.writer.rebuild()
            rebuilt = "producer"
        if self.make_consumer is not None and self._troubles >= REBUILD_CONSUMER_AFTER:
            self._rebuild_consumer()
            rebuilt = "consumer-rebuilt"
        self.health.rebuilds += rebuilt != "nothing"
        log.warning("%s: broker unavailable (%s); rebuilt %s, retrying in %.1fs (attempt %d)",
                    self.stage, detail, rebuilt.replace("-rebuilt", " and producer"), delay,
                    self._troubles)  # fmt: skip
        if self._stop is not None:
            self._stop.wait(delay)
        else:
            time.sleep(delay)
        return rebuilt

    def _rebuild_consumer(self) -> None:
        assert self.make_consumer is not None
        old = self.consumer
        try:
            old.close(autocommit=False)
        except Exception as e:  # noqa: BLE001 - a consumer cut off from its broker
            log.debug("%s: closing the old consumer: %r", self.stage, e)
        self.consumer = self.make_consumer()
        self._recovered.clear()

    def _commit(self, msgs: list) -> None:  # type: ignore[type-arg]
        offsets = offsets_to_commit(msgs)
        try:
            self.consumer.commit(offsets)
        except CommitFailedError as e:
            # The group rebalanced while we worked: another member re-reads this poll.
            # Harmless for correctness (consumers are idempotent by pair_id).
            log.warning(
                "%s: commit failed after a rebalance, records will be re-read: %s", self.stage, e
            )
            return
        except Exception as e:
            if is_broker_error(e):
                raise BrokerTrouble(f"commit: {type(e).__name__}: {e}") from e
            raise
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
        self._stop = stop
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
