"""`ramo train` and `ramo models list`: the training subcommands (heavy imports inside)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ramo_stream.config import Settings


def cmd_train(args: argparse.Namespace, settings: Settings) -> int:
    import ray

    from ramo_stream.cli.signals import StopSignals
    from ramo_stream.train.driver import init_ray, run_trainer

    if args.from_file is not None and not args.from_file.is_file():
        print(f"error: no such file: {args.from_file}", file=sys.stderr)
        return 2
    # SIGTERM and SIGINT alike: the workers drain, publish a final version and return.
    with StopSignals("trainer") as signals:
        init_ray()
        signals.install()  # ray.init replaced the SIGTERM handler with sys.exit
        try:
            if args.from_file is not None:
                manifest = run_trainer(settings, None, args.from_file, signals.stop)
            else:
                from ramo_stream.stream.broker import kafka_session

                with kafka_session(settings) as bootstrap:
                    manifest = run_trainer(settings, bootstrap, stop_event=signals.stop)
        finally:
            ray.shutdown()
    print("trainer stopped")
    if manifest is None:
        print("no version published (no labeled pair was trained on)")
    else:
        from ramo_stream.core.stats import describe_accuracy

        acc = describe_accuracy(manifest.heldout_accuracy, manifest.heldout_size)
        print(f"current version: v{manifest.version} ({manifest.samples_seen} pairs, "
              f"{manifest.steps} steps); held-out accuracy {acc}")  # fmt: skip
    return 0


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "-" if value is None else format(value, spec)


def cmd_models_list(args: argparse.Namespace, settings: Settings) -> int:
    from ramo_stream.core.stats import MIN_HELDOUT, accuracy_with_interval
    from ramo_stream.registry.setup import open_registry

    registry = open_registry(settings)
    root = registry.root
    versions = registry.versions()
    if not versions:
        print(f"no versions in {root} yet: `ramo train` publishes them")
        return 0
    current = registry.current()
    print(f"registry {root}")
    print(f"{'':2}{'version':>8} {'parent':>7} {'steps':>7} {'pairs':>8} {'loss':>7}  "
          f"{'created (UTC)':19}  {'n':>5} held-out accuracy [95% interval]")  # fmt: skip
    for m in versions:
        mark = "* " if current and m.version == current.version else "  "
        acc = accuracy_with_interval(m.heldout_accuracy, m.heldout_size)
        print(f"{mark}{m.version:>8} {m.parent_version or '-':>7} {m.steps:>7} "
              f"{m.samples_seen:>8} {_fmt(m.metrics.get('loss_ema'), '.4f'):>7}  "
              f"{m.created_at:%Y-%m-%d %H:%M:%S}  {m.heldout_size:>5} {acc}")  # fmt: skip
    print("* current (what the reward service serves); held-out accuracy is agreement with"
          f" the labels on held-out pairs, shown from {MIN_HELDOUT} pairs on")  # fmt: skip
    return 0


def add_commands(sub: Any, models_sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("train", parents=[parent], help="Train the reward model continuously "
                       "on Ray Train from the labels topic, publishing versions to the registry "
                       "every train.publish_every_steps steps or train.publish_every_s seconds; "
                       "resumes from the current version. Ctrl-C publishes and stops.")  # fmt: skip
    p.add_argument("--from-file", type=Path, help="Train on a JSONL file instead of the "
                   "topic (LabeledPair lines or RewardBench rows), same code path; stops at "
                   "its end.")  # fmt: skip
    p.set_defaults(fn=cmd_train)

    p = models_sub.add_parser("list", parents=[parent], help="Reward-model versions in the "
                              "registry with their manifest figures.")  # fmt: skip
    p.set_defaults(fn=cmd_models_list)
