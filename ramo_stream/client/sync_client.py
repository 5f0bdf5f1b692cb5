"""``RewardClient``: the blocking client of the reward service (one httpx.Client, reused)."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Sequence
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


class RewardClient:
    """Scores (prompt, response) pairs with the reward service's current model version.

    ``base_url``: where ``ramo serve`` listens. ``api_token``: its bearer token, if it wants
    one. ``timeout_s``: limit of connecting, and of each read and write, of one request.
    ``retries``: how many times a request that fails to connect, times out or gets 429/503 is
    sent again (503 is also "no model version yet", so a client started with the service
    waits for the first version), after an exponential backoff from ``backoff_s`` with jitter
    and at least the reply's Retry-After; other 5xx are raised at once. ``timeout_s`` also goes
    to the service as the request's deadline (``X-Request-Timeout``).
    ``batch_size``: items per request; a longer list is split and the rewards reassembled in
    order (this client sends the chunks one after the other; ``AsyncRewardClient`` sends them
    concurrently). ``max_connections``: the keep-alive pool. ``transport``: an httpx transport
    (tests pass ``httpx.MockTransport``).

    Use it as a context manager, or call ``close()``.
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
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.options = ClientOptions(
            base_url, api_token, timeout_s, retries, backoff_s, batch_size, max_connections
        )
        self.base_url = self.options.base_url
        self._rng = random.Random()
        self._client = httpx.Client(transport=transport, **self.options.httpx_kwargs())

    # ---- the service's endpoints ---------------------------------------------------------

    def score(
        self,
        items_or_prompts: Sequence[Any] | str,
        responses: Sequence[str] | None = None,
        *,
        model_version: int | None = None,
        response_types: Sequence[str | None] | None = None,
        rbr: bool | None = None,
        explain: bool = False,
    ) -> ScoreResult:
        """Rewards of ``items`` (``{"prompt", "response"}`` or ``(prompt, response)``), or of
        ``prompts, responses`` (one string prompt may stand for all). ``model_version`` pins a
        version the service still has loaded (409 otherwise); None: the current one.

        ``rbr=True`` adds the Rule-Based Reward (reward = rm + rbr; the service must run with
        serve.rbr=opt_in or default), ``False`` leaves it out, None takes the service's
        default. RBR needs each item's response type (comply, hard_refuse, safe_refuse_1,
        safe_refuse_2): ``response_types``, or a ``"response_type"`` key in each item.
        ``explain=True`` also returns each item's parts (``ScoreResult.explain``)."""
        items = score_items(items_or_prompts, responses, response_types)
        calls = score_calls(items, self.options.batch_size, model_version, rbr, explain)
        parts = self._batched("/v1/score", calls, ScoreReply)
        return assemble_scores(len(items), parts, self.base_url + "/v1/score")

    def compare(
        self, prompt: PromptLike, a: str, b: str, *, model_version: int | None = None
    ) -> CompareResult:
        """P(a is the better response to prompt), with both rewards."""
        body = self._request("POST", "/v1/compare", compare_payload(prompt, a, b, model_version))
        return parse(CompareResult, body, self.base_url + "/v1/compare")

    def get_reward(
        self,
        queries: Sequence[str],
        prompts: Sequence[str] | None = None,
        labels: Sequence[Any] | None = None,
        *,
        rbr: bool | None = None,
    ) -> RemoteRewardResult:
        """OpenRLHF's remote reward-model call: ``queries`` are prompt + response texts.
        With RBR on (``rbr=True``, or the service's default), ``labels`` name each sample's
        response type."""
        calls = get_reward_calls(queries, prompts, labels, self.options.batch_size, rbr)
        parts = self._batched("/get_reward", calls, GetRewardReply)
        return assemble_get_reward(len(queries), parts, self.base_url + "/get_reward")

    def models(self) -> ModelsInfo:
        """The current version, the versions loaded (pinnable) and the registry."""
        return parse(ModelsInfo, self._request("GET", "/v1/models"), self.base_url + "/v1/models")

    def health(self) -> Health:
        """One GET /health, not retried. Raises RewardServiceError if nothing answers."""
        try:
            response = self._client.get("/health")
        except TRANSIENT_ERRORS as e:
            raise self.options.unreachable("/health", e) from e
        return health_of(response)

    def wait_until_ready(self, timeout_s: float = 60.0, poll_s: float = 0.5) -> int | None:
        """Poll /health until the service serves a model version; returns that version."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                h = self.health()
                if h.ok:
                    return h.model_version
                last = f"HTTP {h.status_code} {h.detail}"
            except RewardServiceError as e:
                last = str(e)
            if time.monotonic() >= deadline:
                raise not_ready(self.base_url, timeout_s, last)
            time.sleep(poll_s)

    # ---- transport -----------------------------------------------------------------------

    def _batched(self, path: str, calls: list[Call], model: type[R]) -> list[tuple[int, int, R]]:
        """Send the calls one after the other; (start, end, reply) of each."""
        url = self.base_url + path
        return [
            (c.start, c.end, parse(model, self._request("POST", path, c.payload, c.where), url))
            for c in calls
        ]

    def _request(self, method: str, path: str, payload: Any = None, where: str = "") -> Any:
        """Send with retries (see ``errors``); the JSON body of the 200 reply."""
        attempts = self.options.retries + 1
        last: Transient | str = ""
        for attempt in range(1, attempts + 1):
            retry_after = None
            try:
                response = self._client.request(method, path, json=payload)
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
                time.sleep(delay)
        raise exhausted(self.base_url + path, attempts, last, self.options.unreachable_hint())

    def close(self) -> None:
        """Close the pooled connections."""
        self._client.close()

    def __enter__(self) -> RewardClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"RewardClient({self.base_url!r}, batch_size={self.options.batch_size})"
