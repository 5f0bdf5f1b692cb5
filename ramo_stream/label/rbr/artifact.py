"""Fitted RBR weights as a versioned artifact: one JSON file.

``<root>/rbr-<UTC time>.json`` holds the weights per response type and proposition, and
what they are only valid with: the proposition pool (name, hash, ids), the rubric (name,
hash), the grader whose probabilities they were fitted on (name, template version), the fit
settings, metrics and the time. A few hundred floats, so a fitted artifact ships in the
package (``label/rbr/trained``) like the trained grader; ``ramo rbr fit`` writes new ones
under ``paths.cache_dir/rbr``, which win by time.

``load_artifact`` refuses an artifact fitted for another pool, rubric or grader and says
how to refit: weights read against other probabilities would reward the wrong things.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ramo_stream.core.propositions import RESPONSE_TYPES

FORMAT: Literal[1] = 1
REFIT = "ramo rbr fit"
SHIPPED = Path(__file__).resolve().parent / "trained"


class RBRArtifactError(ValueError):
    """An RBR artifact that must not be used here; the message says how to get a usable one."""


class GraderRef(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Grader.name: classifier:<version> or model@digest.")
    template_version: str


class RBRArtifact(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    format: Literal[1] = FORMAT
    kind: Literal["rbr"] = "rbr"
    version: str = Field(description="rbr-<UTC time>: names the artifact in replies.")
    created: str
    propositions: list[str] = Field(description="Proposition ids, in pool order.")
    pool_name: str
    pool_hash: str
    rubric_name: str
    rubric_hash: str
    grader: GraderRef
    features: Literal["grader", "gold"] = Field(
        description="What the weights were fitted on: the grader's P(true), or the human"
        " 0/1 labels (an upper bound; served with the grader's probabilities all the same)."
    )
    weights: dict[str, dict[str, float]] = Field(description="response type -> prop -> w.")
    borrowed: dict[str, str] = Field(
        default_factory=dict,
        description="response type -> the type whose weights it uses (no training pairs).",
    )
    fit: dict[str, Any] = Field(description="FitConfig and the base reward used.")
    metrics: dict[str, Any] = Field(default_factory=dict)
    data_files: list[dict[str, str]] = Field(default_factory=list)
    rebuild: str = REFIT


def new_version() -> str:
    return f"rbr-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"


def save_artifact(artifact: RBRArtifact, root: Path) -> Path:
    missing = sorted(set(RESPONSE_TYPES) - set(artifact.weights))
    if missing:
        raise ValueError(f"RBR artifact lacks weights for response types {missing}")
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{artifact.version}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(artifact.model_dump_json(indent=1) + "\n")
    tmp.replace(path)
    return path


def load_artifact(
    path: Path,
    pool_hash: str | None = None,
    rubric_hash: str | None = None,
    grader: GraderRef | None = None,
) -> RBRArtifact:
    """The artifact at ``path`` after the checks asked for (None: not checked)."""
    fix = f"; refit the weights for this setup with `{REFIT}`"
    try:
        art = RBRArtifact.model_validate_json(path.read_text())
    except OSError as e:
        raise RBRArtifactError(f"RBR artifact {path} cannot be read ({e}){fix}") from e
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RBRArtifactError(
            f"RBR artifact {path} is invalid ({where}: {first['msg']}){fix}"
        ) from e
    checks: list[tuple[str, object, object]] = []
    if pool_hash is not None:
        checks.append(("proposition pool hash", art.pool_hash, pool_hash))
    if rubric_hash is not None:
        checks.append(("rubric hash", art.rubric_hash, rubric_hash))
    if grader is not None:
        checks.append(("grader", art.grader.name, grader.name))
        checks.append(("grader template", art.grader.template_version, grader.template_version))
    for what, got, want in checks:
        if got != want:
            raise RBRArtifactError(
                f"RBR artifact {path} was fitted for {what} {got!r}, but this setup uses"
                f" {want!r}{fix}"
            )
    return art


def artifact_roots(cache_dir: Path) -> list[Path]:
    """Fitted here first (paths.cache_dir/rbr), then shipped in the package."""
    return [cache_dir / "rbr", SHIPPED]


def newest_artifact(
    cache_dir: Path, pool_hash: str, rubric_hash: str, grader: GraderRef
) -> Path | None:
    """The newest artifact (by creation time) that fits this pool, rubric and grader."""
    found: list[tuple[str, Path]] = []
    for root in artifact_roots(cache_dir):
        if not root.is_dir():
            continue
        for path in root.glob("rbr-*.json"):
            try:
                d = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(d, dict) or d.get("kind") != "rbr":
                continue
            if (d.get("pool_hash"), d.get("rubric_hash"), d.get("grader")) == (
                pool_hash, rubric_hash, grader.model_dump()):  # fmt: skip
                found.append((str(d.get("created", "")), path))
    return max(found)[1] if found else None
