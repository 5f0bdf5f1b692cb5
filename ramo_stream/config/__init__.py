"""Settings: one typed model per component, loaded by ``load_settings()``.

Precedence, highest first: explicit overrides (CLI flags) > environment variables
(``RAMO_`` prefix, nested with ``__``, e.g. ``RAMO_KAFKA__BOOTSTRAP_SERVERS``) > YAML file
(``--config`` or ``RAMO_CONFIG``) > defaults. Nothing is read at import time.
"""

from __future__ import annotations

import json
import os
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from ramo_stream.config.base import (
    _SECRET_NAME,
    MASK,
    SECRET,
    Secret,
    _marked,
    default_propositions,
    default_rule_pool,
    is_secret,
)
from ramo_stream.config.sections import (
    BrokerSettings,
    GraderSettings,
    KafkaSettings,
    LabelingSettings,
    ModelSettings,
    PathSettings,
    TopicSettings,
    TrainSettings,
)
from ramo_stream.config.serving import SelectSettings, ServeSettings, is_loopback
from ramo_stream.core.yaml_file import read_yaml

__all__ = [
    "MASK", "SECRET", "BrokerSettings", "GraderSettings", "KafkaSettings", "LabelingSettings",
    "ModelSettings", "PathSettings", "Secret", "SelectSettings", "ServeSettings", "Settings",
    "SettingsError", "TopicSettings", "TrainSettings", "default_propositions",
    "default_rule_pool", "flat_settings", "is_loopback", "is_secret", "load_settings",
    "masked_dump", "secret_keys", "settings_fields",
]  # fmt: skip

# The YAML file of the load_settings() call in progress (read by _YamlSource).
_YAML_FILE: ContextVar[Path | None] = ContextVar("ramo_yaml_file", default=None)


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML file chosen for this load_settings() call (if any)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns the whole mapping

    def __call__(self) -> dict[str, Any]:
        path = _YAML_FILE.get()
        if path is None:
            return {}
        data = read_yaml(path, "config file", "fix --config or RAMO_CONFIG", SettingsError) or {}
        if not isinstance(data, dict):
            kind = type(data).__name__
            raise SettingsError(f"config file {path} must hold a mapping, got {kind}")
        return data


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RAMO_", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    paths: PathSettings = Field(default_factory=PathSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    grader: GraderSettings = Field(default_factory=GraderSettings)
    labeling: LabelingSettings = Field(default_factory=LabelingSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    select: SelectSettings = Field(default_factory=SelectSettings)

    @field_validator("kafka")
    @classmethod
    def _empty_servers_mean_unset(cls, v: KafkaSettings) -> KafkaSettings:
        if v.bootstrap_servers is not None and not v.bootstrap_servers.strip():
            v.bootstrap_servers = None
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _YamlSource(settings_cls)


class SettingsError(ValueError):
    """Settings that do not validate; the message names each bad key and value."""


def load_settings(
    config_file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Build settings from defaults, a YAML file, ``RAMO_*`` env vars and explicit overrides.

    ``overrides`` uses dotted keys (``{"kafka.bootstrap_servers": "h:9092"}``), as the CLI does.
    """
    if config_file is None and os.environ.get("RAMO_CONFIG"):
        config_file = os.environ["RAMO_CONFIG"]
    nested: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            raise SettingsError(f"override {dotted!r} must look like 'section.key'")
        nested.setdefault(section, {})[key] = value
    token = _YAML_FILE.set(Path(config_file) if config_file else None)
    try:
        return Settings(**nested)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}="
            f"{_shown(err['loc'], err.get('input'))!r}: {err['msg']}"
            for err in e.errors()
        )
        raise SettingsError(
            f"invalid settings: {problems}. Fix the flag, the RAMO_* variable or the config file."
        ) from e
    finally:
        _YAML_FILE.reset(token)


def secret_keys() -> set[str]:
    """Dotted keys of the settings that hold secrets."""
    keys = set()
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        keys |= {f"{section}.{k}" for k, f in model.model_fields.items() if is_secret(k, f)}
    return keys


def _mask(value: Any) -> Any:
    return value if value is None else MASK


def _shown(loc: tuple[Any, ...], value: Any) -> Any:
    """An invalid input as an error may show it: secrets masked, also inside a section."""
    secrets = secret_keys()
    dotted = ".".join(str(p) for p in loc)
    if dotted in secrets or _SECRET_NAME.search(str(loc[-1]) if loc else ""):
        return _mask(value)
    if isinstance(value, dict):
        return {k: _mask(v) if f"{dotted}.{k}" in secrets or _SECRET_NAME.search(str(k))
                else v for k, v in value.items()}  # fmt: skip
    return value


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The settings as JSON-able sections, each secret replaced by a mask (None stays None)."""
    data: dict[str, Any] = json.loads(settings.model_dump_json())
    for key in secret_keys():
        section, _, name = key.partition(".")
        if data.get(section, {}).get(name) is not None:
            data[section][name] = MASK
    return data


def settings_fields() -> list[tuple[str, str, Any, str]]:
    """(dotted key, type name, default, description) for every setting: drives CLI and docs."""
    rows = []
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for key, sub in model.model_fields.items():
            default = sub.get_default(call_default_factory=True)
            if get_origin(sub.annotation) is Literal:
                type_name = "|".join(str(a) for a in get_args(sub.annotation))
            else:
                non_none = [a for a in get_args(sub.annotation) if a is not type(None)]
                shown = non_none[0] if non_none else sub.annotation
                shown = getattr(shown, "__origin__", shown) if _marked(shown) else shown
                type_name = getattr(shown, "__name__", str(shown))
            rows.append((f"{section}.{key}", type_name, default, sub.description or ""))
    return rows


def flat_settings(settings: Settings) -> dict[str, Any]:
    """Settings as dotted overrides: how a driver hands its exact settings to Ray workers.

    Secrets (``SecretStr``, masked in every dump) are put back in clear: a worker needs the
    real password. Never print this mapping."""
    data = settings.model_dump(mode="json")
    flat = {f"{section}.{key}": v for section, keys in data.items() for key, v in keys.items()}
    for section in type(settings).model_fields:
        part = getattr(settings, section)
        for key in type(part).model_fields:
            value = getattr(part, key)
            if isinstance(value, SecretStr):
                flat[f"{section}.{key}"] = value.get_secret_value()
    return flat
