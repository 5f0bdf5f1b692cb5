"""Shared fixtures. Integration tests get a real tansu broker (one per session) and a
fresh topic per test, so tests never see each other's records."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

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


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packaged local models, prepared once per test session (~30 s on 2 cores)."""
    pytest.importorskip("transformers", reason="the models extra is not installed")
    from ramo_stream.local_models import KNOWN, prepare

    root = tmp_path_factory.mktemp("models")
    for name in KNOWN:
        prepare(name, root)
    return root
