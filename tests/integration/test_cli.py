"""The `ramo` command as a user runs it: real processes, real broker."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from ramo_stream.schemas import DeadLetter, ResponsePair
from ramo_stream.stream.broker import free_port
from tests.helpers import read_all, shared_file

pytestmark = pytest.mark.integration


def ramo(*args: str, env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ramo_stream.cli", *args],
        env=env, capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip


def clean_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAMO_")}
    env["RAMO_PATHS__CACHE_DIR"] = str(tmp_path / "cache")
    env.update(settings)
    return env


def test_help_lists_commands_and_settings(tmp_path: Path) -> None:
    out = ramo("--help", env=clean_env(tmp_path))
    assert out.returncode == 0
    for cmd in ("run", "broker", "ingest", "tail", "models", "rules", "config"):
        assert cmd in out.stdout
    out = ramo("ingest", "--help", env=clean_env(tmp_path))
    assert (
        "--kafka-bootstrap-servers" in out.stdout and "RAMO_KAFKA__BOOTSTRAP_SERVERS" in out.stdout
    )


def test_bad_setting_is_a_clear_error(tmp_path: Path) -> None:
    out = ramo("config", "--topics-partitions", "0", env=clean_env(tmp_path))
    assert out.returncode == 2
    assert "topics.partitions" in out.stderr and "Traceback" not in out.stderr


def test_ingest_hh_rewardbench_file(
    tmp_path: Path, broker: str, new_topic: Callable[..., str]
) -> None:
    hh = shared_file("hh_harmless_test.jsonl")
    pairs_topic, dlq = new_topic(), new_topic(1)
    env = clean_env(
        tmp_path,
        RAMO_KAFKA__BOOTSTRAP_SERVERS=broker,
        RAMO_TOPICS__PAIRS=pairs_topic,
        RAMO_TOPICS__DLQ=dlq,
    )
    out = ramo("ingest", str(hh), "--limit", "300", env=env)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in hh.read_text().splitlines()[:300]]
    # The real set has a few empty replies: those must be rejected, not passed on.
    blank = [r for r in rows if not (r["chosen"].strip() and r["rejected"].strip())]
    accepted = len(rows) - len(blank)
    assert f"accepted {accepted} " in out.stdout and f"rejected {len(blank)} " in out.stdout
    pairs = [ResponsePair.model_validate_json(v) for v in read_all(broker, pairs_topic)]
    assert len(pairs) == accepted
    letters = [DeadLetter.model_validate_json(v) for v in read_all(broker, dlq)]
    assert sorted(json.loads(d.original)["id"] for d in letters) == sorted(r["id"] for r in blank)
    by_id = {r["id"]: r for r in rows}
    for p in pairs:
        row = by_id[p.metadata["original_id"]]
        chosen = p.response_a if p.metadata["gold"] == "a" else p.response_b
        assert chosen == row["chosen"]
        assert p.source == "hh_harmless_test"
    golds = Counter(p.metadata["gold"] for p in pairs)
    assert min(golds.values()) > 100  # sides shuffled, not all chosen-first


def test_ingest_bad_lines_land_on_dlq_with_original_bytes(
    tmp_path: Path, broker: str, new_topic: Callable[..., str]
) -> None:
    from importlib import resources

    bad = Path(str(resources.files("ramo_stream") / "data" / "demo_malformed.jsonl"))
    pairs_topic, dlq = new_topic(), new_topic(1)
    env = clean_env(
        tmp_path,
        RAMO_KAFKA__BOOTSTRAP_SERVERS=broker,
        RAMO_TOPICS__PAIRS=pairs_topic,
        RAMO_TOPICS__DLQ=dlq,
    )
    out = ramo("ingest", str(bad), env=env)
    assert out.returncode == 0, out.stderr
    assert "accepted 0" in out.stdout and "rejected 4" in out.stdout
    letters = [DeadLetter.model_validate_json(v) for v in read_all(broker, dlq)]
    lines = [line.encode() for line in bad.read_text().splitlines() if line.strip()]
    assert sorted(d.original for d in letters) == sorted(lines)
    assert all(d.stage == "ingest" and d.reason.startswith("line ") for d in letters)


def test_main_job_runs_on_embedded_defaults(tmp_path: Path) -> None:
    """`ramo run`, the data plane alone: its own broker, demo pairs flow, bad ones DLQ'd."""
    out = ramo("run", env=clean_env(tmp_path), timeout=180)
    assert out.returncode == 0, out.stderr
    assert "accepted 40 -> ramo.pairs" in out.stdout
    assert "rejected 4 -> ramo.dlq" in out.stdout
    assert "gate: consumed 40" in out.stdout
    # the raw junk a misbehaving producer wrote straight to the topic
    assert "dead-lettered 2" in out.stdout


def test_broker_command_is_found_by_other_commands(tmp_path: Path) -> None:
    port = free_port()
    env = clean_env(tmp_path, RAMO_BROKER__PORT=str(port))
    # Started with SIGINT ignored, as a non-interactive shell starts a background job: the
    # SIGINT below must still stop it (the command installs its own handler).
    proc = subprocess.Popen(
        [sys.executable, "-m", "ramo_stream.cli", "broker"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        state = tmp_path / "cache" / "broker.json"
        for _ in range(200):
            if state.exists():
                break
            time.sleep(0.1)
        assert json.loads(state.read_text())["bootstrap"] == f"127.0.0.1:{port}"
        demo = tmp_path / "one.jsonl"
        demo.write_text(json.dumps({"prompt": "hi", "chosen": "hello!", "rejected": "no"}) + "\n")
        out = ramo("ingest", str(demo), env=env)  # no bootstrap configured: finds the broker
        assert out.returncode == 0, out.stderr
        assert "started an embedded broker" not in out.stderr
        assert len(read_all(f"127.0.0.1:{port}", "ramo.pairs")) == 1
    finally:
        proc.send_signal(signal.SIGINT)
        stdout, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0
    assert "broker stopped" in stdout
    assert not state.exists()


def test_tail_prints_dead_letters(
    tmp_path: Path, broker: str, new_topic: Callable[..., str]
) -> None:
    dlq = new_topic(1)
    from ramo_stream.config import KafkaSettings
    from ramo_stream.stream.kafka_io import TopicWriter, make_producer

    producer = make_producer(broker, KafkaSettings())
    w = TopicWriter(producer)
    w.send(dlq, DeadLetter.of(b"{broken", "not JSON: expecting value", "gate"))
    w.flush()
    producer.close()
    env = clean_env(tmp_path, RAMO_KAFKA__BOOTSTRAP_SERVERS=broker, RAMO_TOPICS__DLQ=dlq)
    out = ramo("tail", "dlq", "--from-beginning", "--max", "1", "--timeout", "10", env=env)
    assert out.returncode == 0, out.stderr
    assert "[gate] not JSON: expecting value" in out.stdout and "{broken" in out.stdout
