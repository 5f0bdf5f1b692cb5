"""`ramo up`'s live view: one snapshot of the loop (topic sizes, versions, rewards served)
every few seconds, drawn in place on a terminal or, elsewhere, logged when it changes."""

from __future__ import annotations

import dataclasses
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TextIO

from ramo_stream.config import Settings
from ramo_stream.core.counts import growth_rate
from ramo_stream.core.stats import describe_accuracy


@dataclass(frozen=True)
class Snapshot:
    at: float  # time.monotonic()
    pairs: int  # records on the pairs topic (junk included)
    labels: int
    dead_letters: int
    scored: int  # scoring requests answered by the reward service
    scored_rbr: int = 0  # of them, with the Rule-Based Reward added
    version: int | None = None
    version_created: datetime | None = None
    trained: int = 0  # pairs the served version was trained on
    labels_read: int = 0  # labels behind the served version (trained or held out)
    heldout_accuracy: float | None = None
    heldout_size: int = 0
    selected: int | None = None  # on the gate's topics; None when the gate does not run
    skipped: int | None = None


SCORING_ENDPOINTS = ("/v1/score", "/v1/compare", "/get_reward")


def scored_requests(metrics_text: str, family_name: str = "ramo_reward_requests") -> int:
    """Answered scoring requests in a Prometheus scrape of the reward service (those with
    the Rule-Based Reward: ``family_name="ramo_reward_rbr_requests"``)."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0.0
    for family in text_string_to_metric_families(metrics_text):
        if family.name != family_name:
            continue
        for sample in family.samples:
            endpoint = sample.labels.get("endpoint")
            if sample.name.endswith("_total") and endpoint in SCORING_ENDPOINTS:
                total += sample.value
    return int(total)


def rbr_words(mode: str, rbr_rate: float | None) -> str:
    """The reward service's Rule-Based Reward in the view: its serve.rbr mode, and the
    rate of requests that got it."""
    if mode == "off":
        return "RBR off"
    asked = "every request" if mode == "default" else "on request"
    return f"RBR {asked}, {'-' if rbr_rate is None else f'{rbr_rate:.2f}/s'}"


def rate(history: deque[Snapshot], count: Callable[[Snapshot], int]) -> float | None:
    """Per-second growth of ``count`` over the snapshots kept (None until two exist);
    never negative (see ``growth_rate``)."""
    if len(history) < 2:
        return None
    first, last = history[0], history[-1]
    return growth_rate((first.at, count(first)), (last.at, count(last)))


def render(
    snap: Snapshot,
    history: deque[Snapshot],
    selector: str,
    url: str,
    budget: str | None = None,
    rbr_mode: str = "off",
) -> list[str]:
    """The live view's lines for one snapshot; ``budget``: the gate's, when it runs;
    ``rbr_mode``: the reward service's serve.rbr."""
    label_rate = rate(history, lambda s: s.labels)
    score_rate = rate(history, lambda s: s.scored)
    rbr = rbr_words(rbr_mode, rate(history, lambda s: s.scored_rbr))

    def per_s(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}/s"

    if snap.version is None:
        model = "no version yet (the first is published after train.publish_every_steps steps)"
        fresh = "-"
    else:
        acc = describe_accuracy(snap.heldout_accuracy, snap.heldout_size)
        model = f"v{snap.version}, trained on {snap.trained} pairs, accuracy {acc}"
        age = (datetime.now(UTC) - snap.version_created).total_seconds()
        behind = max(0, snap.labels - snap.labels_read)
        fresh = f"served version is {age:.0f} s old; {behind} labels not in it yet"
    lines = [
        f"pairs ingested {snap.pairs:>6}   labeled {snap.labels:>6}   dead letters "
        f"{snap.dead_letters:>4}   trained {snap.trained:>6}",
        f"labeling {per_s(label_rate)} (selector {selector})   scoring {per_s(score_rate)}"
        f" at {url} ({rbr})",
    ]
    if snap.selected is not None:
        lines.append(f"select   selected {snap.selected:>6}   skipped {snap.skipped or 0:>6}"
                     f"   budget {budget or '-'}")  # fmt: skip
    return [*lines, f"model    {model}", f"fresh    {fresh}"]


def change_key(snap: Snapshot, status: str) -> tuple[Any, ...]:
    """What a log reader cares about: the pipeline's counts, the served version, the
    status line. Rates and ages move on every draw, and scoring requests are outside
    traffic that may never pause, so they are left to the heartbeat line."""
    return (snap.pairs, snap.labels, snap.dead_letters, snap.version, snap.trained,
            snap.heldout_size, snap.selected, snap.skipped, status)  # fmt: skip


class ChangeLog:
    """The view without a terminal: a stamped block when ``change_key`` changed, else one
    heartbeat line once nothing changed for ``heartbeat_s`` seconds."""

    def __init__(self, out: TextIO, heartbeat_s: float = 30.0) -> None:
        if heartbeat_s <= 0:
            raise ValueError(f"heartbeat_s must be > 0 seconds, got {heartbeat_s}")
        self.out, self.heartbeat_s = out, heartbeat_s
        self._last_key: tuple[Any, ...] | None = None
        self._last_print = 0.0  # Snapshot.at of the last line written

    def write(self, snap: Snapshot, lines: list[str], status: str = "") -> None:
        stamp = datetime.now(UTC).strftime("%H:%M:%S")
        key = change_key(snap, status)
        if key != self._last_key:
            self.out.write("\n".join(f"[{stamp}] {line}" for line in lines) + "\n")
            self._last_key, self._last_print = key, snap.at
        elif snap.at - self._last_print >= self.heartbeat_s:
            since = snap.at - self._last_print
            self.out.write(f"[{stamp}] no change for {since:.0f} s: {lines[0].strip()}\n")
            self._last_print = snap.at


class LiveView:
    """Samples the topics, the registry and the reward service; draws the view.

    On a terminal the view is redrawn in place at every draw. Otherwise (a log file, a
    pipe, a CI job) a block is printed only when something in ``change_key`` changed, and
    a one-line heartbeat when nothing did for ``heartbeat_s`` seconds, so the log shows
    the loop is alive without repeating the same five lines every two seconds.
    """

    def __init__(self, settings: Settings, bootstrap: str, url: str, out: TextIO,
                 heartbeat_s: float = 30.0,
                 gate_budget: Callable[[], str] | None = None) -> None:  # fmt: skip
        from ramo_stream.registry.setup import open_registry
        from ramo_stream.stream.kafka_io import TopicCounts

        self.settings, self.url, self.out = settings, url, out
        self.registry = open_registry(settings)
        t = settings.topics
        self.gate_budget = gate_budget  # the gate's budget in words; None: no gate runs
        gated = [t.selected, t.skipped] if gate_budget is not None else []
        # Exact counts that never go down; it reads only high watermarks, with no group
        # and no commits, and carries the kafka.* security settings as every client does.
        self.counts = TopicCounts(bootstrap, settings.kafka, [t.pairs, t.labels, t.dlq, *gated],
                                  client_id=f"{settings.kafka.client_id}-up-view")  # fmt: skip
        # A scrape that fails or lands on a fresh process reads less: keep the highest.
        self._scored_max = self._scored_rbr_max = 0
        self.history: deque[Snapshot] = deque(maxlen=10)
        self.tty = out.isatty()
        self.log = ChangeLog(out, heartbeat_s)
        self._drawn = 0
        token = settings.serve.api_token
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _scored(self) -> tuple[int, int]:
        """Scoring requests answered so far, and those with RBR; a failed scrape, or a
        counter that restarted with its process, keeps the last known numbers (the counts
        never go down)."""
        import httpx

        try:
            reply = httpx.get(f"{self.url}/metrics", headers=self._headers, timeout=2.0)
            if reply.status_code == 200:
                self._scored_max = max(self._scored_max, scored_requests(reply.text))
                rbr = scored_requests(reply.text, "ramo_reward_rbr_requests")
                self._scored_rbr_max = max(self._scored_rbr_max, rbr)
        except httpx.HTTPError:
            pass
        return self._scored_max, self._scored_rbr_max

    def sample(self, wait_s: float = 1.0) -> Snapshot:
        """One snapshot; ``wait_s`` bounds the wait for the broker's answers (a partition
        not heard from in time keeps its last known count)."""
        t = self.settings.topics
        sizes = self.counts.sample(wait_s)
        scored, scored_rbr = self._scored()
        snap = Snapshot(time.monotonic(), sizes[t.pairs], sizes[t.labels], sizes[t.dlq],
                        scored, scored_rbr)  # fmt: skip
        manifest = self.registry.current()
        if manifest is not None:
            read = sum(manifest.offsets.get(t.labels, {}).values())
            snap = dataclasses.replace(
                snap, version=manifest.version, version_created=manifest.created_at,
                trained=manifest.samples_seen, labels_read=read,
                heldout_accuracy=manifest.heldout_accuracy, heldout_size=manifest.heldout_size,
            )  # fmt: skip
        if self.gate_budget is not None:
            snap = dataclasses.replace(snap, selected=sizes[t.selected], skipped=sizes[t.skipped])
        self.history.append(snap)
        return snap

    def draw(self, selector: str, status: str = "") -> Snapshot:
        snap = self.sample()
        budget = self.gate_budget() if self.gate_budget is not None else None
        lines = render(snap, self.history, selector, self.url, budget, self.settings.serve.rbr)
        if status:
            lines.append(status)
        if self.tty:  # redraw in place
            if self._drawn:
                self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self.out.write("\n".join(lines) + "\n")
            self._drawn = len(lines)
        else:
            self.log.write(snap, lines, status)
        self.out.flush()
        return snap

    def close(self) -> None:
        """Nothing stays open between samples (each uses a consumer of its own)."""
