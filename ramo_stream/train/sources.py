"""Where a trainer worker reads labels: its share of the labels topic, or of a file.

Both sources hand out ``Record(source, partition, offset, value)`` in order and report
``positions()``: per partition, the offset of the next record not yet handed out. The
trainer publishes those positions in each version's manifest, and a restart ``seek``s
back to them, so the manifest (not a consumer group) is the source of truth: what a
version has trained on and what it has not are separated exactly there.

Partitions are divided among workers by number (partition % world == rank), and assigned
rather than subscribed: a worker's share never moves under it in a rebalance, which is
what lets a restarted worker continue exactly where its version says.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

Positions = dict[str, dict[int, int]]  # source -> partition -> next offset


@dataclass(frozen=True)
class Record:
    source: str
    partition: int
    offset: int
    value: bytes


class LabelSource(Protocol):
    def seek(self, positions: Positions) -> None: ...
    def poll(self, timeout_s: float, max_records: int) -> list[Record]: ...
    def positions(self) -> Positions: ...
    def exhausted(self) -> bool:
        """True when no record can ever come again: the end of a file, or the end of a
        topic after ``finish()``."""
        ...

    def finish(self) -> None:
        """Nothing more will be written: read to the current end, then be exhausted."""
        ...

    def commit(self, positions: Positions) -> None: ...
    def close(self) -> None: ...


class KafkaLabelSource:
    """Partitions ``p % world == rank`` of ``topic``, read by one consumer group."""

    def __init__(
        self,
        bootstrap: str,
        kafka: Any,
        topic: str,
        group: str,
        rank: int = 0,
        world: int = 1,
        wait_s: float = 30.0,
    ) -> None:
        from ramo_stream.stream.clients import TopicPartition
        from ramo_stream.stream.kafka_io import make_consumer

        self.topic = topic
        self.consumer = make_consumer(bootstrap, kafka, group)
        deadline = time.monotonic() + wait_s
        parts = self.consumer.partitions_for_topic(topic)
        while not parts and time.monotonic() < deadline:
            time.sleep(0.5)
            parts = self.consumer.partitions_for_topic(topic)
        if not parts:
            raise RuntimeError(
                f"topic {topic!r} does not exist on {bootstrap} after {wait_s:.0f}s; create it"
                " (`ramo broker` or `ramo ingest` do) or fix topics.labels"
            )
        self.partitions = [TopicPartition(topic, p) for p in sorted(parts) if p % world == rank]
        self.consumer.assign(self.partitions)
        self._next: dict[int, int] = {}
        self._finishing = False

    def seek(self, positions: Positions) -> None:
        """Start at ``positions`` (a version's manifest); partitions it lacks start at 0."""
        mine = positions.get(self.topic, {})
        for tp in self.partitions:
            if tp.partition in mine:
                self.consumer.seek(tp, mine[tp.partition])
            else:
                # No version has trained on this partition: everything in it is new.
                self.consumer.seek_to_beginning(tp)
            self._next[tp.partition] = self.consumer.position(tp)

    def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        polled = self.consumer.poll(timeout_ms=int(timeout_s * 1000), max_records=max_records)
        out = []
        for tp, msgs in polled.items():
            for m in msgs:
                out.append(Record(self.topic, tp.partition, m.offset, m.value))
                self._next[tp.partition] = m.offset + 1
        return out

    def positions(self) -> Positions:
        return {self.topic: dict(self._next)}

    def exhausted(self) -> bool:
        return self._finishing and self._read_to_end()

    def finish(self) -> None:
        self._finishing = True

    def _read_to_end(self) -> bool:
        """Every partition read up to its end, as the last fetch response reported it
        (tansu's end_offsets() is the last batch's base offset, so it cannot be used)."""
        for tp in self.partitions:
            high = self.consumer.highwater(tp)
            if high is None or self._next.get(tp.partition, 0) < high:
                return False
        return True

    def commit(self, positions: Positions) -> None:
        """Record the published positions in the group too (for lag monitoring)."""
        from ramo_stream.stream.clients import OffsetAndMetadata, TopicPartition

        assigned = {tp.partition for tp in self.partitions}
        offsets = {
            TopicPartition(self.topic, p): OffsetAndMetadata(o, "", -1)
            for p, o in positions.get(self.topic, {}).items()
            if p in assigned
        }
        if offsets:
            self.consumer.commit(offsets)

    def close(self) -> None:
        self.consumer.close()


class FileLabelSource:
    """Lines ``i % world == rank`` of a JSONL file; a worker's rank is its partition."""

    def __init__(self, path: Path, rank: int = 0, world: int = 1) -> None:
        if not path.is_file():
            raise FileNotFoundError(f"no labels file at {path}")
        self.name = f"file:{path.resolve()}"
        self.rank, self.world = rank, world
        self._lines = [line for line in path.read_bytes().splitlines()]
        self._next = 0  # global line index of the next line to look at

    def seek(self, positions: Positions) -> None:
        self._next = positions.get(self.name, {}).get(self.rank, 0)

    def poll(self, timeout_s: float, max_records: int) -> list[Record]:
        out: list[Record] = []
        while self._next < len(self._lines) and len(out) < max_records:
            i = self._next
            self._next += 1
            if i % self.world == self.rank and self._lines[i].strip():
                out.append(Record(self.name, self.rank, i, self._lines[i].strip()))
        return out

    def positions(self) -> Positions:
        return {self.name: {self.rank: self._next}}

    def exhausted(self) -> bool:
        return self._next >= len(self._lines)

    def finish(self) -> None:
        pass  # a file is finished already

    def commit(self, positions: Positions) -> None:
        pass

    def close(self) -> None:
        pass
