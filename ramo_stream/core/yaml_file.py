"""Reading the project's YAML files (rule pools, proposition pools, the RBR rubric, the
config file) with errors that name the file, the problem and the setting that points at it."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def read_yaml(path: Path, what: str, fix: str, error: type[ValueError] = ValueError) -> Any:
    """The parsed YAML in ``path``; a missing, unreadable or malformed file raises ``error``
    with a message starting "{what} {path}" (``fix``: what to do when it is missing)."""
    try:
        return yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise error(f"{what} {path} does not exist; {fix}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{what} {path} cannot be read: {e}") from e
    except yaml.YAMLError as e:
        raise error(f"{what} {path} is not valid YAML: {e}") from e


def load_yaml_model(
    path: Path, model: type[M], what: str, setting: str, error: type[ValueError], shape: str
) -> M:
    """``model`` validated from the YAML mapping in ``path``; anything wrong raises ``error``
    with a message starting "{what} {path}" (``shape`` says what the mapping must hold)."""
    raw = read_yaml(path, what, f"set {setting}", error)
    if not isinstance(raw, dict):
        raise error(f"{what} {path} must be a mapping with {shape}")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        msgs = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()[:5]
        )
        raise error(f"{what} {path} is invalid: {msgs}") from e
