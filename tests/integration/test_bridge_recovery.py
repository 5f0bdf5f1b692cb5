"""The labeler bridge on a real broker, with a stand-in labeler (the bridge is what is
under test; the real labeler app is in test_serve_labeler.py): a crash between "labels
written" and "offsets committed" labels nothing twice, and a broker restart under a
running bridge is survived without restarting it."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ramo_stream.config import Settings, load_settings
from ramo_stream.label.bridge import make_bridge
from ramo_stream.schemas import LabeledPair, ResponsePair
from ramo_stream.stream.broker import EmbeddedBroker, ensure_topics, free_port
from ramo_stream.stream.kafka_io import read_topic
from tests.helpers import send_pairs

pytestmark = pytest.mark.integration


class Reply:
    """What a Serve handle's ``remote()`` returns: ``result(timeout_s=...)``."""

    def __init__(self, value: list[dict[str, Any]]) -> None:
        self.value = value

    def result(self, timeout_s: float | None = None) -> list[dict[str, Any]]:
        return self.value


class StandInLabeler:
    """``label.remote(payload).result()`` like a Serve handle; always prefers A."""

    def __init__(self) -> None:
        self.label = self
        self.calls = 0

    def remote(self, payload: list[dict[str, Any]]) -> Reply:
        self.calls += 1
        return Reply([
            LabeledPair(pair=ResponsePair.model_validate(p), preferred="a", margin=0.5,
                        labeler="stand-in").model_dump(mode="json")
            for p in payload
        ])  # fmt: skip


class Crash(BaseException):
    """Stands for kill -9: nothing after the hook runs, nothing is committed."""


def settings_for(tmp_path: Path, topics: dict[str, str]) -> Settings:
    return load_settings(overrides={
        **{f"topics.{k}": v for k, v in topics.items()},
        "paths.cache_dir": str(tmp_path), "labeling.pair_batch": 4,
        "kafka.retry_backoff_s": 0.2,
    })  # fmt: skip


def labels_on(bootstrap: str, topic: str) -> Counter[str]:
    return Counter(LabeledPair.model_validate_json(m.value).pair_id
                   for m in read_topic(bootstrap, topic))  # fmt: skip


def pairs(n: int, tag: str) -> list[ResponsePair]:
    return [ResponsePair(prompt=f"{tag} {i}", response_a="a", response_b="b") for i in range(n)]


def test_crash_between_labels_written_and_commit_labels_nothing_twice(
    broker: str, new_topic: Callable[..., str], tmp_path: Path
) -> None:
    names = {"pairs": new_topic(2), "labels": new_topic(2), "dlq": new_topic(1)}
    settings = settings_for(tmp_path, names)
    sent = pairs(10, "crash")
    send_pairs(broker, names["pairs"], sent)

    first = make_bridge(settings, broker, StandInLabeler())
    done = 0

    def crash_on_second_batch(msgs: list[Any]) -> None:
        nonlocal done
        done += 1
        if done == 2:
            raise Crash  # labels of this batch are acknowledged; its offsets never will be

    first.before_commit = crash_on_second_batch
    with pytest.raises(Crash):
        first.run(idle_timeout_s=60)
    first.close()
    written_before = labels_on(broker, names["labels"])
    assert sum(written_before.values()) == 8  # two batches of 4: one committed, one not

    second_labeler = StandInLabeler()
    second = make_bridge(settings, broker, second_labeler)
    stats = second.run(until_caught_up=True, idle_timeout_s=60)
    second.close()
    labels = labels_on(broker, names["labels"])
    assert set(labels) == {p.pair_id for p in sent}
    assert max(labels.values()) == 1, [k for k, v in labels.items() if v > 1]
    assert stats.already_written == 4  # the crashed batch: found on the topic, not relabeled


def test_bridge_survives_a_broker_restart(tmp_path: Path) -> None:
    port = free_port()
    names = {"pairs": "r.pairs", "labels": "r.labels", "dlq": "r.dlq"}
    settings = settings_for(tmp_path, names)
    b = EmbeddedBroker(port=port, log_path=tmp_path / "broker.log")
    b.start()
    stop = threading.Event()
    thread: threading.Thread | None = None
    try:
        ensure_topics(b.bootstrap, settings.topics)
        bridge = make_bridge(settings, b.bootstrap, StandInLabeler())
        thread = threading.Thread(target=bridge.run, kwargs={"stop": stop}, daemon=True)
        thread.start()
        before = pairs(6, "before")
        send_pairs(b.bootstrap, names["pairs"], before)
        want = {p.pair_id for p in before}
        wait_for(lambda: set(labels_on(b.bootstrap, names["labels"])) >= want)

        b.stop()  # memory storage: topics, groups and offsets are gone with it
        time.sleep(8)
        b.start()  # same port
        ensure_topics(b.bootstrap, settings.topics)
        after = pairs(6, "after")
        send_pairs(b.bootstrap, names["pairs"], after)
        wait_for(lambda: set(labels_on(b.bootstrap, names["labels"])) >= {p.pair_id for p in after},
                 timeout_s=180)  # fmt: skip
        assert thread.is_alive()
        assert bridge.health.state == "ok"
        assert bridge.stats.dead_lettered == 0  # a broker outage is nobody's record's fault
    finally:
        stop.set()
        if thread is not None:
            thread.join(60)
        b.stop()


def wait_for(cond: Callable[[], bool], timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(1)
    raise AssertionError(f"not reached within {timeout_s}s")
