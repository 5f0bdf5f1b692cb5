"""Poison through the real gate on a real broker: every class of bad bytes, a 5 MB
record and a reused pair_id end as dead letters that fit the topic; the gate never stops."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ramo_stream.config import KafkaSettings
from ramo_stream.schemas import DeadLetter, ResponsePair
from ramo_stream.stream.kafka_io import TopicWriter, make_consumer, make_producer
from ramo_stream.stream.processor import StreamProcessor
from ramo_stream.stream.serde import encode
from tests.helpers import read_all
from tests.unit.test_serde import POISON

pytestmark = pytest.mark.integration

KAFKA = KafkaSettings()


def test_poison_never_stops_the_gate(
    broker: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    topic, dlq = new_topic(2), new_topic(1)
    good = [ResponsePair(prompt=f"q{i}", response_a="a", response_b="b") for i in range(20)]
    reused = ResponsePair(pair_id=good[0].pair_id, prompt="other", response_a="x", response_b="y")
    huge = b'{"prompt": "' + b"z" * (5 * 1024 * 1024) + b'"}'  # the 5 MB record of issue 13
    poison = [*POISON.values(), huge, encode(reused)]
    values = [encode(p) for p in good[:10]] + poison + [encode(p) for p in good[10:]]
    # Big values need a producer allowed to send them, as a foreign producer might be.
    producer = make_producer(broker, KAFKA, max_request_size=8 * 1024 * 1024)
    writer = TopicWriter(producer)
    for v in values:
        writer.send_bytes(topic, v, key=b"k")  # one key: one partition, order kept
    writer.flush()
    producer.close()

    got: list[str] = []
    proc = StreamProcessor(
        make_consumer(broker, KAFKA, f"g-{topic}", topic, max_partition_fetch_bytes=8 << 20,
                      fetch_max_bytes=16 << 20),
        TopicWriter(make_producer(broker, KAFKA)), ResponsePair,
        lambda b: got.extend(m.record.pair_id for m in b),
        dlq_topic=dlq, stage="gate", dlq_original_bytes=64 * 1024, spill_dir=tmp_path,
    )  # fmt: skip
    stats = proc.run(until_caught_up=True, idle_timeout_s=60)
    proc.close()

    letters = [DeadLetter.model_validate_json(v) for v in read_all(broker, dlq)]
    assert sorted(got) == sorted(p.pair_id for p in good)
    assert len(letters) == len(poison) == stats.dead_lettered and stats.undeliverable == 0
    assert stats.conflicts == 1 and stats.polled == len(values)
    by_sha = {d.original_sha256: d for d in letters}
    for raw in poison:
        d = by_sha[hashlib.sha256(raw).hexdigest()]
        assert d.original_size == len(raw) and d.reason
    big = by_sha[hashlib.sha256(huge).hexdigest()]
    assert big.original_truncated and len(big.original) == 64 * 1024
    assert (tmp_path / f"{big.original_sha256}.bin").read_bytes() == huge
    deep = by_sha[hashlib.sha256(POISON["array nested 1,000 deep"]).hexdigest()]
    assert "nested more than" in deep.reason
    conflict = by_sha[hashlib.sha256(encode(reused)).hexdigest()]
    assert reused.content_digest() in conflict.reason
    assert good[0].content_digest() in conflict.reason
    nan = by_sha[hashlib.sha256(POISON["NaN in metadata"]).hexdigest()]
    assert "metadata.x" in nan.reason and json.loads(nan.model_dump_json())
