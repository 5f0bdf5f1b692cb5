"""Helpers shared by test modules (not fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: the shared human-labelled data is not next to the repo")
    return path


def read_all(broker: str, topic: str) -> list[bytes]:
    """Every value on a topic, read without a group, up to the fetch high watermarks
    (tansu's end_offsets() stops short of the last batch)."""
    c = KafkaConsumer(bootstrap_servers=broker, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
    c.assign(tps)
    c.seek_to_beginning(*tps)
    out: list[bytes] = []
    for _ in range(120):
        for batch in c.poll(timeout_ms=500).values():
            out.extend(m.value for m in batch)
        highs = [c.highwater(tp) for tp in tps]
        if all(h is not None and c.position(tp) >= h for tp, h in zip(tps, highs, strict=True)):
            break
    c.close()
    return out
