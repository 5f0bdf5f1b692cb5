"""Kafka bridge: ramo.pairs -> labeler deployment -> ramo.labels, offsets after the acks.

A ``StreamProcessor`` reads pairs in batches (bad records to the DLQ, duplicates dropped),
sends each batch to the labeler through its Serve handle, writes the LabeledPairs keyed by
pair_id, and waits for the acknowledgements before the processor commits. A batch whose
labeling fails is retried with exponential backoff; then each pair is tried alone and the
ones that still fail go to the DLQ with the error. Nothing is dropped silently.
"""

from __future__ import annotations

from typing import Any

from ramo_stream.config import Settings
from ramo_stream.schemas import LabeledPair, ResponsePair
from ramo_stream.stream.kafka_io import TopicWriter, make_consumer, make_producer
from ramo_stream.stream.processor import Message, StreamProcessor

GROUP = "ramo-labeler"


def make_bridge(settings: Settings, bootstrap: str, labeler: Any) -> StreamProcessor[ResponsePair]:
    """``labeler``: a handle to LabelerDeployment (anything with ``label.remote(...)``)."""
    writer = TopicWriter(make_producer(bootstrap, settings.kafka))
    labels_topic = settings.topics.labels

    def handle(batch: list[Message[ResponsePair]]) -> None:
        payload = [m.record.model_dump(mode="json") for m in batch]
        labeled = labeler.label.remote(payload).result()
        if len(labeled) != len(batch):
            raise RuntimeError(f"labeler returned {len(labeled)} labels for {len(batch)} pairs")
        for d in labeled:
            lp = LabeledPair.model_validate(d)
            writer.send(labels_topic, lp, key=lp.pair_id)
        writer.flush()  # acknowledged before the processor commits the pairs' offsets

    consumer = make_consumer(bootstrap, settings.kafka, GROUP, settings.topics.pairs,
                             max_poll_records=settings.labeling.pair_batch)  # fmt: skip
    return StreamProcessor(
        consumer, writer, ResponsePair, handle,
        dlq_topic=settings.topics.dlq, stage="labeler",
        max_in_flight=settings.labeling.pair_batch,
        dedup_window=settings.kafka.dedup_window,
        retries=settings.kafka.handler_retries, backoff_s=settings.kafka.retry_backoff_s,
    )  # fmt: skip
