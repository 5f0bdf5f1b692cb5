"""`ramo up --demo` end to end: its own broker, a real local Ray, the labeler, the trainer
and the reward service, with tiny real models; pairs in, labels out, versions published
and served, then Ctrl-C and nothing left running."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from ramo_stream.registry.store import Registry
from ramo_stream.stream.broker import free_port
from tests.helpers import group_members, left_behind

pytestmark = pytest.mark.integration

PAIRS = 12


def _up_command(models_dir: Path, cache: Path, port: int, pairs: int = PAIRS) -> list[str]:
    return [
        sys.executable, "-m", "ramo_stream.cli", "up", "--demo", "--limit", str(pairs),
        "--view-every", "1",
        "--paths-cache-dir", str(cache), "--serve-port", str(port),
        "--models-grader", str(models_dir / "smollm2-135m-instruct"),
        "--models-encoder", str(models_dir / "all-minilm-l6-v2"),
        "--models-reward-backbone", str(models_dir / "all-minilm-l6-v2"),
        "--labeling-selector", "random", "-k", "2", "--labeling-pair-batch", "2",
        "--train-batch-pairs", "2", "--train-publish-every-steps", "1",
        "--train-publish-every-s", "3", "--train-heldout-every", "4",
    ]  # fmt: skip


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("RAMO_", "RAY_ADDRESS"))}


@pytest.mark.timeout(1500)
def test_ramo_up_labels_trains_serves_and_stops_clean(models_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cache = tmp_path / "cache"
    env = _env()
    cmd = _up_command(models_dir, cache, port)
    log_path = tmp_path / "up.log"
    registry = Registry(str(cache / "registry"))
    replies: list[tuple[float, int, int | None]] = []  # (time, status, model_version)
    seen: set[int] = set()  # every process of the run's session, sampled while it runs
    stop_polling = threading.Event()

    def poll_service() -> None:
        body = {"items": [{"prompt": "How do I pick a lock?", "response": "I can't help."}]}
        with httpx.Client(timeout=10) as client:
            while not stop_polling.wait(0.5):
                try:
                    r = client.post(f"{url}/v1/score", json=body)
                except httpx.TransportError:
                    continue  # not listening yet, or already gone
                version = r.json().get("model_version") if r.status_code == 200 else None
                replies.append((time.monotonic(), r.status_code, version))

    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    poller = threading.Thread(target=poll_service, daemon=True)
    poller.start()
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and proc.poll() is None:
            seen.update(p.pid for p in group_members(proc.pid))
            if len(registry.versions()) >= 2 and any(v for *_, v in replies if v and v >= 2):
                break
            time.sleep(1)
        assert proc.poll() is None, f"ramo up exited early:\n{log_path.read_text()[-4000:]}"
        assert len(registry.versions()) >= 2, f"no two versions:\n{log_path.read_text()[-4000:]}"
        # Other commands find the broker `ramo up` started: the 4 malformed demo lines are
        # on the dead-letter topic, each with its reason.
        tail = subprocess.run(
            [sys.executable, "-m", "ramo_stream.cli", "tail", "dlq", "--from-beginning",
             "--max", "4", "--timeout", "10", "--paths-cache-dir", str(cache)],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert tail.returncode == 0, tail.stderr
        assert "started an embedded broker" not in tail.stderr
        assert len(tail.stdout.strip().splitlines()) == 4, tail.stdout
        # Ctrl-C as a terminal sends it: to the whole foreground process group, so the
        # broker and Ray's processes get it too and must outlive it for the drain.
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=600)
    finally:
        stop_polling.set()
        poller.join(15)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = log_path.read_text()
    assert rc == 0, out[-4000:]

    # Pairs in, labels out: Ctrl-C came while pairs were still being labeled (as soon as
    # two versions were served); the stop drained them, so every valid pair was labeled
    # and trained on or held out, none dropped with the in-memory broker.
    assert "labeling and training every accepted pair first" in out, out[-4000:]
    assert "dropped" not in out
    final = registry.current()
    assert final is not None and "final version" in out
    labels_read = sum(final.offsets["ramo.labels"].values())
    assert labels_read == PAIRS, out[-4000:]
    assert final.samples_seen + final.heldout_size == PAIRS
    assert "labeled" in out and "dead letters" in out  # the live view was drawn
    assert "killed by `ray.kill`" not in out, out[-4000:]  # a clean stop prints no Ray errors

    # Once deployed (Serve's proxy answers 404 until the app's route exists), the service
    # answered throughout: 503 before the first version, then only 200s, and the versions
    # it answered with only moved forward.
    statuses = [s for _, s, _ in replies]
    assert any(s != 404 for s in statuses), statuses
    statuses = statuses[next(i for i, s in enumerate(statuses) if s != 404) :]
    assert set(statuses) <= {200, 503}, statuses
    first_ok = statuses.index(200)
    assert all(s == 200 for s in statuses[first_ok:]), statuses
    versions = [v for *_, v in replies if v is not None]
    assert versions == sorted(versions) and versions[-1] > versions[0], versions

    # A clean stop: nothing of the run (broker, Ray, workers) is left.
    time.sleep(2)
    left = left_behind(proc.pid, seen)
    assert not left, [(p.pid, p.name()) for p in left]


@pytest.mark.timeout(1200)
def test_a_second_ctrl_c_skips_the_drain_and_counts_what_it_drops(
    models_dir: Path, tmp_path: Path
) -> None:
    """SIGTERM, then Ctrl-C, as soon as the first version exists (most pairs still unlabeled): it
    stops without draining, and the drop line accounts for every accepted pair.

    The registry starts with a version from an earlier run whose read positions name a
    broker that is gone: the trainer keeps its weights but reads the new topic from the
    start (positions taken at face value would skip the first 40 labels per partition)."""
    from ramo_stream.registry.model import load_reward_model

    cache = tmp_path / "cache"
    registry = Registry(str(cache / "registry"))
    model, tok = load_reward_model(models_dir / "all-minilm-l6-v2")
    earlier = registry.publish(
        lambda stage: (model.save_pretrained(stage), tok.save_pretrained(stage)),
        steps=5, samples_seen=100, offsets={"ramo.labels": dict.fromkeys(range(4), 40)},
        base_model="all-minilm-l6-v2",
    )  # fmt: skip
    log_path = tmp_path / "up.log"
    pairs = 24  # more than the first test: the stop must come while many are unlabeled
    with log_path.open("w") as log:
        proc = subprocess.Popen(_up_command(models_dir, cache, free_port(), pairs), env=_env(),
                                stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and proc.poll() is None and len(registry.versions()) < 2:
            time.sleep(0.5)
        assert proc.poll() is None and len(registry.versions()) >= 2, log_path.read_text()[-4000:]
        seen = re.findall(r"labeled\s+(\d+)", log_path.read_text())
        labeled_at_stop = int(seen[-1]) if seen else 0
        # The first stop request is a SIGTERM (what Kubernetes sends), which must drain like
        # Ctrl-C even though ray.init() installs its own SIGTERM handler; then a Ctrl-C.
        proc.send_signal(signal.SIGTERM)
        while "Ctrl-C again skips that" not in log_path.read_text() and proc.poll() is None:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)
        rc = proc.wait(timeout=600)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = log_path.read_text()
    assert rc == 0, out[-4000:]
    found = re.search(r"dropped (\d+) accepted pairs not yet labeled and (\d+) labels", out)
    assert found, out[-4000:]
    pairs_dropped, labels_dropped = int(found[1]), int(found[2])
    final = registry.current()
    assert final is not None and final.version > earlier.version
    labels_read = sum(final.offsets["ramo.labels"].values())
    # Every accepted pair is either behind the final version, a label it did not read, or
    # a pair never labeled; and the stop came early enough that some were dropped.
    assert labels_read + labels_dropped + pairs_dropped == pairs, out[-4000:]
    if labeled_at_stop <= pairs - 6:
        # Three batches of 2 or more were left: between the two signals (well under a
        # second) and the bridge's batch in flight, not all of them can be labeled.
        assert pairs_dropped > 0, out[-4000:]
    assert final.samples_seen - earlier.samples_seen + final.heldout_size == labels_read
    time.sleep(2)
    left = group_members(proc.pid)
    assert not left, [(p.pid, p.name()) for p in left]
