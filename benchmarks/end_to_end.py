"""The whole loop under `ramo up`: sustained pairs/s, freshness, and held-out accuracy over time.

One run, side by side:

- baseline: the labeler alone, offline (``ramo label`` on the same pairs, same selector, k
  and grader, one torch thread as the grader replica has): how fast pairs can be labeled on
  this machine when nothing else runs.
- the loop: ``ramo up --file PAIRS`` (broker, Ray, labeler service, trainer, reward service),
  stopped in order once idle. Labeling is the slow stage on a CPU, so loop pairs/s divided
  by labeler-alone pairs/s is the share of labeling throughput the loop keeps while it also
  trains and serves on the same cores.

Rates are sustained rates: labels per second between the first and the last label's
``labeled_at`` (model loading and start-up excluded), for both. From the loop it also
reports pairs/s from the first pair written to the last label written, and trained or held
out per second to the final version,
freshness (seconds from a label's write to the first version whose manifest offsets cover
it), and every version's held-out accuracy (agreement with the labeler's own labels on the
trainer's hash-held-out slice, ``heldout_size`` pairs) against time. The labels are the
grader's, not the human's, so that accuracy says how well the reward model learns the
labeler, not whether the labeler is right; the human-gold agreement of the labels is
reported beside it. The final version is also scored afresh on the held-out pairs, against
the labeler's labels and against the human preference, with ties (equal rewards) counted
apart: the trainer counts a tie as wrong.

The benchmark starts its own broker and passes it to `ramo up`, so the topics outlive the
run and the label write times can be read afterwards.

    python benchmarks/end_to_end.py [--pairs 40] [--data ../shared/data/hh_harmless_test.jsonl]
        [--selector random] [-k 3] [--reward-backbone all-minilm-l6-v2] [--no-save]

Results: benchmarks/results/end_to_end.md and .json (not with --no-save).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ramo_stream.core.stats import accuracy_with_interval

RESULTS = Path(__file__).parent / "results"
HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_harmless_test.jsonl"


def run_labeler_alone(args: argparse.Namespace, common: list[str], tmp: Path) -> dict[str, Any]:
    out = tmp / "offline_labels.jsonl"
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "ramo_stream.cli", "label", str(args.data), str(out),
         "--limit", str(args.pairs), *common],
        capture_output=True, text=True,
        # one torch thread, as the grader replica gets under Ray (num_cpus 1)
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    elapsed = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"ramo label failed:\n{done.stderr[-3000:]}")
    from ramo_stream.schemas import LabeledPair

    labels = [LabeledPair.model_validate_json(line) for line in out.open()]
    return {"labeled": len(labels), "seconds": elapsed, "pairs_per_s": sustained(labels)}


def sustained(labels: list[Any]) -> float:
    """Labels per second between the first and the last ``labeled_at``: the steady rate,
    without model loading or start-up (n - 1 intervals over the span)."""
    times = sorted(lp.labeled_at.timestamp() for lp in labels)
    return (len(times) - 1) / (times[-1] - times[0])


def mixed_pairs(path: Path) -> Path:
    """``--mix``: 200 pairs whose human labels the shipped grader can read, written to
    ``path``: 66 refusal_direction, 70 CoCoNot and 64 HH harmless pairs, all from prompts
    the grader's training held out (``sources.held_out``), shuffled with fixed seeds."""
    import random

    from ramo_stream.label.grading.sources import held_out, prompt_key, read_jsonl

    data = HH.parent
    parts = {"refusal_direction": ("grader/refusal_direction_benign_pairs.jsonl", 66),
             "coconot": ("grader/coconot_pref.jsonl", 70),
             "hh_harmless": ("hh_harmless_test.jsonl", 64)}  # fmt: skip
    out = []
    for src, (name, n) in parts.items():
        rows = [r for r in read_jsonl(data / name) if held_out(src, prompt_key(r["prompt"]))]
        random.Random(3).shuffle(rows)
        out += [{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"],
                 "subset": src} for r in rows[:n]]  # fmt: skip
    random.Random(4).shuffle(out)
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path


def final_on_heldout(folder: Path, version: int, labels: list[Any]) -> dict[str, Any]:
    """The final version's rewards on the trainer's held-out pairs: (hits, ties, n) against
    the labeler's preferred side and against the human one (``metadata.gold``)."""
    from ramo_stream.config import load_settings
    from ramo_stream.eval.evaluate import Example, load_local, score_local
    from ramo_stream.train.data import is_heldout

    every = int(LOOP_SETTINGS["train.heldout_every"])
    held = [lp for lp in labels
            if lp.preferred in ("a", "b") and is_heldout(lp.pair.pair_id, every)]  # fmt: skip
    settings = load_settings()
    examples = [
        Example(i, lp.pair.prompt if isinstance(lp.pair.prompt, str)
                else [m.model_dump() for m in lp.pair.prompt],
                lp.pair.response_a, lp.pair.response_b, "heldout")
        for i, lp in enumerate(held)
    ]  # fmt: skip
    scores = score_local(load_local(folder, version, settings), examples, settings)
    # Against the labeler and the human on all held-out pairs; against the human per source
    # (the row's subset), since sources differ a lot in how well the grader labels them.
    subsets = sorted({str(lp.pair.metadata.get("subset", "")) for lp in held} - {""})
    groups = [("labeler", "labeler", None), ("human", "human", None),
              *((f"human, {s}", "human", s) for s in subsets)]  # fmt: skip
    out: dict[str, Any] = {}
    for name, who, subset in groups:
        hits = ties = n = 0
        for lp, (ra, rb) in zip(held, scores, strict=True):
            side = lp.preferred if who == "labeler" else lp.pair.metadata.get("gold")
            if side not in ("a", "b") or (subset and lp.pair.metadata.get("subset") != subset):
                continue
            n += 1
            ties += ra == rb
            hits += (ra > rb) if side == "a" else (rb > ra)
        out[name] = {"hits": hits, "ties": ties, "n": n}
    return out


def run_loop(args: argparse.Namespace, common: list[str], tmp: Path) -> dict[str, Any]:
    from ramo_stream.registry.store import Registry
    from ramo_stream.schemas import LabeledPair
    from ramo_stream.stream.broker import EmbeddedBroker, free_port
    from ramo_stream.stream.kafka_io import read_topic

    registry_dir = tmp / "registry"
    with EmbeddedBroker(port=0, log_path=tmp / "broker.log") as broker:
        cmd = [
            sys.executable, "-m", "ramo_stream.cli", "up", "--file", str(args.data),
            "--limit", str(args.pairs), "--exit-when-idle", str(args.idle_s),
            "--view-every", "5", "--kafka-bootstrap-servers", broker.bootstrap,
            "--train-registry", str(registry_dir), "--serve-port", str(free_port()),
            "--train-keep-versions", "1000", *common,
            *(f"--{k.replace('.', '-').replace('_', '-')}={v}" for k, v in LOOP_SETTINGS.items()),
        ]  # fmt: skip
        log = (tmp / "up.log").open("w")
        started_wall = time.time()
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=args.timeout_s)
        except (subprocess.TimeoutExpired, KeyboardInterrupt):
            os.killpg(proc.pid, signal.SIGINT)
            rc = proc.wait(timeout=600)
        log.close()
        if rc != 0:
            raise SystemExit(f"ramo up exited {rc}:\n{(tmp / 'up.log').read_text()[-3000:]}")
        pairs = read_topic(broker.bootstrap, "ramo.pairs")
        labels = read_topic(broker.bootstrap, "ramo.labels")
    versions = sorted(Registry(str(registry_dir)).versions(), key=lambda m: m.version)
    if not versions:
        raise SystemExit("the loop published no version")
    first_pair_ms = min(r.timestamp for r in pairs)
    last_label_ms = max(r.timestamp for r in labels)
    final = versions[-1]

    def covered(m: Any, r: Any) -> bool:
        return m.offsets.get("ramo.labels", {}).get(r.partition, 0) > r.offset

    fresh = []
    for r in labels:
        first = next((m for m in versions if covered(m, r)), None)
        if first is not None:
            fresh.append(first.created_at.timestamp() - r.timestamp / 1000)
    gold = [LabeledPair.model_validate_json(r.value) for r in labels]
    agree = [lp.preferred == lp.pair.metadata.get("gold") for lp in gold
             if lp.pair.metadata.get("gold") in ("a", "b")]  # fmt: skip
    curve = [
        {"version": m.version, "t_s": m.created_at.timestamp() - first_pair_ms / 1000,
         "samples_seen": m.samples_seen, "heldout_accuracy": m.heldout_accuracy,
         "heldout_size": m.heldout_size}
        for m in versions
    ]  # fmt: skip
    label_span = (last_label_ms - first_pair_ms) / 1000
    train_span = final.created_at.timestamp() - first_pair_ms / 1000
    return {
        "wall_s": time.time() - started_wall,
        "pairs_written": len(pairs),
        "labeled": len(labels),
        "labeled_per_s": sustained(gold),
        "first_pair_to_last_label_per_s": len(labels) / label_span if label_span > 0 else None,
        "trained": final.samples_seen,
        "heldout": final.heldout_size,
        "trained_or_heldout_per_s": (final.samples_seen + final.heldout_size) / train_span,
        "versions": len(versions),
        "freshness_s": sorted(fresh),
        "labels_agree_with_human": (sum(agree), len(agree)),
        "curve": curve,
        "final_on_heldout": final_on_heldout(
            Registry(str(registry_dir)).path(final.version), final.version, gold
        ),
    }


# Publish often and hold out more, as `ramo up --demo` does, so a short run shows a curve.
LOOP_SETTINGS = {
    "train.batch_pairs": 4,
    "train.publish_every_steps": 2,
    "train.publish_every_s": 10.0,
    "train.heldout_every": 5,
    # Every pair labeled, as this run has always measured: a labeler rate saved by an
    # earlier `ramo up` would otherwise let select.enabled=auto gate the file.
    "select.enabled": "off",
}


def fmt_hits(hits: int, n: int) -> str:
    """hits/n with its Wilson interval (n excludes ties)."""
    return accuracy_with_interval(hits / n if n else None, n)


def pct(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(values, q)) if values else float("nan")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pairs", type=int, default=40, help="Pairs from --data (default 40).")
    p.add_argument("--data", type=Path, default=HH, help="RewardBench-format JSONL.")
    p.add_argument("--mix", action="store_true", help="Instead of --data: held-out pairs of"
                   " refusal_direction, CoCoNot and HH harmless (mixed_pairs), where the"
                   " shipped grader's labels carry signal.")  # fmt: skip
    p.add_argument("--selector", default="random", help="labeling.selector (default random).")
    p.add_argument("-k", type=int, default=3, help="Rules graded per pair (default 3).")
    p.add_argument("--reward-backbone", default="all-minilm-l6-v2",
                   help="models.reward_backbone (default all-minilm-l6-v2).")  # fmt: skip
    p.add_argument("--idle-s", type=float, default=30.0, help="ramo up --exit-when-idle.")
    p.add_argument("--timeout-s", type=float, default=3600.0, help="Give up on the loop after.")
    p.add_argument("--no-save", action="store_true", help="Print only.")
    p.add_argument("--keep-dir", type=Path, metavar="DIR",
                   help="Work in DIR and keep it (ramo up's log, the broker log, the registry)"
                   " instead of a temporary folder removed at the end.")  # fmt: skip
    args = p.parse_args()
    if args.mix and HH.is_file():
        args.data = mixed_pairs(Path(tempfile.mkdtemp(prefix="ramo-e2e-mix-")) / "mix.jsonl")
    if not args.data.is_file():
        print(f"skipped: {args.data} is absent (the shared human-labelled data)", file=sys.stderr)
        return 0
    from ramo_stream.config import load_settings
    from ramo_stream.label.grading.factory import describe_choice
    from ramo_stream.local_models import KNOWN, prepare

    settings = load_settings()
    grader = describe_choice(settings)
    for name in {settings.models.grader, args.reward_backbone} & set(KNOWN):
        prepare(name, settings.paths.models_dir)  # once; ramo up would, ramo label would not
    common = ["--selector", args.selector, "-k", str(args.k),
              "--models-reward-backbone", args.reward_backbone]  # fmt: skip
    with contextlib.ExitStack() as stack:
        if args.keep_dir is not None:
            args.keep_dir.mkdir(parents=True, exist_ok=True)
            tmp = args.keep_dir
        else:
            tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="ramo-e2e-")))
        print(f"baseline: ramo label on {args.pairs} pairs ...", flush=True)
        alone = run_labeler_alone(args, common, tmp)
        print(f"  {alone['labeled']} pairs in {alone['seconds']:.1f} s", flush=True)
        print("the loop: ramo up ...", flush=True)
        loop = run_loop(args, common, tmp)
    ratio = loop["labeled_per_s"] / alone["pairs_per_s"]
    fresh = loop["freshness_s"]
    agree, n_gold = loop["labels_agree_with_human"]
    command = " ".join(["python benchmarks/end_to_end.py", *sys.argv[1:]])
    lines = [
        f"# end-to-end benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"command: `{command}`",
        f"machine: {os.cpu_count()} cores, CPU; data {args.data.name}, {args.pairs} pairs; selector"
        f" {args.selector}, k={args.k}; {grader}; reward backbone"
        f" {args.reward_backbone}; loop settings "
        + ", ".join(f"{k}={v}" for k, v in LOOP_SETTINGS.items()),
        "",
        "| measure | value |",
        "|---|---:|",
        f"| labeler alone (`ramo label`), pairs/s (first to last label) |"
        f" {alone['pairs_per_s']:.3f} |",
        f"| whole loop (`ramo up`), pairs/s (first to last label) | {loop['labeled_per_s']:.3f} |",
        f"| whole loop, pairs/s from the first pair written to the last label |"
        f" {loop['first_pair_to_last_label_per_s']:.3f} |",
        f"| **loop / labeler alone** | **{ratio:.2f}x** |",
        f"| whole loop, pairs trained or held out per s (to the final version) |"
        f" {loop['trained_or_heldout_per_s']:.3f} |",
        f"| versions published | {loop['versions']} |",
        f"| freshness, label write -> first version with it: median / p90 / max (s) |"
        f" {pct(fresh, 50):.1f} / {pct(fresh, 90):.1f} / {max(fresh, default=float('nan')):.1f} |",
        f"| labels agreeing with the human preference | {agree}/{n_gold} |",
        "",
        "The final version, scored afresh on the trainer's held-out pairs (a tie, equal"
        " rewards, is neither right nor wrong here; the trainer's curve below counts it wrong):",
        "",
        "| final version against | agreement [95% interval] | ties | pairs |",
        "|---|---:|---:|---:|",
        *(
            f"| {who} | {fmt_hits(v['hits'], v['n'] - v['ties'])} | {v['ties']} | {v['n']} |"
            for who, v in loop["final_on_heldout"].items()
        ),
        "",
        "Held-out accuracy over time (agreement with the labeler's labels on the held-out slice):",
        "",
        "| version | s since first pair | pairs trained | held-out accuracy [95% interval] |"
        " held-out pairs |",
        "|---:|---:|---:|---:|---:|",
    ]
    for c in loop["curve"]:
        acc = accuracy_with_interval(c["heldout_accuracy"], c["heldout_size"])
        lines.append(f"| {c['version']} | {c['t_s']:.1f} | {c['samples_seen']} | {acc} |"
                     f" {c['heldout_size']} |")  # fmt: skip
    report = "\n".join(lines)
    print(report)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "end_to_end.md").write_text(report + "\n")
        data = {
            "command": command, "alone": alone, "loop": loop, "ratio": ratio,
            "settings": LOOP_SETTINGS, "args": {k: str(v) for k, v in vars(args).items()},
        }  # fmt: skip
        (RESULTS / "end_to_end.json").write_text(json.dumps(data, indent=1) + "\n")
        print(f"\nwritten to {RESULTS / 'end_to_end.md'} and end_to_end.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
