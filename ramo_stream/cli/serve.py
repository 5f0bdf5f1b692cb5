"""`ramo serve` and `ramo models publish`: the serving subcommands (heavy imports inside)."""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from ramo_stream.cli.ports import port_problem
from ramo_stream.config import Settings, flat_settings

APP_NAME = "reward"


def _registry(settings: Settings) -> Any:
    from ramo_stream.registry.setup import open_registry

    return open_registry(settings)


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    """The reward service on Ray Serve until Ctrl-C or SIGTERM."""
    s = settings.serve
    try:
        s.check_exposure()
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    problem = port_problem(s.host, s.port)
    if problem:
        print(f"error: cannot bind {s.host}:{s.port} ({problem}); stop what holds it or pass"
              " --serve-port", file=sys.stderr)  # fmt: skip
        return 2
    import ray
    from ray import serve

    from ramo_stream.cli.signals import StopSignals
    from ramo_stream.serve.reward_app import RewardAppArgs, build_app

    registry = _registry(settings)
    with StopSignals("reward service") as signals:
        ray.init(include_dashboard=False, logging_level=logging.WARNING)
        signals.install()  # ray.init replaced the SIGTERM handler with sys.exit
        try:
            serve.start(http_options={"host": s.host, "port": s.port},
                        logging_config={"enable_access_log": False})  # fmt: skip
            app = build_app(RewardAppArgs(overrides=flat_settings(settings)))
            serve.run(app, name=APP_NAME, route_prefix="/")
            host = f"[{s.host}]" if ":" in s.host else s.host
            current = registry.current()
            serving = (
                f"version {current.version}"
                if current
                else "no version yet (`ramo train` or `ramo models publish PATH` publishes one;"
                " it is picked up by itself)"
            )
            auth = "bearer token" if s.api_token else "none (loopback only)"
            print(f"reward service on http://{host}:{s.port} (POST /v1/score, /v1/compare, "
                  f"/get_reward; GET /v1/models, /health, /metrics)\nregistry {registry.root}: "
                  f"{serving}\nauth: {auth}; Ctrl-C or SIGTERM stops", flush=True)  # fmt: skip
            signals.stop.wait()
        finally:
            # Serve drains: replicas finish the requests they hold (up to its graceful
            # shutdown timeout) before they exit; then Ray stops its own processes.
            from ramo_stream.cli.ray_stop import quiet_ray_stop

            with quiet_ray_stop():  # no "(raylet) ... killed by ray.kill" lines on a clean stop
                serve.shutdown()
                ray.shutdown()
    print("reward service stopped")
    return 0


def _is_reward_checkpoint(folder: Path) -> bool:
    """Whether the folder already holds a sequence classifier with one output (a head)."""
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError):
        return False
    archs = config.get("architectures") or []
    labels = len(config.get("id2label") or {}) or config.get("num_labels", 2)
    return labels == 1 and any(str(a).endswith("ForSequenceClassification") for a in archs)


def cmd_models_publish(args: argparse.Namespace, settings: Settings) -> int:
    from ramo_stream.local_models import model_id, resolve
    from ramo_stream.registry.store import MANIFEST

    src = Path(resolve(args.path, settings.paths.models_dir)).expanduser()
    if not (src / "config.json").is_file():
        print(f"error: {src} is not a Hugging Face model folder (no config.json); pass a"
              " folder saved by save_pretrained, or a name from `ramo models prepare`",
              file=sys.stderr)  # fmt: skip
        return 2
    registry = _registry(settings)

    if _is_reward_checkpoint(src):
        # Exact copy; a manifest of another registry is not carried over (ours is written).
        def write(stage: Path) -> None:
            shutil.copytree(src, stage, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns(MANIFEST, ".tmp-*"))  # fmt: skip

        how = "copied"
    else:
        # A backbone: its reward head is new. Saved once, so every load scores the same.
        import torch

        from ramo_stream.registry.model import load_reward_model

        torch.manual_seed(args.seed)
        model, tok = load_reward_model(src)

        def write(stage: Path) -> None:
            model.save_pretrained(stage)
            tok.save_pretrained(stage)

        how = "a backbone: saved with a new, untrained reward head (rewards mean nothing yet)"
    base = model_id(args.path, settings.paths.models_dir)  # portable: name@weights digest
    manifest = registry.publish(write, steps=0, samples_seen=0, offsets={},
                                base_model=base)  # fmt: skip
    print(f"published {src} as version {manifest.version} in {registry.root} ({how});"
          " CURRENT points at it")  # fmt: skip
    return 0


def add_commands(sub: Any, models_sub: Any, parent: argparse.ArgumentParser) -> None:
    help_ = (
        "Serve the registry's current reward model over HTTP on serve.host:serve.port "
        "(Ray Serve: dynamic batching, hot reload of new versions, model_version in every "
        "reply). Ctrl-C stops."
    )
    p = sub.add_parser("serve", parents=[parent], help=help_, description=help_)
    p.set_defaults(fn=cmd_serve)

    help_ = (
        "Publish a Hugging Face checkpoint folder (or a prepared model's name) as a new "
        "registry version, so the service has something to serve before training. A "
        "reward checkpoint (num_labels=1) is copied as is; a backbone gets a new head."
    )
    p = models_sub.add_parser("publish", parents=[parent], help=help_, description=help_)
    p.add_argument("path", help="Checkpoint folder, or a name from `ramo models prepare`.")
    p.add_argument("--seed", type=int, default=0, help="Seed of a new head (default 0).")
    p.set_defaults(fn=cmd_models_publish)
