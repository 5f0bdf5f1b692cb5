"""The Serve labeler end to end: real broker, real Ray on the CPU, real SmolLM2 grader,
real MiniLM Rule Adapter (untrained head: this tests the plumbing, not the picks)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest

from ramo_stream.config import KafkaSettings, load_settings
from ramo_stream.schemas import DeadLetter, LabeledPair, ResponsePair
from ramo_stream.stream.kafka_io import TopicWriter, make_producer
from ramo_stream.stream.serde import encode
from tests.helpers import read_all, send_pairs

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ray = pytest.importorskip("ray", reason="the serve extra (ray[serve]) is not installed")


def test_pairs_in_labels_out_failures_dead_lettered(
    ray_serve: int, broker: str, new_topic: Callable[..., str], models_dir: Path, tmp_path: Path
) -> None:
    from ray import serve

    from ramo_stream.config import flat_settings
    from ramo_stream.core.rules import load_pool
    from ramo_stream.label.bridge import GROUP, make_bridge
    from ramo_stream.label.rule_adapter.model import new_adapter
    from ramo_stream.label.serve_app import LabelerAppArgs, build_app

    pairs_topic, labels_topic, dlq = new_topic(2), new_topic(2), new_topic(1)
    settings = load_settings(overrides={
        "kafka.bootstrap_servers": broker,
        "kafka.handler_retries": 1,
        "kafka.retry_backoff_s": 0.05,
        "topics.pairs": pairs_topic, "topics.labels": labels_topic, "topics.dlq": dlq,
        "paths.cache_dir": str(tmp_path),
        "models.grader": str(models_dir / "smollm2-135m-instruct"),
        "grader.max_prompt_tokens": 300,
        "labeling.selector": "adapter", "labeling.k": 2, "labeling.pair_batch": 3,
    })  # fmt: skip
    pool = load_pool(settings.paths.rule_pool)
    new_adapter(str(models_dir / "all-minilm-l6-v2"), pool).save(settings.paths.adapter_dir)

    good = [
        ResponsePair(prompt=f"How do I keep my {thing} safe?", response_a="Lock it away.",
                     response_b="No idea.", source="test")
        for thing in ("bike", "passwords", "medicine", "garden tools", "car")
    ]  # fmt: skip
    too_long = ResponsePair(prompt="Summarise this. " + "word " * 600, response_a="ok",
                            response_b="no", source="test")  # fmt: skip
    values = [encode(p) for p in good] + [encode(good[0]), encode(too_long), b"not json"]
    producer = make_producer(broker, KafkaSettings())
    writer = TopicWriter(producer)
    for v in values:
        writer.send_bytes(pairs_topic, v)
    writer.flush()
    producer.close()

    args = LabelerAppArgs(overrides=flat_settings(settings))
    handle = serve.run(build_app(args), name="labeler-test", route_prefix=None)
    bridge = make_bridge(settings, broker, handle)
    stats = bridge.run(until_caught_up=True, idle_timeout_s=120)
    bridge.close()
    serve.delete("labeler-test")

    labels = [LabeledPair.model_validate_json(v) for v in read_all(broker, labels_topic)]
    assert sorted(lp.pair_id for lp in labels) == sorted(p.pair_id for p in good)  # dup dropped
    for lp in labels:
        assert lp.selector == "adapter" and len(lp.selected_rules) == 2
        assert lp.rule_pool_hash == pool.hash and lp.template_version
        assert {j.side for j in lp.judgments} == {"a", "b"}
    letters = [DeadLetter.model_validate_json(v) for v in read_all(broker, dlq)]
    by_original = {d.original: d for d in letters}
    assert set(by_original) == {encode(too_long), b"not json"}
    failed = by_original[encode(too_long)]
    assert "max_prompt_tokens" in failed.reason and failed.stage == "labeler"
    assert failed.attempts == 3  # 1 + 1 retry as a batch, then alone
    assert stats.duplicates == 1 and stats.handled == len(good)

    from kafka import KafkaConsumer, TopicPartition

    c = KafkaConsumer(bootstrap_servers=broker, group_id=GROUP, enable_auto_commit=False)
    committed = sum(c.committed(TopicPartition(pairs_topic, p)) or 0 for p in (0, 1))
    c.close(autocommit=False)
    assert committed == len(values)  # every record's offset committed, none before its ack
    assert json.loads(labels[0].model_dump_json())["labeler"] == "ramo"


def test_attach_runs_only_the_bridge_and_leaves_the_app_running(
    ray_serve: int, broker: str, new_topic: Callable[..., str], models_dir: Path, tmp_path: Path
) -> None:
    """`ramo labeler --attach APP` in another process feeds an app deployed here, as the
    bridge Deployment feeds the RayService's app, and leaves it deployed."""
    import os
    import subprocess
    import sys

    import ray
    from ray import serve

    from ramo_stream.config import flat_settings
    from ramo_stream.label.serve_app import LabelerAppArgs, build_app

    pairs_topic, labels_topic, dlq = new_topic(2), new_topic(2), new_topic(1)
    overrides = {
        "kafka.bootstrap_servers": broker,
        "topics.pairs": pairs_topic, "topics.labels": labels_topic, "topics.dlq": dlq,
        "paths.cache_dir": str(tmp_path),
        "models.grader": str(models_dir / "smollm2-135m-instruct"),
        "labeling.selector": "random", "labeling.k": 2,
    }  # fmt: skip
    settings = load_settings(overrides=overrides)
    pairs = [
        ResponsePair(prompt=f"Is it safe to mix {a} and {b}?", response_a="No, never.",
                     response_b="Sure.", source="test")
        for a, b in (("bleach", "ammonia"), ("water", "salt"), ("vinegar", "baking soda"))
    ]  # fmt: skip
    send_pairs(broker, pairs_topic, pairs)

    app = "labeler-attached"
    serve.run(build_app(LabelerAppArgs(overrides=flat_settings(settings))), name=app,
              route_prefix=None)  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAMO_", "RAY_ADDRESS"))}
    env.update({"RAMO_" + k.upper().replace(".", "__"): str(v) for k, v in overrides.items()})
    # The cluster is named, never discovered: other Ray clusters may run on this machine.
    address = ray.get_runtime_context().gcs_address
    attach = [sys.executable, "-m", "ramo_stream.cli", "labeler", "--ray-address", address]
    try:
        missing = subprocess.run(attach + ["--attach", "no-such-app", "--idle-timeout", "1"],
                                 env=env, capture_output=True, text=True, timeout=120)  # fmt: skip
        assert missing.returncode != 0
        assert f"no Serve application 'no-such-app' on the Ray cluster at {address}" in (
            missing.stderr
        ), missing.stderr[-2000:]
        assert app in missing.stderr.splitlines()[-1]  # the apps it found are listed
        done = subprocess.run(attach + ["--attach", app, "--idle-timeout", "8"],
                              env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
        labels = [LabeledPair.model_validate_json(v) for v in read_all(broker, labels_topic)]
        assert sorted(lp.pair_id for lp in labels) == sorted(p.pair_id for p in pairs)
        assert all(lp.selector == "random" for lp in labels)
        assert serve.status().applications[app].status == "RUNNING"  # left as it was
    finally:
        serve.delete(app)


def test_a_labeler_app_that_is_gone_stops_the_bridge_with_nothing_dead_lettered(
    ray_serve: int, broker: str, new_topic: Callable[..., str], models_dir: Path, tmp_path: Path
) -> None:
    """The labeler deployment failing is no pair's fault: the bridge sends the batch again
    for labeling.service_wait_s, then stops with LabelerUnavailable; nothing is committed
    and no healthy pair goes to the DLQ (before, each pair was retried alone and
    dead-lettered)."""
    from kafka import KafkaConsumer, TopicPartition
    from ray import serve

    from ramo_stream.config import flat_settings
    from ramo_stream.label.bridge import GROUP, LabelerUnavailable, make_bridge
    from ramo_stream.label.serve_app import LabelerAppArgs, build_app

    pairs_topic, labels_topic, dlq = new_topic(1), new_topic(1), new_topic(1)
    (tmp_path / "models").symlink_to(models_dir, target_is_directory=True)  # the grader's base
    settings = load_settings(overrides={
        "kafka.bootstrap_servers": broker, "kafka.handler_retries": 1,
        "kafka.retry_backoff_s": 0.05,
        "topics.pairs": pairs_topic, "topics.labels": labels_topic, "topics.dlq": dlq,
        "paths.cache_dir": str(tmp_path), "labeling.selector": "random", "labeling.k": 1,
        "labeling.service_wait_s": 3.0,
    })  # fmt: skip
    pairs = [
        ResponsePair(prompt=f"Is {x} safe to eat?", response_a="Yes, cooked.",
                     response_b="No idea.", source="test")
        for x in ("rice", "kale")
    ]  # fmt: skip
    send_pairs(broker, pairs_topic, pairs)

    app = "labeler-gone"
    handle = serve.run(build_app(LabelerAppArgs(overrides=flat_settings(settings))), name=app,
                       route_prefix=None)  # fmt: skip
    serve.delete(app)  # every call through the handle now fails on the deployment's side
    bridge = make_bridge(settings, broker, handle)
    try:
        with pytest.raises(LabelerUnavailable, match="labeling.service_wait_s"):
            bridge.run(until_caught_up=True, idle_timeout_s=60)
    finally:
        bridge.close()
    assert read_all(broker, dlq) == [] and read_all(broker, labels_topic) == []
    c = KafkaConsumer(bootstrap_servers=broker, group_id=GROUP, enable_auto_commit=False)
    committed = c.committed(TopicPartition(pairs_topic, 0))
    c.close(autocommit=False)
    assert not committed  # delivered again to the next run
