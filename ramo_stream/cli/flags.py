"""The settings on the command line: a flag per setting, grouped by section, ``--set``
for any of them, and a --help per command that lists only the sections it reads."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ramo_stream.config import Settings, load_settings, settings_fields

_SET_PREFIX = "set:"
# Short spellings of settings used often on the command line.
_ALIASES = {"labeling.selector": ["--selector"], "labeling.k": ["-k"]}


class _SetSetting(argparse.Action):
    """``--set SECTION.KEY=VALUE``: any setting, stored as its own flag would store it."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: Any, option_string: str | None = None) -> None:  # fmt: skip
        key, sep, value = str(values).partition("=")
        known = {k for k, _, _, _ in settings_fields()}
        if not sep or key not in known:
            parser.error(
                f"--set {values!r}: expected SECTION.KEY=VALUE with a known key, e.g."
                " --set kafka.bootstrap_servers=host:9092 (`ramo config --describe` lists them)"
            )
        setattr(namespace, _SET_PREFIX + key, value)


def _settings_parent() -> argparse.ArgumentParser:
    """Flags for every setting (`kafka.bootstrap_servers` -> `--kafka-bootstrap-servers`),
    one argument group per settings section; ``--set`` for any of them."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group(
        "settings",
        "Each also reads RAMO_<SECTION>__<KEY> (e.g. RAMO_KAFKA__BOOTSTRAP_SERVERS) "
        "and the YAML file given by --config or RAMO_CONFIG. Flags win over both. "
        "Listed below: the sections this command reads; every other setting is accepted too, "
        "as its flag, --set, --config or RAMO_*.",
    )
    group.add_argument("--config", type=Path, default=None, help="YAML settings file.")
    group.add_argument("-v", "--verbose", action="store_true", help="Debug logging.")
    group.add_argument("--set", action=_SetSetting, metavar="SECTION.KEY=VALUE",
                       default=argparse.SUPPRESS,
                       help="Any setting by its dotted key (repeatable).")  # fmt: skip
    sections: dict[str, Any] = {}
    for key, type_name, default, description in settings_fields():
        section = key.split(".", 1)[0]
        if section not in sections:
            sections[section] = parent.add_argument_group(f"{section} settings")
        flags = ["--" + key.replace(".", "-").replace("_", "-"), *_ALIASES.get(key, [])]
        sections[section].add_argument(
            *flags,
            dest=_SET_PREFIX + key,
            default=argparse.SUPPRESS,
            metavar=type_name.upper(),
            help=f"{description} (default: {default})",
        )
    return parent


# The settings sections each command reads (its own, and those of the stages it builds);
# its --help lists only these. None: all of them.
_STREAM = ("kafka", "topics", "broker", "paths")
COMMAND_SECTIONS: dict[str, tuple[str, ...] | None] = {
    "run": _STREAM,
    "broker": _STREAM,
    "ingest": _STREAM,
    "tail": _STREAM,
    "models prepare": ("paths", "models"),
    "models list": ("paths", "train"),
    "models publish": ("paths", "models", "train"),
    "up": None,
    "labeler": (*_STREAM, "models", "grader", "labeling", "select"),
    "label": ("paths", "models", "grader", "labeling"),
    "adapter train": ("paths", "models", "grader", "labeling"),
    "train": (*_STREAM, "models", "train"),
    "serve": ("paths", "models", "train", "serve"),
    "score": ("serve",),
    "eval": ("paths", "models", "train", "serve"),
    "select": (*_STREAM, "models", "train", "select"),
    "grader train": ("paths", "models", "grader"),
    "rbr fit": ("paths", "models", "grader"),
    "rbr show": ("paths",),
    "rules": ("paths",),
    "config": None,
}


def _help_for(sections: tuple[str, ...]) -> type[argparse.HelpFormatter]:
    """A help formatter that leaves out the setting flags of other sections."""

    def shown(action: argparse.Action) -> bool:
        dest = action.dest
        if not dest.startswith(_SET_PREFIX):
            return True
        return dest[len(_SET_PREFIX) :].split(".", 1)[0] in sections

    class SectionHelp(argparse.HelpFormatter):
        def add_usage(self, usage: Any, actions: Any, groups: Any, prefix: Any = None) -> None:
            super().add_usage(usage, [a for a in actions if shown(a)], groups, prefix)

        def add_arguments(self, actions: Any) -> None:
            super().add_arguments([a for a in actions if shown(a)])

    return SectionHelp


def _limit_help(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> None:
    """Give every (sub)command the help formatter of its sections (``COMMAND_SECTIONS``)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                key = " ".join((*path, name))
                sections = COMMAND_SECTIONS.get(key)
                if sections is not None:
                    sub.formatter_class = _help_for(sections)
                _limit_help(sub, (*path, name))


def _settings_from(args: argparse.Namespace) -> Settings:
    overrides = {
        k[len(_SET_PREFIX) :]: v for k, v in vars(args).items() if k.startswith(_SET_PREFIX)
    }
    return load_settings(args.config, overrides)
