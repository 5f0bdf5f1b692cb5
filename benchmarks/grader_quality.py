"""Grader quality on held-out human judgments: the trained grader against the zero-shot one.

Every row here is held out from `ramo grader train` by ramo_stream/label/grading/sources.py's
``held_out`` (by GPTFuzz question, by prompt text for the four pair sets, HH harmless and
LLMBar included, which training reads only when asked), or from a file it never reads
(rbr_gold/test.jsonl). Per grader:

- rule level: GPTFuzz held-out questions (accuracy of "breaks the rule" vs human
  `jailbroken`, F1 on jailbroken, ECE of P(Yes)); rbr_gold/test propositions mapped to rules
  (accuracy per proposition and mean); all 23 rbr_gold/test propositions graded by their own
  text (the proposition pool Rule-Based Rewards use): accuracy, balanced accuracy and the
  majority-class baseline per proposition, and their means;
- pairwise: the whole labeler (the selector `ramo up` deploys: the Rule Adapter when one is
  trained for the pool, else random-k, as `ramo up` falls back) on slices of HH harmless,
  CoCoNot pref, refusal_direction and LLMBar; agreement with the human preference, ties
  count as disagreement.

Wilson 95% intervals throughout. The zero-shot SmolLM2 grader is slow on a CPU: it gets
smaller slices (the same rows' first ones), and says so.

    python benchmarks/grader_quality.py [--pairs 60] [--fuzz-rows 400] [--zero-shot-pairs 10]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from ramo_stream.config import load_settings
from ramo_stream.core.propositions import load_propositions
from ramo_stream.core.rules import load_pool
from ramo_stream.core.stats import wilson_interval
from ramo_stream.label.grading.factory import describe, make_grader
from ramo_stream.label.grading.sources import (
    RBR_PROPOSITIONS,
    TRAIN_FILES,
    gptfuzz_examples,
    held_out,
    prompt_key,
    proposition_examples,
    rbr_examples,
    read_jsonl,
)
from ramo_stream.label.grading.train_classifier import as_request, yes_no_metrics
from ramo_stream.label.labeler import Labeler
from ramo_stream.schemas import ResponsePair
from ramo_stream.stream.ingest import parse_line

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RESULTS = Path(__file__).parent / "results"
PAIR_FILES = {
    "hh_harmless": "hh_harmless_test.jsonl",
    "coconot": TRAIN_FILES["coconot"],
    "refusal_direction": TRAIN_FILES["refusal_direction"],
    "llmbar": "llmbar_pairs.jsonl",
}
TRAINED_ON = set(PAIR_FILES)  # all four are trained on: only held-out prompts are scored


def pair_slice(name: str, n: int, seed: int) -> list[ResponsePair]:
    """n held-out pairs of a source, drawn with ``seed`` (sides shuffled by the parser)."""
    rows = []
    for row in read_jsonl(DATA / PAIR_FILES[name]):
        if name in TRAINED_ON and not held_out(name, prompt_key(row["prompt"])):
            continue
        pair = parse_line(json.dumps(row), name)
        if isinstance(pair, ResponsePair):
            rows.append(pair)
    random.Random(seed).shuffle(rows)
    return rows[:n]


def fmt(hits: int, n: int) -> str:
    if n == 0:
        return "n/a"
    lo, hi = wilson_interval(hits, n)
    return f"{hits / n:.3f} [{lo:.2f}, {hi:.2f}] (n={n})"


def fmt_m(m: dict[str, Any]) -> str:
    n = m["n"]
    return fmt(round(m["accuracy"] * n), n)


def rule_level(grader: Any, pool: Any, fuzz: list[Any], rbr: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    probs = grader.grade([as_request(e, pool[e.rule_id].text) for e in fuzz])
    out["gptfuzz"] = yes_no_metrics(probs, fuzz)
    probs = grader.grade([as_request(e, pool[e.rule_id].text) for e in rbr])
    for prop in RBR_PROPOSITIONS:
        rows = [(p, e) for p, e in zip(probs, rbr, strict=True) if e.source == f"rbr:{prop}"]
        out[f"rbr:{prop}"] = yes_no_metrics([p for p, _ in rows], [e for _, e in rows])
    out["rbr:all"] = yes_no_metrics(probs, rbr)
    return out


def proposition_level(grader: Any, props: Any, examples: list[Any]) -> dict[str, Any]:
    """Per proposition: accuracy, balanced accuracy (mean of the true-positive and
    true-negative rates: a grader that always says No scores 0.5) and the majority-class
    share (what always answering the commoner answer would score)."""
    probs = grader.grade([as_request(e, props[e.rule_id.removeprefix("prop:")].text)
                          for e in examples])  # fmt: skip
    out: dict[str, Any] = {}
    for pid in props.ids:
        rows = [(p.p_yes >= p.p_no, e.answer == 0)
                for p, e in zip(probs, examples, strict=True)
                if e.rule_id == f"prop:{pid}"]  # fmt: skip
        if not rows:
            continue
        pos = sum(t for _, t in rows)
        tp = sum(g and t for g, t in rows)
        tn = sum(not g and not t for g, t in rows)
        rates = [tp / pos] if pos else []
        rates += [tn / (len(rows) - pos)] if pos < len(rows) else []
        out[pid] = {"n": len(rows), "hits": tp + tn, "positives": pos,
                    "balanced": sum(rates) / len(rates),
                    "majority": max(pos, len(rows) - pos) / len(rows)}  # fmt: skip
    return out


def pairwise(labeler: Labeler, slices: dict[str, list[ResponsePair]]) -> dict[str, list[int]]:
    """[hits, n] per source, and per ``source/subset`` where a source has several subsets."""
    out: dict[str, list[int]] = {}
    for name, pairs in slices.items():
        hits = 0
        by_subset: dict[str, list[int]] = {}
        for start in range(0, len(pairs), 4):
            for lp in labeler.label(pairs[start : start + 4]):
                hit = int(lp.preferred == lp.pair.metadata.get("gold"))
                hits += hit
                cell = by_subset.setdefault(f"{name}/{lp.pair.metadata.get('subset')}", [0, 0])
                cell[0] += hit
                cell[1] += 1
        out[name] = [hits, len(pairs)]
        if len(by_subset) > 1:
            out.update(sorted(by_subset.items()))
        print(f"  {name}: {fmt(hits, len(pairs))}", file=sys.stderr, flush=True)
    return out


def deployed_labeler(grader: Any, pool: Any, settings: Any) -> tuple[Labeler, str]:
    """The labeler `ramo up` runs: the adapter if one is trained for the pool, else random-k."""
    lab = settings.labeling
    if lab.selector == "adapter":
        try:
            from ramo_stream.label.rule_adapter.model import load_adapter

            adapter = load_adapter(settings.paths.adapter_dir, pool)
            return Labeler(grader, pool, lab, adapter), "adapter (trained)"
        except (FileNotFoundError, ValueError) as e:
            print(f"no usable Rule Adapter ({e}); random-k as `ramo up` does", file=sys.stderr)
            lab = lab.model_copy(update={"selector": "random"})
    return Labeler(grader, pool, lab), f"{lab.selector} (no trained adapter)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pairs", type=int, default=60, help="Pairs per pair source (trained).")
    ap.add_argument("--fuzz-rows", type=int, default=400, help="Held-out GPTFuzz rows.")
    ap.add_argument("--zero-shot-pairs", type=int, default=10)
    ap.add_argument("--zero-shot-rows", type=int, default=60)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="grader_quality.md")
    ap.add_argument("--llm-path", type=Path, help="The fine-tuned LLM grader for tuned-llm")
    ap.add_argument("--graders", default="trained,zero-shot",
                    help="Which to run: trained, zero-shot or both (comma-separated), or"
                    " none (only rewrite the report); the report shows every grader run so"
                    " far with its command")  # fmt: skip
    ap.add_argument("--calibrate", choices=["on", "off"],
                    help="labeling.calibrate for the pairwise labels (default: the"
                    " grader's own, on for LLM graders, off for the classifier)")  # fmt: skip
    args = ap.parse_args()
    if not (DATA / "grader").is_dir():
        sys.exit(f"skipped: {DATA} lacks the human-labelled sets (see ../shared/data/README.md)")
    torch.set_num_threads(args.threads)
    settings = load_settings()
    if args.calibrate:
        settings.labeling.calibrate = args.calibrate == "on"
    pool = load_pool(settings.paths.rule_pool)
    fuzz = gptfuzz_examples(DATA / TRAIN_FILES["gptfuzz"], pool, "test", 0.0, args.seed)
    random.Random(args.seed).shuffle(fuzz)
    fuzz = fuzz[: args.fuzz_rows]
    rbr = rbr_examples(DATA / "rbr_gold" / "test.jsonl")
    props = load_propositions(settings.paths.propositions)
    prop_rows = proposition_examples(DATA / "rbr_gold" / "test.jsonl", props)
    slices = {name: pair_slice(name, args.pairs, args.seed) for name in PAIR_FILES}

    graders: list[tuple[str, Any, int, int]] = []
    if "trained" in args.graders:
        # The trained classifier whatever grader.backend defaults to (grader.artifact, or
        # the newest for the pool); make_grader says how to build one when there is none.
        cls_settings = settings.model_copy(deep=True)
        cls_settings.grader.backend = "classifier"
        trained = make_grader(cls_settings)
        graders.append(("trained: " + describe(trained), trained, len(fuzz), args.pairs))
    if "zero-shot" in args.graders:
        zs_settings = settings.model_copy(deep=True)
        zs_settings.grader.backend = "transformers"
        zero = make_grader(zs_settings)
        graders.append(("zero-shot: " + describe(zero), zero, args.zero_shot_rows,
                        args.zero_shot_pairs))  # fmt: skip
    if "tuned-llm" in args.graders:
        from ramo_stream.label.grading.transformers_backend import TransformersGrader

        if args.llm_path is None:
            sys.exit("--graders tuned-llm needs --llm-path (a `ramo grader train --kind llm`)")
        tuned = TransformersGrader(str(args.llm_path))
        graders.append(("tuned-llm: " + describe(tuned), tuned, args.zero_shot_rows,
                        args.zero_shot_pairs))  # fmt: skip

    # Each grader's figures are kept in a JSON file next to the report, so the two graders
    # can be run as separate processes (at the same time) and reported together.
    store = RESULTS / (Path(args.out).stem + ".json")
    saved: dict[str, Any] = json.loads(store.read_text()) if store.is_file() else {}
    for title, grader, n_rows, n_pairs in graders:
        t0 = time.perf_counter()
        print(title, file=sys.stderr, flush=True)
        # rbr rows come in groups of len(RBR_PROPOSITIONS) per completion: keep whole groups
        n_rbr = (n_rows // len(RBR_PROPOSITIONS)) * len(RBR_PROPOSITIONS)
        rl = rule_level(grader, pool, fuzz[:n_rows], rbr[:n_rbr] if n_rows < len(fuzz) else rbr)
        # whole completions: all propositions of the first n_rows // 23 (every one if trained)
        n_prop = len(prop_rows) if n_rows >= len(fuzz) else (n_rows // len(props)) * len(props)
        rl["propositions"] = proposition_level(grader, props, prop_rows[:n_prop])
        labeler, selector = deployed_labeler(grader, pool, settings)
        pw = pairwise(labeler, {k: v[:n_pairs] for k, v in slices.items()})
        kind = title.split(":")[0] + (f", calibrate {args.calibrate}" if args.calibrate else "")
        title = title.replace(":", f", calibrate {args.calibrate}:", 1) if args.calibrate else title
        saved[kind] = {
            "title": title, "rule_level": rl, "selector": selector, "pairwise": pw,
            "seconds": time.perf_counter() - t0,
            "command": f"python benchmarks/grader_quality.py {' '.join(sys.argv[1:])}",
            "time": f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        }  # fmt: skip
        RESULTS.mkdir(exist_ok=True)
        store.write_text(json.dumps(saved, indent=1))
    results = [
        (v["title"], v["rule_level"], v["selector"], v["pairwise"], v["seconds"], v["command"])
        for v in saved.values()
    ]

    lines = [
        f"# grader quality, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        "commands: " + "; ".join(f"`{r[5]}`" for r in results),
        f"pool {pool.name} ({pool.hash}); {args.threads} CPU threads; seed {args.seed}. Rows"
        " held out from training by question/prompt (ramo_stream/label/grading/sources.py"
        " `held_out`), for HH harmless and LLMBar too (training may use them, `--rows`);"
        " rbr_gold/test is held out whole. 95% Wilson intervals. The zero-shot grader is"
        " scored on the first rows/pairs of the slices (smaller: it is slow on a CPU). Each"
        " row is from the run its command names: a row from before a change of slices or"
        " defaults keeps its old figures (its time is in the .json beside this file).",
        "",
        "## Rule level",
        "",
        "| grader | GPTFuzz held-out acc | F1 (jailbroken) | ECE P(Yes) | "
        + " | ".join(f"rbr {p}" for p in RBR_PROPOSITIONS)
        + " | rbr mean of props |",
        "|---|---|---:|---:|" + "---|" * len(RBR_PROPOSITIONS) + "---:|",
    ]
    for title, rl, *_ in results:
        g = rl["gptfuzz"]
        mapped = [rl[f"rbr:{p}"] for p in RBR_PROPOSITIONS]
        mean = sum(m["accuracy"] for m in mapped) / len(mapped)
        lines.append(
            f"| {title} | {fmt_m(g)} | {g['f1_no']:.3f} | {g['ece_p_yes']:.3f} | "
            + " | ".join(fmt_m(m) for m in mapped)
            + f" | {mean:.3f} |"
        )
    lines += [
        "",
        "rbr propositions mapped (sources.py RBR_PROPOSITIONS): "
        + ", ".join(f"{p} -> {r}" for p, (r, _, _) in RBR_PROPOSITIONS.items())
        + ".",
        "",
        f"## All rbr_gold/test propositions, graded by their own text ({props.name}, {props.hash})",
        "",
    ]
    if not any(rl.get("propositions") for _, rl, *_ in results):
        lines += ["No grader of this report was run with the proposition table (it came with"
                  " a later version of the benchmark); benchmarks/results/rbr_quality.md has"
                  " every proposition for the grader it names.", ""]  # fmt: skip
    else:
        lines += ["Accuracy [Wilson 95%], balanced accuracy (always-No scores 0.5) and the"
                  " majority baseline (always the commoner answer). Many propositions are"
                  " rare, so accuracy alone flatters: read the balanced column.", ""]  # fmt: skip
    for title, rl, *_ in results:
        pr = rl.get("propositions")
        if not pr:
            continue
        lines += [f"**{title}**", "", "| proposition | positives / n | accuracy | balanced"
                  " | majority |", "|---|---:|---|---:|---:|"]  # fmt: skip
        for pid, m in pr.items():
            lines.append(f"| {pid} | {m['positives']}/{m['n']} | {fmt(m['hits'], m['n'])}"
                         f" | {m['balanced']:.3f} | {m['majority']:.3f} |")  # fmt: skip
        mean = {k: sum(m[k] for m in pr.values()) / len(pr) for k in ("balanced", "majority")}
        acc = sum(m["hits"] / m["n"] for m in pr.values()) / len(pr)
        lines += [f"| **mean of {len(pr)}** | | {acc:.3f} | {mean['balanced']:.3f}"
                  f" | {mean['majority']:.3f} |", ""]  # fmt: skip
    lines += [
        "## Pairwise agreement of the whole labeler with the human preference",
        "",
        "| grader | selector | " + " | ".join(PAIR_FILES) + " | seconds |",
        "|---|---|" + "---|" * len(PAIR_FILES) + "---:|",
    ]
    for title, _, selector, pw, secs, _ in results:
        lines.append(
            f"| {title} | {selector} | "
            + " | ".join(fmt(*pw[k]) for k in PAIR_FILES)
            + f" | {secs:.0f} |"
        )
    subsets = [(title, k, v) for title, _, _, pw, *_ in results for k, v in pw.items() if "/" in k]
    if subsets:  # LLMBar's subsets differ in kind: natural pairs vs four adversarial ones
        lines += ["", "By subset (same pairs):", "", "| grader | subset | agreement |",
                  "|---|---|---|"]  # fmt: skip
        lines += [f"| {title} | {k} | {fmt(*v)} |" for title, k, v in subsets]
    report = "\n".join(lines)
    print("\n" + report)
    (RESULTS / args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
