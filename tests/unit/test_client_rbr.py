"""The Rule-Based Reward flag through the client, the TRL/veRL adapters, /get_reward's labels,
`ramo eval` rows and the live view: pure logic over httpx.MockTransport and fake backends."""

from __future__ import annotations

import asyncio
import json
from collections import deque
from typing import Any

import pytest

httpx = pytest.importorskip("httpx", reason="the serve extra (httpx) is not installed")

from ramo_stream.cli.up_view import Snapshot, render, scored_requests  # noqa: E402
from ramo_stream.client import RewardClient, RewardServiceError  # noqa: E402
from ramo_stream.client.adapters import make_trl_reward_fn, make_verl_compute_score  # noqa: E402
from ramo_stream.client.protocol import score_calls, score_items  # noqa: E402
from ramo_stream.eval.evaluate import add_rewards, parse_example  # noqa: E402
from ramo_stream.serve.reward_protocol import GetRewardRequest, InvalidInput  # noqa: E402
from ramo_stream.serve.reward_service import RewardService  # noqa: E402
from tests.unit.test_reward_rbr import FakeRBR, FakeRM  # noqa: E402


class RBRService:
    """/v1/score: reward = len(response), + 10 with RBR (each item needs its type), parts
    when explained; ``rbr_versions`` names the RBR version of each successive reply."""

    def __init__(self, rbr_versions: list[str] | None = None) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.rbr_versions = rbr_versions or ["rbr-1"] * 100

    def __call__(self, request: Any) -> Any:
        body = json.loads(request.content)
        self.bodies.append(body)
        rm = [float(len(it["response"])) for it in body["items"]]
        if not body.get("rbr"):
            return httpx.Response(200, json={"rewards": rm, "model_version": 2})
        if any("response_type" not in it for it in body["items"]):
            return httpx.Response(422, json={"error": {"type": "invalid_input",
                                                       "message": "no response_type"}})  # fmt: skip
        version = self.rbr_versions[len(self.bodies) - 1]
        reply: dict[str, Any] = {"rewards": [r + 10 for r in rm], "model_version": 2,
                                 "rbr_version": version}  # fmt: skip
        if body.get("explain"):
            reply["explain"] = [
                {"rm": r, "rbr": 10.0, "response_type": it["response_type"],
                 "propositions": {"apology": 0.5}}
                for r, it in zip(rm, body["items"], strict=True)
            ]  # fmt: skip
        return httpx.Response(200, json=reply)


def client(service: Any, **kw: Any) -> RewardClient:
    return RewardClient("http://rm.test", transport=httpx.MockTransport(service), backoff_s=0.0,
                        **kw)  # fmt: skip


def test_the_flag_goes_on_the_wire_only_when_set() -> None:
    items = score_items(["p", "q"], ["a", "b"], ["comply", None])
    assert items == [{"prompt": "p", "response": "a", "response_type": "comply"},
                     {"prompt": "q", "response": "b"}]  # fmt: skip
    plain = score_calls(items, 8, None)[0].payload
    assert "rbr" not in plain and "explain" not in plain  # an older service takes it too
    asked = score_calls(items, 8, 3, rbr=False, explain=True)[0].payload
    assert asked["rbr"] is False and asked["explain"] is True and asked["model_version"] == 3
    keyed = score_items([{"prompt": "p", "response": "a", "response_type": "hard_refuse"}])
    assert keyed[0]["response_type"] == "hard_refuse"
    with pytest.raises(ValueError, match="1 response_types for 2 items"):
        score_items(["p", "q"], ["a", "b"], ["comply"])


def test_rbr_and_explain_are_reassembled_across_chunks() -> None:
    service = RBRService()
    with client(service, batch_size=2) as rm:
        out = rm.score(["p"] * 3, ["a", "bb", "ccc"], response_types=["comply"] * 3, rbr=True,
                       explain=True)  # fmt: skip
    assert len(service.bodies) == 2 and all(b["rbr"] is True for b in service.bodies)
    assert out.rewards == [11.0, 12.0, 13.0] and out.rbr_version == "rbr-1"
    assert out.explain is not None and [e.rm for e in out.explain] == [1.0, 2.0, 3.0]
    assert out.explain[2].propositions == {"apology": 0.5}
    with client(RBRService()) as rm:
        plain = rm.score(["p"], ["a"])
    assert plain.rbr_version is None and plain.explain is None


def test_two_rbr_versions_in_one_call_are_an_error() -> None:
    service = RBRService(["rbr-1", "rbr-2"])
    with client(service, batch_size=1) as rm, pytest.raises(RewardServiceError, match="several"):
        rm.score(["p", "p"], ["a", "b"], response_types=["comply"] * 2, rbr=True)


def test_trl_adapter_sends_the_response_type_column() -> None:
    service = RBRService()
    fn = make_trl_reward_fn(client(service), rbr=True)
    got = fn(prompts=["p", "q"], completions=["ab", "c"], response_type=["comply", "hard_refuse"])
    assert got == [12.0, 11.0]
    assert [it["response_type"] for it in service.bodies[-1]["items"]] == ["comply", "hard_refuse"]
    with pytest.raises(ValueError, match="dataset column 'response_type'"):
        fn(prompts=["p"], completions=["x"])  # rbr=True, but the data has no types
    default = make_trl_reward_fn(client(service))  # rbr=None: the service decides
    assert default(prompts=["p"], completions=["x"]) == [1.0]
    assert "rbr" not in service.bodies[-1]


def test_verl_adapter_reads_the_type_from_extra_info() -> None:
    service = RBRService()
    score = make_verl_compute_score(client(service), rbr=True)
    info = {"prompt": "P", "response_type": "safe_refuse_1"}
    assert score("src", "abc", None, extra_info=info) == 13.0
    assert service.bodies[-1]["items"][0]["response_type"] == "safe_refuse_1"
    with pytest.raises(ValueError, match="extra_info\\['response_type'\\]"):
        score("src", "abc", None, extra_info={"prompt": "P"})


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def get_reward(**body: Any) -> GetRewardRequest:
    return GetRewardRequest.model_validate({"query": ["Qsorry", "Qsure"], "prompts": ["Q", "Q"],
                                            **body})  # fmt: skip


def test_get_reward_reads_response_types_from_labels_and_logs_both_parts() -> None:
    rbr = FakeRBR()
    service = RewardService(FakeRM(), 8, rbr, rbr_default=True)  # OpenRLHF sends no flag
    out = run(service.get_reward(get_reward(labels=["Hard Refuse", "hard_refuse"])))
    # rm = len(response): 5 and 4; R_rbr = +1 for the refusal of a hard_refuse request.
    assert out.rewards == [6.0, 3.0] and out.scores == out.rewards
    assert out.extra_logs == {"model_version": [7, 7], "rm": [5.0, 4.0], "rbr": [1.0, -1.0]}
    assert rbr.calls[-1][0] == ("Q", "sorry", "hard_refuse")
    plain = run(service.get_reward(get_reward(rbr=False)))
    assert plain.rewards == [5.0, 4.0] and set(plain.extra_logs) == {"model_version"}


@pytest.mark.parametrize(
    ("labels", "message"),
    [(None, "--label_key"), (["comply", 42], "labels\\[1\\] is 42"),
     (["comply", "gsm8k answer"], "not a response type")],
)  # fmt: skip
def test_get_reward_with_rbr_and_no_usable_labels_says_why(labels: Any, message: str) -> None:
    service = RewardService(FakeRM(), 8, FakeRBR(), rbr_default=True)
    with pytest.raises(InvalidInput, match=message):
        run(service.get_reward(get_reward(labels=labels)))


def test_eval_rows_take_an_optional_response_type() -> None:
    row = {"prompt": "p", "chosen": "a", "rejected": "b", "subset": "s"}
    assert parse_example(1, json.dumps(row)).response_type is None  # type: ignore[union-attr]
    typed = parse_example(2, json.dumps({**row, "response_type": "Safe Refuse 2"}))
    assert typed.response_type == "safe_refuse_2"  # type: ignore[union-attr]
    bad = parse_example(3, json.dumps({**row, "response_type": "refuse"}))
    assert isinstance(bad, str) and "line 3" in bad and "hard_refuse" in bad
    assert add_rewards([(1.0, 2.0)], [(0.5, -1.0)]) == [(1.5, 1.0)]


def test_live_view_shows_the_rbr_mode_and_rate() -> None:
    from ramo_stream.serve.reward_metrics import HttpMetrics

    metrics = HttpMetrics()  # the service's own counters, scraped as the view scrapes them
    for _ in range(9):
        metrics.observe("/v1/score", 200, 0.1)
    metrics.observe("/health", 200, 0.1)
    for endpoint in ("/v1/score",) * 6 + ("/get_reward",):
        metrics.rbr_requests.labels(endpoint).inc()
    assert scored_requests(metrics.text()) == 9
    assert scored_requests(metrics.text(), "ramo_reward_rbr_requests") == 7
    first = Snapshot(0.0, 1, 1, 0, scored=0, scored_rbr=0)
    last = Snapshot(4.0, 1, 1, 0, scored=8, scored_rbr=2)
    lines = "\n".join(render(last, deque([first, last]), "random", "http://h:1", None, "opt_in"))
    assert "scoring 2.00/s" in lines and "RBR on request, 0.50/s" in lines
    off = "\n".join(render(last, deque([first, last]), "random", "http://h:1"))
    assert "RBR off" in off
