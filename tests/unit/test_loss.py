"""The Bradley–Terry loss: every expected number is worked out by hand.

-log sigmoid(x) = log(1 + e^-x):  x = 1 -> 0.3132616875,  x = 0.5 -> 0.4740769842,
x = 0 -> log 2 = 0.6931471806. Tensors are float64 so these hold to 1e-9.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

from ramo_stream.core.loss import bradley_terry_loss

NLS_1 = 0.3132616875182228  # -log sigmoid(1)
NLS_HALF = 0.47407698418010663  # -log sigmoid(0.5)
LOG2 = math.log(2)


def t(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64)


def test_one_pair_is_minus_log_sigmoid_of_the_gap() -> None:
    out = bradley_terry_loss(t(1.0), t(0.0))

    assert out.loss.item() == pytest.approx(NLS_1, abs=1e-12)
    assert (out.accuracy, out.reward_gap, out.reward_mean) == (1.0, 1.0, 0.5)


def test_margin_is_subtracted_from_the_gap() -> None:
    # gap 1, margin 0.5 -> -log sigmoid(0.5)
    out = bradley_terry_loss(t(1.0), t(0.0), margin=t(0.5))

    assert out.loss.item() == pytest.approx(NLS_HALF, abs=1e-12)
    assert out.reward_gap == 1.0  # the logged gap is the raw one


def test_centering_adds_c_times_the_squared_reward_sum() -> None:
    # 0.3132616875 + 0.1 * (1 + 0)^2
    out = bradley_terry_loss(t(1.0), t(0.0), centering=0.1)

    assert out.loss.item() == pytest.approx(NLS_1 + 0.1, abs=1e-12)


def test_centering_is_averaged_over_the_batch() -> None:
    # pairs (1, 0) and (2, 1): both gaps are 1, sums are 1 and 3
    # -> NLS_1 + 0.1 * (1 + 9) / 2 = NLS_1 + 0.5
    out = bradley_terry_loss(t(1.0, 2.0), t(0.0, 1.0), centering=0.1)

    assert out.loss.item() == pytest.approx(NLS_1 + 0.5, abs=1e-12)
    assert out.reward_mean == 1.0  # (1 + 0 + 2 + 1) / 4


def test_batch_is_averaged_and_a_tie_counts_as_wrong() -> None:
    # pair 1: gap 1 -> NLS_1; pair 2: gap 0 (tie) -> log 2
    out = bradley_terry_loss(t(1.0, 0.0), t(0.0, 0.0))

    assert out.loss.item() == pytest.approx((NLS_1 + LOG2) / 2, abs=1e-12)
    assert out.accuracy == 0.5
    assert out.reward_gap == 0.5
    assert out.reward_mean == 0.25


def test_extreme_gaps_are_finite() -> None:
    # gap -1000 -> softplus(1000) = 1000; gap +1000 -> softplus(-1000) = e^-1000 ~ 0
    wrong = bradley_terry_loss(t(-1000.0), t(0.0)).loss
    right = bradley_terry_loss(t(1000.0), t(0.0)).loss

    assert torch.isfinite(wrong) and torch.isfinite(right)
    assert wrong.item() == pytest.approx(1000.0, abs=1e-9)
    assert right.item() == pytest.approx(0.0, abs=1e-12)
    # float32 too: the naive -log(sigmoid(x)) gives inf here
    assert bradley_terry_loss(torch.tensor([-1000.0]), torch.tensor([0.0])).loss.item() == 1000.0


def test_gradient_is_minus_one_minus_sigmoid_of_gap_over_n() -> None:
    # d loss / d r_c = -(1 - sigmoid(gap)) / n, and the opposite for r_r.
    # gaps 1 and -1, n = 2: -(1 - 0.7310585786) / 2 = -0.1344707107,
    #                       -(1 - 0.2689414214) / 2 = -0.3655292893
    r_c = t(1.0, 0.0).requires_grad_()
    r_r = t(0.0, 1.0).requires_grad_()

    bradley_terry_loss(r_c, r_r).loss.backward()

    expected = [-(1 - 1 / (1 + math.exp(-1))) / 2, -(1 - 1 / (1 + math.exp(1))) / 2]
    assert r_c.grad.tolist() == pytest.approx(expected, abs=1e-12)
    assert r_r.grad.tolist() == pytest.approx([-g for g in expected], abs=1e-12)


def test_gradient_at_a_tie_is_one_half_over_n() -> None:
    # gap 0, n = 1: -(1 - sigmoid(0)) = -0.5
    r_c = t(0.0).requires_grad_()

    bradley_terry_loss(r_c, t(0.0)).loss.backward()

    assert r_c.grad.tolist() == [-0.5]


def test_a_margin_of_another_shape_is_refused() -> None:
    with pytest.raises(ValueError, match=r"margin .* \(2,\), got \(2, 1\)"):
        bradley_terry_loss(t(1.0, 0.0), t(0.0, 0.0), margin=torch.tensor([[0.5], [0.0]]))


def test_unequal_shapes_are_refused_naming_both() -> None:
    with pytest.raises(ValueError, match=r"\(2,\) and \(3,\)"):
        bradley_terry_loss(t(1.0, 2.0), t(1.0, 2.0, 3.0))


def test_two_dimensional_rewards_are_refused() -> None:
    with pytest.raises(ValueError, match=r"1-D.*\(2, 1\) and \(2, 1\)"):
        bradley_terry_loss(torch.zeros(2, 1), torch.zeros(2, 1))


def test_negative_centering_is_refused() -> None:
    with pytest.raises(ValueError, match="centering must be >= 0, got -0.1"):
        bradley_terry_loss(t(1.0), t(0.0), centering=-0.1)


def test_module_imports_without_torch() -> None:
    code = "import sys, ramo_stream.core.loss; assert 'torch' not in sys.modules"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
