"""serve_load.py's inputs and model: the request pool, the published model (optionally
scaled up with random weights), and (a), the upper bound of its own batched forward."""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import Any

HH = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh_harmless_test.jsonl"
SCALES = {  # --config-scale presets: config fields of a larger model of the same family
    "smollm2-360m": "hidden=960,layers=32,heads=15,kv_heads=5,intermediate=2560",
    "smollm2-1.7b": "hidden=2048,layers=24,heads=32,kv_heads=32,intermediate=8192",
    "bert-base": "hidden=768,layers=12,heads=12,intermediate=3072",
    "bert-large": "hidden=1024,layers=24,heads=16,intermediate=4096",
}
CONFIG_KEYS = {
    "hidden": "hidden_size",
    "layers": "num_hidden_layers",
    "heads": "num_attention_heads",
    "kv_heads": "num_key_value_heads",
    "intermediate": "intermediate_size",
}


# --- inputs and the model -----------------------------------------------------------------


def load_items(n: int, seed: int) -> tuple[list[tuple[str, str]], str]:
    """``n`` (prompt, response) pairs, shuffled, and where they came from."""
    rng = random.Random(seed)
    if HH.is_file():
        rows = [json.loads(line) for line in HH.read_text().splitlines() if line.strip()]
        items = [(r["prompt"], r["chosen"]) for r in rows if r.get("prompt") and r.get("chosen")]
        rng.shuffle(items)
        return items[:n], f"{HH.name} (prompt + chosen response, shuffled, {min(n, len(items))})"
    words = ["the", "a", "model", "reward", "safe", "request", "answer", "user", "help"]

    def text(k: int) -> str:
        return " ".join(rng.choice(words) for _ in range(k))

    items = [
        (f"\n\nHuman: {text(rng.randint(5, 60))}\n\nAssistant:", text(rng.randint(5, 200)))
        for _ in range(n)
    ]
    return items, f"GENERATED text ({HH} is absent): {n} random-word pairs, 10-260 words"


def parse_scale(spec: str) -> dict[str, int]:
    spec = SCALES.get(spec, spec)
    out = {}
    for part in filter(None, spec.split(",")):
        key, _, value = part.partition("=")
        if key not in CONFIG_KEYS or not value.isdigit():
            raise SystemExit(
                f"--config-scale: bad entry {part!r}; use a preset "
                f"({', '.join(SCALES)}) or key=int with keys {', '.join(CONFIG_KEYS)}"
            )
        out[CONFIG_KEYS[key]] = int(value)
    return out


def publish(root: Path, backbone: str, scale: dict[str, int], device: str) -> tuple[Path, int]:
    """Publish the reward model to a fresh registry (as `ramo models publish` does); with
    ``scale``, a model of that shape with random weights. Returns (version folder, version)."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from ramo_stream.registry.model import load_reward_model
    from ramo_stream.registry.store import Registry

    torch.manual_seed(0)
    if scale:
        tok = AutoTokenizer.from_pretrained(backbone)
        tok.pad_token = tok.pad_token or tok.eos_token or tok.unk_token
        config = AutoConfig.from_pretrained(backbone, num_labels=1)
        for key, value in scale.items():
            setattr(config, key, value)
        config.pad_token_id = tok.pad_token_id
        with torch.device(device):  # random init is slow on a CPU for a large model
            model = AutoModelForSequenceClassification.from_config(config)
        if device == "cuda":
            model = model.to(torch.bfloat16)
    else:
        model, tok = load_reward_model(backbone)

    def write(stage: Path) -> None:
        model.save_pretrained(stage)
        tok.save_pretrained(stage)

    registry = Registry(str(root), keep=2)
    m = registry.publish(
        write, steps=0, samples_seen=0, offsets={}, base_model=f"{backbone} {scale or ''}".strip()
    )
    return registry.path(m.version), m.version


def load_model(folder: Path, device: str) -> tuple[Any, Any, int]:
    """(model, tokenizer, max tokens it takes): the service's dtype rule (bf16 on GPU)."""
    import torch

    from ramo_stream.registry.model import load_reward_model
    from ramo_stream.registry.scoring import model_max_length

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    model, tok = load_reward_model(folder, dtype=dtype)
    model = model.to(device).eval()
    return model, tok, model_max_length(model, tok)


def tokenizer_of(folder: Path) -> tuple[Any, int]:
    """The tokenizer and the token limit, without loading the weights."""
    from types import SimpleNamespace

    from transformers import AutoConfig, AutoTokenizer

    from ramo_stream.registry.scoring import model_max_length

    tok = AutoTokenizer.from_pretrained(folder)
    return tok, model_max_length(SimpleNamespace(config=AutoConfig.from_pretrained(folder)), tok)


# --- (a) upper bound ----------------------------------------------------------------------


def upper_bound(
    folder: Path,
    items: list[tuple[str, str]],
    lengths: list[int],
    args: argparse.Namespace,
    single: bool = True,
) -> tuple[dict, dict | None]:
    """(a): items/s of length-sorted forwards in batches of --max-batch-size (each cut by
    --batch-tokens and --pass-overhead as the service cuts its batches), whole passes over
    the pool; with ``single``, the same with batches of one (what batching can gain on this
    machine at most) and the measured cost of a forward pass besides its tokens.
    ``lengths``: the items' token counts, as main computed them for the report."""
    import torch

    from ramo_stream.registry.model import encode, format_text, rewards
    from ramo_stream.registry.scoring import BatchItem, LoadedModel, score_items

    model, tok, model_limit = load_model(folder, args.device)
    limit = min(model_limit, args.max_length)
    loaded = LoadedModel(0, model, tok, args.device, model_limit)
    order = sorted(range(len(items)), key=lengths.__getitem__)  # the pool, sorted once

    def one_pass(bs: int) -> tuple[list[float], int]:
        """Chunks of ``bs`` length-sorted items, each scored by the service's own
        ``score_items`` (format, tokenise, cut into passes, forward)."""
        out = [0.0] * len(items)
        for i in range(0, len(order), bs):
            chunk = order[i : i + bs]
            batch = [BatchItem(loaded, *items[j]) for j in chunk]
            values = score_items(batch, limit, args.batch_tokens, None, args.pass_overhead)
            for j, v in zip(chunk, values, strict=True):  # .tolist() inside synced a GPU
                out[j] = v
        return out, sum(lengths)

    def timed(bs: int) -> dict:
        with torch.inference_mode():  # warm-up: lazy init, CUDA kernels of this shape
            rewards(model, encode(tok, [format_text(tok, *items[0])] * bs, limit))
        passes, tokens, t0 = 0, 0, time.perf_counter()
        while passes == 0 or time.perf_counter() - t0 < args.duration_s:
            scores, n_tok = one_pass(bs)
            passes, tokens = passes + 1, tokens + n_tok
        elapsed = time.perf_counter() - t0
        return {"batch_size": bs, "items_per_s": passes * len(items) / elapsed,
                "tokens_per_s": tokens / elapsed, "passes": passes, "seconds": elapsed,
                "scores": scores}  # fmt: skip

    batched = timed(args.max_batch_size)
    batched["params"] = sum(p.numel() for p in model.parameters())
    if not single:
        return batched, None
    one = timed(1)
    one.pop("scores")
    batched["pass_overhead"] = pass_overhead(model, len(tok), args.device)
    return batched, one


def pass_overhead(model: Any, vocab: int, device: str, long: int = 256) -> dict[str, float]:
    """What one forward pass costs besides its tokens: from the fastest of 5 passes of one
    row at 16 and at ``long`` tokens, cost = overhead + per-token x tokens."""
    import torch

    def fastest(width: int) -> float:
        ids = torch.randint(100, vocab, (1, width), device=device)
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        best = float("inf")
        with torch.inference_mode():
            for _ in range(6):  # the first is a warm-up for this shape
                t0 = time.perf_counter()
                model(**batch)
                if device == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - t0)
        return best

    short_s, long_s = fastest(16), fastest(long)
    per_token = max(1e-12, (long_s - short_s) / (long - 16))
    return {"seconds": short_s - 16 * per_token, "tokens": short_s / per_token - 16}
