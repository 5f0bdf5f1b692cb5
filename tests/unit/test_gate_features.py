"""The gate's features proxy (`ramo up`): the ServedModel interface over a Serve handle.

A fake handle stands in for GateFeaturesDeployment: what is tested is the proxy's own
logic (versions, splitting a poll over replicas, telling a dead replica from a bad pair,
giving up with a clear error). The real deployment runs in
tests/integration/test_up_gate.py."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("ray", reason="the serve extra (ray[serve]) is not installed")

from ray.exceptions import ActorDiedError, GetTimeoutError, RayTaskError  # noqa: E402

from ramo_stream.config import load_settings  # noqa: E402
from ramo_stream.serve.gate_features import (  # noqa: E402
    FeaturesUnavailable,
    RemoteServedModel,
)
from ramo_stream.stream.messages import ServiceUnavailable  # noqa: E402
from ramo_stream.stream.service_call import is_service_error  # noqa: E402

DIM = 4


class Reply:
    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error

    def result(self, timeout_s: float | None = None) -> Any:
        if self.error is not None:
            raise self.error
        return self.value


class Method:
    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.calls: list[tuple[Any, ...]] = []

    def remote(self, *args: Any) -> Reply:
        self.calls.append(args)
        return self.fn(*args)


class FakeDeployment:
    """Answers for ``version``; phi of a response is its number in every coordinate, so the
    proxy's reassembly can be checked against a direct computation."""

    def __init__(self, version: int | None = 3) -> None:
        self.version = version
        self.fail: list[BaseException] = []  # raised by the next calls, in order
        self.current = Method(self._current)
        self.pairs = Method(self._pairs)

    def _info(self) -> dict[str, Any]:
        return {"version": self.version, "identity": f"v{self.version}", "dim": DIM,
                "device": "cpu"}  # fmt: skip

    def _current(self) -> Reply:
        return Reply(self._info())

    def _pairs(self, rows: dict[str, list[Any]], version: int | None) -> Reply:
        if self.fail:
            return Reply(error=self.fail.pop(0))
        a = torch.tensor([float(s.split()[-1]) for s in rows["a"]], dtype=torch.float64)
        b = torch.tensor([float(s.split()[-1]) for s in rows["b"]], dtype=torch.float64)
        x = (a - b)[:, None].repeat(1, DIM)
        return Reply({"x": x.numpy(), "p": (a - b).sigmoid().numpy(), "reward_a": a.tolist(),
                      "reward_b": b.tolist(), **self._info()})  # fmt: skip


def proxy(dep: FakeDeployment, replicas: int = 1, **over: Any) -> RemoteServedModel:
    settings = load_settings(None, {"select.batch": 1, "select.reload_poll_s": 5.0, **over})
    return RemoteServedModel(dep, settings, replicas=replicas, app="select-t", sleep=lambda s: None)


def ask(model: RemoteServedModel, n: int) -> Any:
    return model.featurizer.pairs(["q"] * n, [f"a {i}" for i in range(n)],
                                  [f"b {2 * i}" for i in range(n)])  # fmt: skip


def test_refresh_reports_the_first_model_and_each_new_version_only() -> None:
    dep = FakeDeployment(version=None)
    model = proxy(dep)
    assert model.refresh(0.0) and model.version is None and model.featurizer.dim == DIM
    assert not model.refresh(1.0) and len(dep.current.calls) == 1  # within reload_poll_s
    assert not model.refresh(6.0)  # asked again, same version
    dep.version = 4
    assert model.refresh(12.0) and model.version == 4 and model.identity == "v4"
    assert model.where() == "Serve app 'select-t' (1 replica on cpu)"


def test_a_poll_is_split_over_the_replicas_and_put_back_in_order() -> None:
    dep = FakeDeployment()
    model = proxy(dep, replicas=2)
    model.refresh(0.0)
    feats = ask(model, 5)
    assert [len(c[0]["a"]) for c in dep.pairs.calls] == [3, 2]
    assert all(c[1] == 3 for c in dep.pairs.calls)  # every request names the version held
    expected = torch.tensor([i - 2.0 * i for i in range(5)], dtype=torch.float64)
    assert torch.equal(feats.x, expected[:, None].repeat(1, DIM))
    assert torch.allclose(feats.p, expected.sigmoid())
    assert feats.reward_a == [float(i) for i in range(5)]
    assert model.requests == 2 and model.pairs_scored == 5


def test_a_dead_replica_is_retried_a_bad_pair_is_not() -> None:
    dep = FakeDeployment()
    model = proxy(dep)
    model.refresh(0.0)
    dep.fail = [ActorDiedError(), GetTimeoutError("no reply")]
    assert ask(model, 2).x.shape == (2, DIM)  # the third attempt answered
    assert len(dep.pairs.calls) == 3

    try:
        raise ValueError("this pair is too long for the tokenizer")
    except ValueError as e:
        dep.fail = [RayTaskError("pairs", "traceback", e).as_instanceof_cause()]
    before = len(dep.pairs.calls)
    with pytest.raises(ValueError) as raised:  # the processor's to retry, then to letter
        ask(model, 2)
    assert "too long" in str(raised.value.cause)  # type: ignore[attr-defined]
    assert len(dep.pairs.calls) == before + 1


def test_a_replica_down_past_the_wait_is_a_clear_service_error() -> None:
    dep = FakeDeployment()
    model = proxy(dep, **{"select.features_wait_s": 0.05})
    model.refresh(0.0)
    dep.fail = [ActorDiedError() for _ in range(10_000)]
    model.sleep = lambda s: __import__("time").sleep(0.01)
    with pytest.raises(FeaturesUnavailable) as raised:
        ask(model, 2)
    message = str(raised.value)
    assert "'select-t'" in message and "select.features_wait_s" in message
    assert "ActorDiedError" in message and "delivered again" in message
    assert isinstance(raised.value, ServiceUnavailable)  # the processor stops, letters none


def test_an_answer_for_another_version_fails_the_poll_and_forces_a_refresh() -> None:
    dep = FakeDeployment(version=3)
    model = proxy(dep)
    model.refresh(0.0)
    dep.version = 9  # version 3 left the registry: the replica answered with CURRENT
    with pytest.raises(RuntimeError, match="version 3 were asked for, version 9"):
        ask(model, 2)
    assert model.refresh(0.5) and model.version == 9  # not held back by reload_poll_s


def test_service_errors_are_the_deployments_task_errors_the_requests() -> None:
    from ray.serve.exceptions import BackPressureError

    assert is_service_error(ActorDiedError())
    assert is_service_error(GetTimeoutError("late"))
    assert is_service_error(BackPressureError(num_queued_requests=1, max_queued_requests=1))
    try:
        raise TimeoutError("raised by the replica's code")
    except TimeoutError as e:
        assert not is_service_error(RayTaskError("pairs", "tb", e).as_instanceof_cause())
    assert not is_service_error(ValueError("x"))
