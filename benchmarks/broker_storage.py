"""The embedded broker's storage engines: memory vs disk (tansu's s3 engine over
`rclone serve s3` on a local folder), same records, same run.

For each engine: produce N pairs-sized records (acks=all), consume them in a group with a
commit after every poll, stop the broker, start it again on the same folder, and count
what the group still finds (disk must find every record and resume after its commits;
memory finds nothing). Prints records/s of each and the disk/memory ratio.

    python benchmarks/broker_storage.py [--records 20000] [--size 1000]
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from kafka import TopicPartition
from kafka.structs import OffsetAndMetadata

from ramo_stream.config import KafkaSettings, TopicSettings
from ramo_stream.stream.broker import EmbeddedBroker, ensure_topics
from ramo_stream.stream.kafka_io import TopicWriter, make_consumer, make_producer, read_topic

RESULTS = Path(__file__).parent / "results"
KAFKA = KafkaSettings()
TOPICS = TopicSettings(pairs="b.pairs", labels="b.labels", dlq="b.dlq")


def run(data_dir: Path | None, n: int, size: int) -> dict[str, float]:
    broker = EmbeddedBroker(data_dir=data_dir)
    t0 = time.perf_counter()
    broker.start()
    start_s = time.perf_counter() - t0
    try:
        ensure_topics(broker.bootstrap, TOPICS)
        producer = make_producer(broker.bootstrap, KAFKA)
        w = TopicWriter(producer)
        value = b"x" * size
        t0 = time.perf_counter()
        for i in range(n):
            w.send_bytes(TOPICS.pairs, value, key=b"k%d" % i)
        w.flush(timeout_s=300)
        produce_s = time.perf_counter() - t0
        producer.close()
        c = make_consumer(broker.bootstrap, KAFKA, "bench", TOPICS.pairs)
        got, first = 0, None
        deadline = time.monotonic() + 600
        while got < n and time.monotonic() < deadline:
            for tp, msgs in c.poll(timeout_ms=500).items():
                first = first or time.perf_counter()
                got += len(msgs)
                c.commit({TopicPartition(tp.topic, tp.partition): OffsetAndMetadata(
                    msgs[-1].offset + 1, "", -1)})  # fmt: skip
        consume_s = time.perf_counter() - (first or time.perf_counter())
        c.close(autocommit=False)
    finally:
        broker.stop()
    t0 = time.perf_counter()
    broker.start()
    restart_s = time.perf_counter() - t0
    try:
        kept = len(read_topic(broker.bootstrap, TOPICS.pairs, polls=60)) if data_dir else 0
    finally:
        broker.stop()
    return {"start_s": start_s, "produce_per_s": n / produce_s, "consumed": got,
            "consume_per_s": got / consume_s if consume_s else 0.0, "restart_s": restart_s,
            "kept_after_restart": kept}  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--size", type=int, default=1000, help="bytes per record")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        mem = run(None, args.records, args.size)
        disk = run(Path(tmp) / "data", args.records, args.size)
        on_disk = sum(f.stat().st_size for f in Path(tmp).rglob("*") if f.is_file())
    lines = [
        f"# Embedded broker storage: memory vs disk ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)",
        "",
        f"`python benchmarks/broker_storage.py --records {args.records} --size {args.size}`"
        f" on {platform.machine()}, {platform.python_version()}; one run, one machine shared"
        " with other jobs (noisy).",
        "",
        "| | memory | disk | disk / memory |",
        "|---|---|---|---|",
    ]
    for key in ("produce_per_s", "consume_per_s", "start_s", "restart_s"):
        ratio = disk[key] / mem[key] if mem[key] else float("nan")
        lines.append(f"| {key} | {mem[key]:.1f} | {disk[key]:.1f} | {ratio:.2f} |")
    lines += [
        f"| records kept after a restart | {mem['kept_after_restart']:.0f} |"
        f" {disk['kept_after_restart']:.0f} of {args.records} | |",
        "",
        f"Disk use after the run: {on_disk / 1e6:.1f} MB for {args.records} records of"
        f" {args.size} bytes.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    (RESULTS / "broker_storage.md").write_text(text)


if __name__ == "__main__":
    main()
