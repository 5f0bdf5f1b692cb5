"""What the sync and async clients share: the wire contract, batching and reassembly.

Nothing here does I/O. Both clients turn a call into requests (``Call``) with the functions
below, send them with their own httpx client (retrying as ``errors`` decides), and read the
replies back with ``parse`` and ``assemble_*``; so the logic is one piece of code, tested
without a server.

The contract (the reward service, ``ramo serve``): JSON bodies; every successful reply carries
``model_version``; an error is ``{"error": {"type", "message"}}`` with 422 (invalid input),
413 (body too large or too many items), 401 (missing or wrong bearer token), 503 (no model
version yet, overloaded, a replica restarting; with Retry-After), 429, 415 (not JSON) or 409
(the pinned ``model_version`` is not loaded). Every request carries ``X-Request-Timeout``
(the client's ``timeout_s``), so the service refuses at once what it could not finish before
the client gives up.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, ValidationError

from ramo_stream.client.errors import RewardServiceError, error_of
from ramo_stream.schemas import ChatMessage

PromptLike = str | Sequence[ChatMessage | Mapping[str, Any]]
R = TypeVar("R", bound=BaseModel)


# --- requests --------------------------------------------------------------------------------


def content_text(content: Any) -> str:
    """A message's content as text: a string, or the text parts of a content-part list."""
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        parts = [p.get("text", "") for p in content if isinstance(p, Mapping)]
        return "".join(p for p in parts if isinstance(p, str))
    raise TypeError(f"message content must be a string or a list of parts, got {content!r:.80}")


def prompt_json(prompt: PromptLike) -> str | list[dict[str, str]]:
    """A prompt as the service reads it: a string, or ``[{"role", "content"}]`` (other keys of
    a message, such as ``name`` or ``tool_calls``, are dropped)."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Mapping):
        raise TypeError(
            f"a prompt is a string or a list of messages, got one message {prompt!r:.80}; to"
            " score several responses to one chat prompt, repeat it: [chat] * len(responses)"
        )
    out = []
    for m in prompt:
        if isinstance(m, ChatMessage):
            out.append({"role": m.role, "content": m.content})
        elif isinstance(m, Mapping) and "role" in m and "content" in m:
            out.append({"role": str(m["role"]), "content": content_text(m["content"])})
        else:
            raise TypeError(
                f"a chat prompt is a list of {{'role', 'content'}} messages; got {m!r:.80}"
            )
    return out


def score_items(
    items_or_prompts: Sequence[Any] | str,
    responses: Sequence[str] | None = None,
    response_types: Sequence[str | None] | None = None,
) -> list[dict[str, Any]]:
    """The ``items`` of a /v1/score request from the caller's input.

    Either ``items``: ``{"prompt", "response"}`` mappings (with an optional
    ``"response_type"``) or ``(prompt, response)`` pairs; or ``prompts, responses``: two
    lists of the same length, or one string prompt for all the responses. A prompt is a
    string or a list of chat messages. ``response_types``: one per item (None: none), what
    the Rule-Based Reward needs to pick its weights.
    """
    items = _plain_items(items_or_prompts, responses)
    if response_types is not None:
        if isinstance(response_types, str):
            raise TypeError("response_types must be a list, one per item, not one string")
        if len(response_types) != len(items):
            raise ValueError(
                f"{len(response_types)} response_types for {len(items)} items; pass one per"
                " item (None where an item has none)"
            )
        for item, rt in zip(items, response_types, strict=True):
            if rt is not None:
                item["response_type"] = rt
    return items


def _plain_items(
    items_or_prompts: Sequence[Any] | str, responses: Sequence[str] | None
) -> list[dict[str, Any]]:
    if responses is not None:
        if isinstance(responses, str):
            raise TypeError("responses must be a list of strings, not one string")
        prompts: Sequence[Any]
        if isinstance(items_or_prompts, str):
            prompts = [items_or_prompts] * len(responses)
        else:
            prompts = items_or_prompts
        if len(prompts) != len(responses):
            raise ValueError(
                f"{len(prompts)} prompts for {len(responses)} responses; pass one prompt per"
                " response (or a single string prompt for all of them)"
            )
        return [
            {"prompt": prompt_json(p), "response": r}
            for p, r in zip(prompts, responses, strict=True)
        ]
    if isinstance(items_or_prompts, str):
        raise TypeError("score() takes a list of items, or (prompts, responses)")
    out = []
    for i, item in enumerate(items_or_prompts):
        if isinstance(item, Mapping) and "prompt" in item and "response" in item:
            out.append({"prompt": prompt_json(item["prompt"]), "response": item["response"]})
            if item.get("response_type") is not None:
                out[-1]["response_type"] = item["response_type"]
        elif isinstance(item, tuple) and len(item) == 2:
            out.append({"prompt": prompt_json(item[0]), "response": item[1]})
        else:
            raise TypeError(
                f"item {i} must be {{'prompt', 'response'}} or (prompt, response); got {item!r:.80}"
            )
    return out


def spans(n: int, size: int) -> list[tuple[int, int]]:
    """[start, end) of consecutive chunks of at most ``size`` items covering ``n`` items."""
    return [(start, min(start + size, n)) for start in range(0, n, size)]


def span_label(start: int, end: int, n: int) -> str:
    """Which items a chunk holds, for error messages: '' when it is the whole call."""
    return "" if (start, end) == (0, n) else f" (items {start}..{end - 1} of {n})"


# --- replies ---------------------------------------------------------------------------------


class _Reply(BaseModel):
    # Unknown fields are ignored: a newer service may add some.
    model_config = ConfigDict(extra="ignore", frozen=True)

    model_version: int


class ItemParts(BaseModel):
    """One item's reward in parts (``explain=True``): the reward model's ``rm``; with RBR,
    ``rbr``, the response type and every proposition's P(true)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    rm: float
    rbr: float | None = None
    response_type: str | None = None
    propositions: dict[str, float] | None = None


class ScoreReply(_Reply):
    rewards: list[float]
    rbr_version: str | None = None
    explain: list[ItemParts] | None = None


class CompareResult(_Reply):
    """POST /v1/compare: P(a better than b) = sigmoid(r_a - r_b), both rewards, the version."""

    p_a_better: float
    rewards: tuple[float, float]


class GetRewardReply(_Reply):
    rewards: list[float]
    scores: list[float]
    extra_logs: dict[str, Any] = {}


class ModelsInfo(BaseModel):
    """GET /v1/models: the current version, the versions loaded (pinnable), the registry."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    current: int | None
    loaded: list[int]
    registry: str


@dataclass(frozen=True)
class Health:
    """GET /health: ``ok`` with the serving ``model_version``, or why not (``detail``)."""

    ok: bool
    status_code: int
    model_version: int | None = None
    detail: str = ""


def parse(model: type[R], body: Any, url: str) -> R:
    """A successful reply read into ``model``; RewardServiceError when it is off contract."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise RewardServiceError(
            f"{url} answered 200 with a body that does not match the reward service's contract"
            f" ({model.__name__}): {e.errors()[0]['loc']}: {e.errors()[0]['msg']}; got"
            f" {str(body)[:200]!r}. Is the URL a ramo reward service?",
            url=url,
            status=200,
        ) from e


def health_of(response: httpx.Response) -> Health:
    if response.status_code == 200:
        try:
            body = response.json()
            version = body.get("model_version") if isinstance(body, dict) else None
        except ValueError:
            version = None
        return Health(True, 200, version if isinstance(version, int) else None)
    error_type, message = error_of(response)
    return Health(False, response.status_code, None, f"{error_type}: {message}")


@dataclass(frozen=True)
class ScoreResult:
    """Rewards in the order of the input items.

    ``model_versions[i]`` is the version that scored item i. A long list goes out in several
    requests, and a new version may be swapped in between them, so they can differ;
    ``model_version`` is then the newest of them (versions only move forward), and
    ``mixed_versions`` is True. Pin ``model_version=`` in the call to have one version score all.
    ``model_version`` is None only for an empty input.

    With the Rule-Based Reward added, each reward is rm + rbr and ``rbr_version`` names the
    RBR weights (None: not added); ``explain`` (when asked for) holds each item's parts.
    """

    rewards: list[float]
    model_versions: list[int]
    model_version: int | None
    # keyword-only: RemoteRewardResult's scores and extra_logs keep their positions
    rbr_version: str | None = field(default=None, kw_only=True)
    explain: list[ItemParts] | None = field(default=None, kw_only=True)

    @property
    def mixed_versions(self) -> bool:
        return len(set(self.model_versions)) > 1


@dataclass(frozen=True)
class RemoteRewardResult(ScoreResult):
    """POST /get_reward (OpenRLHF's remote reward model format), reassembled like ScoreResult.

    ``extra_logs``: per-item lists are concatenated across requests; any other value is kept
    as the list of each request's value.
    """

    scores: list[float] = field(default_factory=list)
    extra_logs: dict[str, Any] = field(default_factory=dict)


def assemble_scores(n: int, parts: Sequence[tuple[int, int, ScoreReply]], url: str) -> ScoreResult:
    """One ScoreResult from the replies to chunks [start, end) that cover ``n`` items."""
    rewards: list[float] = []
    versions: list[int] = []
    explain: list[ItemParts] = []
    rbr_versions: set[str] = set()
    ordered = sorted(parts, key=lambda p: p[0])
    for start, end, reply in ordered:
        _check_count(len(reply.rewards), start, end, url)
        rewards.extend(reply.rewards)
        versions.extend([reply.model_version] * (end - start))
        if reply.explain is not None:
            _check_count(len(reply.explain), start, end, url)
            explain.extend(reply.explain)
        if reply.rbr_version is not None:
            rbr_versions.add(reply.rbr_version)
    if len(rbr_versions) > 1:  # one deployment's weights do not change while it runs
        raise RewardServiceError(
            f"{url} answered with several RBR versions {sorted(rbr_versions)} in one call; a"
            " rolling update of the RBR weights? Score the call again",
            url=url,
            status=200,
        )
    return ScoreResult(
        rewards,
        versions,
        max(versions, default=None),
        rbr_version=next(iter(rbr_versions), None),
        explain=explain if ordered and all(r.explain is not None for _, _, r in ordered) else None,
    )


def assemble_get_reward(
    n: int, parts: Sequence[tuple[int, int, GetRewardReply]], url: str
) -> RemoteRewardResult:
    ordered = sorted(parts, key=lambda p: p[0])
    base = assemble_scores(n, [(s, e, ScoreReply(rewards=r.rewards, model_version=r.model_version))
                               for s, e, r in ordered], url)  # fmt: skip
    scores: list[float] = []
    logs: dict[str, Any] = {}
    for start, end, reply in ordered:
        _check_count(len(reply.scores), start, end, url)
        scores.extend(reply.scores)
    keys = {k for _, _, r in ordered for k in r.extra_logs}
    for key in sorted(keys):
        values = [(e - s, r.extra_logs.get(key)) for s, e, r in ordered]
        lists = [v for size, v in values if isinstance(v, list) and len(v) == size]
        if len(lists) == len(values):
            logs[key] = [x for v in lists for x in v]
        else:
            logs[key] = [v for _, v in values]
    return RemoteRewardResult(
        base.rewards, base.model_versions, base.model_version, scores=scores, extra_logs=logs
    )


def _check_count(got: int, start: int, end: int, url: str) -> None:
    if got != end - start:
        raise RewardServiceError(
            f"{url} answered {got} values for the {end - start} items {start}..{end - 1}; the"
            " service must answer one value per item",
            url=url,
            status=200,
        )


# --- options and calls -----------------------------------------------------------------------

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class ClientOptions:
    """How a client talks to the service; validated where it is built."""

    base_url: str = DEFAULT_URL
    api_token: str | None = field(default=None, repr=False)
    timeout_s: float = 30.0
    retries: int = 3
    backoff_s: float = 0.25
    batch_size: int = 64
    max_connections: int = 8

    def __post_init__(self) -> None:
        if not self.base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"base_url={self.base_url!r} must start with http:// or https://, for example"
                f" {DEFAULT_URL}"
            )
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))
        if self.api_token is not None:  # a token read from a file often ends in a newline
            object.__setattr__(self, "api_token", self.api_token.strip() or None)
        checks = [
            ("timeout_s", self.timeout_s > 0, "a positive number of seconds"),
            ("retries", self.retries >= 0, "0 or more"),
            ("backoff_s", self.backoff_s >= 0, "0 or more seconds"),
            ("batch_size", self.batch_size >= 1, "at least 1 item per request"),
            ("max_connections", self.max_connections >= 1, "at least 1"),
        ]
        for name, ok, want in checks:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r}: must be {want}")

    def httpx_kwargs(self) -> dict[str, Any]:
        """Arguments of the httpx client: one pool of keep-alive connections, the bearer token,
        and ``timeout_s`` for connecting, each read and each write. Waiting for a free
        connection of the pool has no limit: the calls themselves bound how many wait."""
        # The deadline header tells the service how long this client waits for an answer.
        headers = {"User-Agent": "ramo-stream-client", "X-Request-Timeout": f"{self.timeout_s:g}"}
        if self.api_token:
            headers["Authorization"] = f"Bearer {self.api_token}"
        return {
            "base_url": self.base_url,
            "headers": headers,
            "timeout": httpx.Timeout(self.timeout_s, pool=None),
            "limits": httpx.Limits(
                max_connections=self.max_connections,
                max_keepalive_connections=self.max_connections,
            ),
        }

    def unreachable_hint(self) -> str:
        return (
            f"Check that the reward service is up at {self.base_url} (`ramo serve`), or raise"
            " timeout_s / retries"
        )

    def unreachable(self, path: str, e: Exception) -> RewardServiceError:
        url = self.base_url + path
        return RewardServiceError(
            f"{url}: {type(e).__name__}: {e}. {self.unreachable_hint()}", url=url
        )


@dataclass(frozen=True)
class Call:
    """One request of a batched call: items [start, end) of ``n``."""

    start: int
    end: int
    n: int
    payload: dict[str, Any]

    @property
    def where(self) -> str:
        return span_label(self.start, self.end, self.n)


def score_calls(
    items: list[dict[str, Any]],
    batch_size: int,
    model_version: int | None,
    rbr: bool | None = None,
    explain: bool = False,
) -> list[Call]:
    """The /v1/score requests of a call. ``rbr``: None leaves it to the deployment's
    default (the field is not sent, so an older service takes the request too)."""
    n = len(items)
    extra: dict[str, Any] = {}
    if rbr is not None:
        extra["rbr"] = rbr
    if explain:
        extra["explain"] = True
    return [
        Call(s, e, n, {"items": items[s:e], "model_version": model_version, **extra})
        for s, e in spans(n, batch_size)
    ]


def get_reward_calls(
    queries: Sequence[str],
    prompts: Sequence[str] | None,
    labels: Sequence[Any] | None,
    batch_size: int,
    rbr: bool | None = None,
) -> list[Call]:
    if isinstance(queries, str):
        raise TypeError("queries must be a list of strings (prompt + response texts)")
    n = len(queries)
    for name, values in (("prompts", prompts), ("labels", labels)):
        if values is not None and len(values) != n:
            raise ValueError(f"{len(values)} {name} for {n} queries; pass one per query or None")
    return [
        Call(s, e, n, {
            "query": list(queries[s:e]),
            "prompts": None if prompts is None else list(prompts[s:e]),
            "labels": None if labels is None else list(labels[s:e]),
            **({} if rbr is None else {"rbr": rbr}),
        })
        for s, e in spans(n, batch_size)
    ]  # fmt: skip


def compare_payload(
    prompt: PromptLike, a: str, b: str, model_version: int | None
) -> dict[str, Any]:
    return {"prompt": prompt_json(prompt), "a": a, "b": b, "model_version": model_version}


def not_ready(url: str, timeout_s: float, last: str) -> RewardServiceError:
    return RewardServiceError(
        f"{url}/health did not report a loaded model within {timeout_s:g} s; last: {last}."
        " Start the service (`ramo serve`) and publish a version, or wait longer",
        url=url + "/health",
    )
