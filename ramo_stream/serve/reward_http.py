"""The reward service's HTTP router: a thin FastAPI ingress deployment.

It reads the body (413 past ``serve.max_body_bytes``, before any parsing), checks the bearer
token (401), parses the body into the protocol models (422 naming the field), calls
``RewardService`` and maps its errors to status codes. Everything else is elsewhere: the
logic in ``reward_service``, the model in ``reward_model_server``.

No ``from __future__ import annotations`` here: FastAPI must see the real ``Request`` type
of the route parameters through Serve's class-based view, not a string.
"""

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException

from ramo_stream.schemas import describe_validation_error
from ramo_stream.serve.reward_metrics import CONTENT_TYPE, HttpMetrics
from ramo_stream.serve.reward_protocol import (
    CompareRequest,
    GetRewardRequest,
    InvalidInput,
    ModelFailure,
    NoModel,
    ScoreRequest,
    ServiceError,
    TooLarge,
    Unauthorized,
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
    ModelFailure: 500,
}
ENDPOINTS = ("/v1/score", "/v1/compare", "/get_reward", "/v1/models", "/health", "/metrics")

Body = TypeVar("Body", bound=BaseModel)

app = FastAPI(title="ramo reward service", docs_url=None, redoc_url=None, openapi_url=None)


def error_response(e: ServiceError) -> JSONResponse:
    # Through a Ray handle the error arrives as RayTaskError(cause); report the cause.
    cause = getattr(e, "cause", e)
    err = cause if isinstance(cause, ServiceError) else e
    status = next((code for cls, code in STATUS.items() if isinstance(err, cls)), 500)
    return JSONResponse(err.body(), status_code=status)


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
    except Exception as e:  # a bug or a dead replica: still JSON, still counted
        log.exception("reward service: %s %s failed", request.method, request.url.path)
        response = JSONResponse(
            {"error": {"type": "internal_error", "message": f"{type(e).__name__}: {e}"}},
            status_code=500,
        )
    path = request.scope.get("path", "")
    root = request.scope.get("root_path", "")
    if root and path.startswith(root):  # mounted under a route prefix
        path = path[len(root) :]
    endpoint = path if path in ENDPOINTS else "other"
    metrics: HttpMetrics | None = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        metrics.observe(endpoint, response.status_code, time.perf_counter() - started)
    return response


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

    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def score(self, items: list[Item], version: int | None) -> tuple[list[float], int]:
        result = await self.handle.score.remote(items, version)
        if isinstance(result, ServiceError):
            raise result
        rewards, used = result
        return rewards, used

    async def info(self) -> dict[str, Any]:
        info: dict[str, Any] = await self.handle.info.remote()
        return info


_authorized = [Depends(require_token)]


@serve.deployment
@serve.ingress(app)
class RewardIngress:
    def __init__(self, args: Any, model: DeploymentHandle) -> None:
        s = args.settings().serve
        self.max_body = s.max_body_bytes
        self.model = model
        self.service = RewardService(HandleBackend(model), s.max_items)
        app.state.api_token = s.api_token
        app.state.metrics = self.http_metrics = HttpMetrics()

    async def _body(self, request: Request, model: type[Body]) -> Body:
        return parse(model, await read_body(request, self.max_body))

    @app.post("/v1/score", dependencies=_authorized)
    async def score(self, request: Request) -> JSONResponse:
        reply = await self.service.score(await self._body(request, ScoreRequest))
        return JSONResponse(reply.model_dump())

    @app.post("/v1/compare", dependencies=_authorized)
    async def compare(self, request: Request) -> JSONResponse:
        reply = await self.service.compare(await self._body(request, CompareRequest))
        return JSONResponse(reply.model_dump())

    @app.post("/get_reward", dependencies=_authorized)
    async def get_reward(self, request: Request) -> JSONResponse:
        reply = await self.service.get_reward(await self._body(request, GetRewardRequest))
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
