"""Label quality: agreement with human preferences, per selector, with and without calibration.

Each sampled pair is graded once on the whole pool plus the content-free rule (the grader
is deterministic), and every variant is computed from those same judgments:

    all               every rule
    max-discrepancy   top-k by c_k over the whole pool
    random-k          k rules drawn at random (seeded)
    adapter           the Rule Adapter's top-k (only if a trained adapter exists)

each with calibration (the content-free rule's score subtracted per response) and without.
Agreement = share of pairs whose label equals the human preference (ties count as
disagreement), per subset and overall, with Wilson 95% intervals. Data (../shared/data):
hh_harmless_test.jsonl (safety), llmbar_pairs.jsonl (non-safety control, where a
refusal-loving signal fails), and the held-out prompts (``grading.sources.held_out``, never
trained on) of grader/coconot_pref.jsonl and grader/refusal_direction_benign_pairs.jsonl
(benign requests, where an over-refusal must lose).

The grader is the configured one (``grader.backend``; ``RAMO_GRADER__BACKEND=transformers``
for the zero-shot LLM):

    python benchmarks/label_quality.py [--per-file 40] [--seed 0] [--out label_quality.md]
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path

import torch

from ramo_stream.config import load_settings
from ramo_stream.core.rules import NULL_RULE_ID, load_pool
from ramo_stream.core.selection import aggregate, rule_scores, select_max_discrepancy
from ramo_stream.core.stats import wilson_interval
from ramo_stream.label.grading.factory import describe, make_grader
from ramo_stream.label.grading.sources import held_out, prompt_key
from ramo_stream.label.labeler import Labeler
from ramo_stream.schemas import ResponsePair
from ramo_stream.stream.ingest import iter_lines, parse_line

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).parent / "results"
FILES = ["hh_harmless_test.jsonl", "llmbar_pairs.jsonl", "grader/coconot_pref.jsonl",
         "grader/refusal_direction_benign_pairs.jsonl"]  # fmt: skip
# file stem -> the grader-training source whose held-out split it must be restricted to
HELD_OUT_ONLY = {"coconot_pref": "coconot", "refusal_direction_benign_pairs": "refusal_direction",
                 "hh_harmless_test": "hh_harmless", "llmbar_pairs": "llmbar"}  # fmt: skip


def sample(
    path: Path, n: int, rng: random.Random, excluded: set[str] | None = None
) -> list[ResponsePair]:
    excluded = excluded or set()
    pairs = [
        p
        for _, raw in iter_lines(path)
        if isinstance(p := parse_line(raw, path.stem), ResponsePair) and p.pair_id not in excluded
    ]
    if path.stem in HELD_OUT_ONLY:  # trained on: only the held-out prompts
        source = HELD_OUT_ONLY[path.stem]
        pairs = [p for p in pairs if held_out(source, prompt_key(p.prompt))]
    # stratified by subset so small subsets are not lost
    by_subset: dict[str, list[ResponsePair]] = defaultdict(list)
    for p in pairs:
        by_subset[str(p.metadata.get("subset", path.stem))].append(p)
    per = max(1, n // len(by_subset))
    out = []
    for group in by_subset.values():
        out += rng.sample(group, min(per, len(group)))
    return out[:n]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--per-file", type=int, default=40)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--out", default="label_quality.md", help="Report name in results/.")
    ap.add_argument("--exclude", type=Path, help="JSONL of labeled pairs to leave out of the"
                    " sample, e.g. the adapter's training targets")  # fmt: skip
    args = ap.parse_args()
    files = [DATA / f for f in FILES]
    if not all(f.is_file() for f in files):
        sys.exit(f"skipped: {DATA} lacks the human-labelled sets (see ../shared/data/README.md)")
    torch.set_num_threads(args.threads)
    settings = load_settings()
    k = settings.labeling.k
    pool = load_pool(settings.paths.rule_pool)
    grader = make_grader(settings)
    full = Labeler(
        grader, pool, settings.labeling.model_copy(update={"selector": "all", "calibrate": True})
    )
    adapter = None
    try:
        from ramo_stream.label.rule_adapter.model import load_adapter

        adapter = load_adapter(settings.paths.adapter_dir, pool)
    except (FileNotFoundError, ValueError) as e:
        print(f"adapter row skipped: {e}", file=sys.stderr)

    excluded: set[str] = set()
    if args.exclude:
        from ramo_stream.schemas import LabeledPair

        excluded = {LabeledPair.model_validate_json(line).pair_id
                    for line in args.exclude.read_text().splitlines() if line.strip()}  # fmt: skip
    rng = random.Random(args.seed)
    pairs = [p for f in files for p in sample(f, args.per_file, rng, excluded)]
    # variant -> subset -> [hits, n]
    tally: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(lambda: [0, 0]))
    t0 = time.perf_counter()
    for i, pair in enumerate(pairs):
        labeled = full.label([pair])[0]
        rule_js = [j for j in labeled.judgments if j.rule_id != NULL_RULE_ID]
        null = {j.side: j.score for j in labeled.judgments if j.rule_id == NULL_RULE_ID}
        picks = {
            "all": pool.ids,
            "random-k": rng.sample(pool.ids, k),
        }
        if adapter is not None:
            picks["adapter"] = [r for r, _ in adapter.predict([pair], k)[0]]
        subset = f"{pair.source}/{pair.metadata.get('subset', '')}"
        for calibrated in (True, False):
            base_a, base_b = (null["a"], null["b"]) if calibrated else (0.0, 0.0)
            scores = rule_scores(rule_js, base_a, base_b)
            chosen = {
                **picks,
                "max-discrepancy": select_max_discrepancy(scores, k, settings.labeling.gamma),
            }
            for name, selected in chosen.items():
                label = aggregate(scores, selected, settings.labeling.tie_epsilon)
                hit = int(label.preferred == pair.metadata["gold"])
                for key in (subset, pair.source, "overall"):
                    cell = tally[f"{name}{'' if calibrated else ' (uncalibrated)'}"][key]
                    cell[0] += hit
                    cell[1] += 1
        rate = (i + 1) / (time.perf_counter() - t0)
        print(
            f"\r{i + 1}/{len(pairs)} pairs, {rate:.3f} pairs/s", end="", file=sys.stderr, flush=True
        )
    print(file=sys.stderr)

    keys = sorted(
        {key for v in tally.values() for key in v}, key=lambda s: (s != "overall", "/" in s, s)
    )
    lines = [
        f"# label quality, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"command: `python benchmarks/label_quality.py {' '.join(sys.argv[1:])}`",
        f"grader: {describe(grader)}; pool {pool.name}"
        f" ({len(pool)} rules); k={k}, gamma={settings.labeling.gamma}; {len(pairs)} pairs sampled"
        f" (stratified by subset, {args.per_file} per file) from {', '.join(FILES)}"
        " (held-out prompts only: the grader trains on the others). Agreement with the human"
        " preference (ties count as misses), Wilson 95% interval; n per row in brackets.",
        "",
        "| variant | grader calls / pair | " + " | ".join(keys) + " |",
        "|---|---:|" + "---:|" * len(keys),
    ]
    calls = {
        "all": 2 * len(pool),
        "max-discrepancy": 2 * len(pool),
        "random-k": 2 * k,
        "adapter": 2 * k,
    }
    for variant in sorted(tally):
        name = variant.split(" ")[0]
        c = calls[name] + (0 if "uncalibrated" in variant else 2)
        cells = []
        for key in keys:
            hits, n = tally[variant].get(key, [0, 0])
            lo, hi = wilson_interval(hits, n)
            cells.append(f"{hits / n:.2f} [{lo:.2f}, {hi:.2f}] ({n})" if n else "-")
        lines.append(f"| {variant} | {c} | " + " | ".join(cells) + " |")
    report = "\n".join(lines)
    print(report)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
