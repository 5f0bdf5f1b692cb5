"""Grader client of an OpenAI-compatible completions server, e.g. ``vllm serve MODEL``.

How the answer is read, exactly. Each answer word is scored as a continuation of the
grading prompt: for one grading request the client sends three prompts, ``ids + word_ids``
for Yes, No and NA, with ``echo: true, max_tokens: 0, logprobs: 0``. The server echoes each
prompt with the log-probability of every token given the tokens before it; that of the
appended word is log P(word | grading prompt), the number the transformers backend takes
from its logits, and ``normalise`` turns the three into the three-way distribution.

Why not one generated token with ``logprobs: N``, reading the words from its top-N: an
unlikely answer word is simply not in the top-N (servers cap N: vLLM at 20 by default,
OpenAI at 5), and a missing word has no value; putting a floor in its place would make the
probabilities up. vLLM's ``logprob_token_ids`` returns exactly the three (the in-process
vllm backend uses it) but is not part of the OpenAI API.

What that costs: three prompts per grading request, and vLLM does not read its prefix
cache for a request that asks for prompt log-probabilities (it recomputes the whole
prefill), so per request this is slower than the in-process vllm backend; it is the way to
put the grader on another machine. Many prompts go in one HTTP request (the API takes a
list of token-id lists), ``batch`` at a time.

Token ids, not text, are sent: the rendered chat template already holds its special tokens,
and a server that tokenised text would add a second BOS, which moves the answer. The
tokenizer is loaded locally (the model the server serves), renders the template, and is
checked at start-up like every backend's: a chat template, one-token answer words.

The response read (vLLM's completion server; the OpenAI legacy completions format):
``choices[i].index`` is the prompt's place in the request, and
``choices[i].logprobs.token_logprobs`` has one value per echoed prompt token, ``null`` for
the first (nothing precedes it), floored at -9999 by vLLM. A server that refuses
``max_tokens: 0`` (older vLLM: "max_tokens must be at least 1") is asked again with 1; the
one generated token's value then follows the prompt's and is ignored.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import httpx

from ramo_stream.label.grading.base import AnswerProbs, GradeRequest, normalise
from ramo_stream.label.grading.template import (
    DEFAULT_WORDS,
    TEMPLATE_VERSION,
    AnswerWords,
    check_grader_tokenizer,
    prompt_token_ids,
)

log = logging.getLogger(__name__)


class GraderServerError(RuntimeError):
    """The completions server kept failing, refused a request, or answered nonsense."""


class RequestRefused(GraderServerError):
    """A 4xx other than 429: the request's fault, which no retry would fix."""

    def __init__(self, url: str, status: int, message: str) -> None:
        super().__init__(f"{url} refused the request with HTTP {status}: {message}")
        self.status = status
        self.message = message


def server_message(response: httpx.Response) -> str:
    """The error text of a server's answer: OpenAI/vLLM ``{"error": {"message"}}``, older
    vLLM ``{"message"}``, FastAPI ``{"detail"}``, else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        for key in ("message", "detail", "error"):
            if body.get(key):
                return str(body[key])
    return str(body)[:500]


def continuation_logprobs(
    body: Any, prompt_lens: Sequence[int], word_lens: Sequence[int]
) -> list[float]:
    """Per prompt, the summed echoed log-probabilities of its last ``word_lens[i]`` tokens.

    ``body`` is a completions response to prompts of ``prompt_lens[i]`` tokens each (word
    included), sent with ``echo`` and ``logprobs``. A server may append one generated token;
    any other length means it did not echo the token ids unchanged (an added BOS, say), and
    the positions read would be wrong, so that raises GraderServerError.
    """
    choices = body.get("choices") if isinstance(body, dict) else None
    if not isinstance(choices, list) or len(choices) != len(prompt_lens):
        got = len(choices) if isinstance(choices, list) else "no"
        raise GraderServerError(
            f"completions response has {got} choices for {len(prompt_lens)} prompts;"
            " the server must answer each prompt of a list with one choice (n=1)"
        )
    by_index: dict[int, Any] = {}
    for pos, choice in enumerate(choices):
        index = choice.get("index", pos) if isinstance(choice, dict) else pos
        by_index[index] = choice
    if sorted(by_index) != list(range(len(prompt_lens))):
        raise GraderServerError(f"completions choices have indices {sorted(by_index)}")
    out = []
    for i, (n_prompt, n_word) in enumerate(zip(prompt_lens, word_lens, strict=True)):
        choice = by_index[i]
        logprobs = choice.get("logprobs") if isinstance(choice, dict) else None
        values = logprobs.get("token_logprobs") if isinstance(logprobs, dict) else None
        if not isinstance(values, list):
            raise GraderServerError(
                f"choice {i} has no logprobs.token_logprobs; the server must support echo"
                " with logprobs on /completions (vLLM does)"
            )
        if not n_prompt <= len(values) <= n_prompt + 1:
            raise GraderServerError(
                f"choice {i} echoes {len(values)} token log-probabilities for a prompt of"
                f" {n_prompt} tokens; the server must echo the token ids sent, unchanged"
                " (no added special tokens)"
            )
        word = values[n_prompt - n_word : n_prompt]
        if not all(isinstance(v, int | float) for v in word):
            raise GraderServerError(
                f"choice {i} has log-probabilities {word} for the answer word; numbers expected"
            )
        out.append(float(sum(word)))
    return out


class OpenAIGrader:
    """Grades through ``POST {base_url}/completions``; one HTTP client, reused."""

    def __init__(
        self,
        model: str,
        served_model: str | None = None,
        base_url: str = "http://127.0.0.1:8000/v1",
        api_key: str | None = None,
        words: AnswerWords = DEFAULT_WORDS,
        timeout_s: float = 30.0,
        retries: int = 3,
        backoff_s: float = 0.5,
        batch: int = 64,
        max_prompt_tokens: int | None = None,
    ) -> None:
        """``model``: local path (or Hugging Face id) of the served model's tokenizer;
        ``served_model``: the name the server serves it under (default: ``model``)."""
        from transformers import AutoConfig, AutoTokenizer

        if batch < 1:
            raise ValueError(f"batch={batch}: at least one prompt per request")
        self.name = served_model or model
        self.template_version = TEMPLATE_VERSION
        self.calibrate_by_default = True
        self.words = words
        self.tokenizer = AutoTokenizer.from_pretrained(model)
        # Every answer word is one token (refused otherwise, as by every backend), though
        # the continuation scoring below would sum the tokens of a longer word.
        self.word_ids = [[i] for i in check_grader_tokenizer(self.tokenizer, model, words)]
        longest_word = max(len(w) for w in self.word_ids)
        if max_prompt_tokens is None:
            # The model's context, less the answer word and one token a server may generate.
            # A server started with a shorter --max-model-len refuses longer prompts itself.
            context = getattr(AutoConfig.from_pretrained(model), "max_position_embeddings", None)
            if context:
                max_prompt_tokens = context - longest_word - 1
        self.max_prompt_tokens = max_prompt_tokens
        self.url = base_url.rstrip("/") + "/completions"
        self.retries = retries
        self.backoff_s = backoff_s
        self.batch = batch
        self._max_tokens = 0  # becomes 1 if the server refuses 0 (see the module docstring)
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._client = httpx.Client(timeout=httpx.Timeout(timeout_s), headers=headers)

    def _prompt_ids(self, request: GradeRequest) -> list[int]:
        return prompt_token_ids(self.tokenizer, request, self.words, self.max_prompt_tokens or None)

    def grade(self, requests: Sequence[GradeRequest]) -> list[AnswerProbs]:
        # All prompts are built (and checked for length) before the first HTTP request.
        prompts: list[list[int]] = []
        word_lens: list[int] = []
        for r in requests:
            ids = self._prompt_ids(r)
            prompts.extend(ids + w for w in self.word_ids)
            word_lens.extend(len(w) for w in self.word_ids)
        logps: list[float] = []
        for start in range(0, len(prompts), self.batch):
            chunk = prompts[start : start + self.batch]
            body = self._complete(chunk)
            lens = [len(p) for p in chunk]
            logps.extend(continuation_logprobs(body, lens, word_lens[start : start + self.batch]))
        k = len(self.word_ids)
        return [normalise(*logps[i : i + k]) for i in range(0, len(logps), k)]

    def _complete(self, prompts: list[list[int]]) -> Any:
        payload = {
            "model": self.name,
            "prompt": prompts,
            "echo": True,
            "max_tokens": self._max_tokens,
            "logprobs": 0,
            "temperature": 0,
        }
        try:
            return self._post(payload)
        except RequestRefused as e:
            if self._max_tokens != 0 or "max_tokens" not in e.message:
                raise
        log.info("%s refuses max_tokens 0; asking for 1 token from now on", self.url)
        self._max_tokens = payload["max_tokens"] = 1
        return self._post(payload)

    def _post(self, payload: dict[str, Any]) -> Any:
        """POST with retries: connection errors, timeouts, 429 and 5xx are retried with an
        exponential backoff; any other 4xx is the request's fault and raises at once."""
        attempts = self.retries + 1
        last = ""
        for attempt in range(1, attempts + 1):
            try:
                response = self._client.post(self.url, json=payload)
            except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as e:
                last = f"{type(e).__name__}: {e}"
            else:
                if response.status_code == 200:
                    try:
                        return response.json()
                    except ValueError as e:
                        raise GraderServerError(
                            f"{self.url} answered 200 with a body that is not JSON:"
                            f" {response.text[:200]!r}"
                        ) from e
                status, message = response.status_code, server_message(response)
                if status != 429 and status < 500:
                    raise RequestRefused(self.url, status, message)
                last = f"HTTP {status}: {message}"
            if attempt < attempts:
                delay = self.backoff_s * 2 ** (attempt - 1)
                log.warning("%s failed (%s); retry %d in %.2f s", self.url, last, attempt, delay)
                time.sleep(delay)
        raise GraderServerError(
            f"{self.url} failed after {attempts} attempts ({self.retries} retries); last:"
            f" {last}. Check that the server is up (grader.openai_base_url), or raise"
            " grader.openai_timeout_s / grader.openai_retries"
        )

    def close(self) -> None:
        """Close the HTTP client's connections."""
        self._client.close()
