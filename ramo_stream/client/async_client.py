"""``AsyncRewardClient``: the asyncio twin of ``RewardClient`` (one httpx.AsyncClient, reused).

Same methods, same arguments, same results and errors; each is a coroutine. The chunks of a
long list are sent concurrently, at most ``max_connections`` at a time per call, so the
service's dynamic batching sees them together; if one chunk fails for good the others are
cancelled and its error is raised.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Coroutine, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from ramo_stream.client.errors import (
    TRANSIENT_ERRORS,
    RewardServiceError,
    Transient,
    exhausted,
    judge,
    retry_delay,
)
from ramo_stream.client.protocol import (
    DEFAULT_URL,
    Call,
    ClientOptions,
    CompareResult,
    GetRewardReply,
    Health,
    ModelsInfo,
    PromptLike,
    RemoteRewardResult,
    ScoreReply,
    ScoreResult,
    assemble_get_reward,
    assemble_scores,
    compare_payload,
    get_reward_calls,
    health_of,
    not_ready,
    parse,
    score_calls,
    score_items,
)

log = logging.getLogger(__name__)
R = TypeVar("R", bound=BaseModel)


class AsyncRewardClient:
    """The asyncio ``RewardClient``; its arguments mean the same (see there).

    Use it as an async context manager, or ``await client.close()``.
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        api_token: str | None = None,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.25,
        batch_size: int = 64,
        max_connections: int = 8,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.options = ClientOptions(
            base_url, api_token, timeout_s, retries, backoff_s, batch_size, max_connections
        )
        self.base_url = self.options.base_url
        self._rng = random.Random()
        self._client = httpx.AsyncClient(transport=transport, **self.options.httpx_kwargs())

    # ---- the service's endpoints ---------------------------------------------------------

    async def score(
        self,
        items_or_prompts: Sequence[Any] | str,
        responses: Sequence[str] | None = None,
        *,
        model_version: int | None = None,
        response_types: Sequence[str | None] | None = None,
        rbr: bool | None = None,
        explain: bool = False,
    ) -> ScoreResult:
        """See ``RewardClient.score``; the chunks go out concurrently."""
        items = score_items(items_or_prompts, responses, response_types)
        calls = score_calls(items, self.options.batch_size, model_version, rbr, explain)
        parts = await self._batched("/v1/score", calls, ScoreReply)
        return assemble_scores(len(items), parts, self.base_url + "/v1/score")

    async def compare(
        self, prompt: PromptLike, a: str, b: str, *, model_version: int | None = None
    ) -> CompareResult:
        """P(a is the better response to prompt), with both rewards."""
        payload = compare_payload(prompt, a, b, model_version)
        body = await self._request("POST", "/v1/compare", payload)
        return parse(CompareResult, body, self.base_url + "/v1/compare")

    async def get_reward(
        self,
        queries: Sequence[str],
        prompts: Sequence[str] | None = None,
        labels: Sequence[Any] | None = None,
        *,
        rbr: bool | None = None,
    ) -> RemoteRewardResult:
        """OpenRLHF's remote reward-model call: ``queries`` are prompt + response texts."""
        calls = get_reward_calls(queries, prompts, labels, self.options.batch_size, rbr)
        parts = await self._batched("/get_reward", calls, GetRewardReply)
        return assemble_get_reward(len(queries), parts, self.base_url + "/get_reward")

    async def models(self) -> ModelsInfo:
        """The current version, the versions loaded (pinnable) and the registry."""
        body = await self._request("GET", "/v1/models")
        return parse(ModelsInfo, body, self.base_url + "/v1/models")

    async def health(self) -> Health:
        """One GET /health, not retried. Raises RewardServiceError if nothing answers."""
        try:
            response = await self._client.get("/health")
        except TRANSIENT_ERRORS as e:
            raise self.options.unreachable("/health", e) from e
        return health_of(response)

    async def wait_until_ready(self, timeout_s: float = 60.0, poll_s: float = 0.5) -> int | None:
        """Poll /health until the service serves a model version; returns that version."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                h = await self.health()
                if h.ok:
                    return h.model_version
                last = f"HTTP {h.status_code} {h.detail}"
            except RewardServiceError as e:
                last = str(e)
            if time.monotonic() >= deadline:
                raise not_ready(self.base_url, timeout_s, last)
            await asyncio.sleep(poll_s)

    # ---- transport -----------------------------------------------------------------------

    async def _batched(
        self, path: str, calls: list[Call], model: type[R]
    ) -> list[tuple[int, int, R]]:
        """Send the calls concurrently (bounded); (start, end, reply) of each."""
        gate = asyncio.Semaphore(self.options.max_connections)
        url = self.base_url + path

        async def one(c: Call) -> tuple[int, int, R]:
            async with gate:
                body = await self._request("POST", path, c.payload, c.where)
            return c.start, c.end, parse(model, body, url)

        return await _all_or_nothing([one(c) for c in calls])

    async def _request(self, method: str, path: str, payload: Any = None, where: str = "") -> Any:
        """Send with retries (see ``errors``); the JSON body of the 200 reply."""
        attempts = self.options.retries + 1
        last: Transient | str = ""
        for attempt in range(1, attempts + 1):
            retry_after = None
            try:
                response = await self._client.request(method, path, json=payload)
            except TRANSIENT_ERRORS as e:
                last = f"{type(e).__name__}: {e}"
            else:
                outcome = judge(response, where)
                if not isinstance(outcome, Transient):
                    return outcome
                last, retry_after = outcome, outcome.retry_after_s
            if attempt < attempts:
                delay = retry_delay(attempt, self.options.backoff_s, retry_after, self._rng)
                log.warning("%s %s%s failed (%s); retry %d in %.2f s", method, self.base_url,
                            path, last, attempt, delay)  # fmt: skip
                await asyncio.sleep(delay)
        raise exhausted(self.base_url + path, attempts, last, self.options.unreachable_hint())

    async def close(self) -> None:
        """Close the pooled connections."""
        await self._client.aclose()

    aclose = close

    async def __aenter__(self) -> AsyncRewardClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncRewardClient({self.base_url!r}, batch_size={self.options.batch_size})"


T = TypeVar("T")


async def _all_or_nothing(coros: list[Coroutine[Any, Any, T]]) -> list[T]:
    """Run all, results in order; on the first failure cancel the rest and raise it (not an
    ExceptionGroup, as a TaskGroup would: callers catch RequestRefused)."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
