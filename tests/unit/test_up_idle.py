"""`ramo up --exit-when-idle`: idle means nothing waits to be labeled and nothing moved; a
labeler slower than the idle window is not idle. Pure logic of ``_watch`` over fakes of the
view and the bridge (the loop itself runs in tests/integration/test_up.py)."""

from __future__ import annotations

import io
import threading
import time
from types import SimpleNamespace
from typing import Any

from ramo_stream.cli.up_loop import Component, UpOptions, _watch
from ramo_stream.cli.up_view import Snapshot
from ramo_stream.config import load_settings


class FakeView:
    """Snapshots with fixed counts: ``pairs`` on the topic, ``labels`` written."""

    def __init__(self, pairs: int, labels: int) -> None:
        self.pairs, self.labels = pairs, labels

    def draw(self, selector: str, status: str = "") -> Snapshot:
        return Snapshot(time.monotonic(), self.pairs, self.labels, 0, 0)


def bridge(committed: int) -> Any:
    health = SimpleNamespace(state="ok", line=lambda: "ok")
    return SimpleNamespace(stats=SimpleNamespace(committed={0: committed}), health=health)


def parts() -> list[Component]:
    """ingest (done: no thread), then the bridge and trainer (running)."""
    running = []
    for name in ("labeler", "trainer"):
        c = Component(name)
        c.start(lambda stop, _fin: stop.wait())
        running.append(c)
    return [Component("ingest"), *running]


def watch(
    view: FakeView, committed: int, stop_after_s: float, on_broker: int | None = None
) -> tuple[Any, bool, float]:
    settings = load_settings(None, {})
    stop = threading.Event()
    timer = threading.Timer(stop_after_s, stop.set)
    timer.start()
    ps = parts()
    started = time.monotonic()
    try:
        options = UpOptions(exit_when_idle_s=0.2, view_every_s=0.05)
        labeling = SimpleNamespace(gate=None, bridge=bridge(committed))
        if on_broker is not None:  # what the groups' offsets on the broker say is left
            labeling.left_on_broker = lambda: on_broker
        failed, idle = _watch(view, settings, options, stop, io.StringIO(), ps, labeling)
    finally:
        timer.cancel()
        for c in ps:
            c.halt(5)
    return failed, idle, time.monotonic() - started


def test_pairs_waiting_for_a_slow_labeler_are_not_idle() -> None:
    # 10 pairs, 4 labeled; nothing moves for far longer than the 0.2 s window.
    failed, idle, took = watch(FakeView(pairs=10, labels=4), committed=4, stop_after_s=1.5)
    assert failed is None and not idle and took >= 1.4  # stopped by the stop event only


def test_idle_once_every_pair_is_labeled_and_nothing_moves() -> None:
    failed, idle, took = watch(FakeView(pairs=10, labels=10), committed=10, stop_after_s=10)
    assert failed is None and idle and took < 5


def test_pairs_of_an_earlier_run_already_labeled_are_not_waiting() -> None:
    # A broker that outlives `ramo up`: 10 pairs on the topic, this run committed 4 of them
    # (the rest were labeled by an earlier run, on partitions this run never read).
    failed, idle, took = watch(FakeView(pairs=10, labels=4), committed=4, stop_after_s=10,
                               on_broker=0)  # fmt: skip
    assert failed is None and idle and took < 5


def test_pairs_left_on_the_broker_keep_the_loop_running() -> None:
    failed, idle, took = watch(FakeView(pairs=10, labels=4), committed=4, stop_after_s=1.5,
                               on_broker=6)  # fmt: skip
    assert failed is None and not idle and took >= 1.4
