"""How the service cuts a dynamic batch into forward passes: cost-based cut vs fewest passes.

The reward service sorts a batch's items by length and cuts them into passes
(``registry.scoring.plan_sub_batches``). The cut minimises ``passes x pass_overhead + padded
tokens``. This benchmark scores the same random batches, drawn from the same pool, with two
overheads, in alternating rounds in one process so both see the same machine:

- the service's default for --device (40 tokens on a CPU);
- a huge overhead, which gives the fewest passes the token budget allows (the least padding
  among those): what a cut that ignores padding does.

Each batch holds --batch items drawn at random, as the service's batches hold whatever
requests arrived during the last forward (at 32 clients it sees about 16).

    python benchmarks/batch_plan.py [--batch 16] [--batches 12] [--rounds 4]
        [--backbone all-minilm-l6-v2] [--threads 1] [--max-length 512]

Data: prompts and chosen responses of ../shared/data/hh_harmless_test.jsonl (generated text
without it, said in the report). Results: benchmarks/results/batch_plan.md (not with
--no-save).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from serve_load import RESULTS, _git_rev, _machine, load_items  # noqa: E402

FEWEST = 10**9  # an overhead no padding outweighs


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--backbone", default="all-minilm-l6-v2")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--batch", type=int, default=16, help="Items per dynamic batch (16).")
    ap.add_argument("--batches", type=int, default=12, help="Batches per round (12).")
    ap.add_argument("--rounds", type=int, default=4, help="Rounds of each cut, alternating (4).")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=512)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-save", action="store_true")
    args = ap.parse_args()

    import torch

    from ramo_stream.config import ServeSettings, load_settings
    from ramo_stream.local_models import KNOWN, prepare, resolve
    from ramo_stream.registry.model import load_reward_model, torch_dtype
    from ramo_stream.registry.scoring import (
        BatchItem,
        LoadedModel,
        model_max_length,
        score_items,
    )

    torch.set_num_threads(args.threads)
    settings = load_settings()
    if args.backbone in KNOWN:
        prepare(args.backbone, settings.paths.models_dir)
    model, tok = load_reward_model(
        resolve(args.backbone, settings.paths.models_dir),
        dtype=torch_dtype("auto", args.device),
    )
    model = model.to(args.device).eval()
    loaded = LoadedModel(1, model, tok, args.device, model_max_length(model, tok))
    serve = ServeSettings(max_length=args.max_length)
    budget, default = serve.forward_tokens(args.device), serve.pass_overhead(args.device)

    items, data = load_items(256, args.seed)
    rng = random.Random(args.seed)
    batches = [
        [BatchItem(loaded, *items[rng.randrange(len(items))]) for _ in range(args.batch)]
        for _ in range(args.batches)
    ]
    stats = {o: {"s": 0.0, "passes": 0, "real": 0, "padded": 0} for o in (default, FEWEST)}

    def run(overhead: int) -> None:
        st = stats[overhead]

        def on_forward(rows: int, width: int, real: int) -> None:
            st["passes"] += 1
            st["real"] += real
            st["padded"] += rows * width

        t0 = time.perf_counter()
        for batch in batches:
            score_items(batch, args.max_length, budget, on_forward, overhead)
        if args.device == "cuda":
            torch.cuda.synchronize()
        st["s"] += time.perf_counter() - t0

    score_items(batches[0], args.max_length, budget, None, default)  # warm-up
    for r in range(args.rounds):  # alternate which goes first
        for overhead in (default, FEWEST) if r % 2 == 0 else (FEWEST, default):
            run(overhead)
            print(f"round {r + 1}/{args.rounds}: overhead {overhead} done", flush=True)

    n = args.rounds * args.batches * args.batch
    rows = []
    for overhead, name in ((default, f"cost-based cut, pass_overhead {default}"),
                           (FEWEST, "fewest passes (padding ignored)")):  # fmt: skip
        st = stats[overhead]
        rows.append(
            f"| {name} | {n / st['s']:.1f} | {st['passes'] / (args.rounds * args.batches):.1f}"
            f" | {1 - st['real'] / st['padded']:.0%} |"
        )
    ratio = stats[FEWEST]["s"] / stats[default]["s"]
    text = "\n".join([
        f"# forward-pass cut of a dynamic batch, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"command: `{' '.join(['python benchmarks/batch_plan.py', *sys.argv[1:]])}`",
        f"machine: {_machine(args.device)}; git {_git_rev()}",
        f"model: {args.backbone} on {args.device}, torch threads {args.threads}, max_length"
        f" {args.max_length}, batch_tokens {budget}",
        f"data: {data}; {args.batches} batches of {args.batch} random items, {args.rounds}"
        " rounds of each cut, alternating",
        "",
        "| cut | items/s | passes per batch | padding |",
        "|---|---:|---:|---:|",
        *rows,
        "",
        f"cost-based / fewest passes, items/s: **{ratio:.2f}x**",
    ])  # fmt: skip
    print("\n" + text)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / "batch_plan.md").write_text(text + "\n")
        print(f"\nwritten: {RESULTS / 'batch_plan.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
