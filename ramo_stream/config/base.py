"""Shared pieces of the settings: default paths, the secret marker, the section base."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, get_args

from pydantic import (
    BaseModel,
    ConfigDict,
    StringConstraints,
)

_PACKAGE_DIR = Path(__file__).resolve().parents[1]  # ramo_stream/


def _shipped_rules_file(name: str) -> Path:
    """A file of rules/: inside the wheel, or in the source tree for an editable install."""
    for candidate in (_PACKAGE_DIR / "_rules", _PACKAGE_DIR.parent / "rules"):
        if (candidate / name).is_file():
            return candidate / name
    return _PACKAGE_DIR.parent / "rules" / name


def default_rule_pool() -> Path:
    return _shipped_rules_file("safety_v1.yaml")


def default_propositions() -> Path:
    """The shipped proposition pool of Rule-Based Rewards."""
    return _shipped_rules_file("rbr_propositions_v1.yaml")


def default_rbr_rubric() -> Path:
    """The shipped rubric of Rule-Based Rewards: completion classes from propositions."""
    return _shipped_rules_file("rbr_rubric_v1.yaml")


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ramo-stream"


class _SecretMarker:
    """Marks a setting as a secret: ``ramo config`` and settings errors never show it."""

    def __repr__(self) -> str:
        return "SECRET"


SECRET = _SecretMarker()
# A secret setting: stripped of surrounding whitespace (a mounted Secret file or an env var
# often ends in a newline, which would make a token that can never match), never printed.
# Declare new secret fields as `Secret` or `Secret | None`.
Secret = Annotated[str, StringConstraints(strip_whitespace=True), SECRET]
# Names that are secrets even if a field forgot the marker.
_SECRET_NAME = re.compile(r"(^|_)(password|passwd|secret|api_key|apikey|token|credentials?)$")
MASK = "********"


def _marked(annotation: Any) -> bool:
    if any(a is SECRET for a in getattr(annotation, "__metadata__", ())):
        return True
    return any(_marked(a) for a in get_args(annotation))


def is_secret(key: str, field: Any) -> bool:
    """Whether a settings field (``FieldInfo``) named ``key`` holds a secret."""
    return (
        SECRET in field.metadata
        or _marked(field.annotation)
        or bool(_SECRET_NAME.search(key.rpartition(".")[2]))
    )


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)
