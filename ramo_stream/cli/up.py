"""`ramo up`: the whole loop on one machine (heavy imports inside)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ramo_stream.cli.label import selector_without_adapter, user_keys
from ramo_stream.config import Settings, load_settings


def _with_defaults(args: argparse.Namespace, settings: Settings, extra: dict[str, Any]) -> Settings:
    """``settings`` with ``extra`` for each key still at its built-in default: a flag, a
    RAMO_* variable or the settings file wins over ``extra``."""
    from ramo_stream.config import flat_settings, settings_fields

    defaults = {key: default for key, _, default, _ in settings_fields()}
    current = flat_settings(settings)
    keep = {k: v for k, v in current.items() if v != defaults.get(k) or k in user_keys(args)}
    apply = {k: v for k, v in extra.items() if k not in keep}
    return load_settings(args.config, {**keep, **apply})


def cmd_up(args: argparse.Namespace, settings: Settings) -> int:
    from ramo_stream.cli.ports import port_problem
    from ramo_stream.cli.up_loop import DEMO_SETTINGS, UpOptions, demo_files, run_up
    from ramo_stream.local_models import KNOWN, prepare

    extra: dict[str, Any] = {"train.worker_cpus": 1.0}  # leave the labeler and service CPUs
    if args.demo:
        extra.update(DEMO_SETTINGS)
    fallback = selector_without_adapter(args, settings)  # the rule `ramo label` follows
    if fallback is not None:
        extra["labeling.selector"] = fallback
    settings = _with_defaults(args, settings, extra)
    try:
        settings.serve.check_exposure()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    s = settings.serve
    problem = port_problem(s.host, s.port)
    if problem:
        print(f"error: cannot bind {s.host}:{s.port} ({problem}); stop what holds it or pass"
              " --serve-port", file=sys.stderr)  # fmt: skip
        return 2
    files = tuple(args.file or ()) + (tuple(demo_files()) if args.demo else ())
    for f in files:
        if not f.is_file():
            print(f"error: no such file: {f}", file=sys.stderr)
            return 2
    m = settings.models
    for name in {m.grader, m.encoder, m.reward_backbone} & set(KNOWN):
        prepare(name, settings.paths.models_dir)  # once; later runs find the folder
    from ramo_stream.label.grading.factory import describe_choice

    print(describe_choice(settings), flush=True)
    options = UpOptions(
        files=files,
        limit=args.limit,
        exit_when_idle_s=args.exit_when_idle,
        view_every_s=args.view_every,
        heartbeat_s=args.heartbeat,
    )
    return run_up(settings, options)


def add_commands(sub: Any, parent: argparse.ArgumentParser) -> None:
    help_ = (
        "The whole loop on one machine: a broker (or the configured Kafka), a local Ray (or"
        " RAY_ADDRESS), the labeler service, the continuous trainer and the reward service,"
        " with a live view. Ctrl-C stops it in order and publishes a final version."
    )
    p = sub.add_parser("up", parents=[parent], help=help_, description=help_)
    p.add_argument("--demo", action="store_true",
                   help="Feed the 40 built-in demo pairs (and 4 malformed lines), and publish"
                   " often: " + ", ".join(f"{k}={v}" for k, v in _demo_settings().items())
                   + " unless set otherwise.")  # fmt: skip
    p.add_argument("--file", type=Path, action="append",
                   help="Also ingest this JSONL file of pairs (ResponsePair or RewardBench"
                   " rows); repeatable.")  # fmt: skip
    p.add_argument("--limit", type=int, help="Ingest at most this many lines per file.")
    p.add_argument("--exit-when-idle", type=float, metavar="SECONDS",
                   help="Stop once the ingest is done, every accepted pair is labeled and"
                   " nothing moved for this long; the stop drains (every label trained into"
                   " a final version). Default: run until Ctrl-C.")  # fmt: skip
    p.add_argument("--view-every", type=float, default=2.0, metavar="SECONDS",
                   help="Redraw the live view this often (default 2).")  # fmt: skip
    p.add_argument("--heartbeat", type=float, default=30.0, metavar="SECONDS",
                   help="Without a terminal (a log), the view is printed only when something"
                   " changed, plus a one-line heartbeat after this long without a change"
                   " (default 30).")  # fmt: skip
    p.set_defaults(fn=cmd_up)


def _demo_settings() -> dict[str, Any]:
    from ramo_stream.cli.up_loop import DEMO_SETTINGS

    return DEMO_SETTINGS
