"""The selection gate on a real broker with the real MiniLM reward backbone: every pair ends on
exactly one of selected / skipped, the selected are their window's top scores, offsets move,
and a kill -9 of `ramo select` loses nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition

from ramo_stream.config import KafkaSettings, load_settings
from ramo_stream.schemas import LabeledPair, ResponsePair
from ramo_stream.stream.kafka_io import TopicWriter, make_producer
from tests.helpers import read_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Only the encoder (a copy, seconds): the gate's reward backbone in these tests."""
    pytest.importorskip("transformers", reason="the models extra is not installed")
    from ramo_stream.local_models import prepare

    return prepare("all-minilm-l6-v2", tmp_path_factory.mktemp("models"))


def pairs(n: int) -> list[ResponsePair]:
    topics = ["bleach", "a ladder", "a kitchen knife", "lye", "a chainsaw", "fireworks"]
    return [
        ResponsePair(
            prompt=f"How do I safely use {topics[i % len(topics)]}? (case {i})",
            response_a=f"Read the label, wear gloves, and keep it from children ({i}).",
            response_b=["I can't help with that.", f"Just use it ({i}).", "Ask someone."][i % 3],
            source="test",
        )
        for i in range(n)
    ]


def produce(broker: str, topic: str, items: list[ResponsePair]) -> None:
    producer = make_producer(broker, KafkaSettings())
    writer = TopicWriter(producer)
    for p in items:
        writer.send(topic, p, key=p.pair_id)
    assert writer.flush() == len(items)
    producer.close()


def committed_total(broker: str, topic: str, group: str) -> int:
    c = KafkaConsumer(bootstrap_servers=broker, group_id=group, enable_auto_commit=False)
    tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or [])]
    total = sum(c.committed(tp) or 0 for tp in tps)
    c.close(autocommit=False)
    return total


def overrides(broker: str, topics: dict[str, str], minilm: Path, tmp: Path) -> dict[str, object]:
    return {
        "kafka.bootstrap_servers": broker,
        "topics.pairs": topics["pairs"],
        "topics.selected": topics["selected"],
        "topics.skipped": topics["skipped"],
        "topics.dlq": topics["dlq"],
        "paths.cache_dir": str(tmp),
        "models.reward_backbone": str(minilm),
        "select.group": f"g-{topics['pairs']}",
        "select.max_length": 64,
        "select.linger_s": 0.0,
    }


def decoded(broker: str, topic: str) -> list[ResponsePair]:
    return [ResponsePair.model_validate_json(v) for v in read_all(broker, topic)]


def test_every_pair_is_selected_or_skipped_and_selected_are_window_tops(
    broker: str, new_topic: Callable[..., str], minilm: Path, tmp_path: Path
) -> None:
    from ramo_stream.registry.features import ServedModel
    from ramo_stream.stream.gate import make_gate, run_gate

    topics = {k: new_topic(2 if k == "pairs" else 1) for k in ("pairs", "selected", "skipped")}
    topics["dlq"] = new_topic(1)
    settings = load_settings(None, {
        **overrides(broker, topics, minilm, tmp_path),
        "select.window_pairs": 30, "select.budget": 5, "select.max_in_flight": 90,
    })  # fmt: skip
    items = pairs(150)
    produce(broker, topics["pairs"], items)

    processor, gate = make_gate(settings, broker, ServedModel(settings))
    run_gate(processor, settings, until_caught_up=True, idle_timeout_s=60)
    processor.close()
    gate.writer.producer.close()

    selected, skipped = decoded(broker, topics["selected"]), decoded(broker, topics["skipped"])
    ids = [p.pair_id for p in selected + skipped]
    assert Counter(ids) == Counter(p.pair_id for p in items)  # each exactly once, none lost
    assert abs(len(selected) - 150 * 5 / 30) <= 1  # the budget, up to one carried fraction
    windows: defaultdict[int, list[dict]] = defaultdict(list)
    for p in selected + skipped:
        windows[p.metadata["selection"]["window"]].append(p.metadata["selection"])  # type: ignore[call-overload,index]
    for notes in windows.values():
        chosen = [n["score"] for n in notes if n["selected"]]
        rest = [n["score"] for n in notes if not n["selected"]]
        assert len(chosen) <= 5 + 1
        if chosen and rest:
            assert min(chosen) >= max(rest)  # the selected are their window's top scores
    scores = [n["score"] for notes in windows.values() for n in notes]
    assert len(set(scores)) > len(scores) // 2  # real, varied d-opt scores, not a constant
    assert committed_total(broker, topics["pairs"], settings.select.group) == 150
    assert read_all(broker, topics["dlq"]) == []
    assert gate.stats.seen == 150 and gate.stats.model_version is None  # the backbone


def test_kill_9_of_ramo_select_loses_no_pair(
    broker: str, new_topic: Callable[..., str], minilm: Path, tmp_path: Path
) -> None:
    topics = {k: new_topic(2 if k == "pairs" else 1) for k in ("pairs", "selected", "skipped")}
    topics["dlq"] = new_topic(1)
    items = pairs(120)
    produce(broker, topics["pairs"], items)
    opts = {**overrides(broker, topics, minilm, tmp_path),
            "select.window_pairs": 10, "select.budget": 2, "select.max_in_flight": 10}  # fmt: skip
    flags = [f"--{k.replace('.', '-').replace('_', '-')}={v}" for k, v in opts.items()]
    cmd = [sys.executable, "-m", "ramo_stream.cli", "select", *flags]
    env = {**os.environ, "PYTHONPATH": str(REPO)}

    # Its own session, so the kill reaches the whole process group, like a crash.
    proc = subprocess.Popen(cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and len(read_all(broker, topics["skipped"])) < 30:
            assert proc.poll() is None, "ramo select exited before the kill"
            time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    at_kill = len(read_all(broker, topics["skipped"])) + len(read_all(broker, topics["selected"]))
    assert 0 < at_kill < 120, "the kill must land mid-stream"

    done = subprocess.run([*cmd, "--until-caught-up", "--idle-timeout=60"], env=env,
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    out = decoded(broker, topics["selected"]) + decoded(broker, topics["skipped"])
    counts = Counter(p.pair_id for p in out)
    assert set(counts) == {p.pair_id for p in items}  # zero pairs lost
    assert sum(n - 1 for n in counts.values()) <= 10  # re-sent: at most the uncommitted poll
    assert committed_total(broker, topics["pairs"], f"g-{topics['pairs']}") == 120


def test_served_model_follows_current_and_features_match_its_rewards(
    minilm: Path, tmp_path: Path
) -> None:
    import torch

    from ramo_stream.registry.features import ServedModel
    from ramo_stream.registry.model import load_reward_model
    from ramo_stream.registry.store import Registry

    settings = load_settings(None, {
        "paths.cache_dir": str(tmp_path), "models.reward_backbone": str(minilm),
        "select.reload_poll_s": 0.01, "select.max_length": 64,
    })  # fmt: skip
    served = ServedModel(settings)
    assert served.refresh(0.0) and served.version is None  # the backbone before any version
    registry = Registry(settings.paths.registry_dir)

    def write(folder: Path) -> None:
        model, tok = load_reward_model(minilm)
        with torch.no_grad():
            model.classifier.weight.normal_(generator=torch.Generator().manual_seed(1))
        model.save_pretrained(folder)
        tok.save_pretrained(folder)

    registry.publish(write, steps=1, samples_seen=0, offsets={}, base_model=str(minilm))
    assert served.refresh(1.0) and served.version == 1
    assert not served.refresh(2.0)  # unchanged CURRENT: nothing reloaded
    items = pairs(7)
    out = served.featurizer.pairs([p.prompt for p in items], [p.response_a for p in items],
                                  [p.response_b for p in items])  # fmt: skip
    # The features are what the version scores: its own rewards, through its head, again.
    model = served.featurizer.model
    r_a, r_b = torch.tensor(out.reward_a), torch.tensor(out.reward_b)
    w = model.classifier.weight.detach().double().reshape(-1)
    assert torch.allclose(out.x @ w, (r_a - r_b).double(), atol=1e-4)
    assert torch.allclose(out.p, (r_a - r_b).double().sigmoid(), atol=1e-6)
    assert out.x.shape == (7, served.featurizer.dim)


def test_ramo_up_wiring_gate_then_labeler_labels_only_selected_pairs(
    broker: str, new_topic: Callable[..., str], minilm: Path, tmp_path: Path
) -> None:
    """The gate and the labeler bridge as `ramo up` starts, feeds and drains them (the real
    labeler app is tested in test_serve_labeler.py; a stand-in here): N pairs in, selected +
    skipped = N, the labeler labels the selected ones and no other, offsets committed."""
    from ramo_stream.cli.up_gate import start_labeling, waiting_on_topic
    from ramo_stream.cli.up_loop import Component, _label
    from tests.integration.test_bridge_recovery import StandInLabeler

    names = {k: new_topic(2) for k in ("pairs", "selected", "skipped", "labels")}
    names["dlq"] = new_topic(1)
    settings = load_settings(None, {
        **overrides(broker, names, minilm, tmp_path), "topics.labels": names["labels"],
        "select.window_pairs": 20, "select.budget_per_s": 1.0, "labeling.pair_batch": 4,
    })  # fmt: skip
    from ramo_stream.registry.features import ServedModel

    labeler = StandInLabeler()
    # In process here; `ramo up` hands in its Serve deployment's proxy (test_up_gate.py).
    labeling = start_labeling(settings, broker, labeler, True, ServedModel(settings))
    assert labeling.gate is not None
    gate, bridge = Component("gate"), Component("labeler")
    started = time.monotonic()
    gate.start(labeling.gate.run)
    bridge.start(lambda ev, fin: _label(labeling.bridge, ev, fin))
    time.sleep(3)  # the first poll earns >= 3 s of the budget: some pairs are selected
    items = pairs(60)
    produce(broker, names["pairs"], items)
    for part in (gate, bridge):  # `ramo up`'s drain: in data-flow order
        part.finish.set()
        assert part.thread is not None
        part.thread.join(300)
        assert not part.running and part.error is None, part.error
    wall = time.monotonic() - started

    selected, skipped = decoded(broker, names["selected"]), decoded(broker, names["skipped"])
    ids = Counter(p.pair_id for p in selected + skipped)
    assert ids == Counter(p.pair_id for p in items)  # selected + skipped = N, each once
    assert 1 <= len(selected) <= 1.0 * wall + 1  # the rate budget: 1 label/s of running time
    labels = [LabeledPair.model_validate_json(v).pair_id for v in read_all(broker, names["labels"])]
    assert sorted(labels) == sorted(p.pair_id for p in selected)  # only the selected, once
    assert labeling.gate.stats.selected == len(selected) and labeling.pace.pairs == len(selected)
    assert committed_total(broker, names["pairs"], settings.select.group) == 60
    assert committed_total(broker, names["selected"], "ramo-labeler") == len(selected)
    assert labeling.gate.gate.store is not None and labeling.gate.gate.store.path.is_file()
    # What `ramo up`'s select.enabled=auto counts as waiting on a broker that outlives it:
    # pairs neither the gate nor the labeler has committed.
    assert waiting_on_topic(settings, broker) == 0
    # --exit-when-idle's check on such a broker: nothing left to sort or to label
    assert labeling.left_on_broker() == 0
    produce(broker, names["pairs"], pairs(67)[60:])
    assert waiting_on_topic(settings, broker) == 7
    assert labeling.left_on_broker() == 7  # not sorted by the gate yet
