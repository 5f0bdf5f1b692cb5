"""What the reward service does for each endpoint, apart from HTTP.

``RewardService`` takes parsed requests (``reward_protocol``) and returns response models,
or raises a ``ServiceError``; the router turns both into HTTP. The model itself is behind
``ScoringBackend`` (in the app: the reward-model deployment's handle), so this module
imports neither Ray nor torch.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any, Protocol

from ramo_stream.core.propositions import RESPONSE_TYPES, response_type_id
from ramo_stream.label.rbr.scorer import TypedItem
from ramo_stream.schemas import ChatMessage
from ramo_stream.serve.reward_protocol import (
    CompareRequest,
    CompareResponse,
    GetRewardRequest,
    GetRewardResponse,
    HealthResponse,
    InvalidInput,
    ItemExplain,
    ModelFailure,
    ModelsResponse,
    NoModel,
    RBRUnavailable,
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


class RBRBackend(Protocol):
    async def score(
        self, items: list[TypedItem], timeout_s: float | None = None
    ) -> tuple[list[float], list[dict[str, float]], str]:
        """(R_rbr of every item, P(true) of every proposition per item, the weights'
        artifact version). Raises Unavailable when it cannot answer in time."""
        ...


def label_types(labels: Sequence[object] | None, n: int) -> list[str]:
    """The response type of every OpenRLHF sample, read from its label: with RBR on,
    /get_reward takes ``labels[i]`` (OpenRLHF's ``--label_key`` column) as the response
    type that picks sample i's RBR weights."""
    if labels is None:
        raise InvalidInput(
            "the Rule-Based Reward needs each sample's response type, and this /get_reward"
            " request has no labels; give OpenRLHF a dataset column with one of"
            f" {', '.join(RESPONSE_TYPES)} per prompt and pass it with --label_key, or serve"
            " with serve.rbr=opt_in (RBR off unless asked)"
        )
    out = []
    for i, label in enumerate(labels):
        try:
            out.append(response_type_id(label if isinstance(label, str) else ""))
        except ValueError:
            raise InvalidInput(
                f"labels[{i}] is {label!r:.60}, not a response type; with RBR on, each"
                f" sample's label names its response type: one of {', '.join(RESPONSE_TYPES)}"
            ) from None
    if len(out) != n:
        raise InvalidInput(f"labels has {len(out)} entries but query has {n}; send one per query")
    return out


def sigmoid(x: float) -> float:
    """1 / (1 + e^-x), without overflow for large |x|."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


class RewardService:
    def __init__(
        self,
        backend: ScoringBackend,
        max_items: int,
        rbr: RBRBackend | None = None,
        rbr_default: bool = False,
    ) -> None:
        self.backend = backend
        self.max_items = max_items
        self.rbr = rbr
        self.rbr_default = rbr_default

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
        types = [it.response_type for it in req.items]
        if not self._use_rbr(req.rbr):
            rewards, version = await self._score(items, req.model_version, timeout_s)
            explain = [ItemExplain(rm=r) for r in rewards] if req.explain else None
            return ScoreResponse(rewards=rewards, model_version=version, explain=explain)
        untyped = [i for i, t in enumerate(types) if t is None]
        if untyped:
            raise InvalidInput(
                f"items {untyped[:10]} have no response_type, which the Rule-Based Reward needs"
                f" to pick its weights; give each item one of {', '.join(RESPONSE_TYPES)}, or"
                ' send "rbr": false'
            )
        rm, rbr, probs, version, rbr_version = await self._combined(
            items, [str(t) for t in types], req.model_version, timeout_s
        )
        explain = None
        if req.explain:
            explain = [
                ItemExplain(rm=a, rbr=b, response_type=t, propositions=p)
                for a, b, t, p in zip(rm, rbr, types, probs, strict=True)
            ]
        return ScoreResponse(
            rewards=[a + b for a, b in zip(rm, rbr, strict=True)],
            model_version=version,
            rbr_version=rbr_version,
            explain=explain,
        )

    def _use_rbr(self, asked: bool | None) -> bool:
        """Whether a request gets rm + rbr: its flag, else the deployment's default.
        RBRUnavailable when it is asked of a deployment that serves none."""
        if asked is None:
            return self.rbr_default
        if asked and self.rbr is None:
            raise RBRUnavailable(
                "this deployment serves no Rule-Based Reward (serve.rbr=off); restart it with"
                ' serve.rbr=opt_in or default, or leave "rbr" out of the request'
            )
        return asked

    async def _combined(
        self, items: list[Item], types: list[str], version: int | None, timeout_s: float | None
    ) -> tuple[list[float], list[float], list[dict[str, float]], int, str]:
        """(rm, rbr, P(true) per proposition, model version, RBR version) of every item;
        the reward model and the proposition grader run at the same time."""
        assert self.rbr is not None  # _use_rbr said yes
        typed: list[TypedItem] = [(p, r, t) for (p, r), t in zip(items, types, strict=True)]
        (rm, used), (rbr, probs, rbr_version) = await asyncio.gather(
            self._score(items, version, timeout_s), self.rbr.score(typed, timeout_s)
        )
        return rm, rbr, probs, used, rbr_version

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
        if not self._use_rbr(req.rbr):
            rewards, version = await self._score(items, req.model_version, timeout_s)
            return GetRewardResponse(
                rewards=rewards,
                scores=rewards,
                extra_logs={"model_version": [version] * len(rewards)},
                model_version=version,
            )
        types = label_types(req.labels, len(req.query))
        rm, rbr, _, version, _ = await self._combined(items, types, req.model_version, timeout_s)
        total = [a + b for a, b in zip(rm, rbr, strict=True)]
        return GetRewardResponse(
            rewards=total,
            scores=total,
            # OpenRLHF logs every extra_logs key: both parts are visible in its metrics.
            extra_logs={"model_version": [version] * len(total), "rm": rm, "rbr": rbr},
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
