"""The live view's pure parts: the metrics scrape, rates, the lines drawn, demo defaults."""

from __future__ import annotations

import io
from collections import deque
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from ramo_stream.cli import build_parser
from ramo_stream.cli.up import _with_defaults
from ramo_stream.cli.up_loop import DEMO_SETTINGS
from ramo_stream.cli.up_view import ChangeLog, Snapshot, rate, render, scored_requests
from ramo_stream.config import load_settings

SCRAPE = """\
# HELP ramo_reward_requests_total HTTP requests by endpoint and status code.
# TYPE ramo_reward_requests_total counter
ramo_reward_requests_total{endpoint="/v1/score",status="200"} 7.0
ramo_reward_requests_total{endpoint="/v1/score",status="503"} 2.0
ramo_reward_requests_total{endpoint="/get_reward",status="200"} 3.0
ramo_reward_requests_total{endpoint="/health",status="200"} 40.0
ramo_reward_requests_total{endpoint="/metrics",status="200"} 9.0
# HELP ramo_reward_model_version Version new requests get (0: none yet).
# TYPE ramo_reward_model_version gauge
ramo_reward_model_version 4.0
"""


def test_scored_requests_counts_scoring_endpoints_only() -> None:
    assert scored_requests(SCRAPE) == 12


def snap(at: float, labels: int, **kw: Any) -> Snapshot:
    return Snapshot(at, pairs=50, labels=labels, dead_letters=3, scored=0, **kw)


def test_rate_is_growth_over_the_window() -> None:
    history = deque([snap(0.0, 10), snap(5.0, 20), snap(10.0, 40)])
    assert rate(history, lambda s: s.labels) == 3.0
    assert rate(deque([snap(0.0, 10)]), lambda s: s.labels) is None
    # scored requests from a reward service whose counters restarted: no growth, not < 0
    restarted = deque([Snapshot(0.0, 1, 1, 0, scored=50), Snapshot(4.0, 1, 1, 0, scored=8)])
    assert rate(restarted, lambda s: s.scored) == 0.0


def test_render_shows_counts_version_accuracy_and_lag() -> None:
    created = datetime.now(UTC) - timedelta(seconds=30)
    now = snap(10.0, 40, version=3, version_created=created, trained=30, labels_read=34,
               heldout_accuracy=0.75, heldout_size=4)  # fmt: skip
    lines = "\n".join(render(now, deque([snap(0.0, 20), now]), "random", "http://h:1"))
    assert "labeled     40" in lines and "dead letters    3" in lines
    assert "labeling 2.00/s (selector random)" in lines
    assert "v3, trained on 30 pairs, accuracy too few held-out pairs yet (4 of 10)" in lines
    assert "6 labels not in it yet" in lines
    empty = "\n".join(render(snap(0.0, 0), deque(), "adapter", "http://h:1"))
    assert "no version yet" in empty and "labeling -" in empty


def test_render_gives_held_out_accuracy_an_interval_once_there_are_enough_pairs() -> None:
    created = datetime.now(UTC)
    now = snap(1.0, 40, version=3, version_created=created, trained=30, labels_read=40,
               heldout_accuracy=0.625, heldout_size=40)  # fmt: skip
    lines = "\n".join(render(now, deque([now]), "random", "http://h:1"))
    # 25 of 40: Wilson 95% interval [0.47, 0.76]
    assert "accuracy 0.625 [0.47, 0.76] on 40 held-out pairs (95% interval)" in lines


def test_log_prints_changes_and_a_heartbeat_not_every_draw() -> None:
    out = io.StringIO()
    log = ChangeLog(out, heartbeat_s=30.0)

    def draw(at: float, labels: int) -> list[str]:
        s = snap(at, labels)
        log.write(s, render(s, deque([s]), "random", "http://h:1"), "hint")
        return out.getvalue().splitlines()

    first = draw(0.0, 10)
    assert len(first) == 4  # the first draw prints the block
    assert draw(2.0, 10) == first  # nothing changed, no heartbeat due: silent
    assert draw(29.0, 10) == first
    beat = draw(31.0, 10)
    assert len(beat) == 5 and "no change for 31 s: pairs ingested" in beat[-1]
    assert draw(33.0, 10) == beat  # the heartbeat restarts the wait
    changed = draw(35.0, 11)
    assert len(changed) == 9 and "labeled     11" in changed[5]
    with pytest.raises(ValueError, match="heartbeat_s must be > 0"):
        ChangeLog(out, heartbeat_s=0)


def test_demo_defaults_give_way_to_flags_and_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAMO_TRAIN__HELDOUT_EVERY", "9")
    args = build_parser().parse_args(["up", "--demo", "--train-batch-pairs", "8"])
    settings = _with_defaults(args, load_settings(None, {"train.batch_pairs": 8}), DEMO_SETTINGS)
    t = settings.train
    assert t.batch_pairs == 8  # a flag wins
    assert t.heldout_every == 9  # so does a variable
    assert t.publish_every_steps == DEMO_SETTINGS["train.publish_every_steps"]  # the rest apply
