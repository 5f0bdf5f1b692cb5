"""kafka-python clients with the settings this project relies on, and an acknowledged sink.

Every producer, consumer and admin client of the project is built here (``make_producer``,
``make_consumer``, ``make_admin``), so each gets the ``kafka.*`` security settings (TLS,
SASL) from ``client_security``, the one place that maps them to kafka-python's options."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from ramo_stream.config import KafkaSettings
from ramo_stream.schemas import DeadLetter
from ramo_stream.stream.clients import Producer, SendResult
from ramo_stream.stream.serde import encode

log = logging.getLogger(__name__)

SEND_TIMEOUT_S = 30.0


def client_security(kafka: KafkaSettings) -> dict[str, Any]:
    """kafka-python options for ``kafka.security_protocol``, SASL and TLS (empty options are
    left out, so a PLAINTEXT client is configured exactly as before)."""
    opts: dict[str, Any] = {"security_protocol": kafka.security_protocol}
    if kafka.security_protocol.startswith("SASL_"):
        assert kafka.sasl_password is not None  # KafkaSettings refuses SASL without one
        opts |= {
            "sasl_mechanism": kafka.sasl_mechanism,
            "sasl_plain_username": kafka.sasl_username,
            "sasl_plain_password": kafka.sasl_password.get_secret_value(),
        }
    if kafka.security_protocol in ("SSL", "SASL_SSL"):
        opts["ssl_check_hostname"] = kafka.ssl_check_hostname
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            path = getattr(kafka, key)
            if path is not None:
                opts[key] = str(path)
    return opts


def make_admin(bootstrap: str, kafka: KafkaSettings, **overrides: Any) -> KafkaAdminClient:
    """An admin client (topic creation, checks) with the security settings."""
    opts: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "client_id": f"{kafka.client_id}-admin",
        **client_security(kafka),
    }
    opts.update(overrides)
    return KafkaAdminClient(**opts)


def make_producer(bootstrap: str, kafka: KafkaSettings, **overrides: Any) -> KafkaProducer:
    """acks=all: a send counts as written only once every in-sync replica has it."""
    opts: dict[str, Any] = {
        **client_security(kafka),
        "bootstrap_servers": bootstrap,
        "client_id": f"{kafka.client_id}-producer",
        "acks": "all",
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "retries": 5,
    }
    opts.update(overrides)
    return KafkaProducer(**opts)


def make_consumer(
    bootstrap: str, kafka: KafkaSettings, group_id: str | None, *topics: str, **overrides: Any
) -> KafkaConsumer:
    """Manual commits only: offsets move when the downstream write is acknowledged."""
    opts: dict[str, Any] = {
        **client_security(kafka),
        "bootstrap_servers": bootstrap,
        "client_id": f"{kafka.client_id}-consumer",
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": kafka.session_timeout_ms,
        "heartbeat_interval_ms": kafka.heartbeat_interval_ms,
        "max_poll_records": kafka.max_in_flight,
    }
    opts.update(overrides)
    return KafkaConsumer(*topics, **opts)


class TopicWriter:
    """Sends records to topics and waits for the acknowledgements on ``flush()``.

    Callers send a batch, then flush: when flush returns, every record of the batch is
    acknowledged by the broker (or flush raised, and the caller must not commit).
    With a ``factory``, ``rebuild()`` replaces a producer that a broker loss left unusable
    (an unknown or fenced producer id is fatal to kafka-python's idempotent producer).
    """

    def __init__(self, producer: Producer, factory: Callable[[], Producer] | None = None) -> None:
        self.producer = producer
        self.factory = factory
        self._pending: list[tuple[str, bytes | None, SendResult]] = []
        self._last_acked = 0
        self.on_ack: Callable[[str, bytes | None], None] | None = None
        """Called with (topic, key) for each send that ``flush`` finds acknowledged."""

    def send_bytes(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        self._pending.append((topic, key, self.producer.send(topic, value=value, key=key)))

    def send(self, topic: str, record: Any, key: str | None = None) -> None:
        self.send_bytes(topic, encode(record), key.encode() if key is not None else None)

    def send_dead_letters(self, topic: str, letters: Iterable[DeadLetter]) -> None:
        for letter in letters:
            self.send(topic, letter)

    def flush(self, timeout_s: float = SEND_TIMEOUT_S) -> int:
        """Block until every pending send is acknowledged; return how many were.

        Raises the broker's first error, if any, after looking at every send (so
        ``on_ack`` hears of each one that did get through)."""
        failures = self.flush_each(timeout_s)
        if failures:
            raise failures[0][1]
        return self._last_acked

    def flush_each(self, timeout_s: float = SEND_TIMEOUT_S) -> list[tuple[int, Exception]]:
        """Like ``flush``, but returns (index in the batch, error) of each failed send."""
        pending, self._pending = self._pending, []
        self._last_acked = 0
        if not pending:
            return []
        with contextlib.suppress(KafkaError):  # each future says what happened to its record
            self.producer.flush(timeout=timeout_s)
        failures: list[tuple[int, Exception]] = []
        for i, (topic, key, future) in enumerate(pending):
            try:
                future.get(timeout=timeout_s if not failures else 0.001)
            except Exception as e:  # noqa: BLE001 - reported to the caller per record
                failures.append((i, e))
                continue
            self._last_acked += 1
            if self.on_ack is not None:
                self.on_ack(topic, key)
        return failures

    def rebuild(self) -> None:
        """Drop unsent records and the producer; make a fresh producer (needs ``factory``)."""
        if self.factory is None:
            raise RuntimeError("this TopicWriter has no producer factory to rebuild from")
        self._pending = []
        old, self.producer = self.producer, self.factory()
        try:
            old.close(timeout=0)
        except Exception as e:  # noqa: BLE001 - a broken producer may fail to close
            log.debug("closing a broken producer: %r", e)

    def close(self) -> None:
        self.producer.close(timeout=5)


def read_topic(
    bootstrap: str, topic: str, polls: int = 120, kafka: KafkaSettings | None = None
) -> list[Any]:
    """Every record of ``topic`` (ConsumerRecords: value, partition, offset, timestamp),
    read without a group up to the fetch high watermarks (tansu's end_offsets() stops
    short of the last batch). For tests, benchmarks and tools, not the data path."""
    c = make_consumer(bootstrap, kafka or KafkaSettings(), None)
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out: list[Any] = []
    for _ in range(polls):
        for batch in c.poll(timeout_ms=500).values():
            out.extend(batch)
        highs = [c.highwater(tp) for tp in tps]
        if all(h is not None and c.position(tp) >= h for tp, h in zip(tps, highs, strict=True)):
            break
    c.close()
    return out


class TopicCounts:
    """Exact record counts of topics (all partitions), sampled every few seconds, that
    never go down: what `ramo up`'s live view shows.

    A partition's end is the high watermark of a fetch response. ``end_offsets()`` cannot
    give it: tansu 0.6 answers ListOffsets(latest) with the base offset of the last record
    batch plus one, so a partition whose last batch holds 10 records reads 9 short. Each
    sample fetches every partition from its last known end (a valid offset, so only records
    added since are read) and takes the high watermark of the answer; ``end_offsets()``
    only places a partition seen for the first time, as a lower bound (exact on Kafka).

    Each sample uses a consumer of its own, closed at the end: a kept consumer has a fetch
    in flight from its last poll, whose answer, read in the next sample, would carry the
    high watermark of two seconds ago. A partition not heard from in time, or a sample the
    broker did not answer, keeps its last known end (``ForwardCounts``), so the totals
    never drop; ``complete`` says whether the last sample read every partition.
    """

    def __init__(self, bootstrap: str, kafka: KafkaSettings, topics: list[str],
                 client_id: str | None = None) -> None:  # fmt: skip
        from ramo_stream.core.counts import ForwardCounts

        self.bootstrap, self.kafka, self.topics = bootstrap, kafka, list(topics)
        self.client_id = client_id or f"{kafka.client_id}-counts"
        self.ends: ForwardCounts[TopicPartition] = ForwardCounts()
        self.complete = False

    def sample(self, wait_s: float = 1.0) -> dict[str, int]:
        """Records on each topic; waits at most about ``wait_s`` for the broker's answers
        (the answers usually come back within the consumer's fetch wait, 100 ms here)."""
        deadline = time.monotonic() + wait_s
        read: dict[TopicPartition, int] = {}
        tps: list[TopicPartition] = []
        consumer = None
        try:
            # A broker that is away fails the sample within wait_s (kafka-python's
            # bootstrap would otherwise retry for 30 s and freeze the view meanwhile).
            consumer = make_consumer(self.bootstrap, self.kafka, None, client_id=self.client_id,
                                     fetch_max_wait_ms=100,
                                     bootstrap_timeout_ms=max(100, int(wait_s * 1000)))  # fmt: skip
            tps = [TopicPartition(t, p) for t in self.topics
                   for p in sorted(consumer.partitions_for_topic(t) or [])]  # fmt: skip
            consumer.assign(tps)
            new = [tp for tp in tps if self.ends.get(tp) is None]
            if new:  # exact on Kafka, a lower bound on tansu; either is a valid start
                left_ms = max(1, int((deadline - time.monotonic()) * 1000))
                self.ends.update(consumer.end_offsets(new, timeout_ms=left_ms))
            for tp in tps:
                consumer.seek(tp, self.ends.get(tp) or 0)
            while len(read) < len(tps) and time.monotonic() < deadline:
                left_ms = max(1, int((deadline - time.monotonic()) * 1000))
                # No max_records: each parsed answer sets its partition's high watermark,
                # and a small cap leaves the answers of other partitions unparsed.
                consumer.poll(timeout_ms=min(left_ms, 200), max_records=1_000_000)
                for tp in tps:
                    high = consumer.highwater(tp)
                    if high is not None:
                        read[tp] = high
        except KafkaError as e:  # the broker is away: the last known counts stand
            log.debug("topic counts: %r", e)
        finally:
            if consumer is not None:
                with contextlib.suppress(Exception):
                    consumer.close()
        self.ends.update(read)
        listed = {tp.topic for tp in tps}
        self.complete = listed == set(self.topics) and len(read) == len(tps)
        return self.ends.totals_by(lambda tp: tp.topic, self.topics)
