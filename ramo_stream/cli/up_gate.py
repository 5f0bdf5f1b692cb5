"""`ramo up`'s selection gate: whether it runs, the labeler's measured rate, and the wiring.

With the gate on, pairs flow ``topics.pairs`` -> gate -> ``topics.selected`` -> labeler
bridge -> ``topics.labels``, and the pairs the budget leaves out go to ``topics.skipped``.
The labeler's rate is measured where it labels (the bridge's handler: pairs per second
spent labeling), drives the gate's budget unless ``select.budget_per_s`` is set, and is
saved when `ramo up` stops, so the next run's ``select.enabled=auto`` can compare it with
the pairs waiting (``core.label_rate.auto_gate``). The gate's thread keeps the Kafka loop,
M and the budget; the reward model it reads phi from runs in a Serve app of its own next to
the labeler (``serve.gate_features``), deployed only when the gate runs.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ramo_stream.config import Settings
from ramo_stream.core.label_rate import LabelerPace, auto_gate

log = logging.getLogger(__name__)


def rate_file(settings: Settings) -> Path:
    return Path(settings.paths.cache_dir) / "select" / "labeler_rate.json"


def saved_rate(settings: Settings) -> float | None:
    """The labeler rate the last `ramo up` measured (pairs/s), if any."""
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        rate = float(json.loads(rate_file(settings).read_text())["pairs_per_s"])
        return rate if rate > 0 else None
    return None


def save_rate(settings: Settings, pace: LabelerPace) -> None:
    rate = pace.rate()
    if rate is None or pace.pairs < 2:  # one pair is mostly the grader's warm-up
        return
    path = rate_file(settings)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"pairs_per_s": rate, "pairs": pace.pairs,
                                    "busy_s": pace.busy_s, "at": time.time()}))  # fmt: skip
    except OSError as e:
        log.warning("up: cannot save the labeler's rate to %s: %s", path, e)


def count_lines(files: tuple[Path, ...], limit: int | None) -> int:
    """Non-empty lines of the files to ingest (at most ``limit`` each): an upper bound on
    their pairs (malformed lines are dead-lettered, not labeled)."""
    total = 0
    for path in files:
        with path.open("rb") as f:
            n = sum(1 for line in f if line.strip())
        total += n if limit is None else min(n, limit)
    return total


def waiting_on_topic(settings: Settings, bootstrap: str) -> int:
    """Pairs on the pairs topic that neither the labeler nor the gate has committed (a broker
    that outlives `ramo up` keeps them from before); 0 when it cannot be read."""
    from ramo_stream.label.bridge import GROUP

    left = uncommitted(settings, bootstrap, settings.topics.pairs, [GROUP, settings.select.group])
    return left or 0


def uncommitted(settings: Settings, bootstrap: str, topic: str, groups: list[str]) -> int | None:
    """Records on ``topic`` past the furthest offset any of ``groups`` committed on the
    broker, partition by partition; None when it cannot be read. Partition ends are fetch
    high watermarks (``TopicCounts``: exact on tansu too)."""
    from ramo_stream.stream.kafka_io import TopicCounts, make_consumer

    counts = TopicCounts(bootstrap, settings.kafka, [topic])
    counts.sample(wait_s=5.0)
    consumers = []
    try:
        done: dict[Any, int] = {}
        for group in groups:
            c = make_consumer(bootstrap, settings.kafka, group)
            consumers.append(c)
            for tp in counts.ends.known():
                done[tp] = max(done.get(tp, 0), c.committed(tp) or 0)
        return sum(max(0, (counts.ends.get(tp) or 0) - n) for tp, n in done.items())
    except Exception as e:  # noqa: BLE001 - the caller decides what unknown means
        log.info("up: cannot read what is left on %s: %s", topic, e)
        return None
    finally:
        for c in consumers:
            with contextlib.suppress(Exception):
                c.close(autocommit=False)


def decide(settings: Settings, waiting: int) -> tuple[bool, str]:
    """select.enabled resolved: (on, the reason in words)."""
    s = settings.select
    if s.enabled != "auto":
        return s.enabled == "on", f"{s.enabled} (select.enabled={s.enabled})"
    rate = s.budget_per_s if s.budget_per_s is not None else saved_rate(settings)
    on, why = auto_gate(waiting, rate, settings.train.publish_every_s)
    return on, f"auto, {why}"


def timed(processor: Any, pace: LabelerPace) -> None:
    """Measure the labeler where it labels: wrap the bridge's handler so each batch it
    labels is observed (pairs, seconds)."""
    handler = processor.handler

    def handle(batch: list[Any]) -> None:
        started = time.monotonic()
        handler(batch)
        pace.observe(len(batch), time.monotonic() - started)

    processor.handler = handle


@dataclass
class Labeling:
    """The labeling side of `ramo up`: the bridge, and the gate in front of it when on."""

    bridge: Any  # the bridge's StreamProcessor
    gate: Any | None  # a GateRunner, or None
    pace: LabelerPace
    settings: Settings | None = None  # with bootstrap: to read what is left from the broker
    bootstrap: str | None = None

    def left_on_broker(self) -> int | None:
        """Accepted pairs not labeled yet, from the offsets the gate's and the labeler's
        groups committed on the broker (partitions this run never read included); None
        when it cannot be read."""
        from ramo_stream.label.bridge import GROUP

        if self.settings is None or self.bootstrap is None:
            return None
        s, t = self.settings, self.settings.topics
        if self.gate is None:
            return uncommitted(s, self.bootstrap, t.pairs, [GROUP])
        ungated = uncommitted(s, self.bootstrap, t.pairs, [s.select.group])
        selected = uncommitted(s, self.bootstrap, t.selected, [GROUP])
        return None if ungated is None or selected is None else ungated + selected

    def budget_text(self) -> str:
        return self.gate.gate.budget_text() if self.gate is not None else "-"

    def gate_summary(self) -> str:
        """What the gate did and where its features came from, for the stop lines."""
        assert self.gate is not None
        st, model = self.gate.stats, self.gate.gate.model
        line = (f"selection gate: {st.seen} pairs sorted, selected {st.selected}, skipped"
                f" {st.skipped}")  # fmt: skip
        if hasattr(model, "where"):
            line += (f"; features from {model.where()}: {model.pairs_scored} pairs in"
                     f" {model.requests} requests")  # fmt: skip
        return line + f"; {st.pairs_per_s():.1f} pairs/s while busy (features, scores, writes)"


def deploy_features(args: Any, settings: Settings) -> Any:
    """The gate's features app ("select") next to the labeler, from the labeler app's args
    (``LabelerAppArgs``: settings, ``gate_replicas``, ``gate_cpus``, ``gate_gpus``), and
    the proxy the gate reads features through. A replica that cannot load the model fails
    here, with Serve's reason."""
    from ray import serve

    from ramo_stream.serve.gate_features import (
        APP,
        FeaturesUnavailable,
        RemoteServedModel,
        build_app,
    )

    try:
        handle = serve.run(build_app(args), name=APP, route_prefix=None)
    except Exception as e:
        raise FeaturesUnavailable(
            f"the selection gate's features app {APP!r} did not deploy: {e} (its replica's"
            " log is under Ray's logs, serve/replica_*); or run with select.enabled=off"
        ) from e
    return RemoteServedModel(handle, settings, replicas=args.gate_replicas, app=APP)


def start_labeling(
    settings: Settings, bootstrap: str, labeler: Any, gate_on: bool, features: Any = None
) -> Labeling:
    """The bridge reading ``topics.selected`` behind a gate, or ``topics.pairs`` without.
    ``features``: where the gate reads phi from (``deploy_features``'s proxy in `ramo up`,
    or an in-process ``ServedModel``); needed when ``gate_on``."""
    from ramo_stream.label.bridge import make_bridge

    pace = LabelerPace()
    runner = None
    if gate_on:
        from ramo_stream.stream.gate import GateRunner, labeler_settings

        if features is None:
            raise ValueError("the gate needs a features source (deploy_features, ServedModel)")

        before = saved_rate(settings)  # until this run's labeler has labeled a batch

        def rate() -> float | None:
            now = pace.rate()
            return now if now is not None else before

        runner = GateRunner(settings, bootstrap, features, pace=rate)
        bridge = make_bridge(labeler_settings(settings), bootstrap, labeler)
    else:
        bridge = make_bridge(settings, bootstrap, labeler)
    timed(bridge, pace)
    return Labeling(bridge, runner, pace, settings, bootstrap)
