"""Secret settings: stripped when read, read from a mounted file, masked in `ramo config`
and in every settings error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from pydantic import Field

from ramo_stream.config import (
    MASK,
    Secret,
    SettingsError,
    is_secret,
    load_settings,
    masked_dump,
    secret_keys,
)

TOKEN = "s3cr3t-token-0123456789"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("RAMO_"):
            monkeypatch.delenv(name)


def test_the_known_secrets_are_marked() -> None:
    assert {"serve.api_token", "grader.openai_api_key"} <= secret_keys()
    assert "serve.api_token_file" not in secret_keys()  # a path, not the secret
    assert not {k for k in secret_keys() if k.endswith("_tokens")}  # batch_tokens etc.


def test_a_new_field_is_secret_by_marker_or_by_name() -> None:
    from pydantic import BaseModel

    class Section(BaseModel):
        by_marker: Secret | None = Field(default=None)
        sasl_password: str | None = None
        max_tokens: int = 3

    f = Section.model_fields
    assert is_secret("by_marker", f["by_marker"]) and is_secret("sasl_password", f["sasl_password"])
    assert not is_secret("max_tokens", f["max_tokens"])


def test_tokens_are_stripped_when_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAMO_SERVE__API_TOKEN", f"  {TOKEN}\n")  # as a mounted Secret reads
    monkeypatch.setenv("RAMO_GRADER__OPENAI_API_KEY", "sk-abc\n")
    s = load_settings()
    assert (s.serve.api_token, s.grader.openai_api_key) == (TOKEN, "sk-abc")


def test_token_file_is_read_and_carried_to_workers(tmp_path: Path) -> None:
    from ramo_stream.config import flat_settings

    path = tmp_path / "token"
    path.write_text(TOKEN + "\n")
    s = load_settings(overrides={"serve.api_token_file": str(path)})
    assert s.serve.api_token == TOKEN
    assert load_settings(overrides=flat_settings(s)).serve.api_token == TOKEN  # a Ray worker


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"serve.api_token": "short-but-secret"[:12]}, "at least 16 characters"),
        ({"serve.api_token_file": "/nonexistent/token"}, "cannot be read"),
        ({"serve.api_token": "another-secret-token-xyz"}, "hold different tokens"),
    ],
)
def test_errors_never_echo_the_secret(
    tmp_path: Path, overrides: dict[str, str], expected: str
) -> None:
    path = tmp_path / "token"
    path.write_text(TOKEN)
    if "serve.api_token_file" not in overrides and "hold different" in expected:
        overrides = {**overrides, "serve.api_token_file": str(path)}
    with pytest.raises(SettingsError, match=expected) as e:
        load_settings(overrides=overrides)
    for secret in (TOKEN, overrides.get("serve.api_token", TOKEN)):
        assert secret not in str(e.value)


def test_config_output_masks_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    from ramo_stream.cli import main

    s = load_settings(overrides={"serve.api_token": TOKEN})
    assert masked_dump(s)["serve"]["api_token"] == MASK
    assert masked_dump(load_settings())["serve"]["api_token"] is None  # unset stays visible
    assert main(["config", "--serve-api-token", TOKEN]) == 0
    out = capsys.readouterr().out
    assert TOKEN not in out
    assert yaml.safe_load(out)["serve"]["api_token"] == MASK


def test_secret_fields_show_as_str_in_the_cli_help() -> None:
    from ramo_stream.config import settings_fields

    types = {key: type_name for key, type_name, _, _ in settings_fields()}
    assert types["serve.api_token"] == "str" and types["grader.openai_api_key"] == "str"
