"""The grader's training losses on hand-made logits (torch, no model)."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch", reason="the models extra is not installed")

from ramo_stream.label.grading.train_classifier import TrainConfig, _item_losses  # noqa: E402


def _logits(*probs: tuple[float, float, float]) -> torch.Tensor:
    return torch.tensor(probs).log()  # softmax(log p) = p


def test_bradley_terry_on_the_aggregated_margin() -> None:
    cfg = TrainConfig(bt_weight=1.0, bt_beta=1.0)
    # a pair over 2 rules: chosen (Yes .9 / No .1, twice) vs rejected (.1 / .9, twice)
    good = _logits((0.9, 0.1, 0.0001), (0.9, 0.1, 0.0001), (0.1, 0.9, 0.0001), (0.1, 0.9, 0.0001))
    (loss,) = _item_losses(good, [(-1, [0, 1, 2, 3])], cfg)
    margin = 2 * 0.8 - 2 * -0.8  # sum_k s_k(chosen) - s_k(rejected) = 3.2
    assert float(loss) == pytest.approx(math.log1p(math.exp(-margin)), abs=1e-3)
    swapped = torch.cat([good[2:], good[:2]])  # the rejected side now scores higher
    (worse,) = _item_losses(swapped, [(-1, [0, 1, 2, 3])], cfg)
    assert float(worse) == pytest.approx(math.log1p(math.exp(margin)), abs=1e-3)
    (half,) = _item_losses(good, [(-1, [0, 1, 2, 3])], TrainConfig(bt_weight=0.5))
    assert float(half) == pytest.approx(float(loss) / 2)


def test_rule_examples_and_pairs_mix_in_one_step() -> None:
    cfg = TrainConfig()
    logits = torch.cat([_logits((0.7, 0.2, 0.1)), _logits((0.5, 0.5, 1e-4), (0.5, 0.5, 1e-4))])
    losses = _item_losses(logits, [(0, [0]), (-1, [1, 2])], cfg)
    assert float(losses[0]) == pytest.approx(-math.log(0.7), abs=1e-4)  # cross-entropy on Yes
    assert float(losses[1]) == pytest.approx(math.log(2), abs=1e-3)  # margin 0: log 2
    # the pair's gradient pushes the chosen side's Yes up and the rejected side's down
    logits.requires_grad_(True)
    _item_losses(logits, [(0, [0]), (-1, [1, 2])], cfg).sum().backward()
    assert logits.grad is not None
    assert logits.grad[1, 0] < 0 < logits.grad[2, 0]
