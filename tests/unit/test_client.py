"""The reward client's own logic over httpx.MockTransport: batching and reassembly, retries and
refusals, the token header, the async twin, the TRL/veRL/OpenRLHF adapters. No server."""

from __future__ import annotations

import asyncio
import json
import pickle
import random
from collections.abc import Callable
from typing import Any

import pytest

httpx = pytest.importorskip("httpx", reason="the serve extra (httpx) is not installed")

from ramo_stream.client import (  # noqa: E402
    AsyncRewardClient,
    RequestRefused,
    RewardClient,
    RewardServiceError,
)
from ramo_stream.client.adapters import (  # noqa: E402
    make_trl_reward_fn,
    make_verl_batch_compute_score,
    make_verl_compute_score,
    openrlhf_remote_rm_url,
)
from ramo_stream.client.errors import MAX_BACKOFF_S, retry_delay  # noqa: E402
from ramo_stream.client.protocol import score_items  # noqa: E402
from ramo_stream.schemas import ChatMessage  # noqa: E402

Handler = Callable[[Any], Any]


def reward_of(response: str) -> float:
    """The fake scorer: responses are 'r<i>', scored i (so order is visible); blank: 0."""
    return float(response[1:]) if response.strip() else 0.0


def error(status: int, type_: str, message: str) -> Any:
    return httpx.Response(status, json={"error": {"type": type_, "message": message}})


class FakeService:
    """Answers the contract's endpoints; records requests; may fail the first few."""

    def __init__(self, failures: list[Any] | None = None, version_of_call: Any = None) -> None:
        self.requests: list[Any] = []
        self.failures = list(failures or [])
        self.version_of_call = version_of_call or (lambda n: 3)

    def __call__(self, request: Any) -> Any:
        self.requests.append(request)
        if self.failures:
            failure = self.failures.pop(0)
            if isinstance(failure, Exception):
                raise failure
            return failure
        body = json.loads(request.content) if request.content else None
        version = self.version_of_call(len(self.requests))
        path = request.url.path
        if path == "/v1/score":
            rewards = [reward_of(item["response"]) for item in body["items"]]
            return httpx.Response(200, json={"rewards": rewards, "model_version": version})
        if path == "/v1/compare":
            return httpx.Response(
                200, json={"p_a_better": 0.75, "rewards": [1.0, -0.1], "model_version": version}
            )
        if path == "/get_reward":
            rewards = [float(len(q)) for q in body["query"]]
            return httpx.Response(200, json={
                "rewards": rewards, "scores": rewards, "model_version": version,
                "extra_logs": {"len": rewards, "chunk": len(rewards)},
            })  # fmt: skip
        if path == "/v1/models":
            return httpx.Response(200, json={"current": 3, "loaded": [2, 3], "registry": "/r"})
        if path == "/health":
            return httpx.Response(200, json={"status": "ok", "model_version": version})
        return error(404, "not_found", path)

    def items_per_request(self) -> list[int]:
        return [len(json.loads(r.content)["items"]) for r in self.requests]


def client(service: Handler, **kw: Any) -> RewardClient:
    kw.setdefault("backoff_s", 0.0)
    return RewardClient("http://rm.test", transport=httpx.MockTransport(service), **kw)


def responses(n: int) -> list[str]:
    return [f"r{i}" for i in range(n)]


# --- batching -----------------------------------------------------------------------------


def test_long_list_is_split_and_reassembled_in_order() -> None:
    service = FakeService()
    with client(service, batch_size=3) as rm:
        result = rm.score("Same prompt", responses(10))
    assert service.items_per_request() == [3, 3, 3, 1]
    assert result.rewards == [float(i) for i in range(10)]
    assert result.model_versions == [3] * 10 and result.model_version == 3
    assert not result.mixed_versions


def test_chunks_answered_by_different_versions_are_reported_per_item() -> None:
    service = FakeService(version_of_call=lambda n: 4 + n // 2)  # 4, 5, 5 for calls 1, 2, 3
    with client(service, batch_size=2) as rm:
        result = rm.score([("p", r) for r in responses(5)])
    assert result.model_versions == [4, 4, 5, 5, 5]
    assert result.model_version == 5 and result.mixed_versions


def test_empty_input_sends_nothing() -> None:
    service = FakeService()
    with client(service) as rm:
        result = rm.score([])
    assert result.rewards == [] and result.model_version is None and service.requests == []


def test_model_version_pin_and_chat_prompts_go_on_the_wire() -> None:
    service = FakeService()
    chat = [ChatMessage(role="user", content="hi"), {"role": "assistant", "content": "yo"}]
    with client(service) as rm:
        rm.score([{"prompt": chat, "response": "r1"}], model_version=2)
    body = json.loads(service.requests[0].content)
    assert body["model_version"] == 2
    assert body["items"] == [{"prompt": [{"role": "user", "content": "hi"},
                                         {"role": "assistant", "content": "yo"}],
                              "response": "r1"}]  # fmt: skip


def test_input_shapes_are_checked_before_sending() -> None:
    assert score_items(["a", "b"], ["r0", "r1"]) == [
        {"prompt": "a", "response": "r0"},
        {"prompt": "b", "response": "r1"},
    ]
    with pytest.raises(ValueError, match="3 prompts for 2 responses"):
        score_items(["a", "b", "c"], ["r0", "r1"])
    with pytest.raises(TypeError, match="item 1"):
        score_items([("p", "r0"), {"prompt": "p"}])
    with pytest.raises(TypeError, match="not one string"):
        score_items("p", "r0")  # type: ignore[arg-type]


def test_options_are_validated_where_the_client_is_built() -> None:
    with pytest.raises(ValueError, match="batch_size=0"):
        RewardClient(batch_size=0)
    with pytest.raises(ValueError, match="must start with http"):
        RewardClient("127.0.0.1:8000")


# --- retries and refusals -------------------------------------------------------------------


def test_503_no_model_yet_is_retried_then_succeeds() -> None:
    no_model = error(503, "no_model", "no model version has been published yet")
    service = FakeService(failures=[no_model, no_model])
    with client(service, retries=3) as rm:
        assert rm.score("p", ["r7"]).rewards == [7.0]
    assert len(service.requests) == 3


def test_retries_exhausted_raise_with_the_last_answer() -> None:
    no_model = error(503, "no_model", "no model version has been published yet")
    service = FakeService(failures=[no_model] * 5)
    with client(service, retries=2) as rm, pytest.raises(RewardServiceError) as info:
        rm.score("p", ["r1"])
    assert len(service.requests) == 3
    e = info.value
    assert (e.status, e.error_type, e.message) == (503, "no_model", "no model version has "
                                                   "been published yet")  # fmt: skip
    assert "3 attempts" in str(e) and "publish" in str(e)


def test_422_is_not_retried_and_its_message_is_surfaced() -> None:
    refused = error(422, "invalid_input", "items.1.response: must contain non-whitespace text")
    service = FakeService(failures=[refused])
    with client(service, batch_size=2) as rm, pytest.raises(RequestRefused) as info:
        rm.score("p", responses(5))
    assert len(service.requests) == 1
    e = info.value
    assert (e.status, e.error_type) == (422, "invalid_input")
    assert "items.1.response: must contain non-whitespace text" in str(e)
    assert "(items 0..1 of 5)" in str(e)  # which chunk, in the caller's numbering


def test_401_and_413_say_what_to_change() -> None:
    for status, hint in ((401, "token"), (413, "batch_size")):
        service = FakeService(failures=[error(status, "refused", "no")])
        with client(service) as rm, pytest.raises(RequestRefused, match=hint):
            rm.score("p", ["r1"])


def test_500_is_the_services_failure_raised_at_once() -> None:
    service = FakeService(failures=[error(500, "model_error", "CUDA out of memory")])
    with client(service) as rm, pytest.raises(RewardServiceError) as info:
        rm.score("p", ["r1"])
    assert len(service.requests) == 1 and not isinstance(info.value, RequestRefused)
    assert (info.value.status, info.value.error_type) == (500, "model_error")
    assert "CUDA out of memory" in str(info.value)


def test_timeouts_and_connection_errors_are_retried() -> None:
    service = FakeService(failures=[httpx.ReadTimeout("slow"), httpx.ConnectError("refused"),
                                    error(429, "overloaded", "busy")])  # fmt: skip
    with client(service, retries=3) as rm:
        assert rm.score("p", ["r2"]).rewards == [2.0]
    assert len(service.requests) == 4


@pytest.mark.parametrize("status", [502, 504])
def test_other_5xx_are_not_retried_by_default(status: int) -> None:
    service = FakeService(failures=[httpx.Response(status, text="gateway")])
    with client(service, retries=3) as rm, pytest.raises(RewardServiceError) as info:
        rm.score("p", ["r1"])
    assert len(service.requests) == 1 and info.value.status == status


def test_retry_after_of_a_503_is_waited_for(monkeypatch: pytest.MonkeyPatch) -> None:
    import time as time_module

    slept: list[float] = []
    monkeypatch.setattr(time_module, "sleep", slept.append)
    busy = httpx.Response(503, headers={"Retry-After": "2"},
                          json={"error": {"type": "overloaded", "message": "busy"}})  # fmt: skip
    service = FakeService(failures=[busy])
    with client(service, retries=1, backoff_s=0.01) as rm:
        assert rm.score("p", ["r3"]).rewards == [3.0]
    assert slept == [2.0]
    assert service.requests[0].headers["x-request-timeout"] == "30"  # the client's timeout_s


def test_a_token_read_with_its_newline_still_matches() -> None:
    service = FakeService()
    with client(service, api_token="s3cret\n") as rm:
        rm.score("p", ["r1"])
    assert service.requests[0].headers["authorization"] == "Bearer s3cret"


def test_connection_errors_exhausted_name_the_url_and_the_fix() -> None:
    service = FakeService(failures=[httpx.ConnectError("refused")] * 3)
    with client(service, retries=1) as rm, pytest.raises(RewardServiceError) as info:
        rm.models()
    assert info.value.status is None
    assert "http://rm.test/v1/models" in str(info.value) and "ramo serve" in str(info.value)


def test_off_contract_reply_is_an_error_not_a_crash() -> None:
    def service(request: Any) -> Any:
        return httpx.Response(200, json={"rewards": [1.0]})  # no model_version

    with client(service) as rm, pytest.raises(RewardServiceError, match="model_version"):
        rm.score("p", ["r1"])


def test_wrong_reward_count_is_caught() -> None:
    def service(request: Any) -> Any:
        return httpx.Response(200, json={"rewards": [1.0], "model_version": 1})

    with client(service) as rm, pytest.raises(RewardServiceError, match="1 values for the 2"):
        rm.score("p", ["r1", "r2"])


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    rng = random.Random(0)
    for attempt in (1, 2, 3, 4):
        d = 0.25 * 2 ** (attempt - 1)
        delays = [retry_delay(attempt, 0.25, None, rng) for _ in range(200)]
        assert all(d / 2 <= x <= d for x in delays)
        assert max(delays) - min(delays) > d / 4  # jittered, not constant
    assert retry_delay(1, 0.25, 3.0, rng) == 3.0  # Retry-After is a floor
    assert retry_delay(20, 1.0, None, rng) <= MAX_BACKOFF_S


# --- headers and the other endpoints --------------------------------------------------------


def test_bearer_token_is_sent_only_when_given() -> None:
    service = FakeService()
    with client(service, api_token="s3cret") as rm:
        rm.score("p", ["r1"])
    with client(service) as rm:
        rm.score("p", ["r1"])
    assert service.requests[0].headers["authorization"] == "Bearer s3cret"
    assert "authorization" not in service.requests[1].headers
    assert "s3cret" not in repr(RewardClient(api_token="s3cret").options)


def test_compare_models_health_and_get_reward() -> None:
    service = FakeService()
    with client(service, batch_size=2) as rm:
        c = rm.compare("p", "a", "b")
        assert (c.p_a_better, c.rewards, c.model_version) == (0.75, (1.0, -0.1), 3)
        m = rm.models()
        assert (m.current, m.loaded, m.registry) == (3, [2, 3], "/r")
        h = rm.health()
        assert h.ok and h.model_version == 3
        g = rm.get_reward(["a", "bb", "ccc"], prompts=["p", "p", "p"])
    assert g.rewards == [1.0, 2.0, 3.0] and g.scores == [1.0, 2.0, 3.0]
    assert g.extra_logs == {"len": [1.0, 2.0, 3.0], "chunk": [2, 1]}
    sent = [json.loads(r.content) for r in service.requests if r.url.path == "/get_reward"]
    assert sent[1] == {"query": ["ccc"], "prompts": ["p"], "labels": None}


def test_health_reports_503_and_wait_until_ready_polls() -> None:
    service = FakeService(failures=[error(503, "no_model", "none yet")] * 2)
    with client(service) as rm:
        h = rm.health()
        assert not h.ok and h.status_code == 503 and "none yet" in h.detail
        assert rm.wait_until_ready(timeout_s=5, poll_s=0.01) == 3


# --- the async twin -------------------------------------------------------------------------


def test_async_client_sends_chunks_concurrently_bounded_and_in_order() -> None:
    in_flight, peak = 0, 0

    async def service(request: Any) -> Any:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        items = json.loads(request.content)["items"]
        # Later chunks answer sooner, so replies arrive out of order.
        await asyncio.sleep(0.02 / (1 + reward_of(items[0]["response"])))
        in_flight -= 1
        rewards = [reward_of(i["response"]) for i in items]
        return httpx.Response(200, json={"rewards": rewards, "model_version": 1})

    async def main() -> Any:
        async with AsyncRewardClient("http://rm.test", batch_size=2, max_connections=3,
                                     transport=httpx.MockTransport(service)) as rm:  # fmt: skip
            return await rm.score("p", responses(15))

    result = asyncio.run(main())
    assert result.rewards == [float(i) for i in range(15)]
    assert 1 < peak <= 3


def test_async_client_retries_refuses_and_cancels_like_the_sync_one() -> None:
    async def main() -> None:
        no_model = error(503, "no_model", "none yet")
        service = FakeService(failures=[no_model])
        t = httpx.MockTransport(service)
        async with AsyncRewardClient("http://rm.test", backoff_s=0, transport=t) as rm:
            assert (await rm.score("p", ["r4"])).rewards == [4.0]
            assert len(service.requests) == 2
            service.failures = [error(422, "invalid_input", "bad prompt")]
            with pytest.raises(RequestRefused, match="bad prompt"):
                await rm.score("p", ["r1"])
            assert (await rm.compare("p", "a", "b")).p_a_better == 0.75
            assert (await rm.models()).current == 3
            assert (await rm.get_reward(["ab"])).rewards == [2.0]
            assert await rm.wait_until_ready(timeout_s=1) == 3

    asyncio.run(main())


# --- adapters -------------------------------------------------------------------------------


def test_trl_reward_fn_standard_and_conversational() -> None:
    service = FakeService()
    fn = make_trl_reward_fn(client(service), name="safety_rm")
    assert fn.__name__ == "safety_rm"
    assert fn(prompts=["p", "q"], completions=["r1", "r2"], completion_ids=[[1], [2]]) == [1.0, 2.0]

    prompts = [[{"role": "system", "content": "Be kind."}, {"role": "user", "content": "hi"}]] * 3
    completions = [
        [{"role": "assistant", "content": "r5"}],
        [{"role": "assistant", "content": "   "}],
        [{"role": "assistant", "content": [{"type": "text", "text": "r6"}]}],
    ]
    assert fn(prompts, completions, answer=["x", "y", "z"]) == [5.0, 0.0, 6.0]
    sent = json.loads(service.requests[-1].content)["items"]
    assert [item["response"] for item in sent] == ["r5", "   ", "r6"]  # empty ones are scored
    assert all(item["prompt"] == prompts[0] for item in sent)


def test_adapters_pickle_and_reopen_their_client() -> None:
    fn = make_trl_reward_fn("http://127.0.0.1:1", timeout_s=1.0, retries=0)
    copy = pickle.loads(pickle.dumps(fn))
    assert copy.__name__ == "ramo_reward" and copy._client is None
    assert copy.client.options.timeout_s == 1.0


def test_verl_compute_score_reads_the_prompt_from_extra_info() -> None:
    service = FakeService()
    score = make_verl_compute_score(client(service))
    assert score("gsm8k", "r3", "42", extra_info={"prompt": "What is 6*7?"}) == 3.0
    assert score("gsm8k", "r4", "42", {"question": "Q?", "split": "train"}) == 4.0
    assert score("gsm8k", "", "42", {"prompt": "P"}) == 0.0  # empty: scored like any other
    assert [json.loads(r.content)["items"][0]["prompt"] for r in service.requests] == [
        "What is 6*7?",
        "Q?",
        "P",
    ]
    with pytest.raises(ValueError, match="extra_info\\['prompt'\\]"):
        score("gsm8k", "r1", "42", extra_info=None)

    batch = make_verl_batch_compute_score(client(service), default_prompt="(none)")
    assert batch(data_sources=["a", "b"], solution_strs=["r1", "r2"], ground_truths=[None, None],
                 extra_infos=[None, {"prompt": "P"}]) == [1.0, 2.0]  # fmt: skip


def test_openrlhf_remote_rm_url() -> None:
    assert openrlhf_remote_rm_url("http://h:8000/") == "http://h:8000/get_reward"
    assert openrlhf_remote_rm_url(RewardClient("http://h:9")) == "http://h:9/get_reward"


# --- `ramo score`'s pure parts --------------------------------------------------------------


def test_score_file_rows_parse_or_say_why() -> None:
    from ramo_stream.eval.score_rows import Row, parse_row

    plain = parse_row(1, '{"prompt": "p", "response": "r"}')
    assert isinstance(plain, Row) and plain.responses == ["r"] and not plain.is_pair
    chat = [{"role": "user", "content": "hi"}]
    bench = parse_row(2, json.dumps({"prompt": chat, "chosen": "a", "rejected": "b",
                                     "subset": "xstest"}))  # fmt: skip
    assert isinstance(bench, Row) and bench.is_pair and bench.prompt == chat
    assert bench.subset == "xstest"
    assert "not JSON" in str(parse_row(3, "{oops"))
    assert "missing ['rejected']" in str(parse_row(4, '{"prompt": "p", "chosen": "a"}'))
    assert "response: Input should be a valid string" in str(
        parse_row(5, '{"prompt": "p", "response": 3}')
    )
    assert "prompt" in str(parse_row(6, '{"prompt": " ", "response": "r"}'))
    assert isinstance(parse_row(7, '{"prompt": "p", "response": ""}'), Row)  # empty is scored


def test_score_file_records_and_accuracy() -> None:
    from ramo_stream.cli.score import row_records, summary
    from ramo_stream.eval.score_rows import Row

    rows = [Row(1, "p", ["a", "b"], "s1"), Row(2, "p", ["a", "b"], "s2"), Row(3, "p", ["r"])]
    records = row_records(rows, [2.0, 1.0, 0.5, 0.5, -1.0], [4, 4, 4, 5, 5])
    assert [r.get("correct") for r in records] == [True, False, None]  # a tie is not a win
    assert [r["model_version"] for r in records] == [4, 5, 5]
    lines = summary(records)
    assert "accuracy (chosen reward > rejected reward): 1/2 = 0.500" in lines
    assert any(line.startswith("rewards of 1 responses: mean -1.0000") for line in lines)
    assert any("s1" in line and "1/1" in line for line in lines)


def test_score_url_comes_from_serve_settings_when_they_exist() -> None:
    from types import SimpleNamespace

    from ramo_stream.cli.score import default_url
    from ramo_stream.config import load_settings

    assert default_url(load_settings()).startswith("http://127.0.0.1:")
    fake = SimpleNamespace(serve=SimpleNamespace(host="0.0.0.0", port=9123))
    assert default_url(fake) == "http://127.0.0.1:9123"  # type: ignore[arg-type]


def test_one_chat_prompt_for_many_responses_must_be_repeated() -> None:
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]
    with pytest.raises(TypeError, match="repeat it"):
        score_items(chat, ["r0", "r1"])
    assert score_items([chat] * 2, ["r0", "r1"])[1] == {"prompt": chat, "response": "r1"}
