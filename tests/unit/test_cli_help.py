"""Each subcommand's --help lists the settings sections it reads; every setting stays
settable everywhere (its flag, or --set SECTION.KEY=VALUE)."""

from __future__ import annotations

import argparse
import re
from typing import Any

import pytest

from ramo_stream.cli.command import build_parser
from ramo_stream.cli.flags import COMMAND_SECTIONS, _settings_from
from ramo_stream.config import settings_fields

SECTIONS = sorted({key.split(".", 1)[0] for key, _, _, _ in settings_fields()})


def commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, argparse.ArgumentParser] = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                has_sub = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
                if not has_sub:
                    out[" ".join((*path, name))] = sub
                out |= commands(sub, (*path, name))
    return out


def help_sections(text: str) -> set[str]:
    return set(re.findall(r"^(\w+) settings:$", text, flags=re.M))


def test_every_command_says_which_sections_it_reads() -> None:
    assert set(commands(build_parser())) == set(COMMAND_SECTIONS)
    for sections in COMMAND_SECTIONS.values():
        assert sections is None or set(sections) <= set(SECTIONS)


@pytest.mark.parametrize("command", sorted(COMMAND_SECTIONS))
def test_help_lists_the_sections_of_the_command(command: str) -> None:
    text = commands(build_parser())[command].format_help()
    expected = COMMAND_SECTIONS[command] or SECTIONS
    assert help_sections(text) == set(expected)
    assert "--set SECTION.KEY=VALUE" in text and "--config" in text


def test_score_help_hides_the_kafka_flags_but_score_accepts_them() -> None:
    parser = build_parser()
    text = commands(parser)["score"].format_help()
    assert "--serve-port" in text and "--kafka-bootstrap-servers" not in text
    args = parser.parse_args(["score", "--kafka-bootstrap-servers", "h:9092", "--prompt", "p"])
    assert _settings_from(args).kafka.bootstrap_servers == "h:9092"


def test_set_reaches_any_section_and_a_later_flag_wins() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["score", "--set", "train.workers=3", "--set", "serve.port=9100", "--serve-port", "9200"]
    )
    settings = _settings_from(args)
    assert settings.train.workers == 3 and settings.serve.port == 9200


@pytest.mark.parametrize("bad", ["train.workers", "train.nope=1", "nope=1"])
def test_set_refuses_what_is_not_a_known_key_with_a_value(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(["config", "--set", bad])
    assert e.value.code == 2
    assert "SECTION.KEY=VALUE" in capsys.readouterr().err
