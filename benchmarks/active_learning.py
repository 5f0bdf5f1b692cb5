"""Active labeling: held-out accuracy per label spent, Fisher selection vs random, on a stream.

For each source (HH harmless, CoCoNot pref, refusal_direction benign pairs from
../shared/data) the pairs are split once BY PROMPT into a fixed held-out slice (20% of the
prompts; never offered for labeling) and a pool. Each seed shuffles the pool into a stream
and flips each pair's A/B order at random. The stream arrives in windows of --window pairs;
in each window a strategy chooses the pairs the oracle labeler labels (it returns the human
label, so this measures selection, not the grader), within a budget of 5%, 10% or 25% of
the stream (pro-rated per window by ``core.fisher.Budget``, as the gate does). After every
window the reward head is retrained on all labels so far and scored on the held-out slice.

The reward model is the prepared all-MiniLM-L6-v2 as a sequence classifier; its backbone is
frozen and only the last linear layer (the Bradley-Terry head, r = w . phi) is trained, on
x = phi(A) - phi(B). That is exactly the setting of the paper's last-layer Fisher
information (arXiv 2502.04354), and what keeps 3 sources x 3 budgets x 5 strategies x 3
seeds feasible on a 2-core CPU: phi is computed once per response (cached) through
``ramo_stream.registry.features`` (the input of the model's own head, checked against its
rewards). Training (the same for every strategy): L2-regularised logistic regression
without bias, lambda = --lam, by Newton's method to convergence; the selection prior M =
lambda I uses the same lambda, so M is the Laplace posterior precision of w.

Strategies: random, uncertainty (p(1-p)), d-opt (p(1-p) x^T M^-1 x, top-k per window),
d-opt-greedy (d-opt re-scored after each pick within a window), and all (every pair
labeled: the ceiling). Intervals: 95% percentile bootstrap over held-out pairs (1000
resamples) of the seed-mean accuracy. "Labels to reach random's final": the fewest labels
at which a strategy's seed-mean held-out accuracy, on any of its curves, reaches random's
seed-mean accuracy at the 25% budget's end.

    python benchmarks/active_learning.py [--seeds 3] [--window 50] [--lam 1.0]
        [--max-length 128] [--max-pairs 1200] [--no-save]

Results: benchmarks/results/active_learning.md and active_learning.png.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ramo_stream.core.fisher import Budget, FisherInfo, select_window

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = REPO / "benchmarks" / "results"
SOURCES = {
    "hh_harmless": "hh_harmless_test.jsonl",
    "coconot": "grader/coconot_pref.jsonl",
    "refusal_direction": "grader/refusal_direction_benign_pairs.jsonl",
}
BUDGETS = (0.05, 0.10, 0.25)
STRATEGIES = ("random", "uncertainty", "d-opt", "d-opt-greedy", "all")
HELD_OUT = 0.2


@dataclass
class Source:
    name: str
    x: np.ndarray  # (n, d): phi(chosen) - phi(rejected)
    test: np.ndarray  # indices of the held-out slice
    pool: np.ndarray  # indices offered to the strategies


def featurize(
    name: str, max_length: int, max_pairs: int, cache: Path
) -> tuple[np.ndarray, list[str]]:
    """x = phi(chosen) - phi(rejected) for the first rows of a source, cached on disk."""
    rows = [json.loads(line) for line in (DATA / SOURCES[name]).open()][:max_pairs]
    prompts = [r["prompt"] for r in rows]
    digest = hashlib.sha256(json.dumps([prompts, max_length]).encode()).hexdigest()[:12]
    path = cache / f"active_{name}_{digest}.npy"
    if path.is_file():
        return np.load(path), prompts
    import torch

    from ramo_stream.config import load_settings
    from ramo_stream.local_models import prepare
    from ramo_stream.registry.features import Featurizer
    from ramo_stream.registry.model import load_reward_model

    torch.manual_seed(0)  # the head is untrained and unused: only phi is read
    folder = prepare("all-minilm-l6-v2", load_settings().paths.models_dir)
    model, tok = load_reward_model(folder)
    feat = Featurizer(model, tok, max_length, batch=32)
    started = time.monotonic()
    out = feat.pairs(prompts, [r["chosen"] for r in rows], [r["rejected"] for r in rows])
    print(f"  {name}: {len(rows)} pairs featurized in {time.monotonic() - started:.0f} s")
    x = out.x.numpy()
    cache.mkdir(parents=True, exist_ok=True)
    np.save(path, x)
    return x, prompts


def split_by_prompt(prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """A fixed held-out slice: the prompts whose hash falls in the lowest 20%."""

    def bucket(p: str) -> float:
        return int(hashlib.sha256(p.encode()).hexdigest()[:8], 16) / 16**8

    test = np.array([i for i, p in enumerate(prompts) if bucket(p) < HELD_OUT])
    pool = np.array([i for i, p in enumerate(prompts) if bucket(p) >= HELD_OUT])
    return test, pool


def fit(x: np.ndarray, y: np.ndarray, lam: float, w0: np.ndarray) -> np.ndarray:
    """argmin_w sum_i -log sigmoid(s_i w . x_i) + lam/2 |w|^2 (s = +-1), by Newton's method.

    The Hessian is A^T A + lam I with A = diag(sqrt(sig (1 - sig))) X; with fewer pairs than
    dimensions the step uses Woodbury, (A^T A + lam I)^-1 g = (g - A^T (A A^T + lam I)^-1 A g)
    / lam, an n x n solve instead of d x d (the same step, much cheaper on this CPU).
    """
    s = 2 * y - 1
    w = w0.copy()
    n, d = x.shape
    for _ in range(50):
        z = s * (x @ w)
        sig = 1 / (1 + np.exp(-np.clip(z, -30, 30)))  # sigmoid(z)
        grad = -(x.T @ (s * (1 - sig))) + lam * w
        a = x * np.sqrt(sig * (1 - sig))[:, None]
        if n < d:
            step = (grad - a.T @ np.linalg.solve(a @ a.T + lam * np.eye(n), a @ grad)) / lam
        else:
            step = np.linalg.solve(a.T @ a + lam * np.eye(d), grad)
        w -= step
        if np.abs(step).max() < 1e-7:
            break
    return w


def run_stream(
    src: Source, strategy: str, budget: float, seed: int, window: int, lam: float
) -> list[tuple[int, np.ndarray]]:
    """One pass over the pool; after each window (labels so far, held-out correctness)."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(src.pool)
    flip = rng.random(len(order)) < 0.5
    xs = np.where(flip[:, None], -src.x[order], src.x[order])
    ys = (~flip).astype(float)  # 1 when A (the first response) is the preferred one
    d = xs.shape[1]
    w = np.zeros(d)
    info = FisherInfo.prior(np.eye(d), lam)
    meter = Budget(per_window=budget * window, window_pairs=window)
    core_strategy = "d-opt" if strategy.startswith("d-opt") else strategy
    pick = random.Random(seed)
    labeled: list[int] = []
    curve = []
    for start in range(0, len(order), window):
        idx = np.arange(start, min(start + window, len(order)))
        xw = xs[idx]
        p = 1 / (1 + np.exp(-(xw @ w)))
        k = len(idx) if strategy == "all" else meter.allowance(len(idx), now=0.0)
        m = info if core_strategy == "d-opt" else None
        chosen, _ = select_window(core_strategy, xw, p, k, m, pick, strategy == "d-opt-greedy")
        labeled.extend(int(idx[c]) for c in chosen)
        if labeled:
            w = fit(xs[labeled], ys[labeled], lam, w)
        curve.append((len(labeled), (src.x[src.test] @ w) > 0))
    return curve


def bootstrap(correct: np.ndarray, rng: np.random.Generator, n: int = 1000) -> tuple[float, float]:
    """95% percentile interval of the mean of ``correct`` (seed-mean per held-out pair)."""
    means = correct[rng.integers(0, len(correct), size=(n, len(correct)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--window", type=int, default=50)
    ap.add_argument("--lam", type=float, default=1.0)
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--max-pairs", type=int, default=1200, help="First rows per source.")
    ap.add_argument("--sources", default=",".join(SOURCES), help="Comma-separated subset.")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    names = args.sources.split(",")
    unknown = [n for n in names if n not in SOURCES]
    if unknown:
        ap.error(f"unknown source(s) {unknown}; choose from {', '.join(SOURCES)}")
    missing = [SOURCES[n] for n in names if not (DATA / SOURCES[n]).is_file()]
    if missing:
        print(f"skipped: {', '.join(missing)} absent under {DATA} (the shared labelled data)")
        return 0
    from ramo_stream.config import load_settings

    cache = load_settings().paths.cache_dir / "bench"
    boot = np.random.default_rng(12345)
    table: list[str] = []
    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    summary: list[str] = []
    for name in names:
        x, prompts = featurize(name, args.max_length, args.max_pairs, cache)
        test, pool = split_by_prompt(prompts)
        src = Source(name, x, test, pool)
        print(f"{name}: {len(pool)} pool pairs, {len(test)} held out ({x.shape[1]}-d phi)")
        points: dict[str, list[tuple[int, float]]] = {s: [] for s in STRATEGIES}
        finals: dict[tuple[str, float], tuple[float, float, float, int]] = {}
        for strategy in STRATEGIES:
            for budget in (1.0,) if strategy == "all" else BUDGETS:
                runs = [run_stream(src, strategy, budget, s, args.window, args.lam)
                        for s in range(args.seeds)]  # fmt: skip
                for step in range(len(runs[0])):
                    labels = round(np.mean([r[step][0] for r in runs]))
                    acc = float(np.mean([r[step][1].mean() for r in runs]))
                    points[strategy].append((labels, acc))
                correct = np.mean([r[-1][1] for r in runs], axis=0)
                lo, hi = bootstrap(correct, boot)
                finals[(strategy, budget)] = (float(correct.mean()), lo, hi, runs[0][-1][0])
        target = finals[("random", 0.25)][0]
        full = finals[("random", 0.25)][3]
        for (strategy, budget), (acc, lo, hi, labels) in finals.items():
            table.append(f"| {name} | {strategy} | {budget:.0%} | {labels} | {acc:.3f} "
                         f"[{lo:.3f}, {hi:.3f}] |")  # fmt: skip
        need: dict[str, int | None] = {}
        for strategy in STRATEGIES:
            reach = [n for n, a in points[strategy] if a >= target - 1e-12]
            need[strategy] = min(reach) if reach else None
        for strategy in STRATEGIES:
            n_s, n_r = need[strategy], need["random"]
            saved = "" if n_s is None or not n_r else f"{1 - n_s / n_r:+.0%}"
            shown = "not reached" if n_s is None else str(n_s)
            summary.append(f"| {name} | {strategy} | {target:.3f} | {full} | {n_r} | {shown} |"
                           f" {saved} |")  # fmt: skip
        curves[name] = {s: sorted(points[s]) for s in STRATEGIES}
    out = report(args, table, summary)
    print(out)
    if not args.no_save:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / "active_learning.md").write_text(out)
        plot(curves, RESULTS / "active_learning.png")
    return 0


def report(args: argparse.Namespace, table: list[str], summary: list[str]) -> str:
    cmd = "python " + " ".join(["benchmarks/active_learning.py", *sys.argv[1:]])
    head = [
        "# Active labeling: held-out accuracy per label (oracle labeler, last-layer BT head)",
        "",
        f"Command: `{cmd}` ({args.seeds} seeds, window {args.window} pairs, lambda {args.lam},"
        f" max_length {args.max_length}, first {args.max_pairs} pairs per source). Frozen"
        " all-MiniLM-L6-v2 features (the input of the reward model's head); only the last"
        " linear layer is trained: the paper's last-layer"
        " Fisher setting, not a full fine-tune. Held-out slice: 20% of prompts, never offered.",
        "",
        "## Labels needed to reach random's accuracy at the 25% budget",
        "",
        "Target: random's seed-mean held-out accuracy at the end of its 25% pass. Labels"
        " needed: the first point, on any of the strategy's curves (one per budget, a point"
        " per window), whose seed-mean accuracy reaches the target. Saved = 1 - labels needed"
        " / random's labels needed (random can reach its own final accuracy before the end"
        " when its curve is flat or noisy).",
        "",
        "| source | strategy | target acc | random's 25% labels | random needs | labels needed"
        " | saved vs random |",
        "|---|---|---|---|---|---|---|",
        *summary,
        "",
        "## Held-out accuracy at the end of each budget (seed mean, 95% bootstrap interval)",
        "",
        "| source | strategy | budget | labels | accuracy [95% CI] |",
        "|---|---|---|---|---|",
        *table,
        "",
    ]
    return "\n".join(head)


def plot(curves: dict[str, dict[str, list[tuple[int, float]]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(curves), figsize=(5 * len(curves), 4))
    for ax, (name, by_strategy) in zip(np.atleast_1d(axes), curves.items(), strict=True):
        for strategy, pts in by_strategy.items():
            if strategy == "all":
                ax.axhline(pts[-1][1], ls=":", c="grey", label="all (every pair)")
                continue
            ax.plot([n for n, _ in pts], [a for _, a in pts], ".", ms=3, label=strategy)
        ax.set_xscale("log")
        ax.set_title(name)
        ax.set_xlabel("labels")
        ax.set_ylabel("held-out accuracy (seed mean)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


if __name__ == "__main__":
    raise SystemExit(main())
