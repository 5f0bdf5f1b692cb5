"""Helpers shared by test modules (not fixtures)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import pytest

from ramo_stream.config import KafkaSettings
from ramo_stream.schemas import ResponsePair
from ramo_stream.stream.kafka_io import TopicWriter, make_producer, read_topic

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: the shared human-labelled data is not next to the repo")
    return path


def send_pairs(bootstrap: str, topic: str, pairs: list[ResponsePair]) -> None:
    """Write pairs keyed by pair_id and wait for the acknowledgements."""
    producer = make_producer(bootstrap, KafkaSettings())
    writer = TopicWriter(producer)
    for p in pairs:
        writer.send(topic, p, key=p.pair_id)
    writer.flush()
    producer.close()


def replica_pids(app: str, deployment: str) -> list[int]:
    """Process ids of a Serve app's replicas of one deployment (by their process title)."""
    import psutil

    title = f"ServeReplica:{app}:{deployment}"
    pids = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if any(title in part for part in p.info["cmdline"] or []):
                pids.append(p.pid)
        except psutil.Error:
            pass
    return pids


def read_all(broker: str, topic: str) -> list[bytes]:
    """Every value on a topic, read without a group up to the fetch high watermarks."""
    return [m.value for m in read_topic(broker, topic)]


def group_members(pgid: int) -> list[Any]:
    """Live (not zombie) processes of the process group ``pgid`` (psutil.Process)."""
    import psutil

    alive = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except (psutil.Error, ProcessLookupError):
            pass
    return alive


def left_behind(pgid: int, seen: set[int]) -> list[Any]:
    """What is still alive of a command's process group, and of the processes ``seen`` in
    it while it ran (some leave the group): after a clean stop, nothing."""
    import psutil

    left = group_members(pgid)
    for pid in seen:
        with contextlib.suppress(psutil.Error):
            p = psutil.Process(pid)
            if p.status() != psutil.STATUS_ZOMBIE and p not in left:
                left.append(p)
    return left
