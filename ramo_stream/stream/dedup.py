"""Remembering what was seen: the dedup window of a stage and the output ledger that
keeps a restarted stage from writing a second output for the same key.

tansu accepts Kafka transactions but does not honour them, and drops commit metadata, so
idempotent output is built from what the output topic itself holds: on (re)assignment a
stage reads the output written since its first uncommitted input was produced (by record
timestamps, minus a clock-skew margin) and skips inputs whose key is already there.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

from pydantic import BaseModel

log = logging.getLogger(__name__)


class SeenIds:
    """The last ``capacity`` ids (each with the digest of its content), oldest forgotten first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._ids: OrderedDict[str, str] = OrderedDict()

    def __contains__(self, key: str) -> bool:
        return key in self._ids

    def digest(self, key: str) -> str | None:
        return self._ids.get(key)

    def add(self, key: str, digest: str = "") -> None:
        if self.capacity == 0:
            return
        self._ids[key] = digest
        self._ids.move_to_end(key)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)

    def __len__(self) -> int:
        return len(self._ids)

    def __iter__(self) -> Iterator[str]:
        """Oldest first."""
        return iter(self._ids)


def content_digest(record: BaseModel) -> str:
    """What makes two records with one key the same: the record's ``content_digest()``
    if it has one (a pair: prompt and responses), else every field but timestamps."""
    own = getattr(record, "content_digest", None)
    if callable(own):
        return str(own())
    data = record.model_dump(mode="json", exclude={"created_at", "labeled_at", "failed_at"})
    canonical = json.dumps(data, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class OutputLedger:
    """Keys already on ``topic`` (written by this stage, or found there on recovery)."""

    def __init__(
        self,
        topic: str,
        make_reader: Callable[[], Any],
        capacity: int = 100_000,
        skew_s: float = 300.0,
        max_polls: int = 600,
    ) -> None:
        self.topic = topic
        self.make_reader = make_reader  # a KafkaConsumer without a group
        self.keys = SeenIds(capacity)
        self.skew_s = skew_s
        self.max_polls = max_polls
        self.recovered_keys = 0

    def done(self, key: str) -> bool:
        return key in self.keys

    def add(self, key: str) -> None:
        self.keys.add(key)

    def recover(self, since_ms: int) -> int:
        """Add the keys of every record on ``topic`` stamped at or after ``since_ms`` minus
        the skew margin; return how many records were read."""
        from ramo_stream.stream.clients import TopicPartition

        start_ms = max(0, int(since_ms - self.skew_s * 1000))
        reader = self.make_reader()
        read = 0
        try:
            parts = reader.partitions_for_topic(self.topic) or set()
            tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
            found = reader.offsets_for_times({tp: start_ms for tp in tps}) if tps else {}
            # tansu answers "no record that late" with timestamp -1 (Kafka: None).
            starts = {tp: o.offset for tp, o in found.items() if o is not None and o.timestamp >= 0}
            if not starts:
                return 0
            reader.assign(list(starts))
            for tp, offset in starts.items():
                reader.seek(tp, offset)
            started = time.monotonic()
            for _ in range(self.max_polls):
                for batch in reader.poll(timeout_ms=200).values():
                    for m in batch:
                        read += 1
                        if m.key is not None:
                            self.keys.add(m.key.decode("utf-8", errors="replace"))
                highs = {tp: reader.highwater(tp) for tp in starts}
                if all(h is not None and reader.position(tp) >= h for tp, h in highs.items()):
                    break
            else:
                log.warning("ledger: gave up reading %s after %d polls (%d records); a pair"
                            " labeled just before a crash may be labeled again", self.topic,
                            self.max_polls, read)  # fmt: skip
            log.info("ledger: %d records of %s read since %d ms in %.1fs", read, self.topic,
                     start_ms, time.monotonic() - started)  # fmt: skip
        finally:
            reader.close()
        self.recovered_keys += read
        return read
