"""Kafka security settings: validated, mapped in one place, given to every client, masked."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from ramo_stream.config import SettingsError, flat_settings, load_settings
from ramo_stream.stream import kafka_io

SASL = {
    "kafka.security_protocol": "SASL_SSL",
    "kafka.sasl_mechanism": "SCRAM-SHA-512",
    "kafka.sasl_username": "ramo",
    "kafka.sasl_password": "s3cret-pw",
    "kafka.ssl_cafile": "/etc/kafka/ca.crt",
}
EXPECTED = {
    "security_protocol": "SASL_SSL",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_plain_username": "ramo",
    "sasl_plain_password": "s3cret-pw",
    "ssl_cafile": "/etc/kafka/ca.crt",
    "ssl_check_hostname": True,
}


def test_plaintext_by_default_adds_nothing() -> None:
    assert kafka_io.client_security(load_settings().kafka) == {"security_protocol": "PLAINTEXT"}


def test_sasl_ssl_maps_to_kafka_python_options() -> None:
    assert kafka_io.client_security(load_settings(overrides=SASL).kafka) == EXPECTED


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        ({"kafka.security_protocol": "SASL_SSL"}, "needs sasl_mechanism"),
        ({"kafka.sasl_username": "ramo"}, "does not authenticate"),
        ({"kafka.ssl_cafile": "/ca.pem"}, "uses no TLS"),
        ({"kafka.security_protocol": "SSL", "kafka.ssl_keyfile": "/k.pem"}, "without ssl_cert"),
        ({"kafka.security_protocol": "SASL_SSL", "kafka.sasl_mechanism": "GSSAPI"}, "PLAIN"),
    ],
)
def test_inconsistent_security_is_refused(overrides: dict[str, Any], says: str) -> None:
    with pytest.raises(SettingsError, match=says):
        load_settings(overrides=overrides)


def test_every_client_gets_the_security_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    made: dict[str, dict[str, Any]] = {}

    def recorder(kind: str) -> Any:
        def build(*_topics: str, **opts: Any) -> str:
            made[kind] = opts
            return kind

        return build

    for cls in ("KafkaProducer", "KafkaConsumer", "KafkaAdminClient"):
        monkeypatch.setattr(kafka_io, cls, recorder(cls))
    kafka = load_settings(overrides=SASL).kafka
    kafka_io.make_producer("h:9093", kafka)
    kafka_io.make_consumer("h:9093", kafka, "g", "t")
    kafka_io.make_admin("h:9093", kafka)
    assert set(made) == {"KafkaProducer", "KafkaConsumer", "KafkaAdminClient"}
    for kind, opts in made.items():
        assert EXPECTED.items() <= opts.items(), kind


def test_no_kafka_client_is_built_outside_kafka_io() -> None:
    """The one-place rule: any other construction would miss the security settings."""
    root = Path(kafka_io.__file__).resolve().parents[1]
    pattern = re.compile(r"\bKafka(Consumer|Producer|AdminClient)\(")
    offenders = [
        str(path.relative_to(root))
        for path in root.rglob("*.py")
        if path.name != "kafka_io.py" and pattern.search(path.read_text())
    ]
    assert offenders == []


def test_password_is_masked_in_ramo_config_but_reaches_workers(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ramo_stream.cli import main

    for key, value in SASL.items():
        monkeypatch.setenv("RAMO_" + key.upper().replace(".", "__"), value)
    assert main(["config"]) == 0
    shown = capsys.readouterr().out
    from ramo_stream.config import MASK

    assert "s3cret-pw" not in shown and f"sasl_password: '{MASK}'" in shown
    settings = load_settings()
    assert flat_settings(settings)["kafka.sasl_password"] == "s3cret-pw"  # Ray workers
    assert load_settings(overrides=flat_settings(settings)).kafka == settings.kafka
