"""The stream layer against a real broker: delivery, resume, group split, dead letters."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable

import pytest
from kafka import KafkaConsumer, TopicPartition

from ramo_stream.config import KafkaSettings
from ramo_stream.schemas import DeadLetter, ResponsePair
from ramo_stream.stream.kafka_io import TopicWriter, make_consumer, make_producer
from ramo_stream.stream.processor import Message, StreamProcessor
from ramo_stream.stream.serde import encode
from tests.helpers import read_all

pytestmark = pytest.mark.integration

KAFKA = KafkaSettings()


def make_pairs(n: int, tag: str = "") -> list[ResponsePair]:
    return [
        ResponsePair(
            prompt=f"question {tag}{i}: how should I store cleaning products?",
            response_a=f"Keep them sealed, apart, and away from children ({i}).",
            response_b=f"No idea ({i}).",
            source="test",
        )
        for i in range(n)
    ]


def produce(broker: str, topic: str, values: list[bytes], keys: list[bytes | None]) -> None:
    producer = make_producer(broker, KAFKA)
    writer = TopicWriter(producer)
    for v, k in zip(values, keys, strict=True):
        writer.send_bytes(topic, v, k)
    assert writer.flush() == len(values)
    producer.close()


def produce_pairs(broker: str, topic: str, pairs: list[ResponsePair]) -> None:
    produce(broker, topic, [encode(p) for p in pairs], [p.pair_id.encode() for p in pairs])


def gate(
    broker: str,
    topic: str,
    dlq: str,
    handler: Callable[[list[Message[ResponsePair]]], None],
    **kw: object,
) -> StreamProcessor[ResponsePair]:
    consumer = make_consumer(broker, KAFKA, group_of(topic), topic)
    return StreamProcessor(
        consumer, TopicWriter(make_producer(broker, KAFKA)), ResponsePair, handler,
        dlq_topic=dlq, stage="gate", **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def group_of(topic: str) -> str:
    """One consumer group per test topic, so no test sees another's group state."""
    return f"g-{topic}"


def committed_total(broker: str, topic: str, group: str) -> int:
    """Sum of a group's committed offsets on a topic: the records it has finished."""
    c = KafkaConsumer(bootstrap_servers=broker, group_id=group, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
    committed = sum(c.committed(tp) or 0 for tp in tps)
    c.close(autocommit=False)
    return committed


def test_round_trip_10k(broker: str, new_topic: Callable[..., str]) -> None:
    topic, dlq = new_topic(), new_topic(1)
    pairs = make_pairs(10_000)
    produce_pairs(broker, topic, pairs)
    got: list[str] = []
    proc = gate(broker, topic, dlq, lambda b: got.extend(m.record.pair_id for m in b))
    stats = proc.run(until_caught_up=True, idle_timeout_s=60)
    proc.close()
    assert len(got) == 10_000 and set(got) == {p.pair_id for p in pairs}
    assert stats.dead_lettered == 0 and stats.duplicates == 0
    assert committed_total(broker, topic, group_of(topic)) == 10_000
    assert read_all(broker, dlq) == []


def test_restart_resumes_from_committed_offsets(broker: str, new_topic: Callable[..., str]) -> None:
    topic, dlq = new_topic(), new_topic(1)
    pairs = make_pairs(3000)
    produce_pairs(broker, topic, pairs)

    first: list[str] = []
    proc = gate(
        broker, topic, dlq, lambda b: first.extend(m.record.pair_id for m in b), max_in_flight=250
    )
    proc.run(max_records=1000, idle_timeout_s=60)
    proc.close()  # stopped mid-stream
    assert 1000 <= len(first) < 3000
    assert committed_total(broker, topic, group_of(topic)) == len(first)

    second: list[str] = []
    proc = gate(broker, topic, dlq, lambda b: second.extend(m.record.pair_id for m in b))
    proc.run(until_caught_up=True, idle_timeout_s=60)
    proc.close()
    assert set(first) | set(second) == {p.pair_id for p in pairs}  # nothing lost
    assert not set(first) & set(second)  # a clean stop re-delivers nothing
    assert committed_total(broker, topic, group_of(topic)) == 3000


class Crash(BaseException):
    """Stands for the process dying: not an Exception, so nothing retries or catches it."""


def test_crash_mid_batch_loses_nothing(broker: str, new_topic: Callable[..., str]) -> None:
    topic, dlq = new_topic(), new_topic(1)
    pairs = make_pairs(2000)
    produce_pairs(broker, topic, pairs)
    done: list[str] = []
    calls = 0

    def dies_on_third_batch(batch: list[Message[ResponsePair]]) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:
            done.extend(m.record.pair_id for m in batch[: len(batch) // 2])  # half written
            raise Crash
        done.extend(m.record.pair_id for m in batch)

    proc = gate(broker, topic, dlq, dies_on_third_batch, max_in_flight=300)
    with pytest.raises(Crash):
        proc.run(idle_timeout_s=60)
    proc.consumer.close(autocommit=False)  # the dead process commits nothing more

    proc = gate(broker, topic, dlq, lambda b: done.extend(m.record.pair_id for m in b))
    proc.run(until_caught_up=True, idle_timeout_s=60)
    proc.close()
    counts = Counter(done)
    assert set(counts) == {p.pair_id for p in pairs}
    redelivered = [k for k, n in counts.items() if n > 1]
    assert 0 < len(redelivered) <= 300  # at most the one uncommitted poll, seen twice


def test_two_consumers_split_partitions(broker: str, new_topic: Callable[..., str]) -> None:
    topic, dlq = new_topic(4), new_topic(1)
    seen: dict[str, list[str]] = {"x": [], "y": []}
    procs = {
        name: gate(
            broker, topic, dlq, lambda b, n=name: seen[n].extend(m.record.pair_id for m in b)
        )
        for name in seen
    }
    # Let the group settle on two members before any record exists.
    stop = threading.Event()
    threads = [threading.Thread(target=p.run, kwargs={"stop": stop}) for p in procs.values()]
    for t in threads:
        t.start()
    for _ in range(300):
        sizes = [len(p.consumer.assignment()) for p in procs.values()]
        if sum(sizes) == 4 and min(sizes) > 0:
            break
        stop.wait(0.1)
    assert min(len(p.consumer.assignment()) for p in procs.values()) > 0, "group never split"
    pairs = make_pairs(2000)
    produce_pairs(broker, topic, pairs)
    for _ in range(600):
        if len(seen["x"]) + len(seen["y"]) >= 2000:
            break
        stop.wait(0.1)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    for p in procs.values():
        p.close()
    assert seen["x"] and seen["y"]
    assert not set(seen["x"]) & set(seen["y"])
    assert set(seen["x"]) | set(seen["y"]) == {p.pair_id for p in pairs}


def malformed_values(n: int) -> list[bytes]:
    """n bad messages of seven kinds, each distinct."""
    good = json.loads(encode(make_pairs(1)[0]))
    kinds = [
        lambda i: f"not json {i}".encode(),
        lambda i: b"\xff\xfe" + str(i).encode(),
        lambda i: json.dumps([i]).encode(),
        lambda i: json.dumps(
            {**good, "pair_id": None, "response_b": "", "source": f"s{i}"}
        ).encode(),
        lambda i: json.dumps(
            {**good, "pair_id": f"x{i}", "prompt": [{"role": "bot", "content": "hi"}]}
        ).encode(),
        lambda i: json.dumps({**good, "pair_id": f"y{i}", "response_a": i}).encode(),
        lambda i: json.dumps({"pair_id": f"z{i}", "prompt": "only a prompt"}).encode(),
    ]
    return [kinds[i % len(kinds)](i) for i in range(n)]


def test_malformed_records_go_to_dlq_and_counts_add_up(
    broker: str, new_topic: Callable[..., str]
) -> None:
    topic, dlq = new_topic(), new_topic(2)
    pairs = make_pairs(1000)
    bad = malformed_values(1000)
    values: list[bytes] = []
    for p, b in zip(pairs, bad, strict=True):
        values += [encode(p), b]
    produce(broker, topic, values, [None] * len(values))

    got: list[str] = []
    proc = gate(broker, topic, dlq, lambda b: got.extend(m.record.pair_id for m in b))
    stats = proc.run(until_caught_up=True, idle_timeout_s=60)
    proc.close()

    letters = [DeadLetter.model_validate_json(v) for v in read_all(broker, dlq)]
    assert len(got) == 1000 and set(got) == {p.pair_id for p in pairs}
    assert len(letters) == 1000 == stats.dead_lettered
    assert len(got) + len(letters) == len(values)
    assert Counter(d.original for d in letters) == Counter(bad)  # original bytes, exactly
    assert all(d.reason and d.stage == "gate" and d.source_topic == topic for d in letters)
    reasons = " ".join(d.reason for d in letters)
    for expected in (
        "not JSON",
        "not UTF-8",
        "expected a JSON object",
        "response_b",
        "role",
        "response_a",
        "Field required",
    ):
        assert expected in reasons


def test_duplicates_are_dropped_by_pair_id(broker: str, new_topic: Callable[..., str]) -> None:
    topic, dlq = new_topic(), new_topic(1)
    pairs = make_pairs(200)
    produce_pairs(broker, topic, pairs + pairs[:150])  # a producer that retried
    got: list[str] = []
    proc = gate(broker, topic, dlq, lambda b: got.extend(m.record.pair_id for m in b))
    stats = proc.run(until_caught_up=True, idle_timeout_s=60)
    proc.close()
    assert sorted(got) == sorted(p.pair_id for p in pairs)
    assert stats.duplicates == 150


def test_failing_handler_retries_then_dead_letters_only_the_poison(
    broker: str, new_topic: Callable[..., str]
) -> None:
    topic, dlq = new_topic(1), new_topic(1)
    pairs = make_pairs(50)
    poison = pairs[17].pair_id
    produce_pairs(broker, topic, pairs)
    got: list[str] = []
    calls = 0

    def handler(batch: list[Message[ResponsePair]]) -> None:
        nonlocal calls
        calls += 1
        if any(m.record.pair_id == poison for m in batch):
            raise RuntimeError("grader exploded")
        got.extend(m.record.pair_id for m in batch)

    proc = gate(broker, topic, dlq, handler, retries=2, backoff_s=0.01)
    proc.run(until_caught_up=True, idle_timeout_s=60)
    proc.close()
    assert sorted(got) == sorted(p.pair_id for p in pairs if p.pair_id != poison)
    letters = [DeadLetter.model_validate_json(v) for v in read_all(broker, dlq)]
    assert len(letters) == 1
    assert "grader exploded" in letters[0].reason and letters[0].attempts == 4
    assert ResponsePair.model_validate_json(letters[0].original).pair_id == poison
    assert calls >= 3  # the batch was retried before it was split
