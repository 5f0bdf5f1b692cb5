"""The embedded broker outlives a terminal's Ctrl-C (its owner still needs it to drain)
and never outlives its owner."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil
import pytest

from ramo_stream.stream.broker import EmbeddedBroker, _answers

pytestmark = pytest.mark.integration

OWNER = """
import sys, time
from ramo_stream.stream.broker import EmbeddedBroker
b = EmbeddedBroker(port=0)
b.start()
print(b.pid, b.bootstrap, flush=True)
time.sleep(600)
"""


def _gone(pid: int, within_s: float) -> bool:
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        if not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
            return True
        time.sleep(0.1)
    return False


def test_sigint_does_not_stop_the_broker_but_its_owner_does() -> None:
    with EmbeddedBroker(port=0) as broker:
        assert broker.pid is not None
        os.kill(broker.pid, signal.SIGINT)  # what Ctrl-C sends to the foreground group
        time.sleep(1)
        assert _answers(broker.bootstrap, timeout_s=5.0)
        pid = broker.pid
    assert _gone(pid, within_s=10)  # stop() (SIGTERM) ends it


def test_a_broker_whose_owner_is_killed_stops_too() -> None:
    owner = subprocess.Popen([sys.executable, "-c", OWNER], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        pid_text, bootstrap = owner.stdout.readline().split()
        pid = int(pid_text)
        assert _answers(bootstrap, timeout_s=5.0)
        owner.kill()  # kill -9: no chance to stop the broker itself
        owner.wait()
        assert _gone(pid, within_s=10), "the broker outlived its owner"
    finally:
        if owner.poll() is None:
            owner.kill()
