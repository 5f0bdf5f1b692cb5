"""What the reward service does for each endpoint, apart from HTTP.

``RewardService`` takes parsed requests (``reward_protocol``) and returns response models,
or raises a ``ServiceError``; the router turns both into HTTP. The model itself is behind
``ScoringBackend`` (in the app: the reward-model deployment's handle), so this module
imports neither Ray nor torch.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol

from ramo_stream.schemas import ChatMessage
from ramo_stream.serve.reward_protocol import (
    CompareRequest,
    CompareResponse,
    GetRewardRequest,
    GetRewardResponse,
    HealthResponse,
    ModelFailure,
    ModelsResponse,
    NoModel,
    ScoreRequest,
    ScoreResponse,
    TooLarge,
    no_model_message,
    split_query,
)

# (prompt, response): the prompt a string or chat messages, as format_text takes them.
Item = tuple[str | Sequence[ChatMessage], str]


class ScoringBackend(Protocol):
    async def score(
        self, items: list[Item], version: int | None, timeout_s: float | None = None
    ) -> tuple[list[float], int]:
        """Rewards of ``items``, all from one version (``version``, or the current one), and
        that version, within ``timeout_s`` seconds. Raises NoModel, VersionNotLoaded, or
        Unavailable (overloaded, past the deadline, no replica)."""
        ...

    async def info(self) -> dict[str, Any]:
        """{'current': int | None, 'loaded': [int], 'registry': str}."""
        ...


def sigmoid(x: float) -> float:
    """1 / (1 + e^-x), without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


class RewardService:
    def __init__(self, backend: ScoringBackend, max_items: int) -> None:
        self.backend = backend
        self.max_items = max_items

    def _check_count(self, n: int, field: str) -> None:
        if n > self.max_items:
            raise TooLarge(
                f"{field} has {n} entries; at most serve.max_items={self.max_items} per request."
                " Split the request (the Python client does it for you)."
            )

    async def _score(
        self, items: list[Item], version: int | None, timeout_s: float | None
    ) -> tuple[list[float], int]:
        rewards, used = await self.backend.score(items, version, timeout_s)
        bad = [i for i, r in enumerate(rewards) if not math.isfinite(r)]
        if bad:
            raise ModelFailure(
                f"model version {used} returned non-finite rewards for items {bad[:10]}: the"
                " version is broken (a diverged training run?); publish or pin another one"
            )
        return rewards, used

    async def score(self, req: ScoreRequest, timeout_s: float | None = None) -> ScoreResponse:
        self._check_count(len(req.items), "items")
        items: list[Item] = [(it.prompt, it.response) for it in req.items]
        rewards, version = await self._score(items, req.model_version, timeout_s)
        return ScoreResponse(rewards=rewards, model_version=version)

    async def compare(self, req: CompareRequest, timeout_s: float | None = None) -> CompareResponse:
        (r_a, r_b), version = await self._score(
            [(req.prompt, req.a), (req.prompt, req.b)], req.model_version, timeout_s
        )
        return CompareResponse(p_a_better=sigmoid(r_a - r_b), rewards=[r_a, r_b],
                               model_version=version)  # fmt: skip

    async def get_reward(
        self, req: GetRewardRequest, timeout_s: float | None = None
    ) -> GetRewardResponse:
        self._check_count(len(req.query), "query")
        prompts: list[str | None] = [*req.prompts] if req.prompts else [None] * len(req.query)
        items: list[Item] = [split_query(q, p) for q, p in zip(req.query, prompts, strict=True)]
        rewards, version = await self._score(items, req.model_version, timeout_s)
        return GetRewardResponse(
            rewards=rewards,
            scores=rewards,
            extra_logs={"model_version": [version] * len(rewards)},
            model_version=version,
        )

    async def models(self) -> ModelsResponse:
        info = await self.backend.info()
        return ModelsResponse(current=info["current"], loaded=info["loaded"],
                              registry=info["registry"])  # fmt: skip

    async def health(self) -> HealthResponse:
        info = await self.backend.info()
        if info["current"] is None:
            raise NoModel(no_model_message(info["registry"]))
        return HealthResponse(model_version=info["current"])
