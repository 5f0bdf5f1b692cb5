"""Shared fixtures. Integration tests get a real tansu broker (one per session) and a
fresh topic per test, so tests never see each other's records."""

from __future__ import annotations

import gc
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


@pytest.fixture(scope="session")
def ray_serve() -> Iterator[int]:
    """One local Ray, with Serve's HTTP proxy on 127.0.0.1, for the whole test process;
    yields Serve's port. Modules that deploy apps delete them when they finish, so each
    starts with the cluster's CPUs free.

    Ray starts once per process, not once per module: a pytest process that ran
    ray.init/ray.shutdown four times died of a segfault in CI (stop 10), in unit tests a
    minute after the last shutdown. Not reproduced here; the likeliest cause is Ray objects
    of an ended session being finalised by a later garbage collection.
    """
    ray = pytest.importorskip("ray", reason="the serve extra (ray[serve]) is not installed")
    from ray import serve

    from ramo_stream.stream.broker import free_port

    port = free_port()
    # Logical CPUs, so several small apps fit at once. The dashboard serves the state API
    # that Ray Train's placement-group cleaner asks; loopback only.
    ray.init(num_cpus=4, include_dashboard=True, dashboard_host="127.0.0.1",
             logging_level="WARNING")  # fmt: skip
    serve.start(http_options={"host": "127.0.0.1", "port": port},
                logging_config={"enable_access_log": False})  # fmt: skip
    yield port
    serve.shutdown()
    gc.collect()  # finalise Ray handles held in reference cycles while the driver is connected
    ray.shutdown()
