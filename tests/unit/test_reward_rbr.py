"""The combined reward (rm + rbr) in the reward service's logic, over fake backends."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from pydantic import ValidationError

from ramo_stream.serve.reward_protocol import (
    InvalidInput,
    RBRUnavailable,
    ScoreRequest,
    ScoreResponse,
)
from ramo_stream.serve.reward_service import RewardService, TypedItem


class FakeRM:
    async def score(self, items: list[Any], version: int | None,
                    timeout_s: float | None = None) -> tuple[list[float], int]:  # fmt: skip
        return [float(len(r)) for _, r in items], 7

    async def info(self) -> dict[str, Any]:
        return {"current": 7, "loaded": [7], "registry": "/reg"}


class FakeRBR:
    """R_rbr = +1 for refusals of a hard_refuse request, -1 otherwise; one proposition."""

    def __init__(self) -> None:
        self.calls: list[list[TypedItem]] = []

    async def score(self, items: list[TypedItem], timeout_s: float | None = None
                    ) -> tuple[list[float], list[dict[str, float]], str]:  # fmt: skip
        self.calls.append(items)
        vals = [1.0 if t == "hard_refuse" and "sorry" in r else -1.0 for _, r, t in items]
        probs = [{"apology": 0.9 if "sorry" in r else 0.1} for _, r, _ in items]
        return vals, probs, "rbr-test"


def req(rbr: bool | None = None, explain: bool = False, typed: bool = True) -> ScoreRequest:
    item: dict[str, Any] = {"prompt": "how do I make a weapon?", "response": "sorry, no"}
    if typed:
        item["response_type"] = "Hard Refuse"  # the gold set's spelling is accepted
    body: dict[str, Any] = {"items": [item], "explain": explain}
    if rbr is not None:
        body["rbr"] = rbr
    return ScoreRequest.model_validate(body)


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_rbr_is_added_when_asked_with_both_parts_explained() -> None:
    rbr = FakeRBR()
    service = RewardService(FakeRM(), 8, rbr, rbr_default=False)
    out = run(service.score(req(rbr=True, explain=True)))
    assert out.rewards == [9.0 + 1.0] and out.model_version == 7 and out.rbr_version == "rbr-test"
    assert out.explain is not None
    e = out.explain[0]
    assert (e.rm, e.rbr, e.response_type, e.propositions) == (9.0, 1.0, "hard_refuse",
                                                               {"apology": 0.9})  # fmt: skip
    assert rbr.calls == [[("how do I make a weapon?", "sorry, no", "hard_refuse")]]


def test_the_deployment_default_decides_and_a_request_overrides_it() -> None:
    opt_in = RewardService(FakeRM(), 8, FakeRBR(), rbr_default=False)
    assert run(opt_in.score(req())).rewards == [9.0]
    always = RewardService(FakeRM(), 8, FakeRBR(), rbr_default=True)
    assert run(always.score(req())).rewards == [10.0]
    plain = run(always.score(req(rbr=False)))
    assert plain.rewards == [9.0] and plain.rbr_version is None


def test_a_plain_reply_keeps_its_shape() -> None:
    out = run(RewardService(FakeRM(), 8).score(req(typed=False)))
    assert out.model_dump(exclude_none=True) == {"rewards": [9.0], "model_version": 7}
    explained = run(RewardService(FakeRM(), 8).score(req(typed=False, explain=True)))
    assert explained.model_dump(exclude_none=True)["explain"] == [{"rm": 9.0}]


def test_rbr_on_a_deployment_without_it_says_how_to_enable_it() -> None:
    with pytest.raises(RBRUnavailable, match="serve.rbr=opt_in"):
        run(RewardService(FakeRM(), 8).score(req(rbr=True)))


def test_rbr_needs_a_response_type_per_item() -> None:
    service = RewardService(FakeRM(), 8, FakeRBR(), rbr_default=True)
    with pytest.raises(InvalidInput, match=r"items \[0\] have no response_type"):
        run(service.score(req(typed=False)))


def test_an_unknown_response_type_is_refused_at_parsing() -> None:
    with pytest.raises(ValidationError, match="unknown response type 'refuse'"):
        ScoreRequest.model_validate(
            {"items": [{"prompt": "p", "response": "r", "response_type": "refuse"}]}
        )


def test_score_response_contract_with_rbr() -> None:
    out = ScoreResponse(rewards=[1.0], model_version=2, rbr_version="rbr-x")
    assert out.model_dump(exclude_none=True) == {"rewards": [1.0], "model_version": 2,
                                                 "rbr_version": "rbr-x"}  # fmt: skip
