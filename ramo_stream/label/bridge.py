"""Kafka bridge: ramo.pairs -> labeler deployment -> ramo.labels, offsets after the acks.

A ``StreamProcessor`` reads pairs in batches (bad records to the DLQ, duplicates dropped,
a reused pair_id with new content to the DLQ as a conflict), sends each batch to the
labeler through its Serve handle, writes the LabeledPairs keyed by pair_id, and waits for
the acknowledgements before the processor commits. A batch whose labeling fails is
retried with exponential backoff; then each pair is tried alone and the ones that still
fail go to the DLQ with the error. Nothing is dropped silently. A failure of the deployment
itself (a replica died, Serve refused the call, no reply) is no pair's fault: the call is
sent again while Serve restarts the replica, for up to ``labeling.service_wait_s`` (which
also bounds one batch's labeling; a stop asked for meanwhile ends the wait), then the
bridge stops with ``LabelerUnavailable`` and the pairs stay uncommitted, none dead-lettered
(``stream/service_call.py``).

Nothing is labeled twice: an ``OutputLedger`` holds the pair_ids whose label is on
ramo.labels (acknowledged to this bridge, or found there when a partition is assigned:
labels written after a crash and before the commit). Such pairs are skipped, not labeled
again. A broker loss makes the bridge wait, rebuild its clients and carry on.
"""

from __future__ import annotations

from typing import Any

from ramo_stream.config import Settings
from ramo_stream.schemas import LabeledPair, ResponsePair
from ramo_stream.stream.dedup import OutputLedger
from ramo_stream.stream.kafka_io import make_consumer
from ramo_stream.stream.messages import ServiceUnavailable
from ramo_stream.stream.processor import Message, StreamProcessor
from ramo_stream.stream.service_call import wait_for_service
from ramo_stream.stream.setup import stream_processor, topic_writer

GROUP = "ramo-labeler"


class LabelerUnavailable(ServiceUnavailable):
    """The labeler deployment failed and did not come back within labeling.service_wait_s."""


def make_bridge(settings: Settings, bootstrap: str, labeler: Any) -> StreamProcessor[ResponsePair]:
    """``labeler``: a handle to LabelerDeployment (anything with ``label.remote(...)``)."""
    kafka = settings.kafka
    writer = topic_writer(settings, bootstrap)
    labels_topic = settings.topics.labels
    ledger = OutputLedger(
        labels_topic, lambda: make_consumer(bootstrap, kafka, None), capacity=kafka.dedup_window
    )

    def acked(topic: str, key: bytes | None) -> None:
        if topic == labels_topic and key is not None:
            ledger.add(key.decode())

    writer.on_ack = acked
    wait_s = settings.labeling.service_wait_s

    def gave_up(waited: float, attempts: int, e: BaseException) -> LabelerUnavailable:
        return LabelerUnavailable(
            f"the labeler deployment failed or did not answer for {waited:.0f} s ({attempts}"
            " attempts; last:"
            f" {type(e).__name__}: {e}). Its replicas' logs are under Ray's logs"
            " (serve/replica_*); if it was only slow (a batch of labeling.pair_batch pairs"
            " takes longer on this grader) or restarting slowly, raise"
            f" labeling.service_wait_s ({wait_s:g}). Nothing was committed or dead-lettered:"
            " on a broker that outlives this run (not the embedded one, whose topics end with"
            " it) the pairs are delivered again to the next run"
        )

    def handle(batch: list[Message[ResponsePair]]) -> None:
        # A retried batch may have had some labels acknowledged before it failed.
        todo = [m for m in batch if not ledger.done(m.record.pair_id)]
        if not todo:
            return
        payload = [m.record.model_dump(mode="json") for m in todo]
        labeled = wait_for_service(lambda: labeler.label.remote(payload), wait_s,
                                   "labeler: the labeler deployment", gave_up,
                                   stopping=lambda: processor.stopping())  # fmt: skip
        if len(labeled) != len(todo):
            raise RuntimeError(f"labeler returned {len(labeled)} labels for {len(todo)} pairs")
        for d in labeled:
            lp = LabeledPair.model_validate(d)
            writer.send(labels_topic, lp, key=lp.pair_id)
        writer.flush()  # acknowledged before the processor commits the pairs' offsets

    processor = stream_processor(
        settings,
        bootstrap,
        group=GROUP,
        topic=settings.topics.pairs,
        model=ResponsePair,
        handler=handle,
        stage="labeler",
        max_in_flight=settings.labeling.pair_batch,
        writer=writer,
        ledger=ledger,
    )
    return processor
