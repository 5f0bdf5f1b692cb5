"""`ramo up`'s gate decision (select.enabled) and its line in the live view."""

from __future__ import annotations

from collections import deque
from pathlib import Path

from ramo_stream.cli.up_gate import count_lines, decide, rate_file, save_rate, saved_rate
from ramo_stream.cli.up_view import Snapshot, change_key, render
from ramo_stream.config import load_settings
from ramo_stream.core.label_rate import LabelerPace


def test_on_and_off_are_taken_as_given_auto_compares_rates(tmp_path: Path) -> None:
    base = {"paths.cache_dir": str(tmp_path), "train.publish_every_s": 60}
    assert decide(load_settings(None, {**base, "select.enabled": "on"}), 0)[0]
    assert not decide(load_settings(None, {**base, "select.enabled": "off"}), 10**6)[0]
    auto = load_settings(None, base)
    on, why = decide(auto, 10**6)
    assert not on and "not known" in why  # no rate set, none measured yet
    pace = LabelerPace()
    pace.observe(4, 4.0)
    save_rate(auto, pace)  # what `ramo up` does when it stops
    assert saved_rate(auto) == 1.0 and rate_file(auto).is_file()
    assert decide(auto, 61)[0] and not decide(auto, 60)[0]
    fast = load_settings(None, {**base, "select.budget_per_s": 10.0})
    assert not decide(fast, 61)[0]  # a set budget wins over the measured rate


def test_one_measured_pair_is_not_saved_as_a_rate(tmp_path: Path) -> None:
    settings = load_settings(None, {"paths.cache_dir": str(tmp_path)})
    pace = LabelerPace()
    pace.observe(1, 30.0)  # the grader's warm-up
    save_rate(settings, pace)
    assert saved_rate(settings) is None


def test_count_lines_counts_non_empty_lines_up_to_the_limit(tmp_path: Path) -> None:
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    a.write_text('{"x": 1}\n\n{"x": 2}\n{"x": 3}\n')
    b.write_text('{"x": 1}\n')
    assert count_lines((a, b), None) == 4
    assert count_lines((a, b), 2) == 3


def test_the_view_shows_the_gate_only_when_it_runs() -> None:
    plain = Snapshot(1.0, 100, 5, 0, 0)
    gated = Snapshot(1.0, 100, 5, 0, 0, selected=12, skipped=88)
    assert not any(line.startswith("select") for line in render(plain, deque(), "random", "u"))
    lines = render(gated, deque(), "random", "u", "0.50 labels/s (measured labeler rate)")
    assert "select   selected     12   skipped     88   budget 0.50 labels/s (measured" in (
        "\n".join(lines)
    )
    assert change_key(plain, "") != change_key(gated, "")
