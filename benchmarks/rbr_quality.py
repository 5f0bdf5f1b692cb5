"""Rule-Based Rewards on the RBR gold test split: proposition accuracy and ranking accuracy.

The configured grader (default: the shipped trained classifier) grades every proposition of
``paths.propositions`` on ``rbr_gold/train.jsonl`` and ``test.jsonl`` (cached under
``paths.cache_dir/rbr/features``, as ``ramo rbr fit`` caches them). Then, on the test split:

1. per proposition: accuracy of "true" (P(true) >= 0.5) against the human label, with its
   95% Wilson interval, the majority-class share (what always answering the test split's
   more common answer scores) and balanced accuracy (mean of the true- and false-rates);
2. ranking accuracy: pairs of test completions of the same response type and different
   completion class (the class from the human labels through ``paths.rbr_rubric``); a pair
   is right when the better class scores strictly higher. The gold set has one completion
   per test prompt, so these pairs are across prompts (within one response type), not the
   paper's per-prompt comparisons. Rows:
   - RBR with weights fitted on the training split's grader probabilities (what is served);
   - RBR with equal weights: +-1 per proposition, the sign read from the rubric (+1 when the
     ideal class needs it true, -1 when it needs it false or it makes a completion illogical
     or disallowed, 0 when that response type's rubric ignores it); nothing fitted;
   - the reward model alone: the current version of ``--registry`` (default the settings'
     registry), when there is one;
   - RM + fitted RBR (the served sum), when there is an RM;
   - upper bounds: both weightings on the human 0/1 labels instead of the grader's
     probabilities (a perfect grader).
   95% intervals by bootstrap over test completions (pairs share completions, so they are
   not independent), 1000 resamples.

    nice -n 10 python benchmarks/rbr_quality.py [--registry DIR] [--threads 1]

Skips (exit 0 with a reason) when the shared data is absent.
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
GOLD = Path(__file__).resolve().parents[2] / "shared" / "data" / "rbr_gold"


def proposition_table(pool: Any, rows: list[Any], feats: list[list[float]]) -> list[str]:
    from ramo_stream.core.stats import wilson_interval

    out = ["| proposition | n true | accuracy [95% CI] | majority share | balanced accuracy |",
           "|---|---:|---:|---:|---:|"]  # fmt: skip
    accs, bals, majs = [], [], []
    for j, p in enumerate(pool.ids):
        gold = [r.truth[p] for r in rows]
        said = [f[j] >= 0.5 for f in feats]
        n = len(gold)
        hits = sum(g == s for g, s in zip(gold, said, strict=True))
        pos = sum(gold)
        tpr = sum(g and s for g, s in zip(gold, said, strict=True)) / pos if pos else None
        tnr = (sum((not g) and (not s) for g, s in zip(gold, said, strict=True)) / (n - pos)
               if n - pos else None)  # fmt: skip
        rates = [x for x in (tpr, tnr) if x is not None]
        bal = sum(rates) / len(rates)
        maj = max(pos, n - pos) / n
        lo, hi = wilson_interval(hits, n)
        accs.append(hits / n)
        bals.append(bal)
        majs.append(maj)
        out.append(f"| {p} | {pos} | {hits / n:.3f} [{lo:.2f}, {hi:.2f}] | {maj:.3f} |"
                   f" {bal:.3f}{'' if len(rates) == 2 else ' (one class only)'} |")  # fmt: skip
    k = len(pool.ids)
    out.append(f"| **mean of {k}** | | **{sum(accs) / k:.3f}** | {sum(majs) / k:.3f} |"
               f" {sum(bals) / k:.3f} |")  # fmt: skip
    return out


def ranking_rows(
    rubric: Any, rows: list[Any], named_scores: list[tuple[str, list[float]]]
) -> list[str]:
    from ramo_stream.core.propositions import RESPONSE_TYPES
    from ramo_stream.core.rbr import bootstrap_pair_accuracy, pair_hits
    from ramo_stream.label.rbr.fit import type_pairs

    all_pairs = type_pairs(rubric, rows)
    per_type = {rt: type_pairs(rubric, rows, rt) for rt in RESPONSE_TYPES}
    head = "| scorer | all pairs [95% CI] | " + " | ".join(
        f"{rt} ({len(per_type[rt])})" for rt in RESPONSE_TYPES
    )
    out = [head + " |", "|---|---:|" + "---:|" * len(RESPONSE_TYPES)]
    for name, scores in named_scores:
        hits = pair_hits(scores, all_pairs)
        lo, hi = bootstrap_pair_accuracy(len(rows), all_pairs, hits)
        cells = []
        for rt in RESPONSE_TYPES:
            h = pair_hits(scores, per_type[rt])
            cells.append(f"{sum(h) / len(h):.3f}" if h else "-")
        out.append(f"| {name} | {sum(hits) / len(hits):.3f} [{lo:.2f}, {hi:.2f}] | "
                   + " | ".join(cells) + " |")  # fmt: skip
    out.append(f"\n{len(all_pairs)} test pairs over {len(rows)} completions.")
    return out


def rm_scores(
    registry: str | None, settings: Any, rows: list[Any]
) -> tuple[str, list[float]] | None:
    """(description, reward of every row) from the registry's current version, or None."""
    from ramo_stream.eval.evaluate import load_local
    from ramo_stream.registry.scoring import BatchItem, score_items
    from ramo_stream.registry.setup import open_registry

    reg = open_registry(settings, registry)
    manifest = reg.current()
    folder = reg.current_dir()
    if manifest is None or folder is None:
        return None
    loaded = load_local(folder, manifest.version, settings)
    items = [BatchItem(loaded, r.prompt, r.completion) for r in rows]
    s = settings.serve
    scores = score_items(items, s.max_length, s.forward_tokens(loaded.device), None,
                         s.pass_overhead(loaded.device))  # fmt: skip
    desc = (f"registry {reg.root} v{manifest.version} ({manifest.samples_seen} pairs seen,"
            f" base {manifest.base_model})")  # fmt: skip
    return desc, scores


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("--data", type=Path, default=GOLD, help="The rbr_gold folder.")
    ap.add_argument("--registry", help="Registry of the reward model (default: the settings').")
    ap.add_argument("--threads", type=int, default=1, help="torch threads.")
    ap.add_argument("--out", type=Path, default=RESULTS / "rbr_quality.md")
    args = ap.parse_args()
    train_path, test_path = args.data / "train.jsonl", args.data / "test.jsonl"
    if not (train_path.is_file() and test_path.is_file()):
        print(f"skipped: no RBR gold data under {args.data} (see ../shared/data/README.md)")
        return 0
    import torch
    from tqdm import tqdm

    from ramo_stream.config import load_settings
    from ramo_stream.core.propositions import load_propositions
    from ramo_stream.core.rbr import FitConfig
    from ramo_stream.core.rbr_rubric import load_rubric
    from ramo_stream.label.grading.factory import describe, make_grader
    from ramo_stream.label.rbr.features import cached_features, gold_features, read_gold
    from ramo_stream.label.rbr.fit import equal_weights, fit_rbr, score_rows

    torch.set_num_threads(args.threads)
    settings = load_settings()
    pool = load_propositions(settings.paths.propositions)
    rubric = load_rubric(settings.paths.rbr_rubric)
    rubric.check_pool(pool)
    grader = make_grader(settings)
    train, test = read_gold(train_path), read_gold(test_path)
    feats = {}
    for name, path, rows in (("train", train_path, train), ("test", test_path, test)):
        with tqdm(total=len(rows), desc=f"grade {name}", file=sys.stderr) as bar:
            feats[name], _ = cached_features(grader, pool, path, rows, settings.paths.rbr_dir,
                                             bar.update)  # fmt: skip
    cfg = FitConfig()
    fitted = fit_rbr(rubric, pool, train, feats["train"], cfg)
    fitted_gold = fit_rbr(rubric, pool, train, gold_features(pool, train), cfg)
    equal = equal_weights(rubric, pool)
    test_gold = gold_features(pool, test)
    rbr_fit = score_rows(fitted.weights, pool, test, feats["test"])
    named: list[tuple[str, list[float]]] = [
        ("RBR, fitted weights (grader probabilities)", rbr_fit),
        ("RBR, equal weights, rubric signs (grader probabilities)",
         score_rows(equal, pool, test, feats["test"])),
    ]  # fmt: skip
    rm = rm_scores(args.registry, settings, test)
    rm_line = "no reward-model version in the registry: the RM rows are missing"
    if rm is not None:
        rm_line, rm_vals = rm
        both = [a + b for a, b in zip(rm_vals, rbr_fit, strict=True)]
        named += [("reward model alone", rm_vals), ("RM + fitted RBR", both)]
    named += [
        ("upper bound: RBR fitted on human labels, scored on human labels",
         score_rows(fitted_gold.weights, pool, test, test_gold)),
        ("upper bound: equal weights on human labels", score_rows(equal, pool, test, test_gold)),
    ]  # fmt: skip
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True, check=False).stdout.strip()  # fmt: skip
    borrowed = ", ".join(f"{a} uses {b}'s weights" for a, b in fitted.borrowed.items())
    lines = [
        f"# RBR quality on rbr_gold/test, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"command: `nice -n 10 python benchmarks/rbr_quality.py"
        f"{' --registry ' + args.registry if args.registry else ''}`",
        f"machine: {platform.machine()} CPU, python {platform.python_version()}; git {git}",
        f"{describe(grader)}; propositions {pool.name} ({pool.hash}); rubric {rubric.name}"
        f" ({rubric.hash})",
        f"reward model: {rm_line}",
        f"fit: AdamW lr {cfg.lr}, weight decay {cfg.weight_decay}, {cfg.steps} full-batch steps,"
        f" margin {cfg.margin}, on {len(train)} training completions; train pairs per type"
        f" {fitted.pairs}{'; ' + borrowed if borrowed else ''}",
        "",
        "## Ranking accuracy (pairs within a response type, across prompts)",
        "",
        *ranking_rows(rubric, test, named),
        "",
        "Pairs: every two test completions of the same response type whose completion classes",
        "(ideal > acceptable > unacceptable > illogical > disallowed, from the human labels",
        "through the rubric) differ; right when the better one scores strictly higher. The gold",
        "set has one completion per test prompt, so no pair shares a prompt. 95% intervals:",
        "bootstrap over completions (1000 resamples). Equal weights: +-1 per proposition, sign",
        "from the rubric (rbr_rubric.Rubric.sign), 0 where the response type's rubric ignores it.",
        "",
        "## Grader accuracy per proposition (test split)",
        "",
        *proposition_table(pool, test, feats["test"]),
        "",
        '"true" when P(Yes)/(P(Yes)+P(No)) >= 0.5. Majority share: accuracy of always giving',
        "the test split's more common answer. 95% Wilson intervals.",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
