"""`ramo up --demo` end to end: its own broker, a real local Ray, the labeler, the trainer
and the reward service, with tiny real models; pairs in, labels out, versions published
and served, then Ctrl-C and nothing left running."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from ramo_stream.reward.registry import Registry
from ramo_stream.stream.broker import free_port

pytestmark = pytest.mark.integration

PAIRS = 12


def _group_members(pgid: int) -> list[psutil.Process]:
    alive = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except (psutil.Error, ProcessLookupError):
            pass
    return alive


@pytest.mark.timeout(1500)
def test_ramo_up_labels_trains_serves_and_stops_clean(models_dir: Path, tmp_path: Path) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    cache = tmp_path / "cache"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAMO_", "RAY_ADDRESS"))}
    cmd = [
        sys.executable, "-m", "ramo_stream.cli", "up", "--demo", "--limit", str(PAIRS),
        "--view-every", "1",
        "--paths-cache-dir", str(cache), "--serve-port", str(port),
        "--models-grader", str(models_dir / "smollm2-135m-instruct"),
        "--models-encoder", str(models_dir / "all-minilm-l6-v2"),
        "--models-reward-backbone", str(models_dir / "all-minilm-l6-v2"),
        "--labeling-selector", "random", "-k", "2", "--labeling-pair-batch", "2",
        "--train-batch-pairs", "2", "--train-publish-every-steps", "1",
        "--train-publish-every-s", "3", "--train-heldout-every", "4",
    ]  # fmt: skip
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
            seen.update(p.pid for p in _group_members(proc.pid))
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
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        rc = proc.wait(timeout=600)
    finally:
        stop_polling.set()
        poller.join(15)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = log_path.read_text()
    assert rc == 0, out[-4000:]

    # Pairs in, labels out: every valid pair was labeled and trained on or held out.
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
    left = _group_members(proc.pid)
    left += [p for p in (psutil.Process(pid) for pid in seen if psutil.pid_exists(pid))
             if p.status() != psutil.STATUS_ZOMBIE]  # fmt: skip
    assert not left, [(p.pid, p.name()) for p in left]
