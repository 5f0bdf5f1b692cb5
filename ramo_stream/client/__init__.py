"""Python clients of the reward service (``ramo serve``), for RLHF loops.

::

    from ramo_stream.client import RewardClient

    with RewardClient("http://127.0.0.1:8000") as rm:
        result = rm.score(["What is 2+2?"] * 2, ["4", "5"])
        result.rewards, result.model_version

``AsyncRewardClient`` is the asyncio twin. Adapters for TRL, veRL and OpenRLHF are in
``ramo_stream.client.adapters``. Needs httpx only (``ramo-stream[client]``).
"""

from __future__ import annotations

try:
    import httpx  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the install
    raise ImportError(
        "ramo_stream.client needs httpx, which is not installed; pip install httpx (or"
        " 'ramo-stream[client]')"
    ) from e

from ramo_stream.client.async_client import AsyncRewardClient
from ramo_stream.client.errors import RequestRefused, RewardServiceError
from ramo_stream.client.protocol import (
    DEFAULT_URL,
    CompareResult,
    Health,
    ItemParts,
    ModelsInfo,
    RemoteRewardResult,
    ScoreResult,
)
from ramo_stream.client.sync_client import RewardClient

__all__ = [
    "DEFAULT_URL",
    "AsyncRewardClient",
    "CompareResult",
    "Health",
    "ItemParts",
    "ModelsInfo",
    "RemoteRewardResult",
    "RequestRefused",
    "RewardClient",
    "RewardServiceError",
    "ScoreResult",
]
