"""`ramo up` with the selection gate on, end to end: a real broker (the session's, so the
topics outlive the command and can be read after it), a real local Ray with the labeler,
reward and gate-features Serve apps, tiny real models. N pairs in, a budget below N: every
pair is selected or skipped, exactly the selected ones are labeled, the skipped ones carry
their score, and the gate's features came from its Serve deployment, not the driver."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from ramo_stream.schemas import LabeledPair, ResponsePair
from ramo_stream.stream.broker import free_port
from tests.helpers import read_all, replica_pids

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PAIRS = 10
WINDOW, BUDGET = 5, 1  # pairs per window, labels per window: most pairs are skipped


def _pairs() -> list[ResponsePair]:
    things = ["bleach", "a ladder", "lye", "a chainsaw", "fireworks"]
    return [
        ResponsePair(
            prompt=f"How do I safely use {things[i % len(things)]}? (case {i})",
            response_a=f"Wear gloves and keep it from children ({i}).",
            response_b=["I can't help with that.", f"Just use it ({i})."][i % 2],
            source="test",
        )
        for i in range(PAIRS)
    ]


@pytest.mark.timeout(600)
def test_ramo_up_with_the_gate_labels_exactly_the_selected_pairs(
    broker: str, new_topic: Callable[..., str], models_dir: Path, tmp_path: Path
) -> None:
    items = _pairs()
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(p.model_dump_json() + "\n" for p in items))
    topics = {k: new_topic(2) for k in ("pairs", "selected", "skipped", "labels")}
    topics["dlq"] = new_topic(1)
    cmd = [
        sys.executable, "-m", "ramo_stream.cli", "up", "--file", str(data),
        "--exit-when-idle", "20", "--view-every", "1",
        "--kafka-bootstrap-servers", broker,
        *[f"--topics-{k}={v}" for k, v in topics.items()],
        "--paths-cache-dir", str(tmp_path / "cache"), "--serve-port", str(free_port()),
        "--models-grader", str(models_dir / "smollm2-135m-instruct"),
        "--models-encoder", str(models_dir / "all-minilm-l6-v2"),
        "--models-reward-backbone", str(models_dir / "all-minilm-l6-v2"),
        "--labeling-selector", "random", "-k", "2", "--labeling-pair-batch", "2",
        "--train-batch-pairs", "2", "--train-publish-every-steps", "1",
        "--train-publish-every-s", "3",
        # The budget per window, before the labeler's rate is measured: the file is sorted
        # by the gate's first polls, before the labeler has labeled anything.
        "--select-enabled", "on", "--select-window-pairs", str(WINDOW),
        "--select-budget", str(BUDGET), "--select-max-length", "64",
        "--select-group", f"g-{topics['pairs']}",
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAMO_", "RAY_ADDRESS"))}
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=540)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-4000:]

    selected = [ResponsePair.model_validate_json(v) for v in read_all(broker, topics["selected"])]
    skipped = [ResponsePair.model_validate_json(v) for v in read_all(broker, topics["skipped"])]
    # selected + skipped = N, each pair exactly once; the budget left some out.
    assert Counter(p.pair_id for p in selected + skipped) == Counter(p.pair_id for p in items)
    assert selected and skipped, (len(selected), len(skipped))
    assert len(selected) <= PAIRS * BUDGET / WINDOW + 1, len(selected)
    for p in selected + skipped:
        note = p.metadata["selection"]
        assert isinstance(note, dict)
        assert note["selected"] is (p in selected) and note["strategy"] == "d-opt"
        assert isinstance(note["score"], float) and note["score"] > 0
    # Every selected pair is labeled, and no other.
    labels = [LabeledPair.model_validate_json(v).pair_id
              for v in read_all(broker, topics["labels"])]  # fmt: skip
    assert sorted(labels) == sorted(p.pair_id for p in selected), out[-4000:]
    assert read_all(broker, topics["dlq"]) == []

    # The features came through the Serve deployment: `ramo up` said where at start, and
    # at the stop how many pairs its replicas scored for the gate (all of them).
    # on the reward service's device: cpu here, a GPU where Ray sees one
    assert re.search(r"features from Serve app 'select' \(1 replica on \w+", out), out[-4000:]
    found = re.search(r"selection gate: (\d+) pairs sorted, selected (\d+), skipped (\d+);"
                      r" features from Serve app 'select' [^:]*: (\d+) pairs in (\d+) requests",
                      out)  # fmt: skip
    assert found, out[-4000:]
    sorted_, n_sel, n_skip, scored, requests = map(int, found.groups())
    assert (sorted_, n_sel, n_skip) == (PAIRS, len(selected), len(skipped))
    assert scored == PAIRS and requests >= 1
    print(f"\n{found.group(0)}")


def _pids(app: str) -> list[int]:
    return replica_pids(app, "GateFeaturesDeployment")


@pytest.mark.timeout(400)
def test_a_killed_features_replica_loses_no_pair_and_a_dead_app_is_a_clear_error(
    ray_serve: int, broker: str, new_topic: Callable[..., str], models_dir: Path, tmp_path: Path
) -> None:
    """kill -9 of the features replica while the gate sorts: Serve restarts it, the gate
    retries, every pair ends on selected or skipped, none dead-lettered. Then the app is
    deleted: the gate gives up after select.features_wait_s naming the app, and commits and
    dead-letters nothing."""
    import signal
    import threading
    import time

    from ray import serve

    from ramo_stream.config import KafkaSettings, flat_settings, load_settings
    from ramo_stream.label.serve_app import LabelerAppArgs
    from ramo_stream.serve.gate_features import FeaturesUnavailable, RemoteServedModel, build_app
    from ramo_stream.stream.gate import make_gate, run_gate
    from ramo_stream.stream.kafka_io import TopicWriter, make_producer
    from tests.integration.test_select_gate import committed_total

    names = {k: new_topic(2 if k == "pairs" else 1) for k in ("pairs", "selected", "skipped")}
    names["dlq"] = new_topic(1)
    settings = load_settings(None, {
        "kafka.bootstrap_servers": broker, "paths.cache_dir": str(tmp_path),
        **{f"topics.{k}": v for k, v in names.items()},
        "models.reward_backbone": str(models_dir / "all-minilm-l6-v2"),
        "select.group": f"g-{names['pairs']}", "select.max_length": 64, "select.linger_s": 0.0,
        "select.window_pairs": 10, "select.budget": 2, "select.max_in_flight": 10,
        "select.features_wait_s": 90.0,
    })  # fmt: skip
    items = [p for i in range(8) for p in _pairs()]  # 80 pairs, ids made unique below
    items = [p.model_copy(update={"pair_id": f"{p.pair_id}-{i}"}) for i, p in enumerate(items)]
    producer = make_producer(broker, KafkaSettings())
    writer = TopicWriter(producer)
    for p in items:
        writer.send(names["pairs"], p, key=p.pair_id)
    assert writer.flush() == len(items)

    app = "select-kill"
    args = LabelerAppArgs(overrides=flat_settings(settings), gate_cpus=0.5)
    handle = serve.run(build_app(args), name=app, route_prefix=None)
    model = RemoteServedModel(handle, settings, app=app)
    processor, gate = make_gate(settings, broker, model)
    try:
        (victim,) = _pids(app)
        errors: list[BaseException] = []

        def sort() -> None:
            try:
                run_gate(processor, settings, until_caught_up=True, idle_timeout_s=120)
            except BaseException as e:  # reported below
                errors.append(e)

        thread = threading.Thread(target=sort)
        thread.start()
        deadline = time.monotonic() + 120
        while gate.stats.seen < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert 0 < gate.stats.seen < len(items), "the kill must land mid-stream"
        os.kill(victim, signal.SIGKILL)
        thread.join(300)
        assert not thread.is_alive() and not errors, errors
        assert _pids(app) and _pids(app) != [victim]  # Serve restarted it

        selected = [
            ResponsePair.model_validate_json(v) for v in read_all(broker, names["selected"])
        ]
        skipped = [ResponsePair.model_validate_json(v) for v in read_all(broker, names["skipped"])]
        assert Counter(p.pair_id for p in selected + skipped) == Counter(p.pair_id for p in items)
        assert read_all(broker, names["dlq"]) == []
        assert committed_total(broker, names["pairs"], settings.select.group) == len(items)
        assert model.pairs_scored >= len(items)

        # The app is gone for good: a clear error after the wait, nothing moved.
        serve.delete(app)
        model.settings = load_settings(None, {**flat_settings(settings),
                                              "select.features_wait_s": 3.0})  # fmt: skip
        more = [p.model_copy(update={"pair_id": f"late-{i}"}) for i, p in enumerate(_pairs())]
        for p in more:
            writer.send(names["pairs"], p, key=p.pair_id)
        assert writer.flush() == len(more)
        with pytest.raises(FeaturesUnavailable, match="'select-kill'.*features_wait_s"):
            while True:  # until a poll holds the new pairs
                processor.process_once()
        assert committed_total(broker, names["pairs"], settings.select.group) == len(items)
        assert read_all(broker, names["dlq"]) == []
    finally:
        processor.close()
        gate.writer.producer.close()
        producer.close()
        if app in serve.status().applications:
            serve.delete(app)
