"""wait_for_service: a deployment's failure is waited out, then a ServiceUnavailable; the
request's own error is raised at once. Pure logic over fake responses (Ray's exception
types are real; no cluster)."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("ray", reason="the serve extra (ray[serve]) is not installed")

from ray.exceptions import ActorDiedError, RayTaskError  # noqa: E402

from ramo_stream.stream.messages import ServiceUnavailable  # noqa: E402
from ramo_stream.stream.service_call import wait_for_service  # noqa: E402


class Down(ServiceUnavailable):
    pass


class Reply:
    """A response whose result() raises ``error`` or returns ``value``; records timeouts."""

    def __init__(self, value: Any = None, error: BaseException | None = None) -> None:
        self.value, self.error = value, error
        self.timeouts: list[float | None] = []

    def result(self, timeout_s: float | None = None) -> Any:
        self.timeouts.append(timeout_s)
        if self.error is not None:
            raise self.error
        return self.value


def sender(replies: list[Reply]) -> Any:
    sent: list[Reply] = []

    def send() -> Reply:
        sent.append(replies[len(sent)])
        return sent[-1]

    send.sent = sent  # type: ignore[attr-defined]
    return send


def gave_up(waited: float, attempts: int, e: BaseException) -> Down:
    return Down(f"down after {attempts} attempts: {type(e).__name__}")


def test_a_dead_replica_is_waited_out_and_the_call_sent_again() -> None:
    send = sender([Reply(error=ActorDiedError()), Reply(error=ActorDiedError()), Reply("ok")])
    pauses: list[float] = []
    got = wait_for_service(send, 60.0, "test", gave_up, sleep=pauses.append)
    assert got == "ok" and len(send.sent) == 3 and pauses == [0.5, 1.0]  # backoff doubles
    assert all(t is not None and t > 50 for r in send.sent for t in r.timeouts)


def test_a_service_down_past_the_wait_is_a_service_unavailable() -> None:
    # Serve's plain TimeoutError: the call was never assigned to a replica (app deleted).
    send = sender([Reply(error=TimeoutError("Timed out resolving to ObjectRef."))]
                  + [Reply(error=ActorDiedError()) for _ in range(100)])  # fmt: skip
    with pytest.raises(Down, match="ActorDiedError"):
        wait_for_service(send, 0.05, "test", gave_up)  # real pauses: 0.05 s in all


def test_the_requests_own_error_is_raised_at_once() -> None:
    try:
        raise ValueError("prompt too long")
    except ValueError as e:
        cause = RayTaskError("label", "traceback", e).as_instanceof_cause()
    send = sender([Reply(error=cause), Reply("never")])
    with pytest.raises(ValueError):  # as the replica raised it (its text is the traceback)
        wait_for_service(send, 60.0, "test", gave_up, sleep=lambda s: None)
    assert len(send.sent) == 1


def test_a_dead_replica_one_deployment_down_is_the_services_failure() -> None:
    # The labeler's replica calls the grader deployment; the grader's replica died: the
    # labeler's call fails with a RayTaskError around the ActorDiedError.
    wrapped = RayTaskError("label", "traceback", ActorDiedError()).as_instanceof_cause()
    send = sender([Reply(error=wrapped), Reply("ok")])
    got = wait_for_service(send, 60.0, "test", gave_up, sleep=lambda s: None)
    assert got == "ok" and len(send.sent) == 2


def test_a_stop_ends_the_wait_without_backing_off_again() -> None:
    send = sender([Reply(error=ActorDiedError()) for _ in range(10)])
    pauses: list[float] = []
    stop = [False]

    def pause(s: float) -> None:
        pauses.append(s)
        stop[0] = True  # Ctrl-C during the first backoff

    with pytest.raises(Down, match="after 1 attempts"):
        wait_for_service(send, 300.0, "test", gave_up, sleep=pause, stopping=lambda: stop[0])
    assert len(send.sent) == 1 and pauses == [0.5]
