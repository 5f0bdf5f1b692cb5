"""`ramo eval`'s pure core: reading rows, the subset -> section mapping, ties, the count-weighted
section scores, the overall score, the tables; plus the command's refusals and its --url path
over httpx.MockTransport. No model, no server."""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from ramo_stream.cli import eval as cli_eval
from ramo_stream.config import load_settings
from ramo_stream.eval.evaluate import (
    Example,
    Tally,
    is_correct,
    overall_score,
    parse_example,
    plot_versions,
    read_examples,
    score_remote,
    section_of,
    section_scores,
    summarize,
    tally_subsets,
    to_json,
    to_markdown,
)
from ramo_stream.registry.store import Registry, RegistryError

REAL_SLEEP = time.sleep  # the tests below replace time.sleep for the pauses only


def row(subset: str = "llmbar-natural", **fields: Any) -> str:
    base: dict[str, Any] = {"prompt": "Q?", "chosen": "good", "rejected": "bad", "subset": subset}
    return json.dumps({**base, **fields})


def example(subset: str, line: int = 1) -> Example:
    return Example(line, "Q?", "good", "bad", subset)


# ---- sections --------------------------------------------------------------------------------


def test_rewardbench_subsets_map_to_its_sections() -> None:
    assert section_of("alpacaeval-length") == "chat"
    assert section_of("mt-bench-hard") == "chat-hard"  # mt-bench-hard is chat-hard, not chat
    assert section_of("llmbar-adver-GPTOut") == "chat-hard"
    assert section_of("xstest-should-respond") == "safety"
    assert section_of("donotanswer") == "safety"
    assert section_of("math-prm") == "reasoning"
    assert section_of("hep-rust") == "reasoning"


def test_unknown_subset_is_its_own_section() -> None:
    assert section_of("anthropic_harmless") == "anthropic_harmless"


# ---- correctness and aggregation -------------------------------------------------------------


def test_only_strictly_higher_chosen_is_correct() -> None:
    assert is_correct(0.2, 0.1)
    assert not is_correct(0.1, 0.1)  # a tie counts wrong
    assert not is_correct(-1.0, 0.5)
    assert not is_correct(math.nan, 0.0) and not is_correct(0.0, math.nan)


def test_section_score_is_weighted_by_example_count() -> None:
    # llmbar-natural 9/10, mt-bench-hard 0/2: the section is 9/12 = 0.75, not (0.9 + 0) / 2.
    subsets = ["llmbar-natural"] * 10 + ["mt-bench-hard"] * 2
    correct = [True] * 9 + [False] + [False] * 2
    by_subset = tally_subsets(subsets, correct)
    assert by_subset == {"llmbar-natural": Tally(9, 10), "mt-bench-hard": Tally(0, 2)}
    sections = section_scores(by_subset)
    assert list(sections) == ["chat-hard"]
    weighted = sum(t.accuracy * t.n for t in by_subset.values()) / sum(
        t.n for t in by_subset.values()
    )
    assert sections["chat-hard"].accuracy == pytest.approx(0.75) == pytest.approx(weighted)


def test_overall_is_the_mean_of_sections_and_accuracy_is_over_all_examples() -> None:
    examples = [example("llmbar-natural", i) for i in range(4)] + [
        example("anthropic_harmless", 10 + i) for i in range(8)
    ]
    rewards = [(1.0, 0.0)] * 4 + [(1.0, 0.0)] * 2 + [(0.5, 0.5)] * 6  # 4/4, then 2/8 (6 ties)
    result = summarize("v1", 1, "/r", examples, rewards)
    assert result.sections["chat-hard"].accuracy == 1.0
    assert result.sections["anthropic_harmless"] == Tally(2, 8)
    assert result.overall == pytest.approx((1.0 + 0.25) / 2)
    assert result.total == Tally(6, 12)


def test_sections_come_in_rewardbench_order_then_by_name() -> None:
    subsets = ["zeta", "hep-go", "alpha", "donotanswer", "llmbar-natural", "alpacaeval-easy"]
    sections = section_scores(tally_subsets(subsets, [True] * len(subsets)))
    assert list(sections) == ["chat", "chat-hard", "safety", "reasoning", "alpha", "zeta"]


def test_overall_of_nothing_is_nan() -> None:
    assert math.isnan(overall_score({}))


# ---- reading ---------------------------------------------------------------------------------


def test_parse_keeps_the_fields_and_accepts_chat_prompts_and_empty_responses() -> None:
    messages = [{"role": "user", "content": "Hi"}]
    parsed = parse_example(3, row(prompt=messages, rejected="", id=7))
    assert parsed == Example(3, messages, "good", "", "llmbar-natural", "7")


@pytest.mark.parametrize("missing", ["prompt", "chosen", "rejected", "subset"])
def test_a_missing_field_names_the_line_and_the_field(missing: str) -> None:
    d = json.loads(row())
    del d[missing]
    reason = parse_example(12, json.dumps(d))
    assert isinstance(reason, str)
    assert reason.startswith("line 12: missing field") and repr(missing) in reason


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("not json", "line 5: not JSON"),
        ("[1, 2]", "line 5: expected a JSON object, got list"),
        (row(subset=""), "line 5: subset must be a non-empty string"),
        (row(subset=3), "line 5: subset must be a non-empty string (got 3)"),
        (row(prompt="   "), "line 5: prompt:"),
        (row(chosen=5), "line 5: chosen:"),
    ],
)
def test_bad_lines_are_reasons(raw: str, expected: str) -> None:
    reason = parse_example(5, raw)
    assert isinstance(reason, str) and reason.startswith(expected), reason


def test_read_counts_file_lines_skips_blank_ones_and_stops_at_limit(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([row(), "", row(subset="x"), "oops", row(), row()]) + "\n")
    examples, errors = read_examples(path, limit=3)
    assert [e.line for e in examples] == [1, 3]
    assert errors == ["line 4: not JSON (Expecting value: line 1 column 1 (char 0))"]
    assert len(read_examples(path)[0]) == 4


# ---- output ----------------------------------------------------------------------------------


def two_versions() -> list[Any]:
    examples = [example("llmbar-natural", 1), example("hh", 2)]
    return [
        summarize("v1", 1, "/r", examples, [(1.0, 0.0), (0.0, 1.0)]),
        summarize("v2", 2, "/r", examples, [(1.0, 0.0), (2.0, 1.0)]),
    ]


def test_markdown_has_a_column_per_version() -> None:
    text = to_markdown("d.jsonl", two_versions())
    assert "| subset | section | n | v1 | v2 |" in text
    assert "| llmbar-natural | chat-hard | 1 | 1.000 | 1.000 |" in text
    assert "| hh | 1 | 0.000 | 1.000 |" in text
    assert "| **overall** (mean of sections) | | 0.500 | 1.000 |" in text
    assert "| **accuracy** (all examples) | 2 | 0.500 | 1.000 |" in text


def test_json_holds_scores_and_per_example_rewards() -> None:
    out = json.loads(json.dumps(to_json("d.jsonl", two_versions())))
    v1 = out["results"][0]
    assert v1["version"] == 1 and v1["overall"] == 0.5 and v1["accuracy"] == 0.5
    assert v1["sections"]["chat-hard"] == {
        "n": 1, "correct": 1, "accuracy": 1.0, "subsets": ["llmbar-natural"]
    }  # fmt: skip
    assert v1["subsets"]["hh"] == {"section": "hh", "n": 1, "correct": 0, "accuracy": 0.0}
    assert v1["examples"][1] == {"line": 2, "id": None, "subset": "hh", "chosen_reward": 0.0,
                                 "rejected_reward": 1.0, "correct": False}  # fmt: skip


def test_plot_without_matplotlib_says_how_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    message = plot_versions("d", two_versions(), tmp_path / "p.png")
    assert "pip install -e '.[bench]'" in message
    assert not (tmp_path / "p.png").exists()


# ---- which versions (a real registry of dummy folders) ---------------------------------------


def publish(registry: Registry) -> int:
    def write(d: Path) -> None:
        (d / "config.json").write_text("{}")

    return registry.publish(write, steps=0, samples_seen=0, offsets={}, base_model="m").version


def test_registry_versions(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "reg")
    with pytest.raises(cli_eval.EvalError, match="`ramo train`.*`ramo models publish PATH`"):
        cli_eval.registry_versions(registry, [], False)
    for _ in range(3):
        publish(registry)
    assert cli_eval.registry_versions(registry, [], False) == [3]  # the current one
    assert cli_eval.registry_versions(registry, [], True) == [1, 2, 3]
    assert cli_eval.registry_versions(registry, [3, 1, 3], False) == [3, 1]
    with pytest.raises(RegistryError, match=r"version 9 .*versions present: 1, 2, 3"):
        cli_eval.registry_versions(registry, [9], False)


# ---- the command -----------------------------------------------------------------------------


def run_eval(argv: list[str], settings: Any) -> int:
    parser = argparse.ArgumentParser()
    cli_eval.add_commands(parser.add_subparsers(), argparse.ArgumentParser(add_help=False))
    args = parser.parse_args(["eval", *argv])
    return int(args.fn(args, settings))


@pytest.fixture
def settings(tmp_path: Path) -> Any:
    return load_settings(overrides={"paths.cache_dir": str(tmp_path / "cache")})


def test_bad_lines_stop_the_command_before_scoring(
    tmp_path: Path, settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(row() + "\n" + json.dumps({"prompt": "p", "chosen": "a", "subset": "s"}))
    assert run_eval(["--data", str(path)], settings) == 2
    err = capsys.readouterr().err
    assert "1 line(s)" in err and "line 2: missing field 'rejected'" in err
    assert run_eval(["--data", str(tmp_path / "absent.jsonl")], settings) == 2
    assert "no such file" in capsys.readouterr().err


def test_empty_registry_says_how_to_publish(
    tmp_path: Path, settings: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text(row() + "\n")
    assert run_eval(["--data", str(path)], settings) == 1
    assert "ramo models publish PATH" in capsys.readouterr().err


def fake_service(requests: list[Any]) -> Any:
    httpx = pytest.importorskip("httpx", reason="the client extra (httpx) is not installed")

    def handle(request: Any) -> Any:
        requests.append(request)
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"current": 4, "loaded": [3, 4], "registry": "/r"})
        body = json.loads(request.content)
        # The reward is the response's length: "good" (4) beats "bad" (3); "tie" ties "bad".
        rewards = [float(len(item["response"])) for item in body["items"]]
        return httpx.Response(
            200, json={"rewards": rewards, "model_version": body["model_version"]}
        )

    return httpx.MockTransport(handle)


def test_score_remote_pins_the_version_and_keeps_the_order() -> None:
    from ramo_stream.client import RewardClient

    requests: list[Any] = []
    examples = [Example(i, "Q", "x" * i, "yy", "s") for i in range(1, 6)]

    def client_for(timeout_s: float, items: int) -> Any:
        return RewardClient("http://svc", transport=fake_service(requests), batch_size=items,
                            timeout_s=timeout_s, retries=0)  # fmt: skip

    rewards = score_remote(client_for, examples, 3)
    assert rewards == [(float(i), 2.0) for i in range(1, 6)]
    assert {json.loads(r.content)["model_version"] for r in requests} == {3}


def test_score_remote_asks_for_rm_alone_unless_rbr() -> None:
    # "rbr": false in every request, so a service deployed with serve.rbr=default does not
    # add the Rule-Based Reward to what `ramo eval --url` (without --rbr) reports as rm.
    from ramo_stream.client import RewardClient

    requests: list[Any] = []

    def client_for(timeout_s: float, items: int) -> Any:
        return RewardClient("http://svc", transport=fake_service(requests), batch_size=items,
                            timeout_s=timeout_s, retries=0)  # fmt: skip

    score_remote(client_for, [Example(1, "Q", "good", "bad", "s")], 3)
    assert requests and all(json.loads(r.content)["rbr"] is False for r in requests)


def slow_service(requests: list[int], seconds_per_item: float, stuck_first: int = 0) -> Any:
    """A service scoring at a fixed rate; its first ``stuck_first`` requests time out."""
    httpx = pytest.importorskip("httpx", reason="the client extra (httpx) is not installed")

    def handle(request: Any) -> Any:
        body = json.loads(request.content)
        requests.append(len(body["items"]))
        if len(requests) <= stuck_first:
            raise httpx.ReadTimeout("no reply", request=request)
        time.sleep(seconds_per_item * len(body["items"]))
        rewards = [float(len(item["response"])) for item in body["items"]]
        return httpx.Response(200, json={"rewards": rewards, "model_version": 1})

    return httpx.MockTransport(handle)


def test_requests_grow_to_the_time_budget_and_a_timeout_is_not_resent_as_is(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ramo_stream.client import RewardClient
    from ramo_stream.core.pacing import RequestSizer

    monkeypatch.setattr(time, "sleep", lambda s: None if s >= 0.5 else REAL_SLEEP(s))
    sizes: list[int] = []
    examples = [Example(i, "Q", "x" * i, "yy", "s") for i in range(1, 41)]  # 80 items
    transport = slow_service(sizes, seconds_per_item=0.002, stuck_first=1)

    def client_for(timeout_s: float, items: int) -> Any:
        return RewardClient("http://svc", transport=transport, batch_size=items, retries=0,
                            timeout_s=timeout_s)  # fmt: skip

    sizer = RequestSizer(budget_s=0.04, first=4, max_items=256)  # ~20 items at 500 items/s
    rewards = score_remote(client_for, examples, 1, sizer=sizer)
    assert rewards == [(float(i), 2.0) for i in range(1, 41)]
    assert sizes[0] == 4 and sizes[1] <= 4  # the timed-out request was not resent as large
    assert max(sizes) > 4  # then the size grew with the observed rate
    assert sum(sizes[1:]) == 80  # every item scored once after the timeout


def test_a_service_that_keeps_timing_out_ends_in_a_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from ramo_stream.client import RewardClient
    from ramo_stream.eval.evaluate import RemoteEvalError

    monkeypatch.setattr(time, "sleep", lambda s: None)
    sizes: list[int] = []
    transport = slow_service(sizes, 0.0, stuck_first=100)

    def client_for(timeout_s: float, items: int) -> Any:
        return RewardClient("http://svc", transport=transport, batch_size=items, retries=0)

    with pytest.raises(RemoteEvalError, match="failed 4 requests in a row"):
        score_remote(client_for, [Example(1, "Q", "a", "b", "s")], 1)
    assert sizes == [2, 1, 1, 1]


def test_url_scores_the_services_current_version(
    tmp_path: Path,
    settings: Any,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ramo_stream.client as client_module

    requests: list[Any] = []
    transport = fake_service(requests)
    real = client_module.RewardClient
    monkeypatch.setattr(client_module, "RewardClient",
                        lambda url, token, **kw: real(url, token, transport=transport))  # fmt: skip
    path = tmp_path / "d.jsonl"
    path.write_text(row() + "\n" + row(chosen="tie") + "\n")
    assert run_eval(["--data", str(path), "--url", "http://svc"], settings) == 0
    out = capsys.readouterr().out
    assert "| llmbar-natural | chat-hard | 2 | 0.500 |" in out  # the tie counts wrong
    scored = [json.loads(r.content) for r in requests if r.url.path == "/v1/score"]
    assert scored and all(body["model_version"] == 4 for body in scored)
