"""Training throughput: the Ray Train loop vs a bare PyTorch loop, same model, batch and data.

Both train the Bradley–Terry reward model on the same pairs, in the same order, with the
same micro-batches (``MicroBatcher``), input format, loss, optimizer and clipping:

- bare: one process, a plain ``for`` loop over micro-batches;
- ray:  ``ramo train --from-file`` (``run_trainer``): a Ray Train TorchTrainer worker
        reading the file through the trainer's source, exactly the continuous code path.

Throughput is pairs per second from the first step's start to the last step's end (start-
up, model loading and the final publish excluded, in both). Ray's start-up is printed apart.

    python benchmarks/train_throughput.py [--pairs 256] [--backbone all-minilm-l6-v2]
        [--batch-pairs 8] [--max-length 256] [--device cpu|cuda]

Data: the first --pairs rows of ../shared/data/hh_harmless_test.jsonl (skips without it).
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from ramo_stream.config import load_settings
from ramo_stream.core.loss import bradley_terry_loss
from ramo_stream.local_models import KNOWN, prepare, resolve
from ramo_stream.registry.model import encode, format_text, load_reward_model, rewards
from ramo_stream.registry.store import Registry
from ramo_stream.schemas import Rejection
from ramo_stream.train.data import MicroBatcher, TrainPair, parse_label, to_train_pair

RESULTS = Path(__file__).parent / "results"
HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_harmless_test.jsonl"


def load_pairs(path: Path) -> list[TrainPair]:
    pairs = []
    for line in path.read_bytes().splitlines():
        label = parse_label(line)
        pair = None if isinstance(label, Rejection) else to_train_pair(label)
        if pair is not None:
            pairs.append(pair)
    return pairs


def bare_loop(backbone: str, pairs: list[TrainPair], args: argparse.Namespace) -> float:
    """Pairs per second of a plain PyTorch loop (first step start -> last step end)."""
    torch.manual_seed(0)
    model, tok = load_reward_model(backbone)
    device = torch.device(args.device)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    batcher = MicroBatcher(args.batch_pairs, args.batch_tokens)
    t0 = time.perf_counter()
    # Formatting and token counting are in the timed region, as in the trainer's loop.
    for p in pairs:
        texts = [format_text(tok, p.prompt, p.chosen), format_text(tok, p.prompt, p.rejected)]
        ids = tok(texts, truncation=True, max_length=args.max_length)["input_ids"]
        batcher.add(texts, max(len(i) for i in ids))
    done = 0
    while len(batcher):
        batch = batcher.take(force=True)
        texts = [b[0] for b in batch] + [b[1] for b in batch]
        enc = {k: v.to(device) for k, v in encode(tok, texts, args.max_length).items()}
        model.train()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda"):
            r = rewards(model, enc).float()
        loss = bradley_terry_loss(r[: len(batch)], r[len(batch) :]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        done += len(batch)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return done / (time.perf_counter() - t0)


def ray_loop(data: Path, backbone: str, args: argparse.Namespace, workdir: Path) -> dict:
    """Run the real trainer (`ramo train --from-file`) in a subprocess; read its manifest."""
    cmd = [
        sys.executable, "-m", "ramo_stream.cli", "train", "--from-file", str(data),
        "--paths-cache-dir", str(workdir),
        "--models-reward-backbone", backbone,
        "--train-workers", str(args.workers),
        "--train-batch-pairs", str(args.batch_pairs),
        "--train-batch-tokens", str(args.batch_tokens),
        "--train-max-length", str(args.max_length),
        "--train-lr", str(args.lr),
        "--train-flush-s", "0",
        "--train-heldout-every", "1000000000",  # train on every pair, as the bare loop does
        "--train-publish-every-steps", "1000000",  # one publish, at the end
        "--train-publish-every-s", "1000000",
        "--train-use-gpu", str(args.device == "cuda").lower(),
    ]  # fmt: skip
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    total = time.perf_counter() - t0
    manifest = Registry(workdir / "registry").current()
    assert manifest is not None, "the trainer published no version"
    m = manifest.metrics
    return {"pairs_per_s": m["samples_per_s"], "pairs": m["run_samples"], "total_s": total,
            "train_s": m["run_train_s"]}  # fmt: skip


def save_bare(args: argparse.Namespace, bare: float, n: int) -> None:
    if args.no_save:
        return
    device = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    cmd = "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:])
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / args.out).write_text(
        f"# train throughput, bare loop only, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"command: `{cmd.strip()}`\nmachine: {device}; {n} pairs of {args.data.name}; backbone"
        f" {Path(args.backbone).name}; batch {args.batch_pairs} pairs; max_length"
        f" {args.max_length}\n\n| loop | pairs/s |\n|---|---:|\n| bare PyTorch | {bare:.2f} |\n\n"
        "Ray is not installed on that machine, so the Ray Train loop was not measured there.\n"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pairs", type=int, default=256)
    ap.add_argument("--backbone", default="all-minilm-l6-v2")
    ap.add_argument("--batch-pairs", type=int, default=8)
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--threads", type=int, default=2, help="torch threads of the bare loop")
    ap.add_argument("--data", type=Path, default=HH, help="RewardBench JSONL (default: HH)")
    ap.add_argument("--bare-only", action="store_true", help="Only the bare loop (a machine"
                    " without Ray, e.g. a GPU box for a pairs/s figure); no ratio")  # fmt: skip
    ap.add_argument("--out", default="train_throughput.md", help="Results file name")
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()
    if not args.data.is_file():
        sys.exit(f"skipped: {args.data} is absent (the benchmark reads real pairs)")
    torch.set_num_threads(args.threads)
    settings = load_settings()
    if args.backbone in KNOWN:
        prepare(args.backbone, settings.paths.models_dir)
    backbone = resolve(args.backbone, settings.paths.models_dir)

    with tempfile.TemporaryDirectory(prefix="ramo-bench-train-") as tmp:
        data = Path(tmp) / "pairs.jsonl"
        lines = args.data.read_bytes().splitlines()[: args.pairs]
        data.write_bytes(b"\n".join(lines) + b"\n")
        pairs = load_pairs(data)
        print(f"{len(pairs)} pairs, backbone {args.backbone}, batch {args.batch_pairs}, "
              f"max_length {args.max_length}, device {args.device}", flush=True)  # fmt: skip
        if args.device == "cuda":  # warm-up: CUDA context and kernels outside the timing
            bare_loop(backbone, pairs[: 2 * args.batch_pairs], args)
        bare = bare_loop(backbone, pairs, args)
        print(f"bare PyTorch loop: {bare:.2f} pairs/s", flush=True)
        if args.bare_only:
            return save_bare(args, bare, len(pairs))
        ray = ray_loop(data, backbone, args, Path(tmp) / "ray")
        print(f"Ray Train loop:    {ray['pairs_per_s']:.2f} pairs/s "
              f"({ray['pairs']:.0f} pairs in {ray['train_s']:.1f}s of training; "
              f"{ray['total_s']:.1f}s with Ray start-up and publish)", flush=True)  # fmt: skip
    ratio = ray["pairs_per_s"] / bare
    print(f"ratio ray/bare: {ratio:.2f} (target >= 0.8)")
    if args.no_save:
        return
    RESULTS.mkdir(exist_ok=True)
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    cmd = "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:])
    (RESULTS / "train_throughput.md").write_text(
        f"# train throughput benchmark, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"command: `{cmd.strip()}`\n"
        f"machine: {platform.machine()}, {args.device}, python {platform.python_version()}; "
        f"git: {git.stdout.strip()}\n"
        f"data: first {args.pairs} rows of hh_harmless_test.jsonl ({len(pairs)} pairs); "
        f"backbone {args.backbone}; batch {args.batch_pairs} pairs; max_length "
        f"{args.max_length}; workers {args.workers}\n\n"
        "| loop | pairs/s | ratio |\n|---|---:|---:|\n"
        f"| bare PyTorch | {bare:.2f} | 1.00 |\n"
        f"| Ray Train (`ramo train --from-file`) | {ray['pairs_per_s']:.2f} | {ratio:.2f} |\n\n"
        f"Pairs/s from the first step's start to the last step's end. The Ray run took "
        f"{ray['total_s']:.1f}s end to end with start-up and the final publish.\n"
    )


if __name__ == "__main__":
    main()
