"""The reward service's HTTP bodies, its error types, and OpenRLHF's prompt/response split.

Pure: pydantic only, no Ray, no FastAPI, no torch. The router (``reward_http``) maps the
errors to status codes; the service logic (``reward_service``) raises them.

Every successful reply carries ``model_version``: the registry version that computed it.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator, model_validator

from ramo_stream.core.propositions import RESPONSE_TYPES, response_type_id
from ramo_stream.schemas import MAX_TEXT_CHARS, Prompt

# A response may be empty (a policy can emit nothing, and that deserves a reward too).
Response = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
# An OpenRLHF query is a prompt and its response in one string: the two caps together.
Query = Annotated[str, Field(max_length=2 * MAX_TEXT_CHARS)]
PromptText = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]
Version = Annotated[int, Field(ge=1)]
VersionField = Field(
    default=None,
    description="Pin a registry version that is still loaded (GET /v1/models lists them);"
    " default: the current one.",
)


class _Body(BaseModel):
    """Strict (no silent coercion: "3" is not a version), unknown fields rejected."""

    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


# ---- requests -----------------------------------------------------------------------------


class ScoreItem(_Body):
    prompt: Prompt = Field(description="The conversation: a string or chat messages.")
    response: Response = Field(description="The response to score.")
    response_type: str | None = Field(
        default=None,
        description="What the prompt calls for, which picks the RBR weights: "
        + ", ".join(RESPONSE_TYPES)
        + " (or the gold set's spelling, 'Hard Refuse'). Needed when RBR is added.",
    )

    @field_validator("response_type")
    @classmethod
    def _known_type(cls, v: str | None) -> str | None:
        return None if v is None else response_type_id(v)


class ScoreRequest(_Body):
    items: list[ScoreItem] = Field(min_length=1, description="What to score, in order.")
    model_version: Version | None = VersionField
    rbr: bool | None = Field(
        default=None,
        description="Add the Rule-Based Reward: reward = rm + rbr. Default: the deployment's"
        " serve.rbr (on only when it is 'default').",
    )
    explain: bool = Field(
        default=False,
        description="Also return each item's parts: rm, rbr and every proposition's P(true).",
    )


class CompareRequest(_Body):
    prompt: Prompt = Field(description="The conversation both responses answer.")
    a: Response = Field(description="Response A.")
    b: Response = Field(description="Response B.")
    model_version: Version | None = VersionField


class GetRewardRequest(_Body):
    """OpenRLHF's remote reward model (``--remote_rm_url http://host:port/get_reward``).

    ``query[i]`` is the prompt and the response as one decoded string; ``prompts[i]``, when
    given, is its prompt part. Fields OpenRLHF may add later are ignored. The same limits as
    /v1/score hold: a query is at most two texts long (prompt + response), a prompt one.
    """

    model_config = ConfigDict(strict=True, extra="ignore", frozen=True)

    query: list[Query] = Field(min_length=1, description="prompt + response, one per sample.")
    prompts: list[PromptText] | None = Field(default=None, description="The prompt of each query.")
    labels: list[JsonValue] | None = Field(
        default=None,
        description="Ignored, except with RBR on: then each names its sample's response type.",
    )
    model_version: Version | None = VersionField
    rbr: bool | None = Field(
        default=None,
        description="Add the Rule-Based Reward, the response types read from labels. Default:"
        " the deployment's serve.rbr (OpenRLHF sends no flag, so 'default' turns it on).",
    )

    @model_validator(mode="after")
    def _aligned(self) -> GetRewardRequest:
        if self.prompts is not None and len(self.prompts) != len(self.query):
            raise ValueError(
                f"prompts has {len(self.prompts)} entries but query has {len(self.query)};"
                " send one prompt per query, or no prompts"
            )
        return self


# ---- responses ----------------------------------------------------------------------------


class ItemExplain(_Body):
    rm: float = Field(description="The reward model's reward.")
    rbr: float | None = Field(default=None, description="The Rule-Based Reward (None: not added).")
    response_type: str | None = None
    propositions: dict[str, float] | None = Field(
        default=None, description="P(true) of every proposition, as the grader read it."
    )


class ScoreResponse(_Body):
    rewards: list[float] = Field(description="One reward per item, in order.")
    model_version: int
    rbr_version: str | None = Field(
        default=None, description="The RBR weights' artifact, when RBR was added."
    )
    explain: list[ItemExplain] | None = Field(default=None, description="When asked for.")


class CompareResponse(_Body):
    p_a_better: float = Field(description="sigmoid(r_a - r_b): the Bradley-Terry P(A > B).")
    rewards: list[float] = Field(description="[r_a, r_b].")
    model_version: int


class GetRewardResponse(_Body):
    rewards: list[float]
    scores: list[float] = Field(description="The same as rewards (OpenRLHF reads either).")
    extra_logs: dict[str, list[int] | list[float]] = Field(
        description="{'model_version': [v, ...]}, and with RBR both parts: 'rm', 'rbr'."
    )
    model_version: int


class ModelsResponse(_Body):
    current: int | None = Field(description="The version new requests get; None before any.")
    loaded: list[int] = Field(description="Versions a request may pin, ascending.")
    registry: str = Field(description="Registry root the service watches.")


class HealthResponse(_Body):
    status: Literal["ok"] = "ok"
    model_version: int


class ErrorDetail(_Body):
    type: str
    message: str


class ErrorResponse(_Body):
    error: ErrorDetail


# ---- errors -------------------------------------------------------------------------------


class ServiceError(Exception):
    """A request the service cannot answer; ``kind`` is the JSON ``error.type``.

    One positional argument, so the error pickles across a Ray handle unchanged.
    """

    kind: ClassVar[str] = "internal_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict[str, Any]:
        return ErrorResponse(error=ErrorDetail(type=self.kind, message=self.message)).model_dump()


class InvalidInput(ServiceError):
    kind = "invalid_input"


class TooLarge(ServiceError):
    kind = "too_large"


class Unauthorized(ServiceError):
    kind = "unauthorized"


class NoModel(ServiceError):
    kind = "no_model"


class VersionNotLoaded(ServiceError):
    kind = "version_not_loaded"


class RBRUnavailable(InvalidInput):
    """RBR asked of a deployment that serves none (serve.rbr=off)."""

    kind = "rbr_not_enabled"


class ModelFailure(ServiceError):
    kind = "model_error"


class UnsupportedMediaType(ServiceError):
    kind = "unsupported_media_type"


class Unavailable(ServiceError):
    """The service cannot answer now but may soon: overloaded, a deadline that cannot be met,
    no replica alive. ``retry_after_s`` goes into the Retry-After header."""

    kind = "unavailable"

    def __init__(self, message: str, retry_after_s: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def __reduce__(self) -> tuple[Any, ...]:  # pickles with its retry_after_s (Ray handles)
        return (type(self), (self.message, self.retry_after_s))


class Overloaded(Unavailable):
    kind = "overloaded"


class DeadlineExceeded(Unavailable):
    kind = "deadline_exceeded"


# What a replica that died mid-request, or no replica at all, answers: stable, no internals.
REPLICA_LOST = (
    "the reward-model replica serving this request stopped; it is being replaced. Retry after"
    " the Retry-After seconds (scoring is idempotent; the Python client retries by itself)"
)


def no_model_message(registry: str) -> str:
    return (
        f"no reward-model version is published in {registry} yet; run `ramo train` to train"
        " one, or `ramo models publish PATH` to publish a Hugging Face checkpoint. The"
        " service picks it up by itself."
    )


# ---- OpenRLHF -----------------------------------------------------------------------------


def split_query(query: str, prompt: str | None) -> tuple[str, str]:
    """(prompt, response) of an OpenRLHF query.

    OpenRLHF sends ``query = prompt + response`` as one string. When the prompt is known and
    the query starts with it, the rest is the response; otherwise the whole query is scored
    as the response to an empty prompt.
    """
    if prompt and query.startswith(prompt):
        return prompt, query[len(prompt) :]
    return "", query
