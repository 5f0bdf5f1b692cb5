"""Errors of the reward service and when to retry: the part of the clients that decides
whether a failed request is worth sending again, and how long to wait first.

Retried: connection errors and timeouts (scoring has no side effect, so a request sent twice
is harmless), 429 and 503 (the service is briefly unable to answer: overloaded, a model
replica restarting, or no model version loaded yet), waiting at least the reply's
Retry-After. Any other 4xx is the request's fault and raises ``RequestRefused`` at once,
carrying the status, the service's error type and its message; any other 5xx (500: a fault
of the service; 502/504 from a proxy in front of it) raises ``RewardServiceError`` at once,
carrying the same: resending work into a failing service by default hides the fault and
multiplies the load.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import httpx

RETRY_STATUSES = frozenset({429, 503})
TRANSIENT_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError)
MAX_BACKOFF_S = 30.0


class RewardServiceError(RuntimeError):
    """The reward service kept failing, refused a request, or answered off the contract.

    ``status``, ``error_type`` and ``message`` are those of the service's last answer, when
    there was one (``None`` after connection errors and timeouts).
    """

    def __init__(
        self,
        text: str,
        *,
        url: str | None = None,
        status: int | None = None,
        error_type: str | None = None,
        message: str | None = None,
    ) -> None:
        super().__init__(text)
        self.url = url
        self.status = status
        self.error_type = error_type
        self.message = message


class RequestRefused(RewardServiceError):
    """A 4xx other than 429: the request's fault, which no retry would fix."""

    def __init__(
        self, url: str, status: int, error_type: str, message: str, where: str = ""
    ) -> None:
        hint = _REFUSAL_HINTS.get(status, "")
        text = f"{url} refused the request{where} with HTTP {status} ({error_type}): {message}"
        super().__init__(
            text + (f". {hint}" if hint else ""),
            url=url,
            status=status,
            error_type=error_type,
            message=message,
        )


_REFUSAL_HINTS = {
    401: "Pass the service's token (api_token=, `ramo score --token`)",
    409: "Pin a version listed in GET /v1/models 'loaded', or pass model_version=None for"
    " the current one",
    413: "Lower the client's batch_size (the service takes at most serve.max_items items per"
    " request, 256 by default, and serve.max_body_bytes of JSON) or send shorter texts",
}


def error_of(response: httpx.Response) -> tuple[str, str]:
    """(type, message) of an error reply: the contract's ``{"error": {"type", "message"}}``,
    FastAPI's ``{"detail"}``, else the start of the body."""
    fallback = f"http_{response.status_code}"
    try:
        body = response.json()
    except ValueError:
        return fallback, response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):
            return str(error.get("type") or fallback), str(error.get("message") or error)
        if body.get("detail") is not None:
            return fallback, str(body["detail"])[:500]
    return fallback, str(body)[:500]


@dataclass(frozen=True)
class Transient:
    """A reply worth retrying: 429 or 503."""

    status: int
    error_type: str
    message: str
    retry_after_s: float | None

    def describe(self) -> str:
        return f"HTTP {self.status} ({self.error_type}): {self.message}"


def judge(response: httpx.Response, where: str = "") -> Any:
    """The JSON body of a 200 reply; a ``Transient`` for a reply to retry; raises
    ``RequestRefused`` for any other 4xx, and ``RewardServiceError`` for any other status or a
    200 that is not JSON. ``where`` (e.g. " (items 64..127)") goes into the error message."""
    url = str(response.request.url)
    if response.status_code == 200:
        try:
            return response.json()
        except ValueError as e:
            raise RewardServiceError(
                f"{url} answered 200 with a body that is not JSON: {response.text[:200]!r}",
                url=url,
                status=200,
            ) from e
    status = response.status_code
    error_type, message = error_of(response)
    if status in RETRY_STATUSES:
        return Transient(status, error_type, message, _retry_after(response))
    if 400 <= status < 500:
        raise RequestRefused(url, status, error_type, message, where)
    # A 500 (the model failed on this batch, say) is not in the retried list: it raises at
    # once, as the service's own failure rather than the request's. So do 502 and 504.
    raise RewardServiceError(
        f"{url} failed{where} with HTTP {status} ({error_type}): {message}",
        url=url,
        status=status,
        error_type=error_type,
        message=message,
    )


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after", "")
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # absent, or an HTTP date: the exponential backoff decides


def retry_delay(
    attempt: int, backoff_s: float, retry_after_s: float | None, rng: random.Random
) -> float:
    """Seconds to wait after failed attempt ``attempt`` (1-based).

    Exponential backoff with "equal jitter": with d = backoff_s * 2^(attempt-1), the delay is
    d/2 + U(0, d/2), capped at MAX_BACKOFF_S. Half of d keeps the backoff growing; the random
    half spreads the retries of many clients (the workers of one RLHF job) so they do not hit a
    restarting service all at once. A server's Retry-After (seconds) is a floor.
    """
    d = min(backoff_s * 2.0 ** (attempt - 1), MAX_BACKOFF_S)
    delay: float = d / 2 + rng.uniform(0, d / 2)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, MAX_BACKOFF_S))
    return delay


def exhausted(url: str, attempts: int, last: Transient | str, hint: str) -> RewardServiceError:
    """The error after the last attempt failed; names the last failure and the fix."""
    if isinstance(last, Transient):
        seen = last.describe()
        if last.status == 503:
            hint = (
                "A 503 means the service has no model version yet (publish one: `ramo train`,"
                " or Registry.publish), is overloaded, or is replacing a model replica; raise"
                " retries / backoff_s to wait longer"
            )
        return RewardServiceError(
            f"{url} failed after {attempts} attempts; last: {seen}. {hint}",
            url=url,
            status=last.status,
            error_type=last.error_type,
            message=last.message,
        )
    return RewardServiceError(
        f"{url} failed after {attempts} attempts; last: {last}. {hint}", url=url
    )
