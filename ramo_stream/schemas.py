"""Records that cross a process boundary: Kafka messages, HTTP bodies, registry manifests.

Every record carries ``schema_version`` so a reader can refuse data written by a newer
writer instead of misreading it. Validation is strict (no silent type coercion) and every
text field has a limit, so one bad producer cannot push a 10 MB string into the grader.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationError,
    field_validator,
    model_validator,
)

SCHEMA_VERSION = 1

# Limits. Characters, not tokens: the tokenizer is not known at the gate.
MAX_TEXT_CHARS = 32_000
MAX_MESSAGES = 64
MAX_ID_CHARS = 128
MAX_METADATA_BYTES = 16_384

Side = Literal["a", "b"]
Preference = Literal["a", "b", "tie"]


def _not_blank(value: str) -> str:
    if not value.strip():
        raise ValueError("must contain non-whitespace text")
    return value


Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(_not_blank)]
Identifier = Annotated[
    str, Field(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:\-]*$")
]
Probability = Annotated[float, Field(ge=0.0, le=1.0)]


def _now() -> datetime:
    return datetime.now(UTC)


class _Record(BaseModel):
    """Base for wire records: strict types, unknown fields rejected, immutable."""

    # allow_inf_nan=False: NaN/Infinity are not JSON, and a re-encoded record would turn
    # them into null, so a typed float field rejects them.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True, allow_inf_nan=False)

    schema_version: int = Field(
        default=SCHEMA_VERSION, description="Version of the record layout that wrote it."
    )

    @field_validator("schema_version")
    @classmethod
    def _known_version(cls, v: int) -> int:
        if not 1 <= v <= SCHEMA_VERSION:
            raise ValueError(
                f"schema_version {v} is not supported by this reader"
                f" (supports 1..{SCHEMA_VERSION}); upgrade ramo-stream on the consuming side"
            )
        return v


class ChatMessage(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)

    role: Literal["system", "user", "assistant"] = Field(description="Who spoke.")
    content: Text = Field(description="What was said.")


Prompt = Text | Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]


def prompt_to_wire(prompt: str | Sequence[ChatMessage]) -> str | list[dict[str, Any]]:
    """A prompt as plain data, for a call between Serve deployments."""
    return prompt if isinstance(prompt, str) else [m.model_dump() for m in prompt]


def prompt_from_wire(prompt: str | Sequence[dict[str, Any]]) -> str | list[ChatMessage]:
    """``prompt_to_wire`` undone on the receiving replica."""
    return prompt if isinstance(prompt, str) else [ChatMessage.model_validate(m) for m in prompt]


def content_pair_id(prompt: str | list[ChatMessage] | list[dict[str, Any]], a: str, b: str) -> str:
    """Stable id from the content: the same (prompt, A, B) always maps to the same id.

    Order matters: (A, B) and (B, A) are different records, because labels refer to sides.
    """
    if isinstance(prompt, list):
        prompt = [m.model_dump() if isinstance(m, ChatMessage) else m for m in prompt]
    canonical = json.dumps([prompt, a, b], ensure_ascii=False, sort_keys=True)
    return "p-" + hashlib.sha256(canonical.encode()).hexdigest()[:24]


class ResponsePair(_Record):
    """Two responses to one prompt, waiting for a preference label."""

    pair_id: Identifier = Field(
        description="Unique id; derived from the content when the producer gives none."
    )
    prompt: Prompt = Field(description="The prompt as plain text or as chat messages.")
    response_a: Text
    response_b: Text
    source: Identifier = Field(default="unknown", description="Where the pair came from.")
    metadata: dict[str, JsonValue] = Field(
        default_factory=dict,
        description="Free-form JSON (for example the gold preference, kept for evaluation).",
    )
    created_at: datetime = Field(default_factory=_now, strict=False)

    @model_validator(mode="before")
    @classmethod
    def _derive_pair_id(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("pair_id") is None:
            try:
                derived = content_pair_id(data["prompt"], data["response_a"], data["response_b"])
            except (KeyError, TypeError):
                return data  # field validation reports what is missing or mistyped
            data = {**data, "pair_id": derived}
        return data

    @field_validator("metadata")
    @classmethod
    def _metadata_size(cls, v: dict[str, JsonValue]) -> dict[str, JsonValue]:
        bad = non_finite_path(v)
        if bad is not None:
            raise ValueError(
                f"holds a non-finite number at metadata{bad} (NaN and Infinity are not JSON"
                " and would silently become null); send a finite number, a string or null"
            )
        size = len(json.dumps(v, ensure_ascii=False).encode())
        if size > MAX_METADATA_BYTES:
            raise ValueError(f"is {size} bytes of JSON, over the limit of {MAX_METADATA_BYTES}")
        return v

    def content_digest(self) -> str:
        """SHA-256 (16 hex digits) of what a label is about: prompt and both responses.

        Two records with one pair_id and different digests are a conflict, not a duplicate.
        Each part is length-prefixed, so no shift of text between fields collides."""
        prompt = self.prompt
        if not isinstance(prompt, str):
            prompt = json.dumps([m.model_dump() for m in prompt], sort_keys=True)
        h = hashlib.sha256()
        for part in (prompt, self.response_a, self.response_b):
            data = part.encode()
            h.update(len(data).to_bytes(8, "big"))
            h.update(data)
        return h.hexdigest()[:16]

    def prompt_text(self) -> str:
        """The prompt flattened to text (for encoders and logs)."""
        if isinstance(self.prompt, str):
            return self.prompt
        return "\n".join(f"{m.role}: {m.content}" for m in self.prompt)


class RuleJudgment(_Record):
    """The grader's answer for one (response, rule): probabilities normalised over three words."""

    rule_id: Identifier
    side: Side = Field(description="Which response of the pair was graded.")
    p_yes: Probability
    p_no: Probability
    p_irrelevant: Probability

    @model_validator(mode="after")
    def _sums_to_one(self) -> RuleJudgment:
        total = self.p_yes + self.p_no + self.p_irrelevant
        if abs(total - 1.0) > 1e-3:
            raise ValueError(f"p_yes + p_no + p_irrelevant must be 1 (got {total:.4f})")
        return self

    @property
    def score(self) -> float:
        """s = P(Yes) - P(No), in [-1, 1]."""
        return self.p_yes - self.p_no

    @property
    def relevance(self) -> float:
        """rho = 1 - P(Irrelevant)."""
        return 1.0 - self.p_irrelevant


class LabeledPair(_Record):
    """A pair with its preference, as written to the labels topic."""

    pair: ResponsePair
    preferred: Preference
    margin: float = Field(ge=0.0, description="|sum of A's scores - sum of B's| (0 for humans).")
    labeler: Identifier = Field(description="'human', or the labeler that produced it.")
    selector: Identifier | None = Field(default=None, description="Rule selector used, if any.")
    selected_rules: list[Identifier] = Field(default_factory=list)
    judgments: list[RuleJudgment] = Field(default_factory=list)
    rule_pool_hash: str | None = None
    grader: str | None = Field(default=None, description="Grader model id.")
    template_version: str | None = None
    labeled_at: datetime = Field(default_factory=_now, strict=False)

    @property
    def pair_id(self) -> str:
        return self.pair.pair_id


# What a dead letter carries of the original bytes by default: base64 makes it 4/3 larger,
# so 256 KiB stays well under Kafka's default 1 MiB message limit with the envelope.
DEAD_LETTER_ORIGINAL_BYTES = 256 * 1024
DEAD_LETTER_KEY_BYTES = 1024
DEAD_LETTER_REASON_CHARS = 4000


@dataclass(frozen=True)
class Rejection:
    """Why a message or a line could not become a record, with its original bytes: what
    decoding (``stream.serde``), ingest, offline labeling and training return instead of
    raising; it ends as a ``DeadLetter``."""

    reason: str
    raw: bytes


class DeadLetter(_Record):
    """A record that could not move forward, with the reason and its original bytes.

    The bytes are cut to a cap so the letter always fits the topic; ``original_size`` and
    ``original_sha256`` describe the whole record, and ``original_stored_at`` says where
    the whole record was kept when it was cut (None: it was not cut, or could not be kept,
    which the reason then says).
    """

    reason: str = Field(min_length=1, description="Why it was rejected, naming field and limit.")
    stage: str = Field(description="Where it was rejected, for example 'ingest' or 'gate'.")
    original_b64: str = Field(
        description="The original message value (its first bytes if cut), base64-encoded."
    )
    original_size: int | None = Field(default=None, ge=0, description="Bytes of the whole value.")
    original_sha256: str | None = Field(default=None, description="SHA-256 of the whole value.")
    original_truncated: bool = Field(default=False, description="original_b64 is a prefix.")
    original_stored_at: str | None = Field(
        default=None, description="host:path of the whole value, kept when it was cut."
    )
    key_b64: str | None = None
    source_topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    attempts: int = Field(default=1, ge=1)
    failed_at: datetime = Field(default_factory=_now, strict=False)

    @classmethod
    def of(
        cls,
        original: bytes,
        reason: str,
        stage: str,
        *,
        max_original_bytes: int = DEAD_LETTER_ORIGINAL_BYTES,
        stored_at: str | None = None,
        **where: Any,
    ) -> DeadLetter:
        key = where.pop("key", None)
        cut = original[:max_original_bytes]
        if len(reason) > DEAD_LETTER_REASON_CHARS:
            reason = reason[:DEAD_LETTER_REASON_CHARS] + "..."
        return cls(
            reason=reason,
            stage=stage,
            original_b64=base64.b64encode(cut).decode("ascii"),
            original_size=len(original),
            original_sha256=hashlib.sha256(original).hexdigest(),
            original_truncated=len(cut) < len(original),
            original_stored_at=stored_at if len(cut) < len(original) else None,
            key_b64=(
                base64.b64encode(key[:DEAD_LETTER_KEY_BYTES]).decode("ascii")
                if key is not None
                else None
            ),
            **where,
        )

    @property
    def original(self) -> bytes:
        """The original bytes as carried: the whole value unless ``original_truncated``."""
        return base64.b64decode(self.original_b64)


REWARDBENCH_FIELDS = ("prompt", "chosen", "rejected")


def rewardbench_missing(row: dict[str, Any]) -> str | None:
    """Why a RewardBench row (one with ``chosen`` or ``rejected``) lacks fields, or None: the
    one check ``ramo ingest``, ``ramo score`` and ``ramo eval`` make of that format."""
    if "chosen" not in row and "rejected" not in row:
        return None
    missing = [k for k in REWARDBENCH_FIELDS if k not in row]
    if not missing:
        return None
    return f"RewardBench row is missing {missing}"


def non_finite_path(value: Any) -> str | None:
    """The path (``.key[2]``) of the first NaN/Infinity float inside ``value``, or None.

    Iterative, so a deeply nested value cannot exhaust the interpreter's stack."""
    stack: list[tuple[str, Any]] = [("", value)]
    while stack:
        path, v = stack.pop()
        if isinstance(v, float) and not math.isfinite(v):
            return path
        if isinstance(v, dict):
            stack.extend((f"{path}.{k}", x) for k, x in reversed(list(v.items())))
        elif isinstance(v, list):
            stack.extend((f"{path}[{i}]", x) for i, x in reversed(list(enumerate(v))))
    return None


def describe_validation_error(err: ValidationError, limit: int = 5) -> str:
    """One line per problem: 'field.path: message (got value)', the way a user can act on."""
    parts = []
    for e in err.errors()[:limit]:
        # Union branches show up as 'function-after[...]' / 'list[ChatMessage]': not user-facing.
        loc = ".".join(str(x) for x in e["loc"] if "[" not in str(x)) or "record"
        seen = e.get("input")
        shown = ""
        if isinstance(seen, str):
            shown = f" (got {len(seen)} chars)" if len(seen) > 60 else f" (got {seen!r})"
        elif isinstance(seen, int | float | bool) or seen is None:
            shown = f" (got {seen!r})"
        else:
            shown = f" (got {type(seen).__name__})"
        parts.append(f"{loc}: {e['msg']}{shown}")
    more = len(err.errors()) - limit
    if more > 0:
        parts.append(f"... and {more} more")
    return "; ".join(parts)
