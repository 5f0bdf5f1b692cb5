"""A version's manifest and its folder name: what the trainer writes beside the weights and
every reader checks (``store`` keeps the versions; the record is defined here)."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from pydantic import ConfigDict, Field, JsonValue, ValidationError, field_validator, model_validator

from ramo_stream.schemas import _Record, describe_validation_error

MANIFEST = "manifest.json"
_VERSION_DIR = re.compile(r"^v(\d{6,})$")
_SET_BY_PUBLISH = ("schema_version", "version", "parent_version", "created_at")

NonNegative = Annotated[int, Field(ge=0)]


def version_name(version: int) -> str:
    """Folder name of a version: ``v000042``."""
    return f"v{version:06d}"


def _parse_name(name: str) -> int | None:
    m = _VERSION_DIR.match(name)
    if m is None:
        return None
    n = int(m.group(1))
    return n if n >= 1 and version_name(n) == name else None


class RegistryError(RuntimeError):
    """The registry cannot do what was asked; the message names the path and the fix."""


class Manifest(_Record):
    """What a version is: its lineage, how much it was trained, and where the stream stands."""

    # NaN/inf metrics (a diverged loss) are written as NaN/Infinity so they read back as floats.
    model_config = ConfigDict(
        strict=True, extra="forbid", frozen=True, ser_json_inf_nan="constants", allow_inf_nan=True
    )

    version: int = Field(ge=1, description="This version's number; its folder is v{version:06d}.")
    parent_version: int | None = Field(
        ge=1, description="The version that was CURRENT when this one was published."
    )
    created_at: datetime = Field(strict=False, description="When it was published (UTC).")
    steps: NonNegative = Field(description="Optimizer steps in total since the lineage began.")
    samples_seen: NonNegative = Field(description="Training pairs consumed in total.")
    offsets: dict[str, dict[NonNegative, NonNegative]] = Field(
        description="Source (topic name, or 'file:<path>') -> partition -> next offset to read."
    )
    metrics: dict[str, float] = Field(
        default_factory=dict, description="For example loss_ema, lr, samples_per_s."
    )
    heldout_accuracy: float | None = Field(default=None, ge=0.0, le=1.0)
    heldout_size: NonNegative = Field(default=0, description="Pairs behind heldout_accuracy.")
    base_model: str = Field(min_length=1, description="Backbone the lineage started from.")
    rule_pool_hash: str | None = None
    grader: str | None = Field(default=None, description="Grader model id of the labels.")
    template_version: str | None = None
    settings: dict[str, JsonValue] = Field(
        default_factory=dict, description="Trainer settings that produced it."
    )

    @field_validator("created_at")
    @classmethod
    def _utc(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("must carry a timezone (for example datetime.now(UTC))")
        return v.astimezone(UTC)

    @model_validator(mode="after")
    def _consistent(self) -> Manifest:
        if self.parent_version is not None and self.parent_version >= self.version:
            raise ValueError(
                f"parent_version {self.parent_version} must be lower than version {self.version}"
            )
        if self.heldout_accuracy is not None and self.heldout_size == 0:
            raise ValueError("heldout_accuracy is set but heldout_size is 0; pass heldout_size")
        return self


def _parse_manifest(data: bytes, where: str) -> Manifest:
    try:
        return Manifest.model_validate_json(data)
    except ValidationError as e:
        raise RegistryError(
            f"{where} is not a valid registry manifest: {describe_validation_error(e)}. It is"
            " damaged or was not written by this registry; restore it, or delete its version"
            " folder."
        ) from e


def holds(folder: Path, manifest: Manifest) -> bool:
    """Whether a cached download is this version (a cache shared with another registry, or a
    lineage started over, may hold a different folder of the same name)."""
    try:
        return Manifest.model_validate_json((folder / MANIFEST).read_bytes()) == manifest
    except (OSError, ValidationError):
        return False
