"""The stream stage built from settings: the one way every entry point wires a consuming
stage (``stream_processor``) and ingest (``ingest_path``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel

from ramo_stream.config import Settings
from ramo_stream.stream.dedup import OutputLedger
from ramo_stream.stream.ingest import IngestReport, ingest_file
from ramo_stream.stream.kafka_io import TopicWriter, make_consumer, make_producer
from ramo_stream.stream.messages import Handler
from ramo_stream.stream.processor import StreamProcessor

R = TypeVar("R", bound=BaseModel)


def topic_writer(settings: Settings, bootstrap: str) -> TopicWriter:
    """A writer whose producer is rebuilt after a broker loss."""
    return TopicWriter(
        make_producer(bootstrap, settings.kafka), lambda: make_producer(bootstrap, settings.kafka)
    )


def stream_processor(
    settings: Settings,
    bootstrap: str,
    *,
    group: str,
    topic: str,
    model: type[R],
    handler: Handler[R],
    stage: str,
    max_in_flight: int,
    writer: TopicWriter | None = None,
    ledger: OutputLedger | None = None,
    key_of: Callable[[R], str] | None = None,
) -> StreamProcessor[R]:
    """A ``StreamProcessor`` reading ``topic`` as ``group``: dead letters to ``topics.dlq``
    (cut at ``topics.dlq_original_bytes``, the rest spilled to ``paths.dead_letters_dir``),
    dedup, retries and consumer rebuilds as ``kafka.*`` says."""
    kafka = settings.kafka

    def consumer() -> Any:
        return make_consumer(bootstrap, kafka, group, topic, max_poll_records=max_in_flight)

    extra: dict[str, Any] = {} if key_of is None else {"key_of": key_of}
    return StreamProcessor(
        consumer(), writer or topic_writer(settings, bootstrap), model, handler,
        dlq_topic=settings.topics.dlq, stage=stage,
        max_in_flight=max_in_flight,
        dedup_window=kafka.dedup_window,
        retries=kafka.handler_retries, backoff_s=kafka.retry_backoff_s,
        ledger=ledger, make_consumer=consumer,
        dlq_original_bytes=settings.topics.dlq_original_bytes,
        spill_dir=settings.paths.dead_letters_dir,
        **extra,
    )  # fmt: skip


def ingest_path(
    settings: Settings,
    bootstrap: str,
    path: Path,
    *,
    as_labels: bool = False,
    **kw: Any,
) -> IngestReport:
    """``path`` to the pairs topic (or, ``as_labels``, to the labels topic as human labels);
    bad lines to the DLQ. ``kw``: ``ingest_file``'s options (limit, source, on_line)."""
    producer = make_producer(bootstrap, settings.kafka)
    topic = settings.topics.labels if as_labels else settings.topics.pairs
    try:
        return ingest_file(
            path, TopicWriter(producer), topic, settings.topics.dlq, as_labels=as_labels, **kw
        )
    finally:
        producer.close()
