"""The reward service's HTTP router: a thin FastAPI ingress deployment.

It checks the bearer token (401), that a POST body is JSON (415), reads the body (413 past
``serve.max_body_bytes``, before any parsing), parses it into the protocol models (422
naming the field), calls ``RewardService`` with the request's deadline (``X-Request-Timeout``)
and maps its errors to status codes. Everything else is elsewhere: the logic in
``reward_service``, admission control and the model in ``reward_model_server``.

Faults. A model replica that dies mid-request is retried once (scoring has no side effect;
the handle routes to a live replica, or waits for the replacement within the deadline);
what still fails is 503 with a fixed body and Retry-After: never a Ray error's text, which
carries actor ids, pids and node addresses. A client that hangs up is counted as status
499 and logged in one line, not as a server error.

No ``from __future__ import annotations`` here: FastAPI must see the real ``Request`` type
of the route parameters through Serve's class-based view, not a string.
"""

import asyncio
import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.exceptions import RayActorError, TaskCancelledError
from ray.serve.exceptions import BackPressureError, RequestCancelledError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from ramo_stream.schemas import describe_validation_error
from ramo_stream.serve.reward_admission import (
    TIMEOUT_HEADER,
    Admission,
    ReplicaRates,
    estimate_tokens,
    request_timeout,
)
from ramo_stream.serve.reward_metrics import CONTENT_TYPE, HttpMetrics
from ramo_stream.serve.reward_protocol import (
    REPLICA_LOST,
    CompareRequest,
    DeadlineExceeded,
    GetRewardRequest,
    InvalidInput,
    ModelFailure,
    NoModel,
    Overloaded,
    ScoreRequest,
    ServiceError,
    TooLarge,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
    VersionNotLoaded,
)
from ramo_stream.serve.reward_service import Item, RewardService

log = logging.getLogger(__name__)

STATUS: dict[type[ServiceError], int] = {
    InvalidInput: 422,
    TooLarge: 413,
    Unauthorized: 401,
    VersionNotLoaded: 409,
    NoModel: 503,
    Unavailable: 503,
    UnsupportedMediaType: 415,
    ModelFailure: 500,
}
CLIENT_CLOSED = 499  # nginx's code for "the client closed the request": not a server fault
INTERNAL = (
    "internal error of the reward service; it is logged on the server with this request's"
    " path and time"
)
ENDPOINTS = ("/v1/score", "/v1/compare", "/get_reward", "/v1/models", "/health", "/metrics")

Body = TypeVar("Body", bound=BaseModel)

app = FastAPI(title="ramo reward service", docs_url=None, redoc_url=None, openapi_url=None)


def error_response(e: ServiceError) -> JSONResponse:
    # Through a Ray handle the error arrives as RayTaskError(cause); report the cause.
    cause = getattr(e, "cause", e)
    err = cause if isinstance(cause, ServiceError) else e
    status = next((code for cls, code in STATUS.items() if isinstance(err, cls)), 500)
    headers = {}
    if isinstance(err, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="ramo"'
    if isinstance(err, Unavailable | NoModel):
        retry = err.retry_after_s if isinstance(err, Unavailable) else 1.0
        headers["Retry-After"] = str(max(1, math.ceil(retry)))
    return JSONResponse(err.body(), status_code=status, headers=headers)


@app.exception_handler(ServiceError)
async def _service_error(_: Request, e: Exception) -> Response:
    assert isinstance(e, ServiceError)
    return error_response(e)


@app.exception_handler(HTTPException)
async def _http_error(_: Request, e: Exception) -> Response:
    assert isinstance(e, HTTPException)
    kind = "not_found" if e.status_code == 404 else "http_error"
    message = f"{e.detail}; endpoints: {', '.join(ENDPOINTS)}"
    return JSONResponse({"error": {"type": kind, "message": message}}, status_code=e.status_code)


@app.middleware("http")
async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Any:
    started = time.perf_counter()
    try:
        response = await call_next(request)
    except asyncio.CancelledError:  # Serve cancels the request when its client hangs up
        _observe_status(request, CLIENT_CLOSED, started)
        log.info("reward service: %s %s: the client closed the request", request.method,
                 request.url.path)  # fmt: skip
        raise
    except Exception as e:
        # "No response returned" (starlette), or the model call cancelled under us: both
        # mean the client hung up, not that the service failed.
        gone = isinstance(e, TaskCancelledError | RequestCancelledError)
        if gone or await request.is_disconnected():
            _observe_status(request, CLIENT_CLOSED, started)
            log.info("reward service: %s %s: the client closed the request (%s)",
                     request.method, request.url.path, type(e).__name__)  # fmt: skip
            return Response(status_code=CLIENT_CLOSED)
        # A bug: logged with its traceback; the reply says nothing of the internals.
        log.exception("reward service: %s %s failed", request.method, request.url.path)
        response = JSONResponse(
            {"error": {"type": "internal_error", "message": INTERNAL}}, status_code=500
        )
    _observe_status(request, response.status_code, started)
    return response


def _observe_status(request: Request, status: int, started: float) -> None:
    path = request.scope.get("path", "")
    root = request.scope.get("root_path", "")
    if root and path.startswith(root):  # mounted under a route prefix
        path = path[len(root) :]
    endpoint = path if path in ENDPOINTS else "other"
    metrics: HttpMetrics | None = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.observe(endpoint, status, time.perf_counter() - started)


async def require_token(request: Request) -> None:
    """401 unless the request carries ``Authorization: Bearer <serve.api_token>``."""
    expected: str | None = request.app.state.api_token
    if expected is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # compare_digest: the time taken does not tell how much of a guess was right.
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        token.strip().encode(), expected.encode()
    ):
        raise Unauthorized(
            "missing or wrong bearer token: send the header 'Authorization: Bearer <token>'"
            " with the service's serve.api_token"
        )


def require_json(request: Request) -> None:
    """415 unless the body is declared JSON (application/json, or any +json type)."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise UnsupportedMediaType(
            f"Content-Type {media or '(none)'!r} is not JSON; send the body as JSON with the"
            " header 'Content-Type: application/json'"
        )


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"request body is {declared} bytes; serve.max_body_bytes is {limit}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body is over {limit} bytes (serve.max_body_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


def parse(model: type[Body], raw: bytes) -> Body:
    try:
        return model.model_validate_json(raw)
    except ValidationError as e:
        raise InvalidInput(f"invalid {model.__name__}: {describe_validation_error(e)}") from e


class HandleBackend:
    """``ScoringBackend`` over the reward-model deployment's handle."""

    GONE = (RayActorError,)  # the replica died under the request, or is unreachable

    def __init__(
        self, handle: DeploymentHandle, info_timeout_s: float, max_length: int,
        max_queued_tokens: int,
    ) -> None:  # fmt: skip
        self.handle = handle
        self.info_timeout_s = info_timeout_s
        self.max_length = max_length
        self.rates = ReplicaRates()
        self.admission = Admission(max_queued_tokens, self.rates)
        # Estimated tokens of each request sent to the replicas and not yet answered (an
        # upper bound of what it has left: the ingress does not see its progress).
        self.in_flight: dict[object, int] = {}

    async def score(
        self, items: list[Item], version: int | None, timeout_s: float | None = None
    ) -> tuple[list[float], int]:
        """Admission first (the queue of every replica, as this one ingress sees it), then
        the model; the replicas check again, against their own queues."""
        cost = sum(estimate_tokens(p, r, self.max_length) for p, r in items)
        predicted = self.admission.check(self.in_flight.values(), cost, timeout_s)
        key = object()
        self.in_flight[key] = cost
        started = time.monotonic()
        try:
            result = await self._score(items, version, timeout_s)
        except DeadlineExceeded:  # it took at least its deadline: learn that too
            if predicted is not None and timeout_s is not None:
                self.admission.calibrate(predicted, timeout_s)
            raise
        finally:
            del self.in_flight[key]
        if predicted is not None:
            self.admission.calibrate(predicted, time.monotonic() - started)
        return result

    async def _score(
        self, items: list[Item], version: int | None, timeout_s: float | None
    ) -> tuple[list[float], int]:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        for attempt in (1, 2):  # scoring is idempotent: a request lost with a replica is resent
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            call = self.handle.score.remote(items, version, left)
            try:
                # The replica drops what still waits at the deadline; a batch running then
                # is not interrupted, so the ingress gives up at the deadline itself: an
                # answer after it would reach a client that has stopped waiting.
                result = await asyncio.wait_for(_await(call), left)
            except TimeoutError:
                call.cancel()
                break
            except BackPressureError:
                raise Overloaded(
                    "the service is overloaded: every model replica's request"
                    " queue is full; retry after the Retry-After seconds",
                    retry_after_s=1.0,
                ) from None
            except self.GONE as e:
                log.warning("reward service: the model replica was lost under a request"
                            " (attempt %d of 2): %s", attempt, type(e).__name__)  # fmt: skip
                continue
            if isinstance(result, ServiceError):
                raise result
            rewards, used, tokens_per_s, replica = result
            self.rates.report(replica, tokens_per_s)
            return rewards, used
        if deadline is not None and time.monotonic() >= deadline:
            raise DeadlineExceeded(
                f"the request reached its deadline of {timeout_s:g} s before the model"
                " answered (overload or a replica restarting); retry later, or send a longer"
                " X-Request-Timeout",
                retry_after_s=1.0,
            )
        raise Unavailable(REPLICA_LOST, retry_after_s=2.0)

    async def info(self) -> dict[str, Any]:
        call = self.handle.info.remote()
        try:
            info: dict[str, Any] = await asyncio.wait_for(_await(call), self.info_timeout_s)
        except (TimeoutError, *self.GONE) as e:
            if isinstance(e, TimeoutError):
                call.cancel()
            raise Unavailable(
                f"no reward-model replica answered within serve.health_timeout_s="
                f"{self.info_timeout_s:g} s (starting, restarting after a crash, or"
                " overloaded); retry after the Retry-After seconds",
                retry_after_s=2.0,
            ) from None
        return info


async def _await(response: Any) -> Any:
    return await response


_authorized = [Depends(require_token)]


@serve.deployment
@serve.ingress(app)
class RewardIngress:
    def __init__(
        self, args: Any, model: DeploymentHandle, rbr: DeploymentHandle | None = None
    ) -> None:
        from ramo_stream.serve.reward_rbr import HandleRBR

        s = args.settings().serve
        self.max_body = s.max_body_bytes
        self.model = model
        most = s.autoscaling_max_replicas or s.replicas
        backend = HandleBackend(model, s.health_timeout_s, s.max_length,
                                s.max_queued_tokens * most)  # fmt: skip
        rbr_backend = HandleRBR(rbr) if rbr is not None else None
        self.service = RewardService(backend, s.max_items, rbr_backend, s.rbr == "default")
        self.timeouts = (s.request_timeout_s, s.max_request_timeout_s)
        app.state.api_token = s.api_token
        app.state.metrics = self.http_metrics = HttpMetrics()

    async def _body(self, request: Request, model: type[Body]) -> tuple[Body, float]:
        """The parsed body and the request's deadline (seconds from now)."""
        timeout_s = request_timeout(request.headers.get(TIMEOUT_HEADER), *self.timeouts)
        require_json(request)
        return parse(model, await read_body(request, self.max_body)), timeout_s

    @app.post("/v1/score", dependencies=_authorized)
    async def score(self, request: Request) -> JSONResponse:
        reply = await self.service.score(*await self._body(request, ScoreRequest))
        if reply.rbr_version is not None:
            self.http_metrics.rbr_requests.labels("/v1/score").inc()
        return JSONResponse(reply.model_dump(exclude_none=True))

    @app.post("/v1/compare", dependencies=_authorized)
    async def compare(self, request: Request) -> JSONResponse:
        reply = await self.service.compare(*await self._body(request, CompareRequest))
        return JSONResponse(reply.model_dump())

    @app.post("/get_reward", dependencies=_authorized)
    async def get_reward(self, request: Request) -> JSONResponse:
        reply = await self.service.get_reward(*await self._body(request, GetRewardRequest))
        if "rbr" in reply.extra_logs:
            self.http_metrics.rbr_requests.labels("/get_reward").inc()
        return JSONResponse(reply.model_dump())

    @app.get("/v1/models", dependencies=_authorized)
    async def models(self) -> JSONResponse:
        return JSONResponse((await self.service.models()).model_dump())

    @app.get("/health")  # open: load balancers and probes carry no token
    async def health(self) -> JSONResponse:
        return JSONResponse((await self.service.health()).model_dump())

    @app.get("/metrics", dependencies=_authorized)
    async def metrics(self) -> PlainTextResponse:
        text = self.http_metrics.text()
        try:
            text += await self.model.metrics_text.remote()
        except Exception as e:  # still show the request counters
            log.warning("reward service: no metrics from the model replica: %s", e)
        return PlainTextResponse(text, media_type=CONTENT_TYPE)
