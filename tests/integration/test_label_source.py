"""The trainer's Kafka label source on a real broker: ``finish()`` turns "a topic never
ends" into "exhausted once everything on it now has been handed out", which is how a stop
that drains (`ramo up`'s Ctrl-C) trains on every label before the broker goes away."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from ramo_stream.config import KafkaSettings
from ramo_stream.stream.kafka_io import make_producer
from ramo_stream.train.sources import KafkaLabelSource

pytestmark = pytest.mark.integration


def test_finish_exhausts_only_after_every_record_is_read(
    broker: str, new_topic: Callable[..., str]
) -> None:
    topic = new_topic(3)
    producer = make_producer(broker, KafkaSettings())
    for i in range(25):
        producer.send(topic, value=f"label {i}".encode(), partition=i % 3)
    producer.flush()
    producer.close()

    source = KafkaLabelSource(broker, KafkaSettings(), topic, group=f"g-{topic}")
    try:
        source.seek({})
        assert not source.exhausted()  # a topic never ends until finish() is called
        source.finish()
        assert not source.exhausted()  # nothing read yet: not at the end
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while not source.exhausted() and time.monotonic() < deadline:
            got.extend(r.value for r in source.poll(0.2, 4))
        assert source.exhausted()
        assert sorted(got) == sorted(f"label {i}".encode() for i in range(25))
        assert source.positions() == {topic: {0: 9, 1: 8, 2: 8}}
    finally:
        source.close()
