"""Shared fixtures. Integration tests get a real tansu broker (one per session) and a
fresh topic per test, so tests never see each other's records."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest


@pytest.fixture(scope="session")
def broker() -> Iterator[str]:
    from ramo_stream.stream.broker import EmbeddedBroker

    with EmbeddedBroker(port=0) as b:
        yield b.bootstrap


@pytest.fixture
def new_topic(broker: str) -> Callable[..., str]:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    def make(partitions: int = 4, prefix: str = "t") -> str:
        name = f"{prefix}-{uuid.uuid4().hex[:10]}"
        admin = KafkaAdminClient(bootstrap_servers=broker)
        try:
            admin.create_topics([NewTopic(name, partitions, 1)])
        finally:
            admin.close()
        return name

    return make
