"""`ramo label` and `ramo adapter train`: the labeling subcommands (heavy imports inside)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ramo_stream.config import Settings, flat_settings


def user_keys(args: argparse.Namespace) -> set[str]:
    """Settings given as flags (the parser stores them as ``set:<key>``)."""
    return {k.split(":", 1)[1] for k in vars(args) if k.startswith("set:")}


def selector_without_adapter(args: argparse.Namespace, settings: Settings) -> str | None:
    """The one rule every command follows when ``labeling.selector`` is ``adapter`` and no
    Rule Adapter has been trained (a fresh clone): the default falls back to ``random``
    with a note on stderr; an explicit ``--selector adapter`` is an error that says the fix.

    Returns the selector to use instead (``random``), None when nothing changes; raises
    ``SystemExit(2)`` after printing the error.
    """
    from ramo_stream.label.rule_adapter.model import MANIFEST

    adapter_dir = settings.paths.adapter_dir
    if settings.labeling.selector != "adapter" or (adapter_dir / MANIFEST).is_file():
        return None
    if "labeling.selector" in user_keys(args):
        print(f"error: --selector adapter needs a Rule Adapter at {adapter_dir}; train one with"
              " `ramo adapter train`, or pick another selector (--selector random)",
              file=sys.stderr)  # fmt: skip
        raise SystemExit(2)
    print(f"note: no Rule Adapter at {adapter_dir} yet (`ramo adapter train` makes one);"
          " labeling with --selector random until then", file=sys.stderr)  # fmt: skip
    return "random"


def _label(src: Path, out: Path, labeler: Any, settings: Settings, limit: int | None) -> Any:
    from tqdm import tqdm

    from ramo_stream.label.offline import label_file
    from ramo_stream.stream.ingest import count_lines

    with tqdm(total=count_lines(src, limit), desc=f"label {src.name}", unit="pair",
              file=sys.stderr) as bar:  # fmt: skip
        return label_file(src, out, labeler, settings.labeling.pair_batch, limit, bar.update)


def cmd_label(args: argparse.Namespace, settings: Settings) -> int:
    if not args.input.is_file():
        print(f"error: no such file: {args.input}", file=sys.stderr)
        return 2
    from ramo_stream.label.grading.factory import describe
    from ramo_stream.label.setup import build_labeler

    labeler = build_labeler(settings, selector_without_adapter(args, settings))
    print(f"selector {labeler.settings.selector}: {labeler.calls_per_pair()} grader calls per pair;"
          f" {describe(labeler.grader)}", file=sys.stderr)  # fmt: skip
    r = _label(args.input, args.output, labeler, settings, args.limit)
    print(f"labeled {r.labeled}, skipped {r.skipped} already in {args.output}, "
          f"rejected {r.rejected}; preferred a/b/tie = "
          f"{r.preferred['a']}/{r.preferred['b']}/{r.preferred['tie']}")  # fmt: skip
    if r.with_gold:
        share = r.agree_with_gold / r.with_gold
        print(f"agreement with metadata.gold on this run's pairs: "
              f"{r.agree_with_gold}/{r.with_gold} = {share:.3f}")  # fmt: skip
    for reason in r.reasons:
        print(f"  rejected {reason}")
    return 0


def cmd_adapter_train(args: argparse.Namespace, settings: Settings) -> int:
    from ramo_stream.core.rules import load_pool
    from ramo_stream.label.rule_adapter.model import new_adapter
    from ramo_stream.label.rule_adapter.train import train_adapter
    from ramo_stream.local_models import resolve
    from ramo_stream.schemas import LabeledPair

    targets: Path = args.targets or settings.paths.cache_dir / "adapter_targets.jsonl"
    if args.pairs:
        # Full-pool grading gives the targets: the top-k rules by c_k for each pair.
        from ramo_stream.label.setup import build_labeler

        labeler = build_labeler(settings, selector="max-discrepancy")
        print(f"grading the full pool ({labeler.calls_per_pair()} calls per pair) for targets"
              f" -> {targets}", file=sys.stderr)  # fmt: skip
        _label(args.pairs, targets, labeler, settings, args.limit)
    if not targets.is_file():
        print(f"no targets at {targets}: pass --pairs FILE to grade some", file=sys.stderr)
        return 2
    labeled = [LabeledPair.model_validate_json(line) for line in targets.read_text().splitlines()
               if line.strip()]  # fmt: skip
    pool = load_pool(settings.paths.rule_pool)
    labeled = [lp for lp in labeled if lp.rule_pool_hash == pool.hash]
    adapter = new_adapter(resolve(settings.models.encoder, settings.paths.models_dir), pool)
    report = train_adapter(adapter, labeled, settings.labeling.k, epochs=args.epochs,
                           train_encoder=args.train_encoder,
                           on_epoch=lambda e, loss: print(f"epoch {e + 1}: loss {loss:.4f}",
                                                          file=sys.stderr))  # fmt: skip
    adapter.save(settings.paths.adapter_dir, {"report": report.__dict__})
    print("\n".join(report.lines()))
    print(f"saved to {settings.paths.adapter_dir}")
    return 0


def _bridge_until_stopped(settings: Settings, bootstrap: str, handle: Any, stop: Any,
                          idle_timeout_s: float | None) -> None:  # fmt: skip
    from ramo_stream.label.bridge import make_bridge

    bridge = make_bridge(settings, bootstrap, handle)
    print(f"labeler: {settings.topics.pairs} -> {settings.topics.labels} "
          f"(selector {settings.labeling.selector}); Ctrl-C stops", flush=True)  # fmt: skip

    def progress(_: int) -> None:
        st = bridge.stats
        print(f"labeled {st.handled}, duplicates {st.duplicates}, conflicts {st.conflicts}, "
              f"already on {settings.topics.labels} {st.already_written}, "
              f"dead-lettered {st.dead_lettered}, undeliverable {st.undeliverable}, "
              f"broker {st.health.line()}", flush=True)  # fmt: skip

    try:
        bridge.run(stop=stop, idle_timeout_s=idle_timeout_s, on_progress=progress)
    except KeyboardInterrupt:
        pass
    finally:
        bridge.close()


def _app_handle(app: str, address: str) -> Any:
    """A handle to the Serve app ``app``, or an error that names the cluster and its apps."""
    from ray import serve

    apps = serve.status().applications
    if app not in apps:
        found = ", ".join(sorted(apps)) or "none"
        raise SystemExit(
            f"error: no Serve application {app!r} on the Ray cluster at {address} (its "
            f"applications: {found}); deploy it first (deploy/serve.yaml) or fix --attach"
        )
    return serve.get_app_handle(app)


def cmd_labeler(args: argparse.Namespace, settings: Settings) -> int:
    """Ray Serve labeler + Kafka bridge, until Ctrl-C (or --idle-timeout).

    With ``--attach APP``, only the bridge: it feeds the labeler app named APP that is
    already deployed on the Ray cluster at ``--ray-address`` (or RAY_ADDRESS), and leaves
    Serve as it found it when it stops.
    """
    import os

    import ray
    from ray import serve

    from ramo_stream.cli.signals import StopSignals
    from ramo_stream.label.serve_app import LabelerAppArgs, build_app
    from ramo_stream.stream.broker import kafka_session

    if not args.attach:  # an attached bridge uses whatever the deployed app was built with
        fallback = selector_without_adapter(args, settings)
        if fallback is not None:
            settings = settings.model_copy(
                update={"labeling": settings.labeling.model_copy(update={"selector": fallback})}
            )
    # SIGTERM and SIGINT alike: the bridge finishes its batch, commits, and stops.
    with StopSignals("labeler") as signals, kafka_session(settings) as bootstrap:
        stop = signals.stop
        if args.attach:
            address = args.ray_address or os.environ.get("RAY_ADDRESS")
            if not address:
                raise SystemExit(
                    "error: --attach needs the Ray cluster that runs the labeler app: pass "
                    "--ray-address (e.g. ray://head:10001, or the GCS address host:6379) or "
                    "set RAY_ADDRESS"
                )
            ray.init(address=address, logging_level="WARNING")
            signals.install()  # ray.init replaced the SIGTERM handler with sys.exit
            try:
                handle = _app_handle(args.attach, address)
                _bridge_until_stopped(settings, bootstrap, handle, stop, args.idle_timeout)
            finally:
                ray.shutdown()  # disconnects; the cluster and its apps keep running
            print("labeler stopped")
            return 0
        app_args = LabelerAppArgs(
            overrides=flat_settings(settings),
            grader_replicas=args.grader_replicas,
            adapter_replicas=args.adapter_replicas,
        )
        ray.init(include_dashboard=False, logging_level="WARNING")
        signals.install()
        try:
            serve.start(
                http_options={"host": "127.0.0.1"}, logging_config={"enable_access_log": False}
            )
            from ramo_stream.label.grading.factory import describe_choice

            print(describe_choice(settings), flush=True)
            handle = serve.run(build_app(app_args), name="labeler", route_prefix=None)
            _bridge_until_stopped(settings, bootstrap, handle, stop, args.idle_timeout)
        finally:
            from ramo_stream.cli.ray_stop import quiet_ray_stop

            with quiet_ray_stop():  # no "(raylet) ... killed by ray.kill" lines on a clean stop
                serve.shutdown()
                ray.shutdown()
    print("labeler stopped")
    return 0


def add_commands(sub: Any, parent: argparse.ArgumentParser) -> None:
    p = sub.add_parser("labeler", parents=[parent], help="Run the labeler service: Ray Serve "
                       "deployments for the Rule Adapter and the grader, fed from the pairs topic "
                       "by a Kafka bridge that writes the labels topic.")  # fmt: skip
    p.add_argument("--grader-replicas", type=int, default=1, help="Grader replicas (default 1).")
    p.add_argument("--adapter-replicas", type=int, default=1, help="Adapter replicas (default 1).")
    p.add_argument("--idle-timeout", type=float, help="Stop after this many idle seconds.")
    p.add_argument("--attach", metavar="APP", help="Run only the Kafka bridge, feeding the"
                   " labeler app APP already deployed on the Ray cluster at --ray-address"
                   " (or RAY_ADDRESS); e.g. the RayService's"
                   " `labeler` app. Serve is left running when it stops.")  # fmt: skip
    p.add_argument("--ray-address", metavar="ADDRESS", help="With --attach: the Ray cluster"
                   " (ray://host:10001 or the GCS address host:6379); default RAY_ADDRESS."
                   " Required: a bridge never guesses which cluster it feeds.")  # fmt: skip
    p.set_defaults(fn=cmd_labeler)

    p = sub.add_parser("label", parents=[parent], help="Label a JSONL file of pairs offline "
                       "(resumable: pairs already in OUTPUT are skipped).")  # fmt: skip
    p.add_argument("input", type=Path, help="Pairs: ResponsePair or RewardBench JSONL.")
    p.add_argument("output", type=Path, help="LabeledPair JSONL, appended to.")
    p.add_argument("--limit", type=int, help="Label at most this many input lines.")
    p.set_defaults(fn=cmd_label)

    adapter = sub.add_parser("adapter", help="The Rule Adapter.")
    asub = adapter.add_subparsers(dest="adapter_command", required=True, metavar="ACTION")
    p = asub.add_parser("train", parents=[parent], help="Grade the full pool on --pairs to get "
                        "top-k targets (resumable), then train the adapter on them and report "
                        "held-out top-k recall.")  # fmt: skip
    p.add_argument("--pairs", type=Path, help="Pairs to grade for targets (JSONL).")
    p.add_argument("--limit", type=int, help="Grade at most this many pairs.")
    p.add_argument("--targets", type=Path, help="Targets file (default: cache_dir/"
                   "adapter_targets.jsonl).")  # fmt: skip
    p.add_argument("--epochs", type=int, default=20, help="Training epochs (default 20).")
    p.add_argument("--train-encoder", action="store_true", help="Fine-tune the encoder too "
                   "(default: frozen encoder, head only; better with few pairs).")  # fmt: skip
    p.set_defaults(fn=cmd_adapter_train)
