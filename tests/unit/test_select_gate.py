"""The gate's handler with a fake writer and fixed features: windows, budget, retries."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from ramo_stream.config import load_settings  # noqa: E402
from ramo_stream.registry.features import PairFeatures  # noqa: E402
from ramo_stream.schemas import ResponsePair  # noqa: E402
from ramo_stream.stream.gate import SelectionGate  # noqa: E402
from ramo_stream.stream.processor import Message  # noqa: E402


class FakeWriter:
    def __init__(self, fail_flushes: int = 0) -> None:
        self.sent: list[tuple[str, ResponsePair]] = []
        self.pending: list[tuple[str, ResponsePair]] = []
        self.fail_flushes = fail_flushes

    def send(self, topic: str, record: Any, key: str | None = None) -> None:
        self.pending.append((topic, record))

    def flush(self) -> int:
        pending, self.pending = self.pending, []
        if self.fail_flushes:
            self.fail_flushes -= 1
            raise RuntimeError("broker unavailable")
        self.sent += pending
        return len(pending)


@dataclass
class FakeFeaturizer:
    x: Any
    p: Any
    dim: int = 3

    def pairs(self, prompts: list[Any], a: list[str], b: list[str]) -> PairFeatures:
        idx = [int(r.split()[-1]) for r in a]
        return PairFeatures(self.x[idx], self.p[idx], [], [])


class FakeModel:
    def __init__(self, featurizer: FakeFeaturizer) -> None:
        self.featurizer = featurizer
        self.version: int | None = 7

    def refresh(self, now: float) -> bool:
        return False


def batch(n: int) -> list[Message[ResponsePair]]:
    pairs = [ResponsePair(prompt=f"q{i}", response_a=f"a {i}", response_b="b") for i in range(n)]
    return [Message(p, "pairs", 0, i, None, b"") for i, p in enumerate(pairs)]


def gate(writer: FakeWriter, **select: Any) -> SelectionGate:
    g = torch.Generator().manual_seed(0)
    feats = FakeFeaturizer(torch.randn(25, 3, generator=g, dtype=torch.float64),
                           torch.rand(25, generator=g, dtype=torch.float64))  # fmt: skip
    settings = load_settings(None, {f"select.{k}": v for k, v in select.items()})
    return SelectionGate(settings, writer, FakeModel(feats))  # type: ignore[arg-type]


def test_windows_get_their_budget_and_send_their_top_scores() -> None:
    w = FakeWriter()
    gate(w, window_pairs=10, budget=3).handle(batch(25))

    topics = [t for t, _ in w.sent]
    assert len(w.sent) == 25 and topics.count("ramo.selected") == 3 + 3 + 1  # 5 pairs earn 1.5
    by_window: dict[int, list[dict[str, Any]]] = {}
    for _, rec in w.sent:
        note = rec.metadata["selection"]
        assert isinstance(note, dict) and note["model_version"] == 7
        by_window.setdefault(note["window"], []).append(note)  # type: ignore[arg-type]
    assert sorted(len(v) for v in by_window.values()) == [5, 10, 10]
    for notes in by_window.values():
        chosen = [n["score"] for n in notes if n["selected"]]
        rest = [n["score"] for n in notes if not n["selected"]]
        assert min(chosen) >= max(rest)


def test_a_failed_write_is_retried_from_the_same_state() -> None:
    clean, flaky = FakeWriter(), FakeWriter(fail_flushes=1)
    ref, g = gate(clean, window_pairs=10, budget=3), gate(flaky, window_pairs=10, budget=3)
    ref.handle(batch(25))
    with pytest.raises(RuntimeError, match="broker unavailable"):
        g.handle(batch(25))
    g.handle(batch(25))  # what the processor does next

    assert [(t, r.pair_id) for t, r in flaky.sent] == [(t, r.pair_id) for t, r in clean.sent]
    assert g.info is not None and ref.info is not None and g.info.labeled == ref.info.labeled
    assert torch.allclose(g.info.m_inv, ref.info.m_inv)


def test_all_sends_every_pair_to_the_labeler() -> None:
    w = FakeWriter()
    gate(w, window_pairs=10, budget=1, strategy="all").handle(batch(25))
    assert [t for t, _ in w.sent] == ["ramo.selected"] * 25


def test_a_labeler_behind_the_gate_reads_the_selected_topic() -> None:
    from ramo_stream.stream.gate import labeler_settings

    settings = load_settings(None, {"topics.selected": "sel"})
    behind = labeler_settings(settings)
    assert behind.topics.pairs == "sel" and settings.topics.pairs == "ramo.pairs"
    assert behind.topics.labels == settings.topics.labels


def test_a_rate_budget_set_or_measured_replaces_the_per_window_budget() -> None:
    w = FakeWriter()
    g = gate(w, window_pairs=10, budget=3)
    g.pace = lambda: 0.5  # the labeler as measured: 0.5 pairs/s
    g.rate_budget._last = time.monotonic() - 10.0  # the gate started 10 s ago
    g.handle(batch(20))
    selected = [t for t, _ in w.sent].count("ramo.selected")
    assert selected == 5  # 10 s x 0.5/s, not 3 + 3 per window
    assert g.budget_text() == "0.50 labels/s (measured labeler rate)"
    fixed = gate(FakeWriter(), window_pairs=10, budget=3, budget_per_s=2.0)
    fixed.pace = lambda: 0.5
    assert fixed.per_s() == 2.0  # a set rate wins over the measured one
    assert gate(FakeWriter(), window_pairs=10, budget=3).budget_text() == "3 per 10 pairs"
