"""Selection gate throughput vs the labeler's, same machine, same run.

The gate (``ramo_stream.stream.gate``, d-opt, in-process, on an embedded broker) consumes
--pairs HH harmless pairs from a 4-partition topic and writes every one to selected or
skipped; its rate is pairs / wall seconds from the first poll to caught up (the model is
loaded and warmed up before the clock starts, as in a running gate). It is measured once per
reward backbone: all-MiniLM-L6-v2 (the encoder; 22M parameters) and SmolLM2-135M-Instruct
(the project's default reward backbone, a decoder). The baseline, measured in the same run:
the Labeler (transformers grader, SmolLM2-135M-Instruct, the random rule selector, the
default k and calibration) on --label-pairs pairs, pairs / s. The target: gate >= 10x labeler.

    python benchmarks/select_throughput.py [--pairs 200] [--decoder-pairs 40]
        [--label-pairs 2] [--threads 2] [--no-save]

Results: benchmarks/results/select_throughput.md.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import torch

from ramo_stream.config import load_settings
from ramo_stream.local_models import prepare
from ramo_stream.schemas import ResponsePair
from ramo_stream.stream.broker import EmbeddedBroker, ensure_topics
from ramo_stream.stream.kafka_io import TopicWriter, make_producer

sys.path.insert(0, str(Path(__file__).parent))
from label_throughput import load_pairs  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def gate_rate(
    bootstrap: str, backbone: Path, pairs: list[ResponsePair], cache: Path
) -> tuple[float, float]:
    from ramo_stream.registry.features import ServedModel
    from ramo_stream.stream.gate import make_gate, run_gate

    tag = uuid.uuid4().hex[:8]
    settings = load_settings(None, {
        "topics.pairs": f"pairs-{tag}", "topics.selected": f"sel-{tag}",
        "topics.skipped": f"skip-{tag}", "topics.dlq": f"dlq-{tag}",
        "paths.cache_dir": str(cache), "models.reward_backbone": str(backbone),
        "select.group": f"g-{tag}", "select.linger_s": 0.0,
    })  # fmt: skip
    t = settings.topics
    ensure_topics(bootstrap, t, [t.pairs, t.selected, t.skipped, t.dlq])
    producer = make_producer(bootstrap, settings.kafka)
    writer = TopicWriter(producer)
    for p in pairs:
        writer.send(t.pairs, p, key=p.pair_id)
    writer.flush()
    producer.close()
    model = ServedModel(settings)
    model.refresh(time.monotonic())  # load outside the clock, as a running gate has it
    model.featurizer.pairs([pairs[0].prompt], [pairs[0].response_a], [pairs[0].response_b])
    processor, gate = make_gate(settings, bootstrap, model=model)
    started, cpu = time.perf_counter(), time.process_time()
    run_gate(processor, settings, until_caught_up=True, idle_timeout_s=120)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    processor.close()
    gate.writer.producer.close()
    st = gate.stats
    assert st.seen == len(pairs) and st.selected + st.skipped == len(pairs), st
    print(f"gate ({backbone.name}): {len(pairs)} pairs in {wall:.1f} s -> {st.selected} selected,"
          f" {st.skipped} skipped; {len(pairs) / wall:.2f} pairs/s, {len(pairs) / cpu:.2f} per"
          " CPU-s", flush=True)  # fmt: skip
    return len(pairs) / wall, len(pairs) / cpu


def labeler_rate(models: Path, pairs: list[ResponsePair]) -> tuple[float, float]:
    from ramo_stream.core.rules import load_pool
    from ramo_stream.label.grading.transformers_backend import TransformersGrader
    from ramo_stream.label.labeler import Labeler

    settings = load_settings()
    pool = load_pool(settings.paths.rule_pool)
    grader = TransformersGrader(str(prepare("smollm2-135m-instruct", models)),
                                dtype=settings.grader.dtype, device="cpu")  # fmt: skip
    labeling = settings.labeling.model_copy(update={"selector": "random"})
    labeler = Labeler(grader, pool, labeling, None)
    labeler.label(pairs[:1])  # warm-up, not timed
    started, cpu = time.perf_counter(), time.process_time()
    labeler.label(pairs[1:])
    n = len(pairs) - 1
    rate, per_cpu = n / (time.perf_counter() - started), n / (time.process_time() - cpu)
    print(f"labeler (random selector, k={labeling.k}): {rate:.3f} pairs/s, {per_cpu:.3f} per"
          " CPU-s", flush=True)  # fmt: skip
    return rate, per_cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pairs", type=int, default=200, help="Pairs through the MiniLM gate.")
    ap.add_argument("--decoder-pairs", type=int, default=40, help="Pairs through the SmolLM2 gate.")
    ap.add_argument("--label-pairs", type=int, default=2, help="Timed labeler pairs (+1 warm-up).")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = load_settings().paths.models_dir
    pairs, source = load_pairs(max(args.pairs, args.decoder_pairs, args.label_pairs + 1))
    rows: list[tuple[str, float, float]] = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(port=0) as broker:
        for name, n in (("all-minilm-l6-v2", args.pairs), ("smollm2-135m-instruct",
                                                          args.decoder_pairs)):  # fmt: skip
            rate, per_cpu = gate_rate(broker.bootstrap, prepare(name, models), pairs[:n],
                                      Path(tmp))  # fmt: skip
            rows.append((f"gate, d-opt, reward backbone {name} ({n} pairs)", rate, per_cpu))
    label, label_cpu = labeler_rate(models, pairs[: args.label_pairs + 1])
    lines = [
        f"# selection gate throughput, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"command: `python benchmarks/select_throughput.py {' '.join(sys.argv[1:])}`",
        f"machine: {platform.machine()}, {args.threads} torch threads, CPU (shared with other"
        f" jobs: figures are noisy); pairs from {source}; gate defaults (max_length"
        " 512, batch 32, window 100 pairs, budget 10). The stages run one after the other, so"
        " under a changing load the wall-clock ratio can mislead; pairs per CPU-second (this"
        " process's CPU time, all threads) is the steadier comparison.",
        "",
        "| stage | pairs / s (wall) | vs labeler | pairs / CPU-s | vs labeler |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {n} | {r:.2f} | {r / label:.1f}x | {c:.2f} | {c / label_cpu:.1f}x |"
            for n, r, c in rows
        ],  # fmt: skip
        f"| labeler, transformers SmolLM2-135M, random selector ({args.label_pairs} pairs)"
        f" | {label:.3f} | 1.0x | {label_cpu:.3f} | 1.0x |",
        "",
    ]
    report = "\n".join(lines)
    print("\n" + report)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "select_throughput.md").write_text(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
