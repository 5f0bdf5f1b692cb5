"""broker.storage=disk: topics, records and committed offsets outlive the broker."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from ramo_stream.config import KafkaSettings, TopicSettings
from ramo_stream.stream.broker import BrokerError, EmbeddedBroker, ensure_topics, find_rclone
from ramo_stream.stream.kafka_io import TopicWriter, make_consumer, make_producer, read_topic

pytestmark = pytest.mark.integration


def test_topics_records_and_offsets_survive_a_restart(tmp_path: Path) -> None:
    try:
        find_rclone()
    except BrokerError as e:
        pytest.skip(str(e))
    topics = TopicSettings(pairs="d.pairs", labels="d.labels", dlq="d.dlq", partitions=2)
    broker = EmbeddedBroker(data_dir=tmp_path / "data", log_path=tmp_path / "broker.log")
    broker.start()
    try:
        ensure_topics(broker.bootstrap, topics)
        producer = make_producer(broker.bootstrap, KafkaSettings())
        w = TopicWriter(producer)
        for i in range(50):
            w.send_bytes(topics.pairs, b"v%d" % i, key=b"k%d" % i)
        w.flush()
        producer.close()
        c = make_consumer(broker.bootstrap, KafkaSettings(), "durable", topics.pairs)
        taken = 0
        deadline = time.monotonic() + 60
        while taken < 20 and time.monotonic() < deadline:
            for tp, msgs in c.poll(timeout_ms=500, max_records=20 - taken).items():
                taken += len(msgs)
                c.commit({tp: OffsetAndMetadata(msgs[-1].offset + 1, "", -1)})
        c.close(autocommit=False)
        assert taken == 20
    finally:
        broker.stop()

    broker.start()  # the same folder, the same port
    try:
        assert {m.value for m in read_topic(broker.bootstrap, topics.pairs)} == {
            b"v%d" % i for i in range(50)
        }
        check = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id="durable")
        tps = [TopicPartition(topics.pairs, p) for p in range(2)]
        assert sum(check.committed(tp) or 0 for tp in tps) == 20
        check.close()
    finally:
        broker.stop()
