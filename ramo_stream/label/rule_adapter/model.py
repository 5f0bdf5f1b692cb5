"""The Rule Adapter: an encoder with a multi-label head over the rule pool (RAMO).

Grading the whole pool to find the k rules where two responses differ most costs 2|P|
grader calls per pair. The adapter learns to predict those k rules from the pair's text,
so at run time only 2k calls are made. Input text::

    Prompt: ... Response A: ... Response B: ...

Output: one logit per rule of the pool, trained with binary cross-entropy against the
multi-hot top-k found by full-pool grading. Saved with the pool's hash and rule ids; a
pool with another hash is refused at load time, since the head's units are that pool's
rules in that order.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ramo_stream.core.rules import RulePool
from ramo_stream.schemas import ResponsePair

MANIFEST = "adapter.json"
HEAD = "head.pt"
MAX_TOKENS = 512


class AdapterPoolMismatch(ValueError):
    """The adapter's head was trained on a different rule pool."""


def adapter_text(pair: ResponsePair) -> str:
    return (
        f"Prompt: {pair.prompt_text()}\n"
        f"Response A: {pair.response_a}\n"
        f"Response B: {pair.response_b}"
    )


class RuleAdapter(nn.Module):
    """Encoder + mean pooling + a linear head with one logit per rule."""

    def __init__(self, encoder: nn.Module, hidden: int, n_rules: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = nn.Linear(hidden, n_rules)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean-pooled encoder output (what the head reads)."""
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(input_ids, attention_mask))


class AdapterPredictor:
    """A loaded adapter: tokenizer + model + the pool it was trained on."""

    def __init__(
        self,
        model: RuleAdapter,
        tokenizer: Any,
        rule_ids: list[str],
        pool_hash: str,
        meta: dict[str, Any] | None = None,
        device: str | None = None,
    ) -> None:
        # On the GPU when there is one: on a GPU box the CPU would be the bottleneck.
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer
        self.rule_ids = rule_ids
        self.pool_hash = pool_hash
        self.meta = meta or {}

    def encode(self, pairs: Sequence[ResponsePair]) -> dict[str, torch.Tensor]:
        batch = self.tokenizer(
            [adapter_text(p) for p in pairs],
            padding=True,
            truncation=True,
            max_length=MAX_TOKENS,
            return_tensors="pt",
        )
        return {k: v.to(self.device) for k, v in batch.items()}

    @torch.inference_mode()
    def probabilities(self, pairs: Sequence[ResponsePair]) -> torch.Tensor:
        batch = self.encode(pairs)
        return torch.sigmoid(self.model(batch["input_ids"], batch["attention_mask"]))

    def predict(self, pairs: Sequence[ResponsePair], k: int) -> list[list[tuple[str, float]]]:
        """Per pair, the k most probable rules with their probabilities, highest first."""
        if not pairs:
            return []
        probs = self.probabilities(pairs)
        top = torch.topk(probs, min(k, probs.shape[1]), dim=1)
        return [
            [(self.rule_ids[i], float(p)) for p, i in zip(ps.tolist(), ids.tolist(), strict=True)]
            for ps, ids in zip(top.values, top.indices, strict=True)
        ]

    def save(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.model.encoder.save_pretrained(path / "encoder")
        self.tokenizer.save_pretrained(path / "encoder")
        torch.save(self.model.head.state_dict(), path / HEAD)
        meta = {
            **self.meta,
            **(extra or {}),
            "pool_hash": self.pool_hash,
            "rule_ids": self.rule_ids,
        }
        (path / MANIFEST).write_text(json.dumps(meta, indent=2))


def new_adapter(encoder_path: str, pool: RulePool) -> AdapterPredictor:
    from transformers import AutoModel, AutoTokenizer

    encoder = AutoModel.from_pretrained(encoder_path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(encoder_path)
    model = RuleAdapter(encoder, int(encoder.config.hidden_size), len(pool))
    return AdapterPredictor(model, tokenizer, pool.ids, pool.hash, {"encoder": encoder_path})


def load_adapter(path: Path, pool: RulePool) -> AdapterPredictor:
    """Load a saved adapter; refuse it if it was trained on another rule pool."""
    from transformers import AutoModel, AutoTokenizer

    manifest = path / MANIFEST
    if not manifest.is_file():
        raise FileNotFoundError(
            f"no Rule Adapter at {path} (missing {MANIFEST}); train one with `ramo adapter train`"
        )
    meta = json.loads(manifest.read_text())
    if meta["pool_hash"] != pool.hash or meta["rule_ids"] != pool.ids:
        raise AdapterPoolMismatch(
            f"the Rule Adapter at {path} was trained on rule pool {meta['pool_hash']}"
            f" ({len(meta['rule_ids'])} rules), but the pool in use is {pool.hash}"
            f" ({pool.name}, {len(pool)} rules); retrain it with `ramo adapter train`"
        )
    encoder = AutoModel.from_pretrained(path / "encoder", dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(path / "encoder")
    model = RuleAdapter(encoder, int(encoder.config.hidden_size), len(pool))
    model.head.load_state_dict(torch.load(path / HEAD, weights_only=True, map_location="cpu"))
    return AdapterPredictor(model, tokenizer, meta["rule_ids"], meta["pool_hash"], meta)
