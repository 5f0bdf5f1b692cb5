"""Fisher-information selection: every score is checked against M built and inverted directly."""

from __future__ import annotations

import random
import subprocess
import sys

import numpy as np
import pytest

from ramo_stream.core.fisher import Budget, FisherInfo, scores, select_window, top_k


def direct_m(xs: np.ndarray, ps: np.ndarray, lam: float) -> np.ndarray:
    """M = sum p(1-p) x x^T + lambda I, written out."""
    m = lam * np.eye(xs.shape[1])
    for x, p in zip(xs, ps, strict=True):
        m += p * (1 - p) * np.outer(x, x)
    return m


def sample(n: int, d: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, d))
    p = 1 / (1 + np.exp(-g.normal(size=n) * 2))
    return x, p


def test_rank_one_updates_match_the_explicit_inverse() -> None:
    x, p = sample(40, 6, 0)
    info = FisherInfo.prior(np.eye(6), lam=0.5)
    for i in range(40):
        info.add(x[i], p[i] * (1 - p[i]))
    np.testing.assert_allclose(info.m_inv, np.linalg.inv(direct_m(x, p, 0.5)), atol=1e-10)
    assert info.labeled == 40


def test_d_opt_score_is_p1mp_times_the_quadratic_form() -> None:
    labeled_x, labeled_p = sample(10, 5, 1)
    cand_x, cand_p = sample(7, 5, 2)
    info = FisherInfo.prior(np.eye(5), lam=2.0)
    for x, p in zip(labeled_x, labeled_p, strict=True):
        info.add(x, p * (1 - p))
    m_inv = np.linalg.inv(direct_m(labeled_x, labeled_p, 2.0))
    expected = [p * (1 - p) * x @ m_inv @ x for x, p in zip(cand_x, cand_p, strict=True)]

    got = scores("d-opt", cand_x, cand_p, info, random.Random(0))

    np.testing.assert_allclose(got, expected, rtol=1e-10)
    unc = scores("uncertainty", cand_x, cand_p, None, random.Random(0))
    np.testing.assert_allclose(unc, cand_p * (1 - cand_p), rtol=1e-12)


def test_works_on_torch_tensors_too() -> None:
    torch = pytest.importorskip("torch")
    x, p = sample(5, 4, 3)
    info_np = FisherInfo.prior(np.eye(4), 1.0)
    info_t = FisherInfo.prior(torch.eye(4, dtype=torch.float64), 1.0)
    for i in range(3):
        info_np.add(x[i], p[i] * (1 - p[i]))
        info_t.add(torch.from_numpy(x[i]), float(p[i] * (1 - p[i])))
    got = scores("d-opt", torch.from_numpy(x), torch.from_numpy(p), info_t, random.Random(0))
    np.testing.assert_allclose(got, scores("d-opt", x, p, info_np, random.Random(0)), rtol=1e-10)


def test_top_k_takes_the_largest_and_breaks_ties_by_arrival() -> None:
    assert top_k([0.1, 0.5, 0.5, 0.9, 0.2], 3) == [3, 1, 2]
    assert top_k([0.3, 0.1], 5) == [0, 1]
    assert top_k([0.3], 0) == []
    with pytest.raises(ValueError, match="k must be >= 0"):
        top_k([0.3], -1)


def test_window_selects_the_top_scores_and_adds_them_to_m() -> None:
    x, p = sample(12, 5, 4)
    info = FisherInfo.prior(np.eye(5), 1.0)
    before = scores("d-opt", x, p, FisherInfo.prior(np.eye(5), 1.0), random.Random(0))

    chosen, s = select_window("d-opt", x, p, 4, info, random.Random(0))

    assert sorted(chosen) == sorted(np.argsort(before)[::-1][:4].tolist())
    np.testing.assert_allclose(s, before)
    np.testing.assert_allclose(info.m_inv, np.linalg.inv(direct_m(x[chosen], p[chosen], 1.0)))


def test_greedy_window_rescores_against_the_updated_m() -> None:
    x, p = sample(15, 4, 5)
    info = FisherInfo.prior(np.eye(4), 1.0)

    chosen, _ = select_window("d-opt", x, p, 5, info, random.Random(0), greedy=True)

    # Each pick must be the best pair against M including the picks before it.
    for step in range(5):
        picked = chosen[:step]
        m_inv = np.linalg.inv(direct_m(x[picked].reshape(step, 4), p[picked], 1.0))
        rest = [i for i in range(15) if i not in chosen[:step]]
        best = max(rest, key=lambda i: p[i] * (1 - p[i]) * x[i] @ m_inv @ x[i])
        assert chosen[step] == best
    np.testing.assert_allclose(info.m_inv, np.linalg.inv(direct_m(x[chosen], p[chosen], 1.0)))


def test_all_selects_everything_and_random_is_seeded() -> None:
    x, p = sample(6, 3, 6)
    chosen, _ = select_window("all", x, p, 2, None, random.Random(0))
    assert chosen == list(range(6))
    a, _ = select_window("random", x, p, 3, None, random.Random(7))
    b, _ = select_window("random", x, p, 3, None, random.Random(7))
    assert a == b and len(a) == 3


def test_bad_values_are_named() -> None:
    with pytest.raises(ValueError, match="lambda must be > 0"):
        FisherInfo.prior(np.eye(2), 0.0)
    with pytest.raises(ValueError, match="d-opt needs"):
        scores("d-opt", np.zeros((1, 2)), np.zeros(1), None, random.Random(0))
    with pytest.raises(ValueError, match="exactly one of"):
        Budget(5, window_pairs=10, window_s=1.0)


def test_budget_per_pair_window_prorates_partial_windows() -> None:
    b = Budget(per_window=10, window_pairs=100)
    assert b.allowance(100, now=0.0) == 10
    # Three polls of 35 pairs earn 3.5 pairs each; the fractions carry over.
    assert [b.allowance(35, now=0.0) for _ in range(3)] == [3, 4, 3]
    assert b.allowance(2, now=0.0) == 0  # 0.2 + 0.5: below one pair, carried
    assert b.allowance(1000, now=0.0) == 100


def test_budget_per_time_window_follows_the_clock_and_caps_the_carry() -> None:
    b = Budget(per_window=4, window_s=2.0)
    assert b.allowance(50, now=10.0) == 4  # the first window counts as a full one
    assert b.allowance(50, now=11.0) == 2  # half a window later
    assert b.allowance(1, now=100.0) == 1  # a long quiet spell banks at most one window
    assert b.allowance(50, now=100.0) == 3  # ...3 of it are left
    assert b.allowance(50, now=100.5) == 1


def test_core_imports_without_numpy_or_torch() -> None:
    code = (
        "import sys; import ramo_stream.core.fisher; "
        "bad = {'numpy', 'torch'} & set(sys.modules); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
