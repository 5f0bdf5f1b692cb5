"""StreamProcessor's logic with an in-memory consumer and producer: commit order, dedup,
conflicts, retry-split, broker trouble, undeliverable letters, the output ledger.
The same paths against a real broker are in tests/integration/test_stream*.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

from ramo_stream.schemas import DeadLetter, ResponsePair
from ramo_stream.stream.dedup import OutputLedger
from ramo_stream.stream.kafka_io import TopicWriter
from ramo_stream.stream.processor import Message, StreamProcessor
from ramo_stream.stream.serde import encode

TOPIC = "pairs"


@dataclass
class Rec:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp: int = 1_000_000


class FakeConsumer:
    def __init__(self, values: list[bytes], log: list[str]) -> None:
        self.recs = [Rec(TOPIC, 0, i, None, v, 1_000_000 + i) for i, v in enumerate(values)]
        self.pos = 0
        self.log = log
        self.commits: list[dict[TopicPartition, Any]] = []

    def poll(self, timeout_ms: int, max_records: int) -> dict[TopicPartition, list[Rec]]:
        batch = self.recs[self.pos : self.pos + max_records]
        self.pos += len(batch)
        return {TopicPartition(TOPIC, 0): batch} if batch else {}

    def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.log.append("commit")
        self.commits.append(offsets)

    def assignment(self) -> set[TopicPartition]:
        return {TopicPartition(TOPIC, 0)}

    def subscription(self) -> set[str]:
        return {TOPIC}

    def highwater(self, tp: TopicPartition) -> int:
        return len(self.recs)

    def position(self, tp: TopicPartition) -> int:
        return self.pos

    def close(self, autocommit: bool = False) -> None:
        pass


class Future:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    def get(self, timeout: float) -> None:
        if self.error:
            raise self.error


class FakeProducer:
    """Keeps what it was sent; ``fail`` decides an error per (topic, value)."""

    def __init__(self, log: list[str], fail: Callable[[str, bytes], Exception | None]) -> None:
        self.sent: list[tuple[str, bytes]] = []
        self.log, self.fail = log, fail

    def send(self, topic: str, value: bytes, key: bytes | None = None) -> Future:
        err = self.fail(topic, value)
        if err is None:
            self.sent.append((topic, value))
        return Future(err)

    def flush(self, timeout: float) -> None:
        self.log.append("flush")

    def close(self, timeout: float = 0) -> None:
        pass


def pair(i: int, **kw: Any) -> ResponsePair:
    fields = {"prompt": f"q{i}", "response_a": "a", "response_b": "b", **kw}
    return ResponsePair(**fields)


def setup(
    values: list[bytes],
    handler: Callable[[list[Message[ResponsePair]]], None],
    fail: Callable[[str, bytes], Exception | None] = lambda t, v: None,
    **kw: Any,
) -> tuple[StreamProcessor[ResponsePair], FakeConsumer, list[FakeProducer], list[str]]:
    log: list[str] = []
    producers: list[FakeProducer] = []

    def make() -> FakeProducer:
        producers.append(FakeProducer(log, fail))
        return producers[-1]

    consumer = FakeConsumer(values, log)
    proc = StreamProcessor(consumer, TopicWriter(make(), make), ResponsePair, handler,  # type: ignore[arg-type]
                           dlq_topic="dlq", stage="gate", backoff_s=0.0, **kw)  # fmt: skip
    return proc, consumer, producers, log


def letters(producers: list[FakeProducer]) -> list[DeadLetter]:
    return [DeadLetter.model_validate_json(v) for p in producers for t, v in p.sent if t == "dlq"]


def test_outputs_and_letters_are_acknowledged_before_the_commit() -> None:
    values = [encode(pair(0)), b"{bad", encode(pair(1))]
    proc, consumer, producers, log = setup(values, lambda b: log.append("handled"))
    assert proc.process_once() == 3
    assert log == ["handled", "flush", "commit"]
    assert consumer.commits[0][TopicPartition(TOPIC, 0)].offset == 3
    assert proc.stats.handled == 2 and proc.stats.dead_lettered == 1


def test_same_id_same_content_is_a_duplicate_other_content_a_conflict() -> None:
    p = pair(0, pair_id="fixed")
    other = pair(1, pair_id="fixed")
    got: list[str] = []
    values = [encode(p), encode(p), encode(other)]
    proc, _, producers, _ = setup(values, lambda b: got.extend(m.record.pair_id for m in b))
    proc.process_once()
    assert got == ["fixed"] and proc.stats.duplicates == 1 and proc.stats.conflicts == 1
    (letter,) = letters(producers)
    assert p.content_digest() in letter.reason and other.content_digest() in letter.reason
    assert "conflict" in letter.reason
    # across polls too (the dedup window keeps the digest)
    proc2, _, producers2, _ = setup([encode(p)], lambda b: None, max_in_flight=1)
    proc2.process_once()
    proc2.consumer.recs.append(Rec(TOPIC, 0, 1, None, encode(other)))  # type: ignore[attr-defined]
    proc2.process_once()
    assert proc2.stats.conflicts == 1 and len(letters(producers2)) == 1


def test_failing_record_is_split_out_and_dead_lettered() -> None:
    pairs = [pair(i) for i in range(5)]
    got: list[str] = []

    def handler(batch: list[Message[ResponsePair]]) -> None:
        if any(m.record.pair_id == pairs[3].pair_id for m in batch):
            raise ValueError("grader exploded")
        got.extend(m.record.pair_id for m in batch)

    proc, _, producers, _ = setup([encode(p) for p in pairs], handler, retries=1)
    proc.process_once()
    assert sorted(got) == sorted(p.pair_id for i, p in enumerate(pairs) if i != 3)
    (letter,) = letters(producers)
    assert "grader exploded" in letter.reason and letter.attempts == 3


def test_broker_errors_are_retried_with_a_new_producer_never_dead_lettered() -> None:
    calls = 0
    states: list[str] = []

    def handler(batch: list[Message[ResponsePair]]) -> None:
        nonlocal calls
        calls += 1
        states.append(proc.health.state)
        if calls <= 2:
            raise KafkaTimeoutError("broker gone")

    proc, consumer, producers, _ = setup([encode(pair(i)) for i in range(3)], handler)
    assert proc.process_once() == 3
    assert letters(producers) == [] and proc.stats.handled == 3
    assert states == ["ok", "broker-unavailable", "broker-unavailable"]
    assert proc.health.state == "ok" and proc.health.broker_errors == 2
    assert len(producers) == 3  # the first, and one rebuilt per failure
    assert len(consumer.commits) == 1


def test_a_service_down_stops_the_stage_with_nothing_lettered_or_committed() -> None:
    """A handler that gave up waiting for a service it calls (the gate's features
    deployment) raises ServiceUnavailable: no retry record by record, no dead letter (not
    even the poll's own bad record), no commit, so the whole poll is delivered again."""
    from ramo_stream.stream.messages import ServiceUnavailable

    calls: list[int] = []

    def handler(batch: list[Message[ResponsePair]]) -> None:
        calls.append(len(batch))
        raise ServiceUnavailable("features deployment down")

    values = [encode(pair(0)), b"{bad", encode(pair(1))]
    proc, consumer, producers, log = setup(values, handler, retries=3)
    with pytest.raises(ServiceUnavailable, match="features deployment down"):
        proc.process_once()
    assert calls == [2]  # once: the handler did its own waiting
    assert letters(producers) == [] and consumer.commits == [] and "commit" not in log
    assert proc.stats.handled == 0 and proc.stats.dead_lettered == 0


def test_a_letter_that_cannot_be_written_is_counted_and_skipped() -> None:
    def fail(topic: str, value: bytes) -> Exception | None:
        return MessageSizeTooLargeError("too big") if topic == "dlq" else None

    proc, consumer, _, _ = setup([b"not json", encode(pair(0))], lambda b: None, fail=fail)
    assert proc.process_once() == 2
    assert proc.stats.undeliverable == 1 and proc.stats.dead_lettered == 0
    assert consumer.commits  # it did not block the records behind it


class StaticLedger(OutputLedger):
    def __init__(self, keys: list[str]) -> None:
        super().__init__("labels", lambda: None)
        for k in keys:
            self.add(k)
        self.since: list[int] = []

    def recover(self, since_ms: int) -> int:
        self.since.append(since_ms)
        return 0


def test_outputs_already_written_are_skipped_and_recovery_runs_once_per_assignment() -> None:
    pairs = [pair(i) for i in range(4)]
    ledger = StaticLedger([pairs[1].pair_id])
    got: list[str] = []
    proc, _, _, _ = setup([encode(p) for p in pairs], lambda b: got.extend(
        m.record.pair_id for m in b), ledger=ledger, max_in_flight=2)  # fmt: skip
    proc.process_once()
    proc.process_once()
    assert got == [pairs[0].pair_id, pairs[2].pair_id, pairs[3].pair_id]
    assert proc.stats.already_written == 1
    assert ledger.since == [1_000_000]  # the first uncommitted record's timestamp


def test_fifty_megabyte_record_gives_a_letter_under_the_topic_limit(tmp_path: Any) -> None:
    big = b'{"prompt": "' + b"x" * (50 * 1024 * 1024) + b'"}'
    proc, _, producers, _ = setup([big], lambda b: None, spill_dir=tmp_path)
    proc.process_once()
    (topic, value), = [x for x in producers[0].sent]  # fmt: skip
    assert len(value) < 1024 * 1024  # Kafka's default message.max.bytes / max_request_size
    letter = DeadLetter.model_validate_json(value)
    assert letter.original_truncated and letter.original_size == len(big)
    assert letter.original_stored_at is not None
    kept = tmp_path / f"{letter.original_sha256}.bin"
    assert letter.original_stored_at.endswith(str(kept)) and kept.read_bytes() == big
    assert "bytes, over the limit" in letter.reason


@pytest.mark.parametrize("spill", [False, True])
def test_letter_says_when_the_whole_record_was_not_kept(tmp_path: Any, spill: bool) -> None:
    from ramo_stream.stream.dead_letters import make_letter

    blocked = tmp_path / "file"
    blocked.write_text("a file where a folder should be")
    letter = make_letter(b"y" * 100, "bad", "gate", max_original_bytes=10,
                         spill_dir=blocked if spill else None)  # fmt: skip
    assert letter.original == b"y" * 10 and letter.original_stored_at is None
    assert "not kept" in letter.reason or "could not be kept" in letter.reason
    json.loads(letter.model_dump_json())


def test_an_error_from_a_ray_task_is_described_by_its_cause() -> None:
    from ramo_stream.stream.processor import describe_error

    class RemoteError(Exception):  # what Ray raises: the remote traceback, and .cause
        def __init__(self, cause: BaseException) -> None:
            super().__init__("Traceback (most recent call last):\n" + "  frame\n" * 500)
            self.cause = cause

    too_long = ValueError("prompt of 9000 tokens > grader.max_prompt_tokens 2048")
    assert describe_error(RemoteError(too_long)) == f"ValueError: {too_long}"
    assert describe_error(KeyError("x")) == "KeyError: 'x'"


def test_the_fakes_and_kafka_python_satisfy_the_client_protocols() -> None:
    from kafka import KafkaConsumer, KafkaProducer

    from ramo_stream.stream.clients import Consumer, Producer

    assert isinstance(FakeConsumer([], []), Consumer)
    assert isinstance(FakeProducer([], lambda t, v: None), Producer)
    for cls, protocol in ((KafkaConsumer, Consumer), (KafkaProducer, Producer)):
        methods = [m for m in vars(protocol) if not m.startswith("_")]
        assert methods
        missing = [m for m in methods if not callable(getattr(cls, m, None))]
        assert not missing, f"{cls.__name__} lacks {missing}"


def test_a_poll_over_two_partitions_commits_one_past_the_last_of_each() -> None:
    seen: list[int] = []
    proc, consumer, _, log = setup([], lambda b: seen.extend(m.offset for m in b))
    consumer.recs = [
        Rec(TOPIC, 1, 7, None, encode(pair(0))),
        Rec(TOPIC, 0, 3, None, encode(pair(1))),
        Rec(TOPIC, 1, 8, None, b"{bad"),
        Rec(TOPIC, 0, 4, None, encode(pair(2))),
    ]
    assert proc.process_once() == 4
    assert sorted(seen) == [3, 4, 7]
    (committed,) = consumer.commits
    assert {tp.partition: om.offset for tp, om in committed.items()} == {0: 5, 1: 9}
    assert log.index("flush") < log.index("commit")  # the dead letter first
