"""`ramo grader train`: fine-tune the classifier grader from human judgments and publish it."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ramo_stream.config import Settings

_REPO = Path(__file__).resolve().parents[2]
DEFAULT_DATA = _REPO.parent / "shared" / "data"
# Rows per source (training split) and the defaults below: the shipped artifact, about 13
# minutes on a shared 2-core CPU (797 s). GPTFuzz gets the most rows: harm judgments are the
# hardest part (6,160 rows there; the other sources have 351-927). llmbar_follow takes every
# LLMBar training prompt (692 examples), off_topic and cross_na are drawn from thousands.
# Measured against the same rows without those three (grader_quality.md and the README,
# "The trained grader"): LLMBar 0.342 -> 0.589 and HH 0.585 -> 0.595 held out, CoCoNot
# 0.889 -> 0.846. Every coconot, refusal_direction and rbr_gold row on top (6,595 examples)
# bought CoCoNot back (0.907) but put HH at chance (0.510; 0.547 on HH training prompts,
# which no grader trains on), so those stay at 400 (grader_quality_cand2.md).
# HH harmless and LLMBar are pairs (a Bradley-Terry loss on the labeler's margin, see
# train_classifier.py), each 2 x PAIR_RULES sequences. Off by default: measured with 400 HH
# and 300 LLMBar pairs, held-out HH agreement fell (0.62 -> 0.48, n=60) and LLMBar stayed
# at 0.37 (README, "The trained grader"); `--rows hh_harmless=400 --rows llmbar=300`.
# rbr_propositions: the 23 propositions Rule-Based Rewards grade, 23 per rbr_gold completion
# (8,073 in all). Off by default: measured with 3,000 of them (grader_quality_props.md), the
# grader learned them little beyond their base rates (mean balanced accuracy 0.557) and lost
# pairwise agreement on refusal_direction (0.985 -> 0.894) and CoCoNot (0.889 -> 0.852);
# `--rows rbr_propositions=3000` builds that grader.
DEFAULT_ROWS = {"gptfuzz": 1500, "refusal_direction": 400, "coconot": 400, "rbr_gold": 400,
                "llmbar_follow": 692, "off_topic": 400, "cross_na": 600,
                "rbr_propositions": 0, "hh_harmless": 0, "llmbar": 0}  # fmt: skip
SHIPPED_ROOT = Path(__file__).resolve().parents[1] / "label" / "grading" / "trained"


def heldout_metrics(
    grader: Any,
    data: Path,
    pool: Any,
    limit: int,
    seed: int,
    rbr_limit: int | None = None,
    props: Any = None,
) -> dict[str, Any]:
    """Held-out GPTFuzz (by question) and rbr_gold/test proposition metrics for the manifest."""
    import random

    from ramo_stream.label.grading.sources import (
        TRAIN_FILES,
        gptfuzz_examples,
        grading_texts,
        proposition_examples,
        rbr_examples,
    )
    from ramo_stream.label.grading.train_classifier import as_request, yes_no_metrics

    out: dict[str, Any] = {}
    fuzz = [e for e in gptfuzz_examples(data / TRAIN_FILES["gptfuzz"], pool, "test", 0.0, seed)]
    random.Random(seed).shuffle(fuzz)
    test = data / "rbr_gold" / "test.jsonl"
    parts = [("gptfuzz_heldout", fuzz[:limit]), ("rbr_gold_test", rbr_examples(test)[:rbr_limit])]
    if props is not None:
        parts.append(("rbr_propositions_test", proposition_examples(test, props)[:rbr_limit]))
    text = grading_texts(pool, props)
    for name, rows in parts:
        probs = grader.grade([as_request(e, text(e.rule_id)) for e in rows])
        out[name] = yes_no_metrics(probs, rows)
    return out


def cmd_grader_train(args: argparse.Namespace, settings: Settings) -> int:
    import torch
    from tqdm import tqdm

    from ramo_stream.core.propositions import load_propositions
    from ramo_stream.core.rules import load_pool
    from ramo_stream.label.grading.artifact import sha256_file
    from ramo_stream.label.grading.sources import (
        PREFERENCE_SOURCES,
        TRAIN_FILES,
        grading_texts,
        source_files,
        training_examples,
        training_pairs,
    )
    from ramo_stream.label.grading.train_classifier import TrainConfig, publish, train
    from ramo_stream.local_models import resolve

    data: Path = args.data
    missing = [f for f in TRAIN_FILES.values() if not (data / f).is_file()]
    if missing:
        print(f"training data missing under {data}: {missing}; pass --data DIR (the shared"
              " data folder, see its README)", file=sys.stderr)  # fmt: skip
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    pool = load_pool(settings.paths.rule_pool)
    props = load_propositions(settings.paths.propositions)
    base = resolve(settings.models.encoder, settings.paths.models_dir)
    rows = dict(DEFAULT_ROWS)
    if args.rows_per_source is not None:  # the rule-level sources; pairs stay opt-in
        rows = {k: v if k in PREFERENCE_SOURCES else args.rows_per_source for k, v in rows.items()}
    for item in args.rows or []:
        name, _, n = item.partition("=")
        if name not in rows or not n.isdigit():
            print(f"--rows {item!r}: expected SOURCE=N with SOURCE one of {sorted(rows)}"
                  " and N a whole number, e.g. --rows gptfuzz=1500", file=sys.stderr)  # fmt: skip
            return 2
        rows[name] = int(n)
    examples = training_examples(data, pool, rows, seed=args.seed, props=props)
    pairs = training_pairs(data, pool, rows, seed=args.seed)
    cfg = TrainConfig(train_layers=args.train_layers, lr=args.lr, batch=args.batch,
                      epochs=args.epochs, max_tokens=args.max_tokens, seed=args.seed)  # fmt: skip
    counts: dict[str, int] = {}
    for e in [*examples, *pairs]:
        counts[e.source] = counts.get(e.source, 0) + 1
    print(f"grader train: {len(examples)} examples and {len(pairs)} preference pairs {counts};"
          f" base {settings.models.encoder};"
          f" top {cfg.train_layers} layers + head; {torch.get_num_threads()} threads",
          file=sys.stderr)  # fmt: skip
    if args.kind == "llm":
        return _train_llm(args, settings, examples, grading_texts(pool, props), pool, data,
                          counts)  # fmt: skip
    t0 = time.monotonic()
    with tqdm(total=None, desc="grader train", unit="step", file=sys.stderr) as bar:

        def on_step(step: int, total: int, loss: float) -> None:
            if step == 0:  # a batch of 32 through the frozen layers
                bar.set_description("grader: frozen layers")
                bar.update(1)
                return
            if step == 1:
                bar.reset(total=total)
                bar.set_description("grader train")
            bar.set_postfix(loss=f"{loss:.3f}")
            bar.update(1)

        text = grading_texts(pool, props)
        model, losses, names = train(base, examples, text, cfg, on_step, pairs)
    train_s = time.monotonic() - t0
    root = SHIPPED_ROOT if args.ship else (args.out or settings.paths.cache_dir / "graders")
    manifest = {
        "base_model": settings.models.encoder,
        "data_files": [  # the files rows were drawn from
            {"path": f, "sha256": sha256_file(data / f)}
            for f in sorted({f for name, n in rows.items() if n > 0 for f in source_files(name)})
        ],
        "rows_by_source": counts,
        "steps": len(losses),
        "seed": cfg.seed,
        "train_config": cfg.__dict__,
        "max_tokens": cfg.max_tokens,
        "loss_first_last": [
            sum(losses[:20]) / max(1, len(losses[:20])),
            sum(losses[-20:]) / max(1, len(losses[-20:])),
        ],  # fmt: skip
        "train_seconds": round(train_s, 1),
        "rule_pool_name": pool.name,
        # The propositions it was trained to grade (Rule-Based Rewards check this hash).
        "proposition_pool_name": props.name,
        "proposition_pool_hash": props.hash if rows.get("rbr_propositions", 0) > 0 else None,
    }

    def evaluate(grader: Any) -> dict[str, Any]:
        if args.eval_rows == 0:
            return {}
        return heldout_metrics(grader, data, pool, args.eval_rows, args.seed, args.eval_rows, props)

    folder = publish(model, names, root, manifest, base, pool.hash, evaluate)
    m = json.loads((folder / "manifest.json").read_text())
    print(json.dumps(m["metrics"], indent=1))
    print(f"published {folder} ({train_s:.0f} s training, {len(losses)} steps, loss"
          f" {m['loss_first_last'][0]:.3f} -> {m['loss_first_last'][1]:.3f})")  # fmt: skip
    return 0


def _train_llm(args: argparse.Namespace, settings: Settings, examples: list[Any],
               text: Callable[[str], str], pool: Any, data: Path,
               counts: dict[str, int]) -> int:  # fmt: skip
    """The second candidate: SmolLM2 fine-tuned on the answer word (grading/train_llm.py)."""
    from tqdm import tqdm

    from ramo_stream.label.grading.artifact import new_version, sha256_file
    from ramo_stream.label.grading.sources import TRAIN_FILES
    from ramo_stream.label.grading.train_llm import save_llm, train_llm
    from ramo_stream.label.grading.transformers_backend import TransformersGrader
    from ramo_stream.local_models import resolve

    base = resolve(settings.models.grader, settings.paths.models_dir)
    t0 = time.monotonic()
    with tqdm(total=len(examples), desc="llm grader train", unit="ex", file=sys.stderr) as bar:

        def on_step(step: int, total: int, loss: float) -> None:
            bar.set_postfix(loss=f"{loss:.3f}")
            bar.update(1)

        model, tokenizer, losses = train_llm(
            base, examples, text, train_layers=args.train_layers,
            lr=args.lr, max_tokens=args.max_tokens, seed=args.seed, on_step=on_step,
        )  # fmt: skip
    train_s = time.monotonic() - t0
    root = args.out or settings.paths.cache_dir / "graders"
    version = new_version("llm")
    folder = save_llm(model, tokenizer, root / version, {
        "version": version, "base_model": settings.models.grader,
        "data_files": [{"path": f, "sha256": sha256_file(data / f)}
                       for f in sorted(TRAIN_FILES.values())],
        "rows_by_source": counts, "steps": len(losses), "seed": args.seed,
        "train_layers": args.train_layers, "lr": args.lr, "max_tokens": args.max_tokens,
        "template_version": "ramo-grade-v1", "answer_words": ["Yes", "No", "NA"],
        "rule_pool_hash": pool.hash, "train_seconds": round(train_s, 1),
        "loss_first_last": [sum(losses[:20]) / max(1, len(losses[:20])),
                            sum(losses[-20:]) / max(1, len(losses[-20:]))],
    })  # fmt: skip
    if args.eval_rows:
        grader = TransformersGrader(str(folder))
        metrics = heldout_metrics(grader, data, pool, args.eval_rows, args.seed, args.eval_rows)
        print(json.dumps(metrics, indent=1))
    print(f"saved {folder} ({train_s:.0f} s, {len(losses)} steps); use it with"
          f" --models-grader {folder} --grader-backend transformers")  # fmt: skip
    return 0


def add_commands(sub: Any, parent: argparse.ArgumentParser) -> None:
    grader = sub.add_parser("grader", help="The trained grader.")
    gsub = grader.add_subparsers(dest="grader_command", required=True, metavar="ACTION")
    p = gsub.add_parser(
        "train",
        parents=[parent],
        help="Fine-tune the classifier grader (all-MiniLM-L6-v2 cross-encoder, Yes/No/NA) on"
        " the human judgments of the shared data and publish it under"
        " paths.cache_dir/graders (newest is used by grader.backend auto).",
    )
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="Shared data folder.")
    p.add_argument("--kind", choices=["classifier", "llm"], default="classifier",
                   help="classifier (the default grader) or llm: the second candidate,"
                   " models.grader fine-tuned on the answer word (a full HF folder in"
                   " paths.cache_dir/graders)")  # fmt: skip
    p.add_argument("--rows-per-source", type=int,
                   help="Cap every rule-level source at this many rows (the preference-pair"
                   " sources stay at 0 unless --rows names them).")  # fmt: skip
    p.add_argument("--rows", action="append", metavar="SOURCE=N",
                   help="Cap one source (gptfuzz, refusal_direction, coconot, rbr_gold,"
                   " rbr_propositions, llmbar_follow, off_topic, cross_na;"
                   " hh_harmless, llmbar: pairs); see grading/sources.py for what each is."
                   " Repeatable, applied after --rows-per-source.")  # fmt: skip
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-layers", type=int, default=3, help="Top encoder layers trained.")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--max-tokens", type=int, default=256,
                   help="Tokens of rule + conversation + response (the response keeps about"
                   " three quarters).")  # fmt: skip
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="torch threads (default: torch's choice).")
    p.add_argument("--eval-rows", type=int, default=200,
                   help="Held-out GPTFuzz rows scored for the manifest (0: none).")  # fmt: skip
    p.add_argument("--out", type=Path, help="Artifact root (default paths.cache_dir/graders).")
    p.add_argument("--ship", action="store_true",
                   help="Publish into the package: ramo_stream/label/grading/trained.")  # fmt: skip
    p.set_defaults(fn=cmd_grader_train)
