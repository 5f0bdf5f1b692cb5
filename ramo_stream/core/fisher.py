"""Active selection: which pairs to send to the labeler under a budget (Fisher information).

The reward model's last layer is linear: r(prompt, response) = w . phi(response) + b. For a
pair (A, B) let x = phi(A) - phi(B); the model's preference is p = sigmoid(w . x), and the
Fisher information one label of that pair carries about w is p(1-p) x x^T (the Hessian of the
Bradley-Terry log-likelihood, which does not depend on the label). Over the pairs labeled so far

    M = sum_labeled p_j (1 - p_j) x_j x_j^T + lambda I

and the score of a candidate (past-aware D-optimal design, arXiv 2502.04354) is

    d-opt:        p (1 - p) x^T M^-1 x      (how much the label would shrink the posterior)
    uncertainty:  p (1 - p)                 (the model's own doubt, blind to what is known)
    random:       uniform in [0, 1)
    all:          no gate; every pair is labeled.

M^-1 is kept up to date with the Sherman-Morrison identity, so adding a labeled pair costs
O(d^2) and no matrix is ever inverted:

    (M + c x x^T)^-1 = M^-1 - c (M^-1 x)(M^-1 x)^T / (1 + c x^T M^-1 x).

Only array methods (``@``, indexing, ``.sum``, ``.tolist``) are used, so this module imports
without torch or numpy; callers pass torch tensors or numpy arrays (float64 recommended).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import Any, Literal

Array = Any  # torch.Tensor or numpy.ndarray, kept out of the import so the core stays light
Strategy = Literal["d-opt", "uncertainty", "random", "all"]
STRATEGIES: tuple[Strategy, ...] = ("d-opt", "uncertainty", "random", "all")


class FisherInfo:
    """The inverse of the regularised information matrix M, updated one labeled pair at a time."""

    def __init__(self, m_inv: Array) -> None:
        self.m_inv = m_inv
        self.labeled = 0  # pairs added since the prior

    @classmethod
    def prior(cls, eye: Array, lam: float) -> FisherInfo:
        """M = lambda I, from an identity matrix of the feature dimension (``torch.eye(d)``)."""
        if not lam > 0:
            raise ValueError(f"lambda must be > 0 (M = lambda I must be invertible), got {lam}")
        return cls(eye / lam)

    @property
    def dim(self) -> int:
        return int(self.m_inv.shape[0])

    def quad(self, x: Array) -> Array:
        """x_i^T M^-1 x_i for each row of ``x`` (n, d)."""
        return ((x @ self.m_inv) * x).sum(-1)

    def add(self, x: Array, weight: float) -> Array:
        """M += weight * x x^T for one pair ``x`` (d,); returns the vector v with
        M_new^-1 = M_old^-1 - v v^T (callers use it to re-score other pairs in O(d))."""
        if weight < 0:
            raise ValueError(f"a Fisher weight p(1-p) is >= 0, got {weight}")
        u = self.m_inv @ x
        denom = 1.0 + weight * float(x @ u)
        v = u * math.sqrt(weight / denom)
        self.m_inv = self.m_inv - v[:, None] * v[None, :]
        self.labeled += 1
        return v


def fisher_weight(p: Array) -> Array:
    """p (1 - p): the Bernoulli variance, the pair's Fisher weight."""
    return p * (1 - p)


def scores(
    strategy: Strategy, x: Array, p: Array, info: FisherInfo | None, rng: random.Random
) -> list[float]:
    """One score per pair; higher means label it first. ``info`` is needed by d-opt only."""
    n = int(x.shape[0])
    if strategy == "d-opt":
        if info is None:
            raise ValueError("d-opt needs the information matrix (info=None given)")
        return [float(s) for s in (fisher_weight(p) * info.quad(x)).tolist()]
    if strategy == "uncertainty":
        return [float(s) for s in fisher_weight(p).tolist()]
    if strategy == "random":
        return [rng.random() for _ in range(n)]
    if strategy == "all":
        return [1.0] * n
    raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")


def top_k(values: Sequence[float], k: int) -> list[int]:
    """Indices of the ``k`` largest values, best first; ties go to the earlier pair."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    order = sorted(range(len(values)), key=lambda i: (-values[i], i))
    return order[: min(k, len(values))]


def select_window(
    strategy: Strategy,
    x: Array,
    p: Array,
    budget: int,
    info: FisherInfo | None,
    rng: random.Random,
    greedy: bool = False,
) -> tuple[list[int], list[float]]:
    """Choose up to ``budget`` pairs of one window; returns (selected indices, scores).

    The scores are each pair's score against M before this window. Selected pairs are added
    to M (their labels will arrive; Fisher information does not depend on them). With
    ``greedy`` (d-opt only) pairs are taken one at a time and the others re-scored after
    each, which avoids spending the budget on near-duplicates of one informative pair; the
    re-scoring uses x_j^T M'^-1 x_j = x_j^T M^-1 x_j - (v . x_j)^2, O(n d) per pick.
    """
    s = scores(strategy, x, p, info, rng)
    if strategy == "all":
        return list(range(len(s))), s
    if not (greedy and strategy == "d-opt"):
        chosen = top_k(s, budget)
        if info is not None:
            weights = fisher_weight(p).tolist()
            for i in chosen:
                info.add(x[i], float(weights[i]))
        return chosen, s
    assert info is not None
    weights = [float(w) for w in fisher_weight(p).tolist()]
    quad = [float(q) for q in info.quad(x).tolist()]
    chosen = []
    left = set(range(len(s)))
    for _ in range(min(budget, len(s))):
        best = min(left, key=lambda i: (-weights[i] * quad[i], i))
        chosen.append(best)
        left.discard(best)
        v = info.add(x[best], weights[best])
        proj = (x @ v).tolist()
        quad = [q - float(a) ** 2 for q, a in zip(quad, proj, strict=True)]
    return chosen, s


class Budget:
    """How many pairs a window may send to the labeler: ``per_window`` pairs per window of
    ``window_pairs`` pairs or of ``window_s`` seconds (exactly one of the two).

    A partial window (fewer pairs than ``window_pairs``, or less time than ``window_s``)
    earns its share; the fraction left over carries to the next window, capped, so the
    long-run rate equals the budget and a quiet spell does not bank a burst.
    """

    def __init__(
        self, per_window: float, window_pairs: int | None = None, window_s: float | None = None
    ) -> None:
        if (window_pairs is None) == (window_s is None):
            raise ValueError("give exactly one of window_pairs and window_s")
        if per_window < 0:
            raise ValueError(f"budget must be >= 0 pairs per window, got {per_window}")
        if window_pairs is not None and window_pairs < 1:
            raise ValueError(f"window_pairs must be >= 1, got {window_pairs}")
        if window_s is not None and not window_s > 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.per_window = per_window
        self.window_pairs = window_pairs
        self.window_s = window_s
        self.credit = 0.0
        self._last: float | None = None

    def allowance(self, n_pairs: int, now: float) -> int:
        """Pairs the window of ``n_pairs`` (closing at ``now``, seconds) may select."""
        if self.window_pairs is not None:
            earned = self.per_window * n_pairs / self.window_pairs
        else:
            assert self.window_s is not None
            elapsed = self.window_s if self._last is None else max(0.0, now - self._last)
            # A long quiet spell earns one window, not a burst the labeler cannot take.
            earned = self.per_window * min(elapsed, self.window_s) / self.window_s
        self._last = now
        # Carry at most one pair beyond this window's own share: enough that fractions are
        # never lost, too little to bank credit while windows had fewer pairs than budget.
        self.credit = min(self.credit + earned, max(earned, self.per_window) + 1.0)
        k = min(n_pairs, math.floor(self.credit + 1e-9))
        self.credit -= k
        return k
