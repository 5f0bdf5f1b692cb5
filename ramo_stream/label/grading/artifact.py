"""A trained grader as a versioned artifact: its tensors, its config and a manifest.

Folder layout (``<root>/<version>/``)::

    manifest.json        base model + its sha256, data files + sha256, template version,
                         answer words, rule-pool hash, steps, held-out metrics, time
    config.json          the Hugging Face config of the fine-tuned model (3 labels)
    trained.safetensors  the tensors that training changed (fp16), nothing else

Only the trained tensors are stored (the top encoder layers and the head); the rest is the
packaged base model, checked by its sha256. ``load_manifest`` refuses a folder whose
tensors do not match their hash, or whose template, answer words or rule pool differ from
the ones in use, and says the command that rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"
WEIGHTS = "trained.safetensors"
REBUILD = "ramo grader train"
FORMAT = 1
_SHIPPED = Path(__file__).resolve().parent / "trained"

REQUIRED = (
    "format", "kind", "version", "base_model", "base_sha256", "trained_tensors",
    "weights_sha256", "data_files", "template_version", "answer_words", "rule_pool_hash",
    "steps", "seed", "metrics", "created", "rebuild",
)  # fmt: skip


class GraderArtifactError(ValueError):
    """A trained grader that must not be used: corrupt, incomplete or mismatched."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def new_version(kind: str) -> str:
    return f"{kind}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}"


def write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise ValueError(f"manifest lacks {missing}")
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


@dataclass(frozen=True)
class Expected:
    """What the artifact must match to be used here."""

    template_version: str
    answer_words: list[str]
    rule_pool_hash: str
    base_sha256: str | None = None  # checked when the base model is at hand


def load_manifest(folder: Path, expected: Expected) -> dict[str, Any]:
    """The manifest of a usable artifact, or GraderArtifactError saying why and how to fix."""
    fix = (
        f"; rebuild it with `{REBUILD}` (or delete {folder} to fall back to the next newest grader)"
    )
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise GraderArtifactError(
            f"trained grader {folder}: cannot read {MANIFEST} ({e}){fix}"
        ) from e
    missing = [k for k in REQUIRED if k not in manifest] if isinstance(manifest, dict) else ["*"]
    if missing:
        raise GraderArtifactError(f"trained grader {folder}: manifest lacks {missing}{fix}")
    weights = folder / WEIGHTS
    if not weights.is_file() or sha256_file(weights) != manifest["weights_sha256"]:
        raise GraderArtifactError(
            f"trained grader {folder}: {WEIGHTS} is missing or does not match the manifest's"
            f" sha256 (corrupted or edited){fix}"
        )
    checks = [
        ("template version", manifest["template_version"], expected.template_version),
        ("answer words", manifest["answer_words"], expected.answer_words),
        ("rule pool hash", manifest["rule_pool_hash"], expected.rule_pool_hash),
    ]
    if expected.base_sha256 is not None:
        checks.append(("base model sha256", manifest["base_sha256"], expected.base_sha256))
    for what, got, want in checks:
        if got != want:
            raise GraderArtifactError(
                f"trained grader {folder} was built for {what} {got!r}, but this setup uses"
                f" {want!r}{fix}"
            )
    return dict(manifest)


def artifact_roots(cache_dir: Path) -> list[Path]:
    """Where trained graders are looked for: built here first, then shipped in the package."""
    return [cache_dir / "graders", _SHIPPED]


def newest_artifact(
    cache_dir: Path,
    kind: str = "classifier",
    pool_hash: str | None = None,
    template_version: str | None = None,
) -> Path | None:
    """The newest artifact folder of ``kind`` (by manifest time) built for ``pool_hash``
    and ``template_version`` (any when None), or None. Not verified: loading it verifies
    it. Artifacts of an older template are passed over, not refused: a grader trained
    before a template change stays on disk but is never picked."""
    found: list[tuple[str, Path]] = []
    for root in artifact_roots(cache_dir):
        if not root.is_dir():
            continue
        for folder in root.iterdir():
            try:
                m = json.loads((folder / MANIFEST).read_text())
            except (OSError, ValueError):
                continue
            if not isinstance(m, dict) or m.get("kind") != kind:
                continue
            if pool_hash is not None and m.get("rule_pool_hash") != pool_hash:
                continue
            if template_version is None or m.get("template_version") == template_version:
                found.append((str(m.get("created", "")), folder))
    return max(found)[1] if found else None
