"""The selection gate: ramo.pairs -> score -> top pairs to ramo.selected, the rest to ramo.skipped.

A ``StreamProcessor`` polls pairs (bad records to the DLQ, duplicates dropped); the handler
computes each pair's features with the currently served reward model (the registry's
``ServedModel``, handed in by the caller), scores them (``core.fisher``), and within each
window sends the best pairs the budget allows to the selected topic and every other pair to
the skipped topic. Both carry the unchanged pair with ``metadata["selection"]`` = {score,
strategy, model_version, window, rank, window_size, selected}, so the labeler reads the
selected topic as it read the pairs topic, and a later pass can label skipped pairs by
pointing a labeler at that topic. The handler returns only after both topics acknowledged
every write; then the processor commits the offsets (at-least-once, no loss).

Windows never span polls, so no pair is held past its commit: with ``window_pairs`` a poll
(at most ``max_in_flight`` pairs) is cut into windows of that many pairs and a shorter tail
gets a pro-rated budget; with ``window_s`` the gate polls once per window and the poll is the
window. When the stream is quiet (a poll shorter than a window) the loop lingers
``linger_s`` before the next poll so windows fill.

M (the Fisher information of the pairs sent to be labeled) lives in this process. On a new
reward-model version the features change; M restarts from lambda I unless
``keep_m_on_new_version``. A handler retry restores M and the budget first, so a retried
batch is not counted twice. A crashed gate restarts with M = lambda I (not persisted).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from ramo_stream.config import Settings
from ramo_stream.core.fisher import Budget, FisherInfo, select_window
from ramo_stream.schemas import ResponsePair
from ramo_stream.stream.kafka_io import TopicWriter
from ramo_stream.stream.processor import Message, StreamProcessor

log = logging.getLogger(__name__)


@dataclass
class GateStats:
    seen: int = 0
    selected: int = 0
    skipped: int = 0
    windows: int = 0
    model_version: int | None = None
    reloads: int = 0
    busy_s: float = 0.0  # time in the handler (features, scores, writes)

    def pairs_per_s(self) -> float:
        return self.seen / self.busy_s if self.busy_s else 0.0


class SelectionGate:
    """The handler state: the served model, M, the budget; ``handle`` is the processor's."""

    def __init__(self, settings: Settings, writer: TopicWriter, model: Any) -> None:
        self.settings = settings
        self.s = settings.select
        self.writer = writer
        self.model = model  # ServedModel, or anything with refresh(now), featurizer, version
        self.budget = Budget(self.s.budget, self.s.window_pairs, self.s.window_s)
        self.info: FisherInfo | None = None
        self.rng = random.Random(self.s.seed)
        self.stats = GateStats()

    def _reset_info(self, dim: int) -> None:
        import torch

        self.info = FisherInfo.prior(torch.eye(dim, dtype=torch.float64), self.s.lam)

    def _windows(self, n: int) -> list[range]:
        size = self.s.window_pairs or n
        return [range(i, min(i + size, n)) for i in range(0, n, size)]

    def handle(self, batch: list[Message[ResponsePair]]) -> None:
        started = time.monotonic()
        if self.model.refresh(started):
            self.stats.reloads += 1
            if self.info is None or not self.s.keep_m_on_new_version:
                self._reset_info(self.model.featurizer.dim)
        if self.info is None:
            self._reset_info(self.model.featurizer.dim)
        assert self.info is not None
        # A failed write makes the processor call again with the same batch: undo first.
        info, budget, rng = self.info, self.budget, self.rng
        saved = (info.m_inv, info.labeled, budget.credit, budget._last, rng.getstate())
        try:
            self._handle(batch, started)
        except BaseException:
            info.m_inv, info.labeled, budget.credit, budget._last = saved[:4]
            rng.setstate(saved[4])
            raise
        self.stats.busy_s += time.monotonic() - started

    def _handle(self, batch: list[Message[ResponsePair]], now: float) -> None:
        pairs = [m.record for m in batch]
        feats = self.model.featurizer.pairs(
            [p.prompt for p in pairs], [p.response_a for p in pairs], [p.response_b for p in pairs]
        )
        topics = self.settings.topics
        counts = [0, 0]
        for window in self._windows(len(pairs)):
            idx = list(window)
            x, p = feats.x[idx], feats.p[idx]
            k = len(idx) if self.s.strategy == "all" else self.budget.allowance(len(idx), now)
            info = self.info if self.s.strategy == "d-opt" else None
            chosen, scores = select_window(self.s.strategy, x, p, k, info, self.rng, self.s.greedy)
            rank = {j: r for r, j in enumerate(sorted(range(len(idx)), key=lambda j: -scores[j]))}
            picked = set(chosen)
            for j, i in enumerate(idx):
                note = {
                    "score": scores[j],
                    "strategy": self.s.strategy,
                    "model_version": self.model.version,
                    "window": self.stats.windows,  # this gate's window counter, for audits
                    "rank": rank[j],
                    "window_size": len(idx),
                    "selected": j in picked,
                }
                record = self._annotate(pairs[i], note)
                topic = topics.selected if j in picked else topics.skipped
                self.writer.send(topic, record, key=record.pair_id)
            counts[0] += len(picked)
            counts[1] += len(idx) - len(picked)
            self.stats.windows += 1
        self.writer.flush()  # both topics acknowledged before the processor commits
        self.stats.seen += len(pairs)
        self.stats.selected += counts[0]
        self.stats.skipped += counts[1]
        self.stats.model_version = self.model.version

    @staticmethod
    def _annotate(pair: ResponsePair, note: dict[str, Any]) -> ResponsePair:
        try:
            return ResponsePair.model_validate(
                {**pair.model_dump(), "metadata": {**pair.metadata, "selection": note}}
            )
        except ValueError:  # metadata at its size limit: the pair goes on without the note
            return pair


def make_gate(
    settings: Settings, bootstrap: str, model: Any
) -> tuple[StreamProcessor[ResponsePair], SelectionGate]:
    """The gate's processor and its handler state. ``model`` gives the features: the
    registry's ``ServedModel`` (``registry.features``), passed in so this stage does not
    import a later one."""
    from ramo_stream.stream.broker import ensure_topics
    from ramo_stream.stream.setup import stream_processor, topic_writer

    s, t = settings.select, settings.topics
    ensure_topics(bootstrap, t, [t.pairs, t.selected, t.skipped, t.dlq])
    writer = topic_writer(settings, bootstrap)
    gate = SelectionGate(settings, writer, model)
    processor = stream_processor(
        settings,
        bootstrap,
        group=s.group,
        topic=t.pairs,
        model=ResponsePair,
        handler=gate.handle,
        stage="select",
        max_in_flight=s.max_in_flight,
        writer=writer,
    )
    return processor, gate


def run_gate(
    processor: StreamProcessor[ResponsePair],
    settings: Settings,
    stop: threading.Event | None = None,
    idle_timeout_s: float | None = None,
    until_caught_up: bool = False,
) -> None:
    """Poll, select, commit until stopped; one poll per window with ``window_s``."""
    s = settings.select
    stop = stop or threading.Event()
    idle_since = time.monotonic()
    while not stop.is_set():
        started = time.monotonic()
        n = processor.process_once()
        if n:
            idle_since = time.monotonic()
        elif (until_caught_up and processor.caught_up()) or (
            idle_timeout_s is not None and time.monotonic() - idle_since > idle_timeout_s
        ):
            return
        if s.window_s is not None:
            stop.wait(max(0.0, s.window_s - (time.monotonic() - started)))
        elif 0 < n < (s.window_pairs or 0):
            stop.wait(s.linger_s)


class GateRunner:
    """The gate as a component of ``ramo up``: ``run(stop)`` blocks until ``stop`` is set;
    ``stats`` (selected / skipped / budget) can be read from another thread meanwhile."""

    def __init__(self, settings: Settings, bootstrap: str, model: Any) -> None:
        self.settings = settings
        self.processor, self.gate = make_gate(settings, bootstrap, model)

    @property
    def stats(self) -> GateStats:
        return self.gate.stats

    def run(self, stop: threading.Event) -> GateStats:
        try:
            run_gate(self.processor, self.settings, stop)
        finally:
            self.processor.close()
            self.gate.writer.producer.close()
        return self.gate.stats


def labeler_settings(settings: Settings) -> Settings:
    """The settings a labeler behind the gate uses: it reads the selected topic as its pairs."""
    topics = settings.topics.model_copy(update={"pairs": settings.topics.selected})
    return settings.model_copy(update={"topics": topics})
