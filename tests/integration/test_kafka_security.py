"""Kafka security settings against a real broker that wants SASL.

tansu (the embedded broker) requires client authentication with ``--authentication`` and
speaks SASL (SCRAM). It has no way to add a user while authentication is on (``tansu user
create`` itself must authenticate) and keeps users in memory, so no login can succeed
against it: this tests the failure path, which is what a wrong password meets. TLS and a
successful SCRAM login need a real Kafka (deploy/README.md), not available here.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sasl_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from ramo_stream.stream.broker import HOST, BrokerError, find_tansu, free_port

    try:
        binary = find_tansu()
    except BrokerError as e:
        pytest.skip(f"no tansu binary: {e}")
    port = free_port()
    url = f"tcp://{HOST}:{port}"
    log = tmp_path_factory.mktemp("sasl") / "tansu.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(binary), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--authentication"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while "ready" not in log.read_text(errors="replace"):
            if time.monotonic() > deadline or proc.poll() is not None:
                pytest.fail(f"tansu --authentication did not start: {log.read_text()[-500:]}")
            time.sleep(0.1)
        yield f"{HOST}:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


def test_wrong_password_fails_fast_with_what_to_check(sasl_broker: str, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "RAMO_KAFKA__BOOTSTRAP_SERVERS": sasl_broker,
        "RAMO_KAFKA__SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "RAMO_KAFKA__SASL_MECHANISM": "SCRAM-SHA-256",
        "RAMO_KAFKA__SASL_USERNAME": "alice",
        "RAMO_KAFKA__SASL_PASSWORD": "not-her-password",
        "RAMO_KAFKA__CONNECT_TIMEOUT_S": "5",
        "RAMO_PATHS__CACHE_DIR": str(tmp_path),
    }
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "ramo_stream.cli", "tail", "pairs", "--max", "1"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    took = time.monotonic() - t0
    assert proc.returncode == 1, proc.stderr
    err = proc.stderr.strip()
    assert "Traceback" not in err, err
    assert err.startswith(f"error: cannot use Kafka at {sasl_broker}"), err
    assert "sasl_mechanism=SCRAM-SHA-256, user 'alice'" in err and "password" in err
    assert "not-her-password" not in err  # the secret never reaches a message
    assert took < 30, f"took {took:.1f} s to fail (connect_timeout_s 5)"
