"""Pairs per second through the stream layer vs a bare kafka-python loop, same broker, same run.

Both sides produce the same pairs with acks=all and the same batching, then consume them in
a consumer group with a manual commit after every poll. The bare loop does what a hand
written pipeline would (json.dumps / json.loads); the stream layer adds what ramo-stream
needs: pydantic validation and serialisation, dead-letter routing, dedup by pair_id, and
commits only after the downstream acknowledgement. Rounds alternate the order of the two
sides; the median of each is reported with the ratio (target: stream >= 0.8 x bare).

    python benchmarks/ingest.py [--pairs 20000] [--rounds 3] [--bootstrap HOST:PORT]

Consumer-group join time (about 3 s with tansu) is excluded on both sides: consume time runs
from the first record received to the last.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic

from ramo_stream.config import KafkaSettings
from ramo_stream.schemas import ResponsePair
from ramo_stream.stream.broker import EmbeddedBroker
from ramo_stream.stream.kafka_io import TopicWriter, make_consumer, make_producer
from ramo_stream.stream.processor import StreamProcessor

RESULTS = Path(__file__).parent / "results"
KAFKA = KafkaSettings()
PRODUCER_OPTS = {"acks": "all", "linger_ms": 5, "batch_size": 256 * 1024, "retries": 5}


def make_pairs(n: int) -> list[ResponsePair]:
    prompts = [
        "How should I store bleach and ammonia at home?",
        "Write a short poem about the sea at night.",
        "What is the safest way to dispose of old medication?",
        "Explain how phishing emails trick people, so I can train my staff.",
    ]
    return [
        ResponsePair(
            prompt=f"{prompts[i % len(prompts)]} (case {i})",
            response_a="Keep them in separate, sealed containers, in a ventilated place out of "
            f"reach of children, and never mix them: together they release toxic gas. [{i}]",
            response_b=f"I can't help with that. [{i}]",
            source="bench",
            metadata={"gold": "a", "subset": "bench"},
        )
        for i in range(n)
    ]


def new_topic(bootstrap: str, partitions: int = 4) -> str:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic(name, partitions, 1)])
    admin.close()
    return name


def bare(bootstrap: str, rows: list[dict], topic: str) -> tuple[float, float]:
    producer = KafkaProducer(bootstrap_servers=bootstrap, **PRODUCER_OPTS)
    t0 = time.perf_counter()
    futures = [
        producer.send(topic, key=r["pair_id"].encode(), value=json.dumps(r).encode()) for r in rows
    ]
    producer.flush()
    for f in futures:
        f.get()
    produce_s = time.perf_counter() - t0
    producer.close()

    consumer = KafkaConsumer(
        topic, bootstrap_servers=bootstrap, group_id=f"bare-{topic}", enable_auto_commit=False,
        auto_offset_reset="earliest", session_timeout_ms=KAFKA.session_timeout_ms,
        heartbeat_interval_ms=KAFKA.heartbeat_interval_ms, max_poll_records=KAFKA.max_in_flight,
    )  # fmt: skip
    n, first = 0, None
    while n < len(rows):
        polled = consumer.poll(timeout_ms=500, max_records=KAFKA.max_in_flight)
        if not polled:
            continue
        first = first or time.perf_counter()
        for batch in polled.values():
            for m in batch:
                json.loads(m.value)
                n += 1
        consumer.commit()
    consume_s = time.perf_counter() - (first or time.perf_counter())
    consumer.close(autocommit=False)
    return produce_s, consume_s


def layer(bootstrap: str, pairs: list[ResponsePair], topic: str, dlq: str) -> tuple[float, float]:
    producer = make_producer(bootstrap, KAFKA)
    writer = TopicWriter(producer)
    t0 = time.perf_counter()
    for p in pairs:
        writer.send(topic, p, key=p.pair_id)
    writer.flush()
    produce_s = time.perf_counter() - t0

    first: list[float] = []
    proc = StreamProcessor(
        make_consumer(bootstrap, KAFKA, f"layer-{topic}", topic), writer, ResponsePair,
        lambda batch: None, dlq_topic=dlq, stage="bench", max_in_flight=KAFKA.max_in_flight,
    )  # fmt: skip

    def mark_first(_: int) -> None:
        if not first:
            first.append(time.perf_counter())

    proc.run(max_records=len(pairs), on_progress=mark_first)
    consume_s = time.perf_counter() - first[0]
    assert proc.stats.handled == len(pairs), proc.stats
    proc.close()
    producer.close()
    return produce_s, consume_s


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pairs", type=int, default=20_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--bootstrap", help="Use this broker instead of an embedded one.")
    ap.add_argument("--no-save", action="store_true", help="Do not write benchmarks/results.")
    args = ap.parse_args()

    pairs = make_pairs(args.pairs)
    rows = [json.loads(p.model_dump_json()) for p in pairs]
    broker = None
    if args.bootstrap:
        bootstrap = args.bootstrap
    else:
        broker = EmbeddedBroker(port=0)
        bootstrap = broker.start()
    results: dict[str, list[tuple[float, float]]] = {"bare": [], "layer": []}
    try:
        for r in range(args.rounds):
            order = ["bare", "layer"] if r % 2 == 0 else ["layer", "bare"]
            for side in order:
                topic = new_topic(bootstrap)
                if side == "bare":
                    results[side].append(bare(bootstrap, rows, topic))
                else:
                    results[side].append(layer(bootstrap, pairs, topic, new_topic(bootstrap, 1)))
                p, c = results[side][-1]
                print(f"round {r + 1} {side:5s}: produce {len(pairs) / p:8.0f}/s  "
                      f"consume {len(pairs) / c:8.0f}/s  end-to-end {len(pairs) / (p + c):8.0f}/s",
                      flush=True)  # fmt: skip
    finally:
        if broker:
            broker.stop()

    def med(side: str, i: int | None) -> float:
        secs = [(p + c) if i is None else (p, c)[i] for p, c in results[side]]
        return len(pairs) / statistics.median(secs)

    lines = [
        f"# ingest benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"command: `python benchmarks/ingest.py --pairs {args.pairs} --rounds {args.rounds}`",
        f"machine: {platform.machine()}, {platform.processor() or 'cpu'}, "
        f"python {platform.python_version()}; broker: "
        f"{'embedded tansu (memory)' if broker else bootstrap}",
        f"git: {_git_rev()}",
        "",
        "| phase | bare kafka-python (pairs/s) | stream layer (pairs/s) | ratio |",
        "|---|---:|---:|---:|",
    ]
    for label, i in (("produce", 0), ("consume", 1), ("end-to-end", None)):
        b, s = med("bare", i), med("layer", i)
        lines.append(f"| {label} | {b:,.0f} | {s:,.0f} | {s / b:.2f} |")
    lines += ["", f"Medians of {args.rounds} alternating rounds of {args.pairs} pairs each."]
    report = "\n".join(lines)
    print("\n" + report)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "ingest.md").write_text(report + "\n")
        print(f"\nwritten to {RESULTS / 'ingest.md'}")


def _git_rev() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, check=True)  # fmt: skip
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
