"""Which reward-model backbone learns more from the same labels on a CPU, and at what cost.

Every backbone that ships here (``ramo models prepare``: SmolLM2-135M-Instruct and
all-MiniLM-L6-v2) gets the same labeled stream: human preferences from
``../shared/data/hh_harmless_test.jsonl`` (RewardBench rows), split by prompt (a hash of the
prompt text, so no conversation is on both sides), trained for one pass in file order with
the trainer's micro-batches, Bradley–Terry loss, optimizer and default learning rate. For
each backbone it reports:

- held-out accuracy (chosen strictly above rejected) before training (the untrained head,
  the baseline of this run) and after, with 95% Wilson intervals;
- training pairs/s, and scoring items/s on the held-out items as the reward service scores
  them (``score_items``, one torch thread as one replica has, serve.* cut of passes).

    nice -n 10 python benchmarks/reward_backbone.py [--pairs 400] [--heldout-every 4]
        [--max-length 256] [--batch-pairs 8] [--threads 2]

Skips (exit 0 with a reason) when the shared data is absent.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"
HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_harmless_test.jsonl"


def prompt_key(prompt: Any) -> str:
    text = prompt if isinstance(prompt, str) else json.dumps(prompt, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load(path: Path, n: int, every: int) -> tuple[list[Any], list[Any]]:
    """(train, held out) TrainPairs of the first ``n`` rows, held out by prompt hash."""
    from ramo_stream.schemas import Rejection
    from ramo_stream.train.data import parse_label, to_train_pair

    train, held = [], []
    for raw in path.read_bytes().splitlines()[:n]:
        label = parse_label(raw)
        pair = None if isinstance(label, Rejection) else to_train_pair(label)
        if pair is None:
            continue
        key = int(prompt_key(pair.prompt)[:12], 16)
        (held if key % every == 0 else train).append(pair)
    return train, held


def heldout(model: Any, tok: Any, pairs: list[Any], settings: Any) -> tuple[int, float]:
    """(correct, scoring items/s) on the held-out pairs, scored as the service scores."""
    import torch

    from ramo_stream.registry.scoring import BatchItem, LoadedModel, score_items

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one reward replica = one CPU = one torch thread
    try:
        loaded = LoadedModel(0, model.eval(), tok, "cpu", args_max_length(tok))
        items = [BatchItem(loaded, p.prompt, r) for p in pairs for r in (p.chosen, p.rejected)]
        s = settings.serve
        t0 = time.perf_counter()
        flat = score_items(items, s.max_length, s.forward_tokens("cpu"), None,
                           s.pass_overhead("cpu"))  # fmt: skip
        rate = len(items) / (time.perf_counter() - t0)
    finally:
        torch.set_num_threads(threads)
    correct = sum(c > r for c, r in zip(flat[0::2], flat[1::2], strict=True))
    return correct, rate


def args_max_length(tok: Any) -> int:
    limit = getattr(tok, "model_max_length", 1 << 20)
    return limit if limit < 1 << 20 else 1 << 20


def train_pass(model: Any, tok: Any, pairs: list[Any], args: argparse.Namespace,
               lr: float) -> float:  # fmt: skip
    """One pass, as the trainer's worker steps; returns training pairs/s."""
    import torch

    from ramo_stream.core.loss import bradley_terry_loss
    from ramo_stream.registry.model import encode, format_text, rewards
    from ramo_stream.train.data import MicroBatcher

    torch.manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    batcher = MicroBatcher(args.batch_pairs, 2 * args.batch_pairs * args.max_length)
    for p in pairs:
        texts = (format_text(tok, p.prompt, p.chosen), format_text(tok, p.prompt, p.rejected))
        ids = tok(list(texts), truncation=True, max_length=args.max_length)["input_ids"]
        batcher.add(texts, max(len(i) for i in ids))
    model.train()
    t0, done = time.perf_counter(), 0
    while len(batcher):
        batch = batcher.take(force=True)
        enc = encode(tok, [b[0] for b in batch] + [b[1] for b in batch], args.max_length)
        r = rewards(model, enc).float()
        loss = bradley_terry_loss(r[: len(batch)], r[len(batch) :]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        done += len(batch)
        print(f"  trained {done}/{len(pairs)} pairs", end="\r", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return done / (time.perf_counter() - t0)


def run_backbone(name: str, train: list[Any], held: list[Any], args: argparse.Namespace,
                 settings: Any) -> dict[str, Any]:  # fmt: skip
    import torch

    from ramo_stream.local_models import prepare
    from ramo_stream.registry.model import load_reward_model

    folder = prepare(name, settings.paths.models_dir)
    torch.manual_seed(0)  # the same new head for the before and after figures
    model, tok = load_reward_model(folder, dtype=torch.float32)
    before, rate_before = heldout(model, tok, held, settings)
    print(f"{name}: untrained {before}/{len(held)} held out, scoring {rate_before:.1f} items/s",
          flush=True)  # fmt: skip
    train_rate = train_pass(model, tok, train, args, settings.train.lr)
    after, rate_after = heldout(model, tok, held, settings)
    print(f"{name}: trained {after}/{len(held)} held out ({train_rate:.2f} pairs/s training,"
          f" scoring {rate_after:.1f} items/s)", flush=True)  # fmt: skip
    params = sum(p.numel() for p in model.parameters())
    return {"backbone": name, "params": params, "before": before, "after": after,
            "n": len(held), "train_pairs_per_s": train_rate,
            "score_items_per_s": (rate_before + rate_after) / 2}  # fmt: skip


def interval(hits: int, n: int) -> str:
    from ramo_stream.core.stats import wilson_interval

    lo, hi = wilson_interval(hits, n)
    return f"{hits / n:.3f} [{lo:.2f}, {hi:.2f}]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pairs", type=int, default=400, help="rows read from the data")
    ap.add_argument("--heldout-every", type=int, default=4, help="1 prompt in N held out")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--batch-pairs", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2, help="torch threads while training")
    ap.add_argument("--backbones", default="all-minilm-l6-v2,smollm2-135m-instruct")
    ap.add_argument("--data", type=Path, default=HH)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    if not args.data.is_file():
        print(f"skipped: {args.data} is absent (the benchmark reads human labels)")
        return 0
    import torch

    from ramo_stream.config import load_settings

    torch.set_num_threads(args.threads)
    settings = load_settings()
    train, held = load(args.data, args.pairs, args.heldout_every)
    print(f"{len(train)} training pairs, {len(held)} held out (by prompt), lr"
          f" {settings.train.lr}", flush=True)  # fmt: skip
    rows = [run_backbone(b, train, held, args, settings) for b in args.backbones.split(",")]
    lines = [
        "| backbone | params | held-out acc. untrained | held-out acc. after one pass |"
        " train pairs/s | scoring items/s (1 thread) |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(f"| {r['backbone']} | {r['params'] / 1e6:.0f}M |"
                     f" {interval(r['before'], r['n'])} | {interval(r['after'], r['n'])} |"
                     f" {r['train_pairs_per_s']:.2f} |"
                     f" {r['score_items_per_s']:.1f} |")  # fmt: skip
    base = rows[0]
    for r in rows[1:]:
        lines.append(f"\n{r['backbone']} / {base['backbone']}: scoring"
                     f" {r['score_items_per_s'] / base['score_items_per_s']:.2f}x, training"
                     f" {r['train_pairs_per_s'] / base['train_pairs_per_s']:.2f}x")  # fmt: skip
    table = "\n".join(lines)
    print(table)
    if args.no_save:
        return 0
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    cmd = "nice -n 10 python benchmarks/reward_backbone.py " + " ".join(sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "reward_backbone.md").write_text(
        f"# reward backbone on CPU, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"command: `{cmd.strip()}`\nmachine: {platform.machine()} CPU (2 cores, shared),"
        f" python {platform.python_version()}; git {git.stdout.strip()}\n"
        f"data: first {args.pairs} rows of {args.data.name}: {len(train)} training pairs,"
        f" {len(held)} held out by prompt (1 in {args.heldout_every}); one pass, lr"
        f" {settings.train.lr}, batch {args.batch_pairs} pairs, max_length {args.max_length},"
        f" {args.threads} torch threads training; float32\n\n{table}\n\n"
        "Accuracy: chosen scored strictly above rejected, 95% Wilson intervals. The untrained"
        " column is the same model before training (a new random head, seed 0): the"
        " baseline of this run.\n"
    )
    (RESULTS / "reward_backbone.json").write_text(json.dumps({"command": cmd, "rows": rows},
                                                             indent=1) + "\n")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
