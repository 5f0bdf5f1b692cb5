"""Reading the project's YAML files (rule pools, proposition pools, the RBR rubric) with
errors that name the file, the problem and the setting that points at it."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def load_yaml_model(
    path: Path, model: type[M], what: str, setting: str, error: type[ValueError], shape: str
) -> M:
    """``model`` validated from the YAML mapping in ``path``; anything wrong raises ``error``
    with a message starting "{what} {path}" (``shape`` says what the mapping must hold)."""
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError as e:
        raise error(f"{what} {path} does not exist; set {setting}") from e
    except (OSError, UnicodeDecodeError) as e:
        raise error(f"{what} {path} cannot be read: {e}") from e
    except yaml.YAMLError as e:
        raise error(f"{what} {path} is not valid YAML: {e}") from e
    if not isinstance(raw, dict):
        raise error(f"{what} {path} must be a mapping with {shape}")
    try:
        return model.model_validate(raw)
    except ValidationError as e:
        msgs = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()[:5]
        )
        raise error(f"{what} {path} is invalid: {msgs}") from e
