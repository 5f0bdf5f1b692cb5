"""A stage's call to a Ray Serve deployment, waited out while the deployment is down.

A replica that dies (Serve restarts it), a reply that does not come in time, Serve's
back-pressure or a lost result is the deployment's failure, not the records': retrying the
records one by one and dead-lettering them would send healthy pairs to the DLQ while the
replica restarts. ``wait_for_service`` sends the call again with backoff until it answers or
``wait_s`` has passed, then raises ``ServiceUnavailable`` (the processor then commits and
dead-letters nothing; the poll is delivered again to the next run). An error raised by the
replica's own code (``RayTaskError``) is the request's and is raised at once, so the
processor's per-record retry still finds a record at fault.

Ray is imported only when an error must be classified, so this module stays light.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ramo_stream.stream.messages import ServiceUnavailable

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 10.0


def is_service_error(e: BaseException) -> bool:
    """A failure of the deployment, not of the request: a replica died or is unreachable,
    the reply did not come in time, Serve refused or cancelled it, its result was lost."""
    from ray.exceptions import GetTimeoutError, ObjectLostError, RayActorError, RayTaskError
    from ray.serve.exceptions import RayServeException

    if isinstance(e, RayTaskError):  # the replica's code raised: the request's error,
        # unless it is Ray's own from the replica's call to another deployment (a grader
        # replica died under the labeler): the service failed, one level down. A plain
        # TimeoutError raised there stays the request's.
        cause = getattr(e, "cause", None)
        return isinstance(cause, (RayActorError, GetTimeoutError, ObjectLostError,
                                  RayServeException))  # fmt: skip
    # TimeoutError: Serve's own when a call is not even assigned to a replica in time (an
    # app deleted or still deploying), and Ray's GetTimeoutError (a subclass) for a reply.
    return isinstance(e, (RayActorError, TimeoutError, ObjectLostError, RayServeException))


def wait_for_service(
    send: Callable[[], Any],
    wait_s: float,
    what: str,
    gave_up: Callable[[float, int, BaseException], ServiceUnavailable],
    first: Any = None,
    sleep: Callable[[float], None] = time.sleep,
    stopping: Callable[[], bool] = lambda: False,
) -> Any:
    """The result of a Serve call (``first``, a response already sent, else ``send()``),
    sent again with backoff after a service error until ``wait_s`` has passed; then
    ``gave_up(waited_s, attempts, last_error)`` is raised. ``what`` names the call in the
    log. Other errors are raised at once. The reply itself must come within ``wait_s`` of
    the first call: a call to an app that was deleted waits for it to come back rather than
    failing, so only a deadline ends it. ``stopping()`` true (a stop was asked for) ends the
    wait after a failed attempt, with ``gave_up``, instead of backing off again."""
    started = time.monotonic()
    delay, attempt = 0.5, 0
    response = first
    while True:
        attempt += 1
        try:
            if response is None:
                response = send()
            left = wait_s - (time.monotonic() - started)
            return response.result(timeout_s=max(left, 1.0))
        except Exception as e:
            if not is_service_error(e):
                raise
            response = None
            waited = time.monotonic() - started
            if waited >= wait_s or stopping():
                raise gave_up(waited, attempt, e) from e
            pause = min(delay, wait_s - waited)
            log.warning("%s failed (%s: %s); retrying in %.1f s (attempt %d, gives up after"
                        " %.0f s)", what, type(e).__name__, e, pause, attempt, wait_s)  # fmt: skip
            sleep(pause)
            if stopping():
                raise gave_up(time.monotonic() - started, attempt, e) from e
            delay = min(delay * 2, MAX_BACKOFF_S)
