"""`ramo up`'s topic counts against the real embedded broker: exact after every batch, the
same on every sample, never going down while records arrive, kept when the broker is gone.

tansu answers end_offsets() with the last record batch's base offset plus one, so these
tests write batches of several records to each partition: a count that trusted
end_offsets() for any partition would come out short here."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic

from ramo_stream.config import KafkaSettings
from ramo_stream.stream.broker import EmbeddedBroker
from ramo_stream.stream.kafka_io import TopicCounts, make_producer

pytestmark = pytest.mark.integration

KAFKA = KafkaSettings()


def write_batch(
    producer: KafkaProducer, topic: str, partitions: list[int], per_partition: int
) -> int:
    """``per_partition`` records to each partition, acknowledged together (one record batch
    per partition); returns how many were written."""
    sent = [producer.send(topic, value=f"{p}-{i}".encode(), partition=p)
            for p in partitions for i in range(per_partition)]  # fmt: skip
    producer.flush(timeout=30)
    for future in sent:
        future.get(timeout=1)  # raises if the broker did not take it
    return len(sent)


def test_counts_are_exact_after_each_batch_and_on_every_sample(
    broker: str, new_topic: Callable[..., str]
) -> None:
    pairs, labels, empty = new_topic(4), new_topic(4), new_topic(2)
    producer = make_producer(broker, KAFKA)
    counts = TopicCounts(broker, KAFKA, [pairs, labels, empty])
    written = {pairs: 0, labels: 0, empty: 0}
    assert counts.sample() == written and counts.complete
    # Batches of different sizes; partition 3 of `pairs` stays empty until the last one.
    for round_, size in enumerate([10, 1, 7, 25, 3]):
        written[pairs] += write_batch(
            producer, pairs, [0, 1, 2] + ([3] if round_ == 4 else []), size
        )
        written[labels] += write_batch(producer, labels, [round_ % 4, (round_ + 1) % 4], size + 2)
        for _ in range(3):  # a second sample must not read less than the first
            assert counts.sample() == written
            assert counts.complete
    # A fresh counter (no earlier samples to start from) is exact too.
    assert TopicCounts(broker, KAFKA, [pairs, labels, empty]).sample() == written
    producer.close()


def test_counts_never_go_down_while_records_arrive(
    broker: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic(4)
    producer = make_producer(broker, KAFKA)
    sent = [0]
    done = threading.Event()

    def produce() -> None:
        for size in [5, 12, 1, 30, 8, 3, 20, 9]:
            sent[0] += write_batch(producer, topic, [0, 1, 2, 3], size)
            time.sleep(0.05)
        done.set()

    counts = TopicCounts(broker, KAFKA, [topic])
    thread = threading.Thread(target=produce)
    thread.start()
    seen: list[int] = []
    while not done.is_set():
        seen.append(counts.sample()[topic])
        assert seen[-1] <= sent[0] + 4 * 30, "counted more records than were sent"
    thread.join()
    seen.append(counts.sample()[topic])
    producer.close()
    assert seen == sorted(seen), f"a count went down: {seen}"
    assert seen[-1] == sent[0]


def test_a_broker_that_is_gone_keeps_the_last_counts() -> None:
    with EmbeddedBroker(port=0) as b:
        admin = KafkaAdminClient(bootstrap_servers=b.bootstrap)
        admin.create_topics([NewTopic("gone", 2, 1)])
        admin.close()
        producer = make_producer(b.bootstrap, KAFKA)
        n = write_batch(producer, "gone", [0, 1], 6)
        producer.close()
        counts = TopicCounts(b.bootstrap, KAFKA, ["gone"])
        assert counts.sample() == {"gone": n} and counts.complete
    started = time.monotonic()
    assert counts.sample(wait_s=0.5) == {"gone": n}
    assert not counts.complete
    assert time.monotonic() - started < 5, "a sample waits about wait_s, not 30 s, for a broker"
