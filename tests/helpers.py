"""Helpers shared by test modules (not fixtures)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ramo_stream.stream.kafka_io import read_topic

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def shared_file(name: str) -> Path:
    """A file of ../shared/data, or skip the test saying why."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} is absent: the shared human-labelled data is not next to the repo")
    return path


def read_all(broker: str, topic: str) -> list[bytes]:
    """Every value on a topic, read without a group up to the fetch high watermarks."""
    return [m.value for m in read_topic(broker, topic)]
