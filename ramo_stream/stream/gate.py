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

The budget is ``select.budget_per_s`` labels per second when set, else the rate ``pace``
reports (``ramo up`` hands in the labeler's measured rate), both converted per window by
``core.label_rate.RateBudget``; with neither, ``select.budget`` pairs per window
(``core.fisher.Budget``).

M (the Fisher information of the pairs sent to be labeled) lives in this process and is
saved under ``paths.cache_dir/select/`` (``gate_state``), so a restarted gate carries on
with it when the served model is the same. On a new reward-model version the features
change; M restarts from lambda I unless ``keep_m_on_new_version``. A handler retry restores
M and the budget first, so a retried batch is not counted twice.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ramo_stream.config import Settings
from ramo_stream.core.fisher import Budget, FisherInfo, select_window
from ramo_stream.core.label_rate import RateBudget
from ramo_stream.schemas import ResponsePair
from ramo_stream.stream.gate_state import InfoStore, model_identity
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
    per_s: float | None = None  # the rate budget of the last poll (None: pairs per window)
    m_loaded: bool = False  # M was carried over from a saved state at start

    def pairs_per_s(self) -> float:
        return self.seen / self.busy_s if self.busy_s else 0.0


class SelectionGate:
    """The handler state: the served model, M, the budget; ``handle`` is the processor's."""

    def __init__(
        self,
        settings: Settings,
        writer: TopicWriter,
        model: Any,
        pace: Callable[[], float | None] | None = None,
        store: InfoStore | None = None,
    ) -> None:
        self.settings = settings
        self.s = settings.select
        self.writer = writer
        self.model = model  # ServedModel, or anything with refresh(now), featurizer, version
        self.pace = pace  # the labeler's measured rate (pairs/s), when known
        self.store = store  # where M is saved between runs (None: not saved)
        self.budget = Budget(self.s.budget, self.s.window_pairs, self.s.window_s)
        self.rate_budget = RateBudget(time.monotonic())
        self.info: FisherInfo | None = None
        self.rng = random.Random(self.s.seed)
        self.stats = GateStats()

    def _reset_info(self, dim: int, first: bool = False) -> None:
        import torch

        if first and self.store is not None:
            saved = self.store.load(model_identity(self.model), self.s.lam, dim,
                                    any_version=self.s.keep_m_on_new_version)  # fmt: skip
            if saved is not None:
                self.info, self.stats.m_loaded = saved, True
                log.info("select: M carried over (%d pairs) from %s", saved.labeled,
                         self.store.path)  # fmt: skip
                return
        self.info = FisherInfo.prior(torch.eye(dim, dtype=torch.float64), self.s.lam)

    def per_s(self) -> float | None:
        """The budget in labels per second now: set, else measured; None: per window."""
        if self.s.budget_per_s is not None:
            return self.s.budget_per_s
        return self.pace() if self.pace is not None else None

    def budget_text(self) -> str:
        """The budget in words, for the live view and reports."""
        if self.s.strategy == "all":
            return "none (strategy all: every pair)"
        rate = self.stats.per_s
        if rate is not None:
            how = "set" if self.s.budget_per_s is not None else "measured labeler rate"
            return f"{rate:.2f} labels/s ({how})"
        window = f"{self.s.window_pairs} pairs" if self.s.window_pairs else f"{self.s.window_s:g} s"
        return f"{self.s.budget:g} per {window}"

    def save_info(self, now: float, force: bool = False) -> None:
        """Write M to the store (every SAVE_EVERY_S seconds, or now with ``force``)."""
        if self.store is None or self.info is None or not (force or self.store.due(now)):
            return
        try:
            self.store.save(self.info, model_identity(self.model), self.s.lam, now)
        except OSError as e:  # a full disk costs the carry-over, not the gate
            log.warning("select: cannot save M to %s: %s", self.store.path, e)

    def _windows(self, n: int) -> list[range]:
        size = self.s.window_pairs or n
        return [range(i, min(i + size, n)) for i in range(0, n, size)]

    def handle(self, batch: list[Message[ResponsePair]]) -> None:
        started = time.monotonic()
        replaced = self.model.refresh(started)  # True on the first load too (ServedModel)
        if self.info is None:  # the first poll: a saved M of this model carries over
            self._reset_info(self.model.featurizer.dim, first=True)
        elif replaced:
            self.stats.reloads += 1
            if not self.s.keep_m_on_new_version:
                self._reset_info(self.model.featurizer.dim)
        assert self.info is not None
        # A failed write makes the processor call again with the same batch: undo first.
        info, budget, rate, rng = self.info, self.budget, self.rate_budget, self.rng
        saved = (info.m_inv, info.labeled, budget.credit, budget._last, rate.credit, rate._last,
                 rng.getstate())  # fmt: skip
        try:
            self._handle(batch, started)
        except BaseException:
            info.m_inv, info.labeled, budget.credit, budget._last = saved[:4]
            rate.credit, rate._last = saved[4:6]
            rng.setstate(saved[6])
            raise
        self.stats.busy_s += time.monotonic() - started
        self.save_info(time.monotonic())

    def _handle(self, batch: list[Message[ResponsePair]], now: float) -> None:
        pairs = [m.record for m in batch]
        feats = self.model.featurizer.pairs(
            [p.prompt for p in pairs], [p.response_a for p in pairs], [p.response_b for p in pairs]
        )
        topics = self.settings.topics
        counts = [0, 0]
        windows = self._windows(len(pairs))
        per_s = self.per_s()
        self.stats.per_s = per_s
        if self.s.strategy == "all":
            ks = [len(w) for w in windows]
        elif per_s is not None:
            ks = self.rate_budget.allowances([len(w) for w in windows], now, per_s)
        else:
            ks = [self.budget.allowance(len(w), now) for w in windows]
        for window, k in zip(windows, ks, strict=True):
            idx = list(window)
            x, p = feats.x[idx], feats.p[idx]
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


def info_store(settings: Settings) -> InfoStore:
    """Where this gate's M is saved: ``paths.cache_dir/select/<group>.pt``."""
    return InfoStore(Path(settings.paths.cache_dir) / "select", settings.select.group)


def make_gate(
    settings: Settings,
    bootstrap: str,
    model: Any,
    pace: Callable[[], float | None] | None = None,
) -> tuple[StreamProcessor[ResponsePair], SelectionGate]:
    """The gate's processor and its handler state. ``model`` gives the features: the
    registry's ``ServedModel`` (``registry.features``), passed in so this stage does not
    import a later one; ``pace``, the labeler's measured rate, when the caller knows it."""
    from ramo_stream.stream.broker import ensure_topics
    from ramo_stream.stream.setup import stream_processor, topic_writer

    s, t = settings.select, settings.topics
    ensure_topics(bootstrap, t, [t.pairs, t.selected, t.skipped, t.dlq])
    writer = topic_writer(settings, bootstrap)
    gate = SelectionGate(settings, writer, model, pace, info_store(settings))
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
    finish: threading.Event | None = None,
) -> None:
    """Poll, select, commit until stopped; one poll per window with ``window_s``. Once
    ``finish`` is set, stop as soon as the pairs topic is caught up (a drain)."""
    s = settings.select
    stop = stop or threading.Event()
    idle_since = time.monotonic()
    while not stop.is_set():
        started = time.monotonic()
        n = processor.process_once()
        draining = until_caught_up or (finish is not None and finish.is_set())
        idle = idle_timeout_s is not None and time.monotonic() - idle_since > idle_timeout_s
        if n:
            idle_since = time.monotonic()
        elif (draining and processor.caught_up()) or idle:
            return
        if s.window_s is not None:
            stop.wait(max(0.0, s.window_s - (time.monotonic() - started)))
        elif 0 < n < (s.window_pairs or 0):
            stop.wait(s.linger_s)


class GateRunner:
    """The gate as a component of ``ramo up``: ``run(stop, finish)`` blocks until ``stop``
    is set, or, once ``finish`` is set, until the pairs topic is caught up; ``stats``
    (selected / skipped / budget) can be read from another thread meanwhile."""

    def __init__(
        self,
        settings: Settings,
        bootstrap: str,
        model: Any,
        pace: Callable[[], float | None] | None = None,
    ) -> None:
        self.settings = settings
        self.processor, self.gate = make_gate(settings, bootstrap, model, pace)

    @property
    def stats(self) -> GateStats:
        return self.gate.stats

    def run(self, stop: threading.Event, finish: threading.Event | None = None) -> GateStats:
        try:
            run_gate(self.processor, self.settings, stop, finish=finish)
        finally:
            self.gate.save_info(time.monotonic(), force=True)
            self.processor.close()
            self.gate.writer.producer.close()
        return self.gate.stats


def labeler_settings(settings: Settings) -> Settings:
    """The settings a labeler behind the gate uses: it reads the selected topic as its pairs."""
    topics = settings.topics.model_copy(update={"pairs": settings.topics.selected})
    return settings.model_copy(update={"topics": topics})
