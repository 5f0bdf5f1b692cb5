"""The Serve labeler's grader proxy passes on what the grader says of itself.

The labeler decides calibration from ``grader.calibrate_by_default``; in the Serve app the
grader lives in its own deployment and the labeler sees a proxy. A proxy that dropped the
attribute once made `ramo up` calibrate the trained classifier, which turns benign pairs
into refusal preferences (README, "No calibration for the classifier")."""

from __future__ import annotations

from typing import Any

import pytest

from ramo_stream.config import default_rule_pool, load_settings
from ramo_stream.core.rules import load_pool

pytest.importorskip("ray", reason="the serve extra (ray[serve]) is not installed")


class _Reply:
    def __init__(self, value: Any) -> None:
        self.value = value

    def result(self) -> Any:
        return self.value


class _Method:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> _Reply:
        return _Reply(self.fn(*args))


class _Grader:
    name = "g"
    template_version = "t-v1"

    def __init__(self, calibrate_by_default: bool) -> None:
        self.calibrate_by_default = calibrate_by_default


@pytest.mark.parametrize("calibrate", [False, True])
def test_labeler_behind_serve_follows_the_graders_calibration_default(calibrate: bool) -> None:
    from ramo_stream.label.labeler import Labeler
    from ramo_stream.label.serve_app import GraderDeployment, _RemoteGrader

    deployment = object.__new__(GraderDeployment.func_or_class)  # the class Serve wraps
    deployment.grader = _Grader(calibrate)
    handle = type("Handle", (), {"info": _Method(deployment.info)})()
    remote = _RemoteGrader(handle)  # type: ignore[arg-type]
    assert remote.calibrate_by_default is calibrate
    settings = load_settings(overrides={"labeling.selector": "random"}).labeling
    assert settings.calibrate is None  # unset: the grader decides
    labeler = Labeler(remote, load_pool(default_rule_pool()), settings)
    assert labeler.calibrate is calibrate
