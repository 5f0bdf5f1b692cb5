"""Fitting RBR weights per response type on gold rows, and ranking with them.

The completion class of each row comes from its human proposition labels through the rubric;
the features are the grader's probabilities (or the labels themselves, for the upper bound).
A response type without a single ordered pair in the data cannot be fitted; it borrows the
weights of its sibling in ``BORROW`` (the two safe-refusal types share their rubric but for
inability_to_comply), and the artifact says so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from ramo_stream.core.propositions import RESPONSE_TYPES, PropositionPool
from ramo_stream.core.rbr import FitConfig, fit_weights, ordered_pairs, pair_hits
from ramo_stream.core.rbr_rubric import Rubric
from ramo_stream.label.rbr.features import GoldRow

BORROW = {"safe_refuse_1": "safe_refuse_2", "safe_refuse_2": "safe_refuse_1"}

Weights = dict[str, dict[str, float]]


@dataclass(frozen=True)
class FitResult:
    weights: Weights
    borrowed: dict[str, str]
    pairs: dict[str, int]  # training pairs per response type
    final_loss: dict[str, float]
    train_accuracy: dict[str, float]


def classes_of(rubric: Rubric, rows: Sequence[GoldRow]) -> list[str]:
    return [rubric.classify(r.response_type, r.truth) for r in rows]


def type_pairs(
    rubric: Rubric, rows: Sequence[GoldRow], response_type: str | None = None
) -> list[tuple[int, int]]:
    """(better, worse) row indices of one response type (all types when None)."""
    ranks = [rubric.rank(c) for c in classes_of(rubric, rows)]
    types = [r.response_type for r in rows]
    pairs = ordered_pairs(types, ranks)
    return [p for p in pairs if response_type is None or types[p[0]] == response_type]


def fit_rbr(
    rubric: Rubric,
    pool: PropositionPool,
    rows: Sequence[GoldRow],
    features: Sequence[Sequence[float]],
    config: FitConfig | None = None,
    base: Sequence[float] | None = None,
) -> FitResult:
    """Weights per response type minimising the hinge loss over its ordered pairs."""
    config = config or FitConfig()
    weights: Weights = {}
    borrowed: dict[str, str] = {}
    n_pairs: dict[str, int] = {}
    losses: dict[str, float] = {}
    accs: dict[str, float] = {}
    for rt in RESPONSE_TYPES:
        idx = [i for i, r in enumerate(rows) if r.response_type == rt]
        sub = [rows[i] for i in idx]
        pairs = type_pairs(rubric, sub)
        n_pairs[rt] = len(pairs)
        if not pairs:
            continue
        feats = [features[i] for i in idx]
        sub_base = None if base is None else [base[i] for i in idx]
        w, loss = fit_weights(feats, pairs, config, sub_base)
        weights[rt] = dict(zip(pool.ids, w, strict=True))
        losses[rt] = loss[-1]
        scores = rbr_scores(weights[rt], pool, feats, sub_base)
        hits = pair_hits(scores, pairs)
        accs[rt] = sum(hits) / len(hits)
    for rt in RESPONSE_TYPES:
        if rt in weights:
            continue
        sibling = BORROW.get(rt)
        if sibling in weights:
            weights[rt] = dict(weights[sibling])
            borrowed[rt] = sibling
        else:
            raise ValueError(
                f"response type {rt} has no ordered pair of completions in the data (all of one"
                " class) and no sibling type to borrow weights from; add completions of"
                " other classes"
            )
    return FitResult(weights, borrowed, n_pairs, losses, accs)


def rbr_scores(
    weights: Mapping[str, float],
    pool: PropositionPool,
    features: Sequence[Sequence[float]],
    base: Sequence[float] | None = None,
) -> list[float]:
    """base + sum_j w_j phi_j for each row of features (pool order)."""
    w = [weights.get(p, 0.0) for p in pool.ids]
    out = [sum(a * b for a, b in zip(w, f, strict=True)) for f in features]
    return out if base is None else [b + s for b, s in zip(base, out, strict=True)]


def score_rows(
    weights: Weights,
    pool: PropositionPool,
    rows: Sequence[GoldRow],
    features: Sequence[Sequence[float]],
) -> list[float]:
    """R_rbr of every row with its response type's weights."""
    return [
        rbr_scores(weights[r.response_type], pool, [f])[0]
        for r, f in zip(rows, features, strict=True)
    ]


def equal_weights(rubric: Rubric, pool: PropositionPool) -> Weights:
    """The fit-free baseline: weight +-1 (or 0) per proposition, the sign read off the
    rubric (``Rubric.sign``: +1 when the ideal class needs it true, -1 when it needs it
    false or it alone makes a completion illogical or disallowed, 0 when the rubric of that
    response type does not use it)."""
    return {rt: {p: float(rubric.sign(rt, p)) for p in pool.ids} for rt in RESPONSE_TYPES}
