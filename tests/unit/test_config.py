"""Settings: defaults, RAMO_* env vars, YAML files, overrides, and their precedence."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from ramo_stream.config import Settings, SettingsError, load_settings, settings_fields


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No RAMO_* variable of the calling shell may leak into a test."""
    for name in list(os.environ):
        if name.startswith("RAMO_"):
            monkeypatch.delenv(name)


def yaml_file(tmp_path: Path, data: object, name: str = "ramo.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_defaults() -> None:
    s = load_settings()
    assert s.topics.pairs == "ramo.pairs"
    assert s.topics.labels == "ramo.labels"
    assert s.topics.dlq == "ramo.dlq"
    assert s.topics.partitions == 4
    assert s.kafka.bootstrap_servers is None
    assert s.kafka.client_id == "ramo"
    assert s.paths.rule_pool.name == "safety_v1.yaml"


def test_cache_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    s = load_settings()
    assert s.paths.cache_dir == tmp_path / "ramo-stream"
    assert s.paths.models_dir == tmp_path / "ramo-stream" / "models"


def test_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAMO_KAFKA__BOOTSTRAP_SERVERS", "k1:9092,k2:9092")
    monkeypatch.setenv("RAMO_TOPICS__PARTITIONS", "12")
    s = load_settings()
    assert s.kafka.bootstrap_servers == "k1:9092,k2:9092"
    assert s.topics.partitions == 12
    assert s.topics.pairs == "ramo.pairs"  # untouched keys keep their defaults


def test_blank_bootstrap_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RAMO_KAFKA__BOOTSTRAP_SERVERS", "  ")
    assert load_settings().kafka.bootstrap_servers is None


def test_yaml_file_argument(tmp_path: Path) -> None:
    path = yaml_file(tmp_path, {"topics": {"pairs": "y.pairs", "partitions": 2}})
    s = load_settings(path)
    assert s.topics.pairs == "y.pairs"
    assert s.topics.partitions == 2
    assert s.topics.labels == "ramo.labels"
    assert load_settings(str(path)).topics.pairs == "y.pairs"


def test_yaml_file_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = yaml_file(tmp_path, {"kafka": {"bootstrap_servers": "from-yaml:1"}})
    monkeypatch.setenv("RAMO_CONFIG", str(path))
    assert load_settings().kafka.bootstrap_servers == "from-yaml:1"


def test_explicit_file_beats_ramo_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    env_file = yaml_file(tmp_path, {"topics": {"dlq": "env.dlq"}}, "env.yaml")
    arg_file = yaml_file(tmp_path, {"topics": {"dlq": "arg.dlq"}}, "arg.yaml")
    monkeypatch.setenv("RAMO_CONFIG", str(env_file))
    assert load_settings(arg_file).topics.dlq == "arg.dlq"


def test_empty_yaml_file_is_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load_settings(path).topics.partitions == 4


def test_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    key = "kafka.bootstrap_servers"
    path = yaml_file(
        tmp_path,
        {
            "kafka": {"bootstrap_servers": "yaml:1", "client_id": "yaml-client"},
            "topics": {"partitions": 5, "labels": "yaml.labels"},
        },
    )
    assert load_settings().kafka.bootstrap_servers is None  # defaults
    assert load_settings(path).kafka.bootstrap_servers == "yaml:1"  # YAML > defaults

    monkeypatch.setenv("RAMO_KAFKA__BOOTSTRAP_SERVERS", "env:1")
    monkeypatch.setenv("RAMO_TOPICS__PARTITIONS", "6")
    s = load_settings(path)
    assert s.kafka.bootstrap_servers == "env:1"  # env > YAML
    assert s.topics.partitions == 6

    s = load_settings(path, overrides={key: "flag:1"})
    assert s.kafka.bootstrap_servers == "flag:1"  # overrides > env
    assert s.topics.partitions == 6  # env still wins where no override
    # sections merge key by key rather than replacing each other
    assert s.kafka.client_id == "yaml-client"
    assert s.topics.labels == "yaml.labels"
    assert s.topics.pairs == "ramo.pairs"


@pytest.mark.parametrize("value", ["0", "abc", "-3"])
def test_bad_env_value_names_key(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("RAMO_TOPICS__PARTITIONS", value)
    with pytest.raises(SettingsError) as exc:
        load_settings()
    assert "topics.partitions" in str(exc.value)
    assert repr(value) in str(exc.value)


def test_bad_override_names_key() -> None:
    with pytest.raises(SettingsError, match=r"topics\.partitions"):
        load_settings(overrides={"topics.partitions": 0})


def test_bad_yaml_value_names_key(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"broker\.port"):
        load_settings(yaml_file(tmp_path, {"broker": {"port": 70000}}))


def test_override_without_section() -> None:
    with pytest.raises(SettingsError, match="partitions"):
        load_settings(overrides={"partitions": 3})


@pytest.mark.parametrize(
    "data, key",
    [({"kafka": {"bogus": 1}}, "kafka.bogus"), ({"colour": "red"}, "colour")],
)
def test_unknown_yaml_key(tmp_path: Path, data: dict[str, object], key: str) -> None:
    with pytest.raises(SettingsError) as exc:
        load_settings(yaml_file(tmp_path, data))
    assert key in str(exc.value)
    assert "not permitted" in str(exc.value)


def test_missing_config_file_names_path(tmp_path: Path) -> None:
    path = tmp_path / "missing" / "ramo.yaml"
    with pytest.raises(ValueError) as exc:
        load_settings(path)
    assert str(path) in str(exc.value)
    assert "does not exist" in str(exc.value)


def test_missing_config_file_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = tmp_path / "gone.yaml"
    monkeypatch.setenv("RAMO_CONFIG", str(path))
    with pytest.raises(ValueError, match="gone.yaml"):
        load_settings()


def test_invalid_yaml_config(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("kafka: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_settings(path)


def test_non_mapping_yaml_config(tmp_path: Path) -> None:
    path = yaml_file(tmp_path, ["a", "b"])
    with pytest.raises(ValueError, match="mapping"):
        load_settings(path)


def test_yaml_file_not_sticky(tmp_path: Path) -> None:
    """The file chosen for one call is not used by the next call."""
    load_settings(yaml_file(tmp_path, {"topics": {"pairs": "once"}}))
    assert load_settings().topics.pairs == "ramo.pairs"


def test_settings_fields_lists_every_key() -> None:
    rows = settings_fields()
    keys = [r[0] for r in rows]
    expected = {
        f"{section}.{key}"
        for section, field in Settings.model_fields.items()
        for key in field.annotation.model_fields  # type: ignore[union-attr]
    }
    assert set(keys) == expected
    assert len(keys) == len(set(keys))
    for k in ("kafka.bootstrap_servers", "topics.partitions", "paths.rule_pool", "models.grader"):
        assert k in keys
    for key, type_name, _default, description in rows:
        assert description.strip(), f"{key} has no description"
        assert type_name, key
    by_key = {r[0]: r for r in rows}
    assert by_key["topics.partitions"][1:3] == ("int", 4)
    assert by_key["kafka.bootstrap_servers"][1:3] == ("str", None)


def test_a_bad_config_file_is_a_one_line_cli_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ramo_stream.cli.command import main

    for path, says in ((tmp_path / "gone.yaml", "does not exist; fix --config"),
                       (yaml_file(tmp_path, ["a"]), "must hold a mapping, got list")):  # fmt: skip
        assert main(["rules", "--config", str(path)]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: config file {path}") and says in err
        assert "Traceback" not in err
