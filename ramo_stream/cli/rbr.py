"""`ramo rbr fit | show`: Rule-Based Rewards weights, fitted on the RBR gold set."""

from __future__ import annotations

import argparse
import hashlib
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ramo_stream.config import Settings

_REPO = Path(__file__).resolve().parents[2]
DEFAULT_GOLD = _REPO.parent / "shared" / "data" / "rbr_gold"


def graded(settings: Settings, grader: Any, pool: Any, path: Path, rows: list[Any]) -> Any:
    """Features of ``rows`` from the cache, or graded now with a progress bar."""
    from tqdm import tqdm

    from ramo_stream.label.rbr.features import cached_features

    with tqdm(total=len(rows), desc=f"grade {path.name} ({len(pool)} propositions)",
              unit="completion", file=sys.stderr) as bar:  # fmt: skip
        feats, hit = cached_features(grader, pool, path, rows, settings.paths.rbr_dir, bar.update)
        if hit:
            bar.set_description(f"{path.name}: cached features")
            bar.update(len(rows) - bar.n)
    return feats


def _accuracy(weights: Any, pool: Any, rubric: Any, rows: list[Any], feats: Any) -> dict[str, Any]:
    from ramo_stream.core.propositions import RESPONSE_TYPES
    from ramo_stream.core.rbr import pair_hits
    from ramo_stream.label.rbr.fit import score_rows, type_pairs

    scores = score_rows(weights, pool, rows, feats)
    out: dict[str, Any] = {}
    for rt in (*RESPONSE_TYPES, None):
        hits = pair_hits(scores, type_pairs(rubric, rows, rt))
        out[rt or "all"] = {"pairs": len(hits), "accuracy": sum(hits) / len(hits) if hits else None}
    return out


def cmd_rbr_fit(args: argparse.Namespace, settings: Settings) -> int:
    from ramo_stream.core.propositions import load_propositions
    from ramo_stream.core.rbr import FitConfig
    from ramo_stream.core.rbr_rubric import load_rubric
    from ramo_stream.label.grading.factory import describe, make_grader
    from ramo_stream.label.rbr.artifact import (
        SHIPPED,
        GraderRef,
        RBRArtifact,
        new_version,
        save_artifact,
    )
    from ramo_stream.label.rbr.features import gold_features, read_gold
    from ramo_stream.label.rbr.fit import fit_rbr

    train_path: Path = args.train
    if not train_path.is_file():
        print(f"no RBR gold training file at {train_path}; pass --train PATH (rbr_gold/"
              "train.jsonl of the shared data, see its README)", file=sys.stderr)  # fmt: skip
        return 2
    pool = load_propositions(settings.paths.propositions)
    rubric = load_rubric(settings.paths.rbr_rubric)
    rubric.check_pool(pool)
    rows = read_gold(train_path)
    grader = make_grader(settings)
    print(describe(grader), file=sys.stderr)
    ref = GraderRef(name=grader.name, template_version=grader.template_version)
    feats = (gold_features(pool, rows) if args.features == "gold"
             else graded(settings, grader, pool, train_path, rows))  # fmt: skip
    cfg = FitConfig(lr=args.lr, weight_decay=args.weight_decay, steps=args.steps,
                    margin=args.margin, seed=args.seed)  # fmt: skip
    result = fit_rbr(rubric, pool, rows, feats, cfg)
    metrics: dict[str, Any] = {
        "train_pairs": result.pairs,
        "train_final_loss": result.final_loss,
        "train_accuracy": result.train_accuracy,
    }
    test_path: Path | None = args.test
    if test_path is not None and test_path.is_file():
        test_rows = read_gold(test_path)
        test_feats = graded(settings, grader, pool, test_path, test_rows)
        metrics["test"] = _accuracy(result.weights, pool, rubric, test_rows, test_feats)
    files = [train_path] + ([test_path] if test_path is not None and test_path.is_file() else [])
    art = RBRArtifact(
        version=new_version(),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        propositions=pool.ids, pool_name=pool.name, pool_hash=pool.hash,
        rubric_name=rubric.name, rubric_hash=rubric.hash, grader=ref, features=args.features,
        weights=result.weights, borrowed=result.borrowed,
        fit={**cfg.__dict__, "base_reward": "none"}, metrics=metrics,
        data_files=[{"path": f"rbr_gold/{p.name}",
                     "sha256": hashlib.sha256(p.read_bytes()).hexdigest()} for p in files],
    )  # fmt: skip
    root = SHIPPED if args.ship else (args.out or settings.paths.rbr_dir)
    path = save_artifact(art, root)
    for rt, n in result.pairs.items():
        acc = result.train_accuracy.get(rt)
        borrowed = f", weights of {result.borrowed[rt]}" if rt in result.borrowed else ""
        test = metrics.get("test", {}).get(rt, {})
        shown = (f"; test {test['accuracy']:.3f} on {test['pairs']} pairs"
                 if test.get("accuracy") is not None else "")  # fmt: skip
        print(f"  {rt:14s} {n:5d} train pairs, train accuracy "
              f"{'-' if acc is None else f'{acc:.3f}'}{borrowed}{shown}")  # fmt: skip
    print(f"saved {path} (fitted on {args.features} features, grader {grader.name})")
    return 0


def cmd_rbr_show(args: argparse.Namespace, settings: Settings) -> int:
    from ramo_stream.core.propositions import RESPONSE_TYPES
    from ramo_stream.label.rbr.artifact import load_artifact

    path = args.artifact or _newest_any(settings)
    if path is None:
        print(f"no RBR artifact under {settings.paths.rbr_dir} or in the package; fit one with"
              " `ramo rbr fit`", file=sys.stderr)  # fmt: skip
        return 1
    art = load_artifact(path)
    print(f"{art.version}: pool {art.pool_name} ({art.pool_hash}), rubric {art.rubric_name}"
          f" ({art.rubric_hash}), grader {art.grader.name}, fitted on {art.features}")  # fmt: skip
    print(f"{'proposition':38s}" + "".join(f"{rt:>15s}" for rt in RESPONSE_TYPES))
    for p in art.propositions:
        print(f"{p:38s}" + "".join(f"{art.weights[rt].get(p, 0.0):15.3f}" for rt in RESPONSE_TYPES))
    for rt, sibling in art.borrowed.items():
        print(f"{rt} had no training pairs: it uses the weights of {sibling}")
    return 0


def _newest_any(settings: Settings) -> Path | None:
    from ramo_stream.label.rbr.artifact import artifact_roots

    found = [p for root in artifact_roots(settings.paths.cache_dir) if root.is_dir()
             for p in root.glob("rbr-*.json")]  # fmt: skip
    return max(found, key=lambda p: p.name) if found else None


def add_commands(sub: Any, parent: argparse.ArgumentParser) -> None:
    rbr = sub.add_parser("rbr", help="Rule-Based Rewards: fitted weights over graded propositions.")
    rsub = rbr.add_subparsers(dest="rbr_command", required=True, metavar="ACTION")
    p = rsub.add_parser(
        "fit",
        parents=[parent],
        help="Grade the RBR gold training set on every proposition (paths.propositions) with"
        " the configured grader (cached under paths.cache_dir/rbr/features), fit weights per"
        " response type with the hinge loss over completion classes (paths.rbr_rubric), and"
        " save them as an artifact under paths.cache_dir/rbr.",
    )
    p.add_argument("--train", type=Path, default=DEFAULT_GOLD / "train.jsonl",
                   help="RBR gold rows to fit on.")  # fmt: skip
    p.add_argument("--test", type=Path, default=DEFAULT_GOLD / "test.jsonl",
                   help="RBR gold rows for the ranking accuracy in the artifact's metrics"
                   " (graded too; skipped when the file is absent).")  # fmt: skip
    p.add_argument("--features", choices=["grader", "gold"], default="grader",
                   help="Fit on the grader's probabilities (default) or on the human 0/1"
                   " labels (an upper bound).")  # fmt: skip
    d = p.add_argument_group("fit (defaults: the paper's weight-fitting example)")
    d.add_argument("--lr", type=float, default=1e-2, help="AdamW learning rate.")
    d.add_argument("--weight-decay", type=float, default=0.05, help="AdamW weight decay.")
    d.add_argument("--steps", type=int, default=1000, help="Full-batch steps.")
    d.add_argument("--margin", type=float, default=1.0, help="Hinge margin.")
    d.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="Artifact folder (default paths.cache_dir/rbr).")
    p.add_argument("--ship", action="store_true",
                   help="Save into the package: ramo_stream/label/rbr/trained.")  # fmt: skip
    p.set_defaults(fn=cmd_rbr_fit)
    p = rsub.add_parser(
        "show", parents=[parent], help="Print an RBR artifact's weights (default: the newest)."
    )
    p.add_argument("--artifact", type=Path, help="An rbr-*.json file.")
    p.set_defaults(fn=cmd_rbr_show)
