"""Reading answer-word log-probabilities from a completions response (openai grader)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from ramo_stream.label.grading.openai_backend import (
    GraderServerError,
    continuation_logprobs,
    server_message,
)


def choice(index: int, values: list[float | None]) -> dict[str, Any]:
    """A choice as vLLM returns it for ``echo: true, max_tokens: 0, logprobs: 0``."""
    tokens = [f"t{i}" for i in range(len(values))]
    return {
        "index": index,
        "text": "".join(tokens),
        "logprobs": {
            "token_logprobs": values,
            "tokens": tokens,
            "top_logprobs": [
                None if v is None else {t: v} for t, v in zip(tokens, values, strict=True)
            ],
            "text_offset": list(range(len(values))),
        },
        "finish_reason": "length",
    }


def test_reads_the_appended_word_of_each_prompt() -> None:
    body = {"choices": [choice(0, [None, -1.0, -2.5]), choice(1, [None, -1.0, -0.25])]}
    assert continuation_logprobs(body, [3, 3], [1, 1]) == [-2.5, -0.25]


def test_sums_the_tokens_of_a_longer_word() -> None:
    body = {"choices": [choice(0, [None, -1.0, -2.0, -0.5])]}
    assert continuation_logprobs(body, [4], [2]) == [-2.5]


def test_choices_are_matched_by_index_not_position() -> None:
    body = {"choices": [choice(1, [None, -7.0]), choice(0, [None, -3.0])]}
    assert continuation_logprobs(body, [2, 2], [1, 1]) == [-3.0, -7.0]


def test_one_generated_token_after_the_prompt_is_ignored() -> None:
    """max_tokens 1 (a server that refuses 0): the generated token's value comes last."""
    body = {"choices": [choice(0, [None, -1.0, -2.0, -0.01])]}
    assert continuation_logprobs(body, [3], [1]) == [-2.0]


def test_vllm_floor_is_a_number() -> None:
    body = {"choices": [choice(0, [None, -9999.0])]}
    assert continuation_logprobs(body, [2], [1]) == [-9999.0]


@pytest.mark.parametrize(
    "body, match",
    [
        ({"choices": [choice(0, [None, -1.0])]}, "1 choices for 2 prompts"),
        ({"error": "oops"}, "no choices for 2 prompts"),
        ({"choices": [choice(0, [None, -1.0]), choice(0, [None, -1.0])]}, "indices"),
    ],
)
def test_wrong_choices(body: Any, match: str) -> None:
    with pytest.raises(GraderServerError, match=match):
        continuation_logprobs(body, [2, 2], [1, 1])


@pytest.mark.parametrize("bad", [{"index": 0, "text": "Yes", "logprobs": None}, "Yes"])
def test_no_echoed_logprobs(bad: Any) -> None:
    """A server that ignores echo/logprobs answers a completion without token_logprobs."""
    body = {"choices": [bad]}
    with pytest.raises(GraderServerError, match="no logprobs.token_logprobs"):
        continuation_logprobs(body, [3], [1])


@pytest.mark.parametrize("values", [[None, -1.0, -1.0, -2.0, -3.0], [None, -1.0]])
def test_echo_of_another_length_is_refused(values: list[float | None]) -> None:
    """An added BOS (or a truncated prompt) would shift every position read."""
    with pytest.raises(GraderServerError, match="must echo the token ids sent, unchanged"):
        continuation_logprobs({"choices": [choice(0, values)]}, [3], [1])


def test_null_at_the_word_is_refused() -> None:
    with pytest.raises(GraderServerError, match="numbers expected"):
        continuation_logprobs({"choices": [choice(0, [None])]}, [1], [1])


@pytest.mark.parametrize(
    "response, expected",
    [
        (httpx.Response(400, json={"error": {"message": "bad prompt", "code": 400}}), "bad prompt"),
        (httpx.Response(400, json={"object": "error", "message": "max_tokens"}), "max_tokens"),
        (httpx.Response(422, json={"detail": [{"msg": "field required"}]}), "field required"),
        (httpx.Response(502, text="<html>Bad Gateway</html>"), "<html>Bad Gateway</html>"),
        (httpx.Response(503), "Service Unavailable"),
    ],
)
def test_server_message(response: httpx.Response, expected: str) -> None:
    assert expected in server_message(response)
