"""The reward service without Ray: request/response models, the OpenRLHF split, the service
logic over a fake backend, and the length-sorted sub-batch plan."""

from __future__ import annotations

import asyncio
import math
import pickle
import random
from collections.abc import Iterator
from typing import Any

import pytest
from pydantic import ValidationError

from ramo_stream.registry.scoring import plan_sub_batches
from ramo_stream.serve.reward_protocol import (
    CompareRequest,
    GetRewardRequest,
    GetRewardResponse,
    ModelFailure,
    NoModel,
    ScoreRequest,
    ScoreResponse,
    TooLarge,
    VersionNotLoaded,
    split_query,
)
from ramo_stream.serve.reward_service import Item, RewardService, sigmoid

# ---- request models --------------------------------------------------------------------


def test_score_request_accepts_text_and_chat_prompts_and_empty_responses() -> None:
    req = ScoreRequest.model_validate_json(
        '{"items": [{"prompt": "Hi?", "response": ""},'
        ' {"prompt": [{"role": "user", "content": "Hi?"}], "response": "Hello."}],'
        ' "model_version": 3}'
    )
    assert req.model_version == 3
    assert req.items[0].prompt == "Hi?" and req.items[0].response == ""
    assert not isinstance(req.items[1].prompt, str) and req.items[1].prompt[0].role == "user"
    unpinned = '{"items": [{"prompt": "a", "response": "b"}], "model_version": null}'
    assert ScoreRequest.model_validate_json(unpinned).model_version is None


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ('{"items": []}', "items"),
        ('{"items": [{"prompt": "a"}]}', "items.0.response"),
        ('{"items": [{"prompt": "a", "response": 1}]}', "items.0.response"),
        ('{"items": [{"prompt": "", "response": "b"}]}', "items.0.prompt"),
        ('{"items": [{"prompt": "a", "response": "b"}], "model_version": "2"}', "model_version"),
        ('{"items": [{"prompt": "a", "response": "b"}], "model_version": 0}', "model_version"),
        ('{"items": [{"prompt": "a", "response": "b"}], "model_version": true}', "model_version"),
        ('{"items": [{"prompt": "a", "response": "b"}], "temperature": 1}', "temperature"),
        ('{"items": [{"prompt": [{"role": "robot", "content": "x"}], "response": "b"}]}', "role"),
    ],
)
def test_score_request_rejects(body: str, field: str) -> None:
    with pytest.raises(ValidationError) as e:
        ScoreRequest.model_validate_json(body)
    assert field in str(e.value)


def test_compare_request() -> None:
    req = CompareRequest.model_validate_json('{"prompt": "p", "a": "x", "b": ""}')
    assert (req.a, req.b, req.model_version) == ("x", "", None)
    with pytest.raises(ValidationError, match="b"):
        CompareRequest.model_validate_json('{"prompt": "p", "a": "x"}')


def test_get_reward_request_openrlhf_shape() -> None:
    req = GetRewardRequest.model_validate_json(
        '{"query": ["Q: hi A: yo", "free"], "prompts": ["Q: hi ", "other"],'
        ' "labels": [null, {"answer": 3}], "some_future_field": 1}'
    )
    assert req.prompts == ["Q: hi ", "other"] and req.labels == [None, {"answer": 3}]
    assert GetRewardRequest.model_validate_json('{"query": ["x"]}').prompts is None
    with pytest.raises(ValidationError, match="prompts has 1 entries but query has 2"):
        GetRewardRequest.model_validate_json('{"query": ["a", "b"], "prompts": ["a"]}')
    with pytest.raises(ValidationError, match="query"):
        GetRewardRequest.model_validate_json('{"query": []}')


def test_get_reward_request_has_the_limits_and_pin_of_score() -> None:
    from ramo_stream.schemas import MAX_TEXT_CHARS

    ok = "x" * (2 * MAX_TEXT_CHARS)  # a query is a prompt and a response: two texts at most
    assert GetRewardRequest(query=[ok]).query == [ok]
    with pytest.raises(ValidationError, match="query.0"):
        GetRewardRequest(query=[ok + "x"])
    with pytest.raises(ValidationError, match="prompts.0"):
        GetRewardRequest(query=["q"], prompts=["p" * (MAX_TEXT_CHARS + 1)])
    assert GetRewardRequest.model_validate_json('{"query": ["q"], "model_version": 2}'
                                                ).model_version == 2  # fmt: skip
    with pytest.raises(ValidationError, match="model_version"):
        GetRewardRequest.model_validate_json('{"query": ["q"], "model_version": "2"}')


def test_response_models_dump_the_contract() -> None:
    # The router drops the RBR fields (None) of a plain reply: exclude_none.
    assert ScoreResponse(rewards=[0.5], model_version=2).model_dump(exclude_none=True) == {
        "rewards": [0.5],
        "model_version": 2,
    }
    out = GetRewardResponse(rewards=[1.0], scores=[1.0], extra_logs={"model_version": [4]},
                            model_version=4).model_dump()  # fmt: skip
    assert out == {"rewards": [1.0], "scores": [1.0], "extra_logs": {"model_version": [4]},
                   "model_version": 4}  # fmt: skip


def test_errors_have_a_json_body_and_survive_pickling() -> None:
    e = VersionNotLoaded("model_version 9 is not loaded; loaded versions: 1, 2")
    assert e.body() == {"error": {"type": "version_not_loaded", "message": e.message}}
    back = pickle.loads(pickle.dumps(e))  # how it crosses a Ray handle
    assert type(back) is VersionNotLoaded and back.message == e.message


# ---- OpenRLHF split --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "prompt", "expected"),
    [
        ("<user>hi</user><bot>yo", "<user>hi</user><bot>", ("<user>hi</user><bot>", "yo")),
        ("<user>hi</user><bot>", "<user>hi</user><bot>", ("<user>hi</user><bot>", "")),
        ("hello there", "goodbye", ("", "hello there")),  # not a prefix: all of it is scored
        ("hello there", None, ("", "hello there")),
        ("hello there", "", ("", "hello there")),
    ],
)
def test_split_query(query: str, prompt: str | None, expected: tuple[str, str]) -> None:
    assert split_query(query, prompt) == expected


# ---- service logic over a fake backend ---------------------------------------------------


class FakeBackend:
    """Reward = length of the response; version fixed; records what it was asked."""

    def __init__(self, version: int | None = 3, reward: float | None = None) -> None:
        self.version, self.reward = version, reward
        self.calls: list[tuple[list[Item], int | None]] = []

    async def score(
        self, items: list[Item], version: int | None, timeout_s: float | None = None
    ) -> tuple[list[float], int]:
        self.calls.append((items, version))
        if self.version is None:
            raise NoModel("none yet")
        value = self.reward
        return [float(len(r)) if value is None else value for _, r in items], version or 3

    async def info(self) -> dict[str, Any]:
        return {"current": self.version, "loaded": [self.version] if self.version else [],
                "registry": "/reg"}  # fmt: skip


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_score_passes_items_and_pin_and_limits_count() -> None:
    backend = FakeBackend()
    service = RewardService(backend, max_items=2)
    req = ScoreRequest.model_validate({"items": [{"prompt": "p", "response": "abc"}],
                                       "model_version": 2})  # fmt: skip
    out = run(service.score(req))
    assert out == ScoreResponse(rewards=[3.0], model_version=2)
    assert backend.calls == [([("p", "abc")], 2)]
    three = ScoreRequest.model_validate({"items": [{"prompt": "p", "response": "x"}] * 3})
    with pytest.raises(TooLarge, match="max_items=2"):
        run(service.score(three))


def test_compare_is_bradley_terry() -> None:
    service = RewardService(FakeBackend(), max_items=8)
    out = run(service.compare(CompareRequest(prompt="p", a="aaaa", b="a")))
    assert out.rewards == [4.0, 1.0] and out.model_version == 3
    assert out.p_a_better == pytest.approx(1 / (1 + math.exp(-3.0)))


def test_get_reward_splits_each_query_on_its_prompt() -> None:
    backend = FakeBackend()
    service = RewardService(backend, max_items=8)
    req = GetRewardRequest(query=["PROMPT:answer", "unrelated"], prompts=["PROMPT:", "nope"])
    out = run(service.get_reward(req))
    assert backend.calls == [([("PROMPT:", "answer"), ("", "unrelated")], None)]
    assert out.rewards == out.scores == [6.0, 9.0]
    assert out.extra_logs == {"model_version": [3, 3]} and out.model_version == 3
    with pytest.raises(TooLarge, match="query has 9"):
        run(RewardService(backend, max_items=8).get_reward(GetRewardRequest(query=["q"] * 9)))
    run(service.get_reward(GetRewardRequest(query=["q"], model_version=2)))
    assert backend.calls[-1] == ([("", "q")], 2)  # the pin reaches the model


def test_non_finite_rewards_are_a_model_failure() -> None:
    service = RewardService(FakeBackend(reward=math.nan), max_items=8)
    req = ScoreRequest.model_validate({"items": [{"prompt": "p", "response": "r"}]})
    with pytest.raises(ModelFailure, match="non-finite"):
        run(service.score(req))


def test_health_and_models() -> None:
    assert run(RewardService(FakeBackend(), 8).health()).model_version == 3
    with pytest.raises(NoModel, match="ramo models publish"):
        run(RewardService(FakeBackend(version=None), 8).health())
    models = run(RewardService(FakeBackend(version=None), 8).models())
    assert (models.current, models.loaded, models.registry) == (None, [], "/reg")


def test_sigmoid_is_stable() -> None:
    assert sigmoid(0.0) == 0.5
    assert sigmoid(1000.0) == 1.0 and sigmoid(-1000.0) == 0.0
    assert sigmoid(2.0) + sigmoid(-2.0) == pytest.approx(1.0)


# ---- length-sorted sub-batches -----------------------------------------------------------


def plan_cost(lengths: list[int], groups: list[list[int]], overhead: int) -> int:
    return sum(overhead + len(g) * max(lengths[i] for i in g) for g in groups)


def set_partitions(items: list[int]) -> Iterator[list[list[int]]]:
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for part in set_partitions(rest):
        yield [[first], *part]
        for k in range(len(part)):
            yield [*part[:k], [first, *part[k]], *part[k + 1 :]]


@pytest.mark.parametrize("overhead", [0, 3, 40, 10**6])
def test_sub_batch_plan_is_the_cheapest_of_all_partitions(overhead: int) -> None:
    rng = random.Random(overhead)
    for _ in range(40):
        lengths = [rng.choice([5, 6, 30, 31, 60, 100, 101, 150]) for _ in range(rng.randint(1, 7))]
        budget = rng.choice([150, 200, 320])
        groups = plan_sub_batches(lengths, budget, overhead)
        assert sorted(i for g in groups for i in g) == list(range(len(lengths)))
        for g in groups:
            widths = [lengths[i] for i in g]
            assert widths == sorted(widths, reverse=True)  # the first row sets the width
            assert len(g) == 1 or len(g) * widths[0] <= budget
        feasible = [
            plan_cost(lengths, part, overhead)
            for part in set_partitions(list(range(len(lengths))))
            if all(len(g) == 1 or len(g) * max(lengths[i] for i in g) <= budget for g in part)
        ]
        assert plan_cost(lengths, groups, overhead) == min(feasible), (lengths, budget)


def test_sub_batch_overhead_trades_padding_for_passes() -> None:
    lengths = [5, 100, 7, 50, 6, 48, 5, 101]
    widths = lambda groups: [[lengths[i] for i in g] for g in groups]  # noqa: E731
    # Passes are free: nothing is padded, equal lengths still share a pass.
    assert widths(plan_sub_batches(lengths, 210, 0)) == [[101], [100], [50], [48], [7], [6],
                                                         [5, 5]]  # fmt: skip
    # A pass costs 10 tokens: padding 100 to 101 (1 token) or 48 to 50 (2) is cheaper.
    assert widths(plan_sub_batches(lengths, 210, 10)) == [[101, 100], [50, 48], [7, 6, 5, 5]]
    # Three passes is the fewest the budget allows; of those, the one with least padding.
    assert widths(plan_sub_batches(lengths, 210, 10**6)) == [[101, 100], [50, 48], [7, 6, 5, 5]]
    # One long row and three short: a cheap pass keeps them apart, a dear one pads them.
    assert plan_sub_batches([100, 10, 10, 10], 400, 10) == [[0], [1, 2, 3]]
    assert plan_sub_batches([100, 10, 10, 10], 400, 10**6) == [[0, 1, 2, 3]]


def test_sub_batch_longer_than_budget_stands_alone() -> None:
    assert plan_sub_batches([300, 10, 10], budget=100, pass_overhead=50) == [[0], [1, 2]]
    assert plan_sub_batches([], budget=100) == []


# ---- serve settings --------------------------------------------------------------------


@pytest.fixture
def no_ramo_env(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    for name in list(os.environ):
        if name.startswith("RAMO_"):
            monkeypatch.delenv(name)


def test_serve_settings_consistency(no_ramo_env: None) -> None:
    from ramo_stream.config import SettingsError, load_settings

    with pytest.raises(SettingsError, match="max_ongoing_requests=16 is below max_batch_size=32"):
        load_settings(overrides={"serve.max_ongoing_requests": 16})
    with pytest.raises(SettingsError, match="set both"):
        load_settings(overrides={"serve.autoscaling_min_replicas": 1})
    with pytest.raises(SettingsError, match="batch_tokens=512 cannot hold one item"):
        load_settings(overrides={"serve.batch_tokens": 512})
    s = load_settings(overrides={"serve.max_batch_size": 8, "serve.max_ongoing_requests": 8})
    assert (s.serve.max_batch_size, s.serve.host, s.serve.api_token) == (8, "127.0.0.1", None)


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_loopback_needs_no_token(no_ramo_env: None, host: str) -> None:
    from ramo_stream.config import load_settings

    load_settings(overrides={"serve.host": host}).serve.check_exposure()


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3", "::", "reward.internal"])
def test_open_address_needs_a_token(no_ramo_env: None, host: str) -> None:
    from ramo_stream.config import load_settings

    with pytest.raises(ValueError, match="RAMO_SERVE__API_TOKEN"):
        load_settings(overrides={"serve.host": host}).serve.check_exposure()
    token = "x" * 16
    load_settings(overrides={"serve.host": host, "serve.api_token": token}).serve.check_exposure()


def test_forward_token_budget_defaults_by_device() -> None:
    from ramo_stream.config import ServeSettings

    assert ServeSettings().forward_tokens("cuda") == 16384
    assert ServeSettings().forward_tokens("cpu") == 1024  # one long item per CPU pass
    assert ServeSettings(max_length=2048).forward_tokens("cpu") == 2048
    assert ServeSettings(batch_tokens=4096).forward_tokens("cpu") == 4096  # set: kept
    assert ServeSettings().pass_overhead("cpu") == 40
    assert ServeSettings().pass_overhead("cuda") == 2048
    assert ServeSettings(pass_overhead_tokens=0).pass_overhead("cuda") == 0  # set: kept
