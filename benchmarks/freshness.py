"""Label freshness: seconds from a label written to the labels topic until a published
version that trained on it exists, for the streaming trainer vs a periodic batch retrain.

One run, two sides, the same labels on the same write schedule (run one after the other,
not at once, so they do not share the CPU):

- streaming (the system under test): ``ramo train --config FILE`` as a subprocess on an
  embedded broker (its own, on a free port; labels topic with 2 partitions). A producer
  thread writes human labels at a fixed --rate for --duration seconds, one at a time
  (acks=all); for each it records the wall time its send was acknowledged and its
  (partition, offset). A watcher polls the registry every 0.2 s. A label at (p, o) is in
  version v when o < v.offsets[topic][p] (the manifest's next offsets, see
  ``ramo_stream/train/loop.py``); its freshness is the ``created_at`` of the first version
  that holds it minus its acknowledgement time.
- baseline (the usual non-streaming practice): a periodic batch job. Every
  --baseline-every-s seconds (default: the trainer's --publish-every-s) it retrains from
  the backbone on every label written so far (``ramo train --from-file SNAPSHOT.jsonl``
  into a fresh registry: same model, batch, length and learning rate, one pass) and
  publishes one version. A job that is still running when the next is due delays it: jobs
  never overlap, so batch freshness grows with the data. The writes are replayed on the
  streaming side's schedule (same offsets from the start); jobs continue until one has
  trained on the last label. Freshness = the job's version ``created_at`` - the label's
  (replayed) write time.

Start-up is not measured on either side: the trainer is started first, one warm-up label
(not counted) is written, and the timed stream begins as soon as the version that trained
on it appears, so Ray, the model load and the consumer are up. Once a version holds every
label, the benchmark stops the trainer with SIGTERM (it drains, publishes if anything is
new, and exits). Each batch job pays its own Ray start-up and model load, as a cron job
would.

Idle stops: ``train.idle_stop_s`` is not set by default. The trainer measures idleness as
time since it last *received* a record, and it does not poll while it drains and publishes;
on a slow CPU a drain + publish longer than idle_stop_s makes it stop in the middle of a
steady stream. Seen on the 2-core dev machine with idle_stop_s 10 at 2 labels/s: the
trainer exited (code 0) while labels were still arriving, and 89 of the 120 were never
trained; a second such run did not stop early. --idle-stop-s sets it anyway.

    python benchmarks/freshness.py [--rate 2] [--duration 60] [--publish-every-s 5]
        [--flush-s 1] [--baseline-every-s P] [--backbone all-minilm-l6-v2]
        [--batch-pairs 8] [--max-length 128] [--no-baseline] [--no-save]

Data: rows of ../shared/data/hh_harmless_test.jsonl (RewardBench style, so each carries a
human preference), in file order: rate x duration timed labels plus one warm-up label
(skips when the file is absent). The settings of both sides go to the YAML files the
trainer reads; RAMO_* variables are removed from its environment so nothing else applies.
Results: benchmarks/results/freshness.md and freshness.json (not with --no-save).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from ramo_stream.config import KafkaSettings, TopicSettings, load_settings
from ramo_stream.local_models import KNOWN, prepare, resolve
from ramo_stream.registry.store import Manifest, Registry
from ramo_stream.schemas import LabeledPair, Rejection
from ramo_stream.stream.broker import EmbeddedBroker, ensure_topics
from ramo_stream.stream.ingest import human_label, parse_line
from ramo_stream.stream.kafka_io import make_producer
from ramo_stream.train.data import is_heldout

RESULTS = Path(__file__).parent / "results"
HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_harmless_test.jsonl"
LABELS_TOPIC, DLQ_TOPIC = "bench.freshness.labels", "bench.freshness.dlq"
NEVER = 1_000_000_000  # "never" for the step and held-out settings
POLL_S = 0.2


# --- labels -----------------------------------------------------------------------------


def load_labels(path: Path, n: int) -> list[LabeledPair]:
    """The first ``n`` rows of a RewardBench-style file as human labels."""
    out: list[LabeledPair] = []
    for raw in path.read_bytes().splitlines():
        if len(out) == n:
            break
        if not raw.strip():
            continue
        pair = parse_line(raw, "hh-harmless")
        label = pair if isinstance(pair, Rejection) else human_label(pair, raw)
        if not isinstance(label, Rejection) and label.preferred != "tie":
            out.append(label)
    if len(out) < n:
        sys.exit(f"{path} has only {len(out)} usable rows; lower --rate or --duration")
    return out


@dataclass
class Written:
    """One timed label: when its write was acknowledged (wall clock) and where it went."""

    index: int
    acked_at: float
    partition: int
    offset: int


# --- settings ---------------------------------------------------------------------------


def train_settings(args: argparse.Namespace, backbone: str, cache: Path) -> dict[str, Any]:
    """What both sides share: model, batch and optimisation; every pair trained."""
    return {
        "paths": {"cache_dir": str(cache)},
        "models": {"reward_backbone": backbone},
        "train": {
            "workers": 1,
            "batch_pairs": args.batch_pairs,
            "max_length": args.max_length,
            "batch_tokens": max(16384, 2 * args.max_length),
            "lr": args.lr,
            "heldout_every": NEVER,  # every label is trained, none held out
            "keep_versions": 3,  # the watcher reads each manifest within 0.2 s of its publish
        },
    }


def write_config(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def child_env() -> dict[str, str]:
    """Our environment without RAMO_* (they would override the YAML file)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RAMO_")}


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 60.0) -> None:
    """SIGTERM to the driver (it drains and publishes), then SIGKILL to its whole session."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # Ray's processes started in its session
    proc.wait()


def tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


# --- streaming side ---------------------------------------------------------------------


@dataclass
class Watcher:
    """Polls a registry; keeps each new version's manifest and when it was first seen."""

    registry: Registry
    seen: dict[int, tuple[Manifest, float]] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def poll(self) -> None:
        for m in self.registry.versions():
            if m.version not in self.seen:
                self.seen[m.version] = (m, time.time())

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.poll()
            except Exception as e:  # a version deleted by retention while being read
                print(f"watcher: {e}", flush=True)
            time.sleep(POLL_S)

    def manifests(self) -> list[tuple[Manifest, float]]:
        return [self.seen[v] for v in sorted(self.seen)]


def first_holding(
    p: int, o: int, versions: list[tuple[Manifest, float]]
) -> tuple[Manifest, float] | None:
    for m, seen_at in versions:
        if o < m.offsets.get(LABELS_TOPIC, {}).get(p, 0):
            return m, seen_at
    return None


def run_streaming(
    args: argparse.Namespace,
    labels: list[LabeledPair],
    warmup: LabeledPair,
    backbone: str,
    work: Path,
) -> dict[str, Any]:
    broker = EmbeddedBroker(port=0, log_path=work / "broker.log")
    bootstrap = broker.start()
    proc: subprocess.Popen[bytes] | None = None
    try:
        ensure_topics(bootstrap, TopicSettings(partitions=2), names=[LABELS_TOPIC, DLQ_TOPIC])
        cfg = train_settings(args, backbone, work / "stream-cache")
        cfg["kafka"] = {"bootstrap_servers": bootstrap}
        cfg["topics"] = {"labels": LABELS_TOPIC, "dlq": DLQ_TOPIC}
        cfg["train"].update(
            registry=str(work / "stream-registry"),
            flush_s=args.flush_s,
            publish_every_s=args.publish_every_s,
            publish_every_steps=NEVER,  # publishes are timed by publish_every_s alone
            idle_stop_s=args.idle_stop_s,
        )
        config = write_config(work / "stream.yaml", cfg)
        load_settings(config)  # fail here, not in the subprocess, on a bad setting
        log_path = work / "stream-trainer.log"
        log = log_path.open("wb")
        cmd = [sys.executable, "-m", "ramo_stream.cli", "train", "--config", str(config)]
        t_start = time.time()
        proc = subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True
        )
        log.close()
        producer = make_producer(bootstrap, KafkaSettings())
        producer.send(LABELS_TOPIC, warmup.model_dump_json().encode(),
                      key=warmup.pair.pair_id.encode()).get(timeout=30)  # fmt: skip
        registry = Registry(cfg["train"]["registry"], keep=3)
        watcher = Watcher(registry)
        deadline = time.monotonic() + args.startup_timeout_s
        while not registry.versions():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    f"the trainer published no version within {args.startup_timeout_s:.0f}s "
                    f"(exit code {proc.poll()}); its log ends:\n{tail(log_path)}"
                )
            time.sleep(POLL_S)
        ready_s = time.time() - t_start
        print(f"streaming: trainer up, warm-up version after {ready_s:.1f}s; "
              f"writing {len(labels)} labels at {args.rate}/s", flush=True)  # fmt: skip
        watcher.poll()
        wthread = threading.Thread(target=watcher.run, daemon=True)
        wthread.start()

        written: list[Written] = []
        exited_early: float | None = None
        t0 = time.monotonic()
        for i, label in enumerate(labels):
            delay = t0 + i / args.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            fut = producer.send(LABELS_TOPIC, label.model_dump_json().encode(),
                                key=label.pair.pair_id.encode())  # fmt: skip
            meta = fut.get(timeout=30)
            written.append(Written(i, time.time(), meta.partition, meta.offset))
            if exited_early is None and proc.poll() is not None:
                exited_early = time.time() - written[0].acked_at
                print(f"streaming: the trainer exited (code {proc.returncode}) "
                      f"{exited_early:.1f}s into the stream", flush=True)  # fmt: skip
        producer.close()
        first_write = written[0].acked_at
        print(f"streaming: all {len(written)} labels written; waiting for the version that "
              f"holds the last one", flush=True)  # fmt: skip

        # Wait while versions keep coming (a backlog takes a while to train); give up after
        # a stretch with no new version.
        patience = 3 * args.publish_every_s + 60
        last_progress, count = time.monotonic(), len(watcher.seen)
        while time.monotonic() - last_progress < patience:
            versions = watcher.manifests()
            if all(first_holding(w.partition, w.offset, versions) for w in written):
                break
            if proc.poll() is not None:
                watcher.poll()
                break
            if len(versions) != count:
                last_progress, count = time.monotonic(), len(versions)
            time.sleep(POLL_S)
        if args.idle_stop_s is not None:
            try:  # the trainer stops by itself idle_stop_s after the last label
                proc.wait(timeout=args.idle_stop_s + 60)
            except subprocess.TimeoutExpired:
                print("streaming: the trainer did not stop by itself; stopping it", flush=True)
        stop_process(proc)  # SIGTERM: the trainer drains, publishes if needed and exits
        watcher.stop.set()
        wthread.join()
        watcher.poll()
        exit_code = proc.returncode
    finally:
        if proc is not None and proc.poll() is None:
            stop_process(proc)
        broker.stop()
        for d in ("stream-registry", "stream-cache"):  # ~270 MB per version
            shutil.rmtree(work / d, ignore_errors=True)

    versions = watcher.manifests()
    fresh: list[float | None] = []
    observed_lag: list[float] = []
    for w in written:
        hit = first_holding(w.partition, w.offset, versions)
        if hit is None:
            fresh.append(None)
            continue
        m, seen_at = hit
        fresh.append(m.created_at.timestamp() - w.acked_at)
        observed_lag.append(seen_at - m.created_at.timestamp())
    timed = [m for m, _ in versions if m.created_at.timestamp() >= first_write]
    gaps = [
        b.created_at.timestamp() - a.created_at.timestamp()
        for a, b in zip(timed, timed[1:], strict=False)
    ]
    return {
        "fresh": fresh,
        "written": written,
        "versions": len(timed),
        "mean_publish_interval_s": statistics.mean(gaps) if gaps else None,
        "watcher_lag_max_s": max(observed_lag) if observed_lag else None,
        "trainer_ready_s": ready_s,
        "trainer_exit_code": exit_code,
        "final_samples_seen": versions[-1][0].samples_seen if versions else 0,
        "train_pairs_per_s": versions[-1][0].metrics.get("samples_per_s") if versions else None,
        "exited_early_s": exited_early,
        "log": tail(work / "stream-trainer.log", 1500),
    }


# --- baseline: periodic batch retrain ---------------------------------------------------


def run_baseline(
    args: argparse.Namespace,
    labels: list[LabeledPair],
    write_offsets: list[float],
    backbone: str,
    work: Path,
) -> dict[str, Any]:
    """Batch jobs every P seconds (or back to back when slower) on the replayed schedule."""
    every = args.baseline_every_s or args.publish_every_s
    t0 = time.time()
    writes = [t0 + d for d in write_offsets]
    covered_by: list[float | None] = [None] * len(labels)
    jobs: list[dict[str, Any]] = []
    done = 0  # labels [0, done) are in some job's version
    k = 1  # ticks at t0 + P, t0 + 2P, ...: the clock starts with the writes, as the
    # streaming trainer's publish timer does (it was reset by the warm-up version)
    while done < len(labels):
        due = t0 + k * every
        k += 1
        if time.time() < due:
            time.sleep(due - time.time())
        start = time.time()  # after the previous job ended: jobs never overlap
        n = sum(1 for w in writes if w <= start)
        if n == 0 or n == done:
            continue  # nothing new written: a cron job would have nothing to retrain on
        job_dir = work / f"batch-{len(jobs) + 1:03d}"
        job_dir.mkdir()
        snap = job_dir / "snapshot.jsonl"
        snap.write_bytes(b"".join(lb.model_dump_json().encode() + b"\n" for lb in labels[:n]))
        cfg = train_settings(args, backbone, job_dir / "cache")
        cfg["train"].update(
            registry=str(job_dir / "registry"),  # fresh: retrain from the backbone
            flush_s=0.0,
            publish_every_s=float(NEVER),
            publish_every_steps=NEVER,  # one version, at the end of the file
        )
        config = write_config(job_dir / "job.yaml", cfg)
        cmd = [sys.executable, "-m", "ramo_stream.cli", "train", "--config", str(config),
               "--from-file", str(snap)]  # fmt: skip
        log_path = job_dir / "job.log"
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, env=child_env(), start_new_session=True
            )
            try:
                proc.wait(timeout=args.job_timeout_s)
            except subprocess.TimeoutExpired:
                stop_process(proc, grace_s=10)
        ended = time.time()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything Ray left in the job's session
        manifest = Registry(job_dir / "registry").current()
        if proc.returncode != 0 or manifest is None:
            raise SystemExit(f"batch job {len(jobs) + 1} failed (exit {proc.returncode}); "
                             f"its log ends:\n{tail(log_path)}")  # fmt: skip
        created = manifest.created_at.timestamp()
        for i in range(done, n):
            covered_by[i] = created - writes[i]
        jobs.append({"labels": n, "started_at": start, "ended_at": ended, "wall_s": ended - start,
                     "train_s": manifest.metrics.get("run_train_s", 0.0),
                     "samples_seen": manifest.samples_seen})  # fmt: skip
        print(f"baseline: job {len(jobs)} on {n} labels took {ended - start:.1f}s "
              f"({jobs[-1]['train_s']:.1f}s of training)", flush=True)  # fmt: skip
        done = n
        for d in (job_dir / "registry", job_dir / "cache"):  # ~270 MB per version
            shutil.rmtree(d, ignore_errors=True)
    return {"fresh": covered_by, "jobs": jobs, "every_s": every}


# --- report -----------------------------------------------------------------------------


def summary(fresh: list[float | None]) -> dict[str, Any]:
    got = sorted(f for f in fresh if f is not None)
    if not got:
        return {"count": 0, "uncovered": len(fresh)}
    p90 = got[min(len(got) - 1, int(0.9 * len(got)))]
    return {"count": len(got), "uncovered": len(fresh) - len(got),
            "median": statistics.median(got), "p90": p90, "worst": got[-1], "best": got[0],
            "mean": statistics.mean(got)}  # fmt: skip


def by_write_time(
    stream: dict[str, Any], base: dict[str, Any] | None, bucket_s: float = 10.0
) -> list[str]:
    """Median freshness per bucket of write time: batch grows with the data, streaming not."""
    t0 = stream["written"][0].acked_at
    keys = [int((w.acked_at - t0) // bucket_s) for w in stream["written"]]
    sides = [("streaming", stream["fresh"])] + ([("batch", base["fresh"])] if base else [])
    head = [f"{k * bucket_s:g}-{(k + 1) * bucket_s:g}" for k in sorted(set(keys))]
    out = [
        f"Median freshness (s) by when the label was written (s into the stream, "
        f"{bucket_s:g} s buckets):",
        "",
        "| side | " + " | ".join(head) + " |",
        "|---|" + "---:|" * len(head),
    ]
    for name, fresh in sides:
        cells = []
        for k in sorted(set(keys)):
            got = [f for f, kk in zip(fresh, keys, strict=True) if kk == k and f is not None]
            cells.append(fmt(statistics.median(got)) if got else "-")
        out.append(f"| {name} | " + " | ".join(cells) + " |")
    return out


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _git_rev() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, cwd=Path(__file__).parent, check=True)  # fmt: skip
        dirty = subprocess.run(["git", "status", "--porcelain"], capture_output=True, text=True,
                               cwd=Path(__file__).parent, check=True).stdout.strip()  # fmt: skip
        return out.stdout.strip() + (" (working tree with uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _cpu() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rate", type=float, default=2.0, help="Labels written per second (2).")
    ap.add_argument("--duration", type=float, default=60.0,
                    help="Seconds of writing (60); rate x duration labels are timed.")  # fmt: skip
    ap.add_argument("--publish-every-s", type=float, default=5.0,
                    help="train.publish_every_s of the streaming trainer (5).")  # fmt: skip
    ap.add_argument("--flush-s", type=float, default=1.0,
                    help="train.flush_s: most a partial batch waits (1).")  # fmt: skip
    ap.add_argument("--idle-stop-s", type=float, default=None,
                    help="Set train.idle_stop_s (default: unset; the benchmark stops the "
                    "trainer with SIGTERM once a version holds every label). Must exceed "
                    "1/rate. See the note on idle stops above.")  # fmt: skip
    ap.add_argument("--baseline-every-s", type=float, default=None,
                    help="Period of the batch retrain (default: --publish-every-s).")  # fmt: skip
    ap.add_argument("--backbone", default="all-minilm-l6-v2",
                    help="Reward backbone: a local model name or a model folder.")  # fmt: skip
    ap.add_argument("--batch-pairs", type=int, default=8, help="train.batch_pairs (8).")
    ap.add_argument("--max-length", type=int, default=128, help="train.max_length (128).")
    ap.add_argument("--lr", type=float, default=1e-5, help="train.lr (1e-5).")
    ap.add_argument("--startup-timeout-s", type=float, default=240.0,
                    help="Wait this long for the trainer's warm-up version (240).")  # fmt: skip
    ap.add_argument("--job-timeout-s", type=float, default=600.0,
                    help="Give up on a batch job after this long (600).")  # fmt: skip
    ap.add_argument("--no-baseline", action="store_true", help="Streaming side only.")
    ap.add_argument("--workdir", type=Path, default=None,
                    help="Keep configs, logs and snapshots in this new folder (default: a "
                    "temp dir, deleted). Registries are deleted either way.")  # fmt: skip
    ap.add_argument("--no-save", action="store_true", help="Do not write benchmarks/results.")
    args = ap.parse_args()
    if args.rate <= 0 or args.duration <= 0:
        ap.error("--rate and --duration must be positive")
    if args.idle_stop_s is not None and args.idle_stop_s <= 1 / args.rate:
        ap.error("--idle-stop-s must exceed the gap between labels (1/rate)")
    if not HH.is_file():
        print(f"skipped: {HH} is absent (the benchmark writes real human labels from it)")
        return 0

    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    n = max(1, round(args.rate * args.duration))
    pool = load_labels(HH, n + 1)
    labels, warmup = pool[:n], pool[n]
    held = sum(is_heldout(lb.pair.pair_id, NEVER) for lb in labels)
    settings = load_settings()
    if args.backbone in KNOWN:
        prepare(args.backbone, settings.paths.models_dir)
    backbone = resolve(args.backbone, settings.paths.models_dir)
    print(f"{n} labels at {args.rate}/s for {args.duration:.0f}s (+1 warm-up), backbone "
          f"{args.backbone}, batch {args.batch_pairs}, max_length {args.max_length}",
          flush=True)  # fmt: skip

    with tempfile.TemporaryDirectory(prefix="ramo-bench-fresh-") as tmp:
        work = Path(tmp)
        if args.workdir:
            work = args.workdir.resolve()
            work.mkdir(parents=True, exist_ok=False)
        stream = run_streaming(args, labels, warmup, backbone, work)
        offsets = [w.acked_at - stream["written"][0].acked_at for w in stream["written"]]
        base = None if args.no_baseline else run_baseline(args, labels, offsets, backbone, work)

    s = summary(stream["fresh"])
    b = summary(base["fresh"]) if base else None
    ratio = b["median"] / s["median"] if b and b.get("median") and s.get("median") else None
    ratio_worst = b["worst"] / s["worst"] if b and b.get("worst") and s.get("worst") else None
    every = (base or {}).get("every_s", args.baseline_every_s or args.publish_every_s)
    stream_desc = (f"`ramo train` on the labels topic: publish_every_s {args.publish_every_s:g}, "
                   f"flush_s {args.flush_s:g}, idle_stop_s {args.idle_stop_s}, "
                   "publish_every_steps and heldout_every 1e9 (time-based publishes only; "
                   "every label trained)")  # fmt: skip
    base_desc = (f"`ramo train --from-file` on all labels written so far, from the backbone, "
                 f"every {every:g} s (or back to back when a job runs longer), one version "
                 "per job")  # fmt: skip

    rows = [("streaming trainer", s)] + ([("periodic batch retrain", b)] if b else [])
    lines = [
        f"# label freshness benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"command: `{' '.join(['python benchmarks/freshness.py', *sys.argv[1:]])}`",
        f"machine: {platform.machine()}, {_cpu()}, {os.cpu_count()} cores, CPU only, "
        f"python {platform.python_version()}; broker: embedded tansu (memory); 1-min load "
        f"average {fmt(load_at_start)} at the start, {fmt(os.getloadavg()[0])} at the end "
        "(other processes share the cores)",
        f"git: {_git_rev()}",
        f"labels: {n} human preferences (first rows of hh_harmless_test.jsonl) written one at a "
        f"time (acks=all) at {args.rate:g}/s for {args.duration:g} s to a 2-partition topic; "
        f"{held} of them held out",
        f"model: {args.backbone}, batch_pairs {args.batch_pairs}, max_length "
        f"{args.max_length}, lr {args.lr:g}, 1 Ray Train worker (CPU), both sides",
        f"streaming: {stream_desc}",
        f"baseline: {base_desc}" if base else "baseline: not run (--no-baseline)",
        "",
        "Freshness of a label = created_at of the first published version that trained on it "
        "- the wall time its write was acknowledged (baseline: its replayed write time).",
        "",
        "| side | labels covered | not covered | median s | p90 s | worst s | versions |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    versions = {"streaming trainer": stream["versions"],
                "periodic batch retrain": len(base["jobs"]) if base else 0}  # fmt: skip
    for name, r in rows:
        cells = [r["count"], r["uncovered"], fmt(r.get("median")), fmt(r.get("p90")),
                 fmt(r.get("worst")), versions[name]]  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(map(str, cells)) + " |")
    lines.append("")
    if ratio is not None:
        lines.append(f"ratio of medians baseline/streaming: **{ratio:.2f}** "
                     f"(of worst: {ratio_worst:.2f})")  # fmt: skip
    lines += ["", *by_write_time(stream, base), ""]
    mpi = stream["mean_publish_interval_s"]
    lines.append(
        f"Streaming: trainer start to its warm-up version {stream['trainer_ready_s']:.1f} s (not "
        f"counted); mean interval between versions {fmt(mpi)} s; a version was seen by the "
        f"0.2 s registry watcher at most {fmt(stream['watcher_lag_max_s'])} s after its "
        f"created_at; trainer exit code {stream['trainer_exit_code']}; final version "
        f"samples_seen {stream['final_samples_seen']} (with the warm-up label); it trained "
        f"{fmt(stream['train_pairs_per_s'])} pairs/s from its first step to its last (manifest "
        f"samples_per_s, publishes included) while {args.rate:g} labels/s were written."
        + (
            f" The trainer exited {stream['exited_early_s']:.1f} s into the stream, before the "
            "last label was written."
            if stream["exited_early_s"] is not None
            else ""
        )
    )
    if base:
        jobs = base["jobs"]
        lines.append(
            f"Baseline: {len(jobs)} jobs, on {', '.join(str(j['labels']) for j in jobs)} labels; "
            f"wall time per job {', '.join(format(j['wall_s'], '.1f') for j in jobs)} s, of "
            f"which training {', '.join(format(j['train_s'], '.1f') for j in jobs)} s (the "
            "rest: Ray start-up, model load, publish)."
        )
    report = "\n".join(lines)
    print("\n" + report)
    if stream["trainer_exit_code"] not in (0, None):
        print(f"\nthe streaming trainer's log ends:\n{stream['log']}")
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "freshness.md").write_text(report + "\n")
        data = {
            "args": vars(args),
            "streaming": {**s, "versions": stream["versions"],
                          "per_label_s": stream["fresh"],
                          "mean_publish_interval_s": mpi,
                          "trainer_ready_s": stream["trainer_ready_s"]},
            "baseline": {**b, "jobs": base["jobs"], "per_label_s": base["fresh"],
                         "every_s": every} if base and b else None,
            "ratio_median": ratio,
            "ratio_worst": ratio_worst,
        }  # fmt: skip
        (RESULTS / "freshness.json").write_text(json.dumps(data, indent=1) + "\n")
        print(f"\nwritten to {RESULTS / 'freshness.md'} and freshness.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
