"""The Bradley–Terry reward-model loss, as a plain function over reward tensors.

For a labeled pair with rewards r_c (chosen) and r_r (rejected):

    loss = -log sigmoid(r_c - r_r - m)  +  c * (r_c + r_r)^2

averaged over the pairs. ``m`` is an optional per-pair margin (a
labeler's confidence: the pair must be won by at least m); ``c`` is the optional reward
centring coefficient, which keeps rewards near zero (BT only fixes their differences, so
without it the scale drifts). ``-log sigmoid(x)`` is computed as ``softplus(-x)`` in its
stable form ``max(z, 0) + log1p(exp(-|z|))``, which neither overflows nor loses precision.

Only tensor methods are used, so this module imports without torch; callers pass torch
tensors (any object with the same methods works).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

Tensor = Any  # torch.Tensor, kept out of the import so the core stays light


@dataclass(frozen=True)
class PairLoss:
    """The loss to back-propagate, and detached figures for logs."""

    loss: Tensor
    accuracy: float  # share of pairs with r_c > r_r
    reward_gap: float  # mean r_c - r_r
    reward_mean: float  # mean of all rewards (what centring pulls towards 0)


def _softplus(z: Tensor) -> Tensor:
    # (z + |z|) / 2 is max(z, 0) with the right gradient at 0 (1/2, as sigmoid(0) is;
    # clamp's would be 1).
    return (z + z.abs()) / 2 + (-z.abs()).exp().log1p()


def bradley_terry_loss(
    r_chosen: Tensor,
    r_rejected: Tensor,
    margin: Tensor | None = None,
    centering: float = 0.0,
) -> PairLoss:
    """Mean BT loss over a batch of pairs; 1-D tensors of equal length."""
    if r_chosen.shape != r_rejected.shape or r_chosen.dim() != 1:
        raise ValueError(
            f"rewards must be 1-D and of equal length, got {tuple(r_chosen.shape)} and"
            f" {tuple(r_rejected.shape)}"
        )
    if margin is not None and margin.shape != r_chosen.shape:
        raise ValueError(
            f"margin must have the rewards' shape {tuple(r_chosen.shape)},"
            f" got {tuple(margin.shape)}"
        )
    if centering < 0:
        raise ValueError(f"centering must be >= 0, got {centering}")
    diff = r_chosen - r_rejected
    per_pair = _softplus(-(diff - margin) if margin is not None else -diff)
    if centering:
        per_pair = per_pair + centering * (r_chosen + r_rejected) ** 2
    with_no_grad = diff.detach()
    return PairLoss(
        loss=per_pair.mean(),
        accuracy=float((with_no_grad > 0).float().mean()),
        reward_gap=float(with_no_grad.mean()),
        reward_mean=float(((r_chosen + r_rejected).detach() / 2).mean()),
    )
