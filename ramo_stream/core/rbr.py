"""Rule-Based Rewards (RBR): a linear reward over graded propositions, and its fit.

For a completion c of response type t (what the request calls for: comply, hard_refuse,
safe_refuse_1, safe_refuse_2), the grader gives phi_j(c) = P(proposition j is true of c) for
every proposition j of the pool, and

    R_rbr(c) = sum_j w_{t,j} phi_j(c)
    R(c)     = R_rm(c) + R_rbr(c)                    (what RL optimises)

The weights w_t of each response type are fitted on completions whose completion class is
known (ideal > acceptable > unacceptable > illogical > disallowed; see ``rbr_rubric``):
every pair (better, worse) of the same response type and different class should be ordered,
with a margin, under the hinge loss

    L(w_t) = mean over pairs of relu(margin + R(worse) - R(better))

minimised with AdamW on the full batch (R includes R_rm when a base reward is given, so the
weights correct the reward model; without one they rank on their own).

The paper ranks the completions of one prompt against each other. The RBR gold set has at
most two completions per prompt, so here pairs are formed across prompts within a response
type; a prompt's own reward level is then part of what the fit must overcome, and the
reported ranking accuracy is over such pairs.

Only tensor methods are used by ``hinge_loss``; ``fit_weights`` imports torch when called,
so the module imports without it.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

Tensor = Any  # torch.Tensor, kept out of the import so the core stays light


@dataclass(frozen=True)
class FitConfig:
    """The reference fit's settings (openai/safety-rbr-code-and-data, weight fitting example)."""

    lr: float = 1e-2
    weight_decay: float = 0.05
    steps: int = 1000
    margin: float = 1.0
    seed: int = 0


def ordered_pairs(types: Sequence[str], ranks: Sequence[int]) -> list[tuple[int, int]]:
    """(better, worse) index pairs: same response type, strictly better class (lower rank)."""
    by_type: dict[str, list[int]] = {}
    for i, t in enumerate(types):
        by_type.setdefault(t, []).append(i)
    pairs: list[tuple[int, int]] = []
    for idx in by_type.values():
        for a in idx:
            for b in idx:
                if ranks[a] < ranks[b]:
                    pairs.append((a, b))
    return pairs


def hinge_loss(scores: Tensor, better: Tensor, worse: Tensor, margin: float) -> Tensor:
    """mean relu(margin + s[worse] - s[better]) over the pairs (index tensors)."""
    return (margin + scores[worse] - scores[better]).clamp(min=0).mean()


def fit_weights(
    features: Sequence[Sequence[float]],
    pairs: Sequence[tuple[int, int]],
    config: FitConfig = FitConfig(),
    base: Sequence[float] | None = None,
) -> tuple[list[float], list[float]]:
    """(weights, loss per step): minimise ``hinge_loss`` of ``base + features @ w`` over
    ``pairs`` with AdamW, full batch, from w = 0. No pairs: zeros and no steps."""
    import torch

    dim = len(features[0]) if features else 0
    if not pairs or dim == 0:
        return [0.0] * dim, []
    torch.manual_seed(config.seed)
    x = torch.tensor([list(f) for f in features], dtype=torch.float64)
    b = torch.tensor(list(base) if base is not None else [0.0] * len(x), dtype=torch.float64)
    better = torch.tensor([p[0] for p in pairs])
    worse = torch.tensor([p[1] for p in pairs])
    w = torch.zeros(dim, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.AdamW([w], lr=config.lr, weight_decay=config.weight_decay)
    losses: list[float] = []
    for _ in range(config.steps):
        opt.zero_grad()
        loss = hinge_loss(b + x @ w, better, worse, config.margin)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return [float(v) for v in w.detach()], losses


def rbr_reward(weights: Mapping[str, float], probs: Mapping[str, float]) -> float:
    """sum_j w_j phi_j over the weighted propositions (a missing probability is an error)."""
    return sum(w * probs[p] for p, w in weights.items())


def pair_hits(scores: Sequence[float], pairs: Sequence[tuple[int, int]]) -> list[bool]:
    """Whether each pair is ordered, strictly (a tie is wrong, as in RewardBench)."""
    return [scores[a] > scores[b] for a, b in pairs]


def bootstrap_pair_accuracy(
    n_items: int,
    pairs: Sequence[tuple[int, int]],
    hits: Sequence[bool],
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of pair accuracy, resampling completions (not pairs: pairs
    share completions, so they are not independent). A resample draws ``n_items``
    completions with replacement; a pair then counts count(a) x count(b) times."""
    if not pairs:
        return float("nan"), float("nan")
    rng = random.Random(seed)
    accs: list[float] = []
    for _ in range(resamples):
        count = [0] * n_items
        for _ in range(n_items):
            count[rng.randrange(n_items)] += 1
        num = den = 0
        for (a, b), hit in zip(pairs, hits, strict=True):
            w = count[a] * count[b]
            den += w
            num += w * hit
        if den:
            accs.append(num / den)
    accs.sort()
    if not accs:
        return float("nan"), float("nan")
    lo = accs[int((1 - level) / 2 * (len(accs) - 1))]
    hi = accs[int((1 + level) / 2 * (len(accs) - 1))]
    return lo, hi
