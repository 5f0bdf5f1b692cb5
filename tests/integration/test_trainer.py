"""The continuous trainer end to end: real broker, real Ray Train on the CPU, real MiniLM.

The labels are generated so the preference is learnable in a few dozen steps (see
``generated_labels``). Which side is A is random, so position says nothing.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from ramo_stream.config import KafkaSettings, Settings, load_settings
from ramo_stream.schemas import DeadLetter, LabeledPair, ResponsePair
from ramo_stream.stream.kafka_io import TopicWriter, make_producer
from ramo_stream.train.data import is_heldout
from tests.helpers import read_all

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ray = pytest.importorskip("ray", reason="the train extra (ray[train]) is not installed")

# The preference is relational: both replies have the same form, and the chosen one talks
# about what was asked, the rejected one about something else. A pretrained encoder does
# not rank that out of the box, so the first versions are near chance and later ones learn
# it (measured with plain PyTorch: ~0.6 after 2 steps of 8 pairs, ~0.9 after 10, 1.0 by 15).
THINGS = ["volcanoes", "tea", "chess", "bicycles", "octopuses", "jazz", "glaciers", "bread",
          "satellites", "tulips", "origami", "penguins", "copper", "lighthouses", "honey",
          "kites"]  # fmt: skip
ASKS = ["Tell me something about {}.", "What should I know about {}?",
        "Can you explain {} to me?"]  # fmt: skip
REPLIES = ["Here is what I know about {}: it is a topic many people find interesting.",
           "Sure. {} have a long history and there is a lot to learn.",
           "Good question! When it comes to {}, the basics are easy to pick up."]  # fmt: skip


def generated_labels(n: int, seed: int) -> list[LabeledPair]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        asked, other = rng.sample(THINGS, 2)
        reply = rng.choice(REPLIES)
        good, bad = reply.format(asked), reply.format(other)
        a_good = rng.random() < 0.5
        pair = ResponsePair(
            prompt=rng.choice(ASKS).format(asked) + f" (case {seed}-{i})",
            response_a=good if a_good else bad,
            response_b=bad if a_good else good,
            source="test",
        )
        out.append(LabeledPair(pair=pair, preferred="a" if a_good else "b", margin=1.0,
                               labeler="test"))  # fmt: skip
    return out


def produce(broker: str, topic: str, values: list[bytes], keyed: bool = False) -> None:
    """``keyed``: by pair_id, as the labeler writes labels (one pair_id, one partition)."""
    producer = make_producer(broker, KafkaSettings())
    writer = TopicWriter(producer)
    for v in values:
        key = LabeledPair.model_validate_json(v).pair_id.encode() if keyed else None
        writer.send_bytes(topic, v, key)
    writer.flush()
    producer.close()


def accuracy(folder: Path, labels: list[LabeledPair]) -> float:
    """Held-out accuracy of a published version, loaded directly with transformers."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from ramo_stream.registry.model import format_text
    from ramo_stream.train.data import to_train_pair

    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    pairs = [p for p in map(to_train_pair, labels) if p is not None]
    texts = [format_text(tok, p.prompt, p.chosen) for p in pairs] + [
        format_text(tok, p.prompt, p.rejected) for p in pairs
    ]
    with torch.no_grad():
        r = model(**tok(texts, padding=True, return_tensors="pt")).logits.squeeze(-1)
    return float((r[: len(pairs)] > r[len(pairs) :]).float().mean())


@pytest.fixture
def train_settings(
    broker: str, new_topic: Callable[..., str], models_dir: Path, tmp_path: Path
) -> Callable[..., Settings]:
    labels, dlq = new_topic(2, "labels"), new_topic(1, "dlq")

    def make(**train: object) -> Settings:
        overrides: dict[str, object] = {
            "kafka.bootstrap_servers": broker,
            "topics.labels": labels,
            "topics.dlq": dlq,
            "paths.cache_dir": str(tmp_path),
            "models.reward_backbone": str(models_dir / "all-minilm-l6-v2"),
            "train.batch_pairs": 8,
            "train.max_length": 96,
            "train.batch_tokens": 2048,
            "train.lr": 3e-5,
            "train.flush_s": 0.5,
            "train.keep_versions": 100,
            "train.heldout_every": 10,
        }
        overrides.update({f"train.{k}": v for k, v in train.items()})
        return load_settings(overrides=overrides)

    return make


def test_later_versions_beat_the_first(
    train_settings: Callable[..., Settings], broker: str, ray_serve: int
) -> None:
    from ramo_stream.registry.store import Registry
    from ramo_stream.train.driver import run_trainer

    # The shared test Ray has 4 logical CPUs; the worker gets this machine's 2 (torch threads).
    settings = train_settings(publish_every_steps=3, idle_stop_s=4.0, worker_cpus=2)
    labels = generated_labels(200, seed=1)
    # 20 pairs labeled a second time (a relabel after a crash): trained once only.
    again = [lp.model_copy(update={"margin": 0.5}) for lp in labels[:20]]
    produce(broker, settings.topics.labels, [lp.model_dump_json().encode() for lp in labels]
            + [b"{not a label"] + [lp.model_dump_json().encode() for lp in again])  # fmt: skip

    final = run_trainer(settings, broker)

    registry = Registry(str(settings.paths.registry_dir))
    versions = registry.versions()
    assert final is not None and len(versions) >= 3
    # Every label was consumed: non-held-out, non-tie pairs trained exactly once.
    trained = sum(not is_heldout(lp.pair_id, 10) for lp in labels)
    assert final.samples_seen == trained
    assert sum(sum(p.values()) for p in final.offsets.values()) == len(labels) + 1 + len(again)
    assert final.metrics["duplicates_skipped"] == len(again)
    assert final.heldout_size == len(labels) - trained
    # The malformed record is on the dead-letter topic with its bytes and reason.
    letters = [DeadLetter.model_validate_json(v) for v in read_all(broker, settings.topics.dlq)]
    assert [(d.stage, d.original) for d in letters] == [("train", b"{not a label")]

    # A fresh, never-seen test set from the same distribution (other seed).
    test = generated_labels(60, seed=2)
    first = accuracy(registry.path(versions[0].version), test)
    last = accuracy(registry.path(versions[-1].version), test)
    assert last >= first + 0.2, f"first version {first:.2f}, last {last:.2f}"
    assert last >= 0.8, f"last version {last:.2f}"
    # The manifest's own held-out figure agrees (its ~20 pairs are never trained on): it
    # scores chosen above rejected in the same direction the loss trains.
    assert final.heldout_accuracy is not None and final.heldout_accuracy >= 0.65, final
    assert [v.parent_version for v in versions[1:]] == [v.version for v in versions[:-1]]


def _wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        time.sleep(0.5)


def test_sigkill_then_resume_skips_nothing(
    train_settings: Callable[..., Settings], broker: str, tmp_path: Path
) -> None:
    from ramo_stream.registry.store import Registry

    # Two workers: positions of both are gathered into each manifest and restored after.
    settings = train_settings(publish_every_steps=2, heldout_every=1_000_000, workers=2)
    labels = generated_labels(160, seed=3)
    produce(broker, settings.topics.labels, [lp.model_dump_json().encode() for lp in labels],
            keyed=True)  # fmt: skip
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump(settings.model_dump(mode="json")))
    cmd = [sys.executable, "-m", "ramo_stream.cli", "train", "--config", str(config)]
    registry = Registry(str(settings.paths.registry_dir))
    log = (tmp_path / "train1.log").open("w")
    # A new session, so the kill reaches Ray's worker processes too, as a crash of the
    # machine would; the trainer gets no chance to publish or commit anything.
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for(lambda: len(registry.versions()) >= 2, 300, "two published versions")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    at_kill = registry.current()
    assert at_kill is not None and at_kill.samples_seen < len(labels)
    # Every pair labeled again: those the version at the kill trained on are dropped by the
    # ids saved in it, the rest by the resumed run's own memory (keyed by pair_id, as the
    # labeler writes them, a label and its repeat reach the same partition and worker).
    produce(broker, settings.topics.labels, [lp.model_dump_json().encode() for lp in labels],
            keyed=True)  # fmt: skip

    done = subprocess.run([*cmd, "--train-idle-stop-s", "4"], capture_output=True, text=True,
                          timeout=400)  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    final = registry.current()
    assert final is not None and final.version > at_kill.version
    # Resumed from the version at the kill: its lineage continues, nothing is skipped, and
    # nothing is counted twice (pairs trained after that version were rolled back with it).
    chain = {m.version: m.parent_version for m in registry.versions()}
    v = final.version
    while v != at_kill.version:
        v = chain[v]
        assert v is not None, "the resumed run does not descend from the version at the kill"
    assert final.samples_seen == len(labels)
    assert final.steps >= at_kill.steps
    ends = final.offsets[settings.topics.labels]
    assert sum(ends.values()) == 2 * len(labels)
    assert final.metrics["duplicates_skipped"] == len(labels)
