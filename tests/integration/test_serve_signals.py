"""`ramo serve` stops on SIGTERM (how Kubernetes and systemd stop it) as on Ctrl-C: it drains,
prints its stop line, exits 0, and leaves no process behind, Ray's agents included."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ramo_stream.stream.broker import free_port
from tests.helpers import group_members, left_behind

pytestmark = [pytest.mark.integration, pytest.mark.slow]
psutil = pytest.importorskip("psutil")
pytest.importorskip("ray", reason="the serve extra (ray[serve]) is not installed")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_sigterm_stops_ramo_serve_cleanly(tmp_path: Path, sig: signal.Signals) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAMO_", "RAY_ADDRESS"))}
    cmd = [sys.executable, "-m", "ramo_stream.cli", "serve", "--serve-port", str(port),
           "--paths-cache-dir", str(tmp_path / "cache")]  # fmt: skip
    log_path = tmp_path / "serve.log"
    seen: set[int] = set()
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            seen.update(p.pid for p in group_members(proc.pid))
            if "reward service on" in log_path.read_text():
                break
            time.sleep(0.5)
        assert proc.poll() is None, f"ramo serve exited early:\n{log_path.read_text()[-3000:]}"
        assert "reward service on" in log_path.read_text(), log_path.read_text()[-3000:]
        for _ in range(4):  # Ray's agents start a moment after the service answers
            seen.update(p.pid for p in group_members(proc.pid))
            time.sleep(0.5)
        proc.send_signal(sig)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    out = log_path.read_text()
    assert rc == 0, out[-3000:]
    assert "reward service stopped" in out and "Traceback" not in out, out[-3000:]
    time.sleep(2)
    left = left_behind(proc.pid, seen)
    assert not left, [(p.pid, p.name(), " ".join(p.cmdline())[:80]) for p in left]
    assert len(seen) > 3, f"only {len(seen)} processes seen: did Ray start?"
