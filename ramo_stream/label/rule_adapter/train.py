"""Training the Rule Adapter on pairs whose targets came from full-pool grading.

The targets are the ``selected_rules`` of LabeledPairs labeled with the max-discrepancy
selector (the whole pool graded, top-k by c_k kept). A deterministic 20% of pairs (by a
hash of the prompt, so every pair of one prompt falls on the same side) is held out; the
report gives top-k recall on it against two baselines:
k random rules (expected recall k/|P|) and the k rules most often in the training targets.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ramo_stream.core.rules import NULL_RULE_ID
from ramo_stream.core.selection import aggregate, calibrated_scores, topk_recall
from ramo_stream.label.rule_adapter.model import AdapterPredictor
from ramo_stream.schemas import LabeledPair, ResponsePair

SPLIT_SALT = "ramo-adapter-split-v1"


def is_held_out(pair: ResponsePair, fraction: float = 0.2) -> bool:
    """Split by prompt, never by row: two pairs of one prompt are on the same side."""
    if isinstance(pair.prompt, str):
        key = pair.prompt
    else:
        key = json.dumps([m.model_dump() for m in pair.prompt], sort_keys=True)
    digest = hashlib.sha256(f"{SPLIT_SALT}:{key}".encode()).hexdigest()
    return int(digest[:8], 16) / 0xFFFFFFFF < fraction


@dataclass
class AdapterReport:
    train_pairs: int
    held_out_pairs: int
    k: int
    recall_adapter: float
    recall_random: float
    recall_frequent: float
    final_loss: float
    # selector -> (labels agreeing with metadata.gold, held-out pairs with a gold side)
    agreement: dict[str, tuple[int, int]] | None = None

    def lines(self) -> list[str]:
        out = [
            f"trained on {self.train_pairs} pairs, held out {self.held_out_pairs}",
            f"top-{self.k} recall vs full-pool selection on held-out pairs:",
            f"  adapter          {self.recall_adapter:.3f}",
            f"  most-frequent-k  {self.recall_frequent:.3f}",
            f"  random-k         {self.recall_random:.3f} (expected k/|P|)",
            f"final training loss {self.final_loss:.4f}",
        ]
        if self.agreement:
            out.append("labels from the held-out pairs' own judgments vs the human preference:")
            out += [f"  {name:<16} {hits}/{n} = {hits / n:.3f}"
                    for name, (hits, n) in self.agreement.items() if n]  # fmt: skip
        return out


def gold_agreement(
    held: Sequence[LabeledPair], picks: dict[str, list[list[str]]], epsilon: float = 1e-6
) -> dict[str, tuple[int, int]]:
    """Agreement with ``metadata.gold`` of the labels each selector's picks give.

    The held-out targets were graded on the whole pool (plus the content-free rule when the
    labeler calibrates), so every selector's label is computed from the same judgments,
    calibrated if they were, with no further grading: the adapter's top-k, the full-pool
    top-k (max-discrepancy), random-k, all. A pair with the content-free rule on one side
    only is skipped: its scores cannot be calibrated alike.
    """
    out: dict[str, tuple[int, int]] = {}
    for name, per_pair in picks.items():
        hits = n = 0
        for lp, selected in zip(held, per_pair, strict=True):
            gold = lp.pair.metadata.get("gold")
            calibrated = {j.side for j in lp.judgments if j.rule_id == NULL_RULE_ID}
            if gold not in ("a", "b") or calibrated not in (set(), {"a", "b"}):
                continue
            label = aggregate(calibrated_scores(lp.judgments), selected, epsilon)
            hits, n = hits + int(label.preferred == gold), n + 1
        out[name] = (hits, n)
    return out


def train_adapter(
    adapter: AdapterPredictor,
    labeled: Sequence[LabeledPair],
    k: int,
    epochs: int = 20,
    lr: float | None = None,
    batch_size: int = 16,
    seed: int = 0,
    train_encoder: bool = False,
    on_epoch: Callable[[int, float], None] | None = None,
    held_out: Callable[[ResponsePair], bool] = is_held_out,
) -> AdapterReport:
    """Fit the head (and, with ``train_encoder``, the encoder) with BCE on multi-hot targets.

    By default the encoder stays frozen: with the few hundred pairs that full-pool grading
    affords on a CPU, fine-tuning it collapsed to predicting the most frequent rules in our
    tests, while a head on frozen sentence embeddings learned the topic-to-rule mapping.
    Default lr: 2e-3 for the head alone, 3e-4 when the encoder trains too.
    """
    lr = lr if lr is not None else (3e-4 if train_encoder else 2e-3)
    adapter.model.encoder.requires_grad_(train_encoder)
    index = {r: i for i, r in enumerate(adapter.rule_ids)}
    examples = [(lp.pair, lp.selected_rules) for lp in labeled if lp.selected_rules]
    unknown = {r for _, rules in examples for r in rules} - set(index)
    if unknown:
        raise ValueError(f"targets name rules not in the adapter's pool: {sorted(unknown)[:5]}")
    train = [e for e in examples if not held_out(e[0])]
    held = [e for e in examples if held_out(e[0])]
    if not train or not held:
        raise ValueError(
            f"need pairs on both sides of the 80/20 split, got {len(train)} train /"
            f" {len(held)} held out; label more pairs"
        )

    def targets(rules_list: Sequence[Sequence[str]]) -> torch.Tensor:
        y = torch.zeros(len(rules_list), len(index))
        for row, rules in enumerate(rules_list):
            y[row, [index[r] for r in rules]] = 1.0
        return y

    torch.manual_seed(seed)
    rng = random.Random(seed)
    model = adapter.model.train()
    frozen: dict[str, torch.Tensor] = {}
    if not train_encoder:
        # A frozen encoder gives each pair the same embedding every epoch: compute it once
        # (30 epochs of 512-token encoder passes were most of the time), train the head.
        model.encoder.eval()
        with torch.no_grad():
            for start in range(0, len(train), batch_size):
                chunk = [p for p, _ in train[start : start + batch_size]]
                batch = adapter.encode(chunk)
                pooled = model.embed(batch["input_ids"], batch["attention_mask"])
                frozen.update({p.pair_id: e for p, e in zip(chunk, pooled, strict=True)})
    optim = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    loss_value = float("nan")
    for epoch in range(epochs):
        rng.shuffle(train)
        total, batches = 0.0, 0
        for start in range(0, len(train), batch_size):
            chunk = train[start : start + batch_size]
            if frozen:
                logits = model.head(torch.stack([frozen[p.pair_id] for p, _ in chunk]))
            else:
                batch = adapter.encode([p for p, _ in chunk])
                logits = model(batch["input_ids"], batch["attention_mask"])
            loss = loss_fn(logits, targets([r for _, r in chunk]).to(logits.device))
            optim.zero_grad()
            loss.backward()
            optim.step()
            total, batches = total + loss.item(), batches + 1
        loss_value = total / batches
        if on_epoch:
            on_epoch(epoch, loss_value)
    model.eval()

    held_pairs: list[ResponsePair] = [p for p, _ in held]
    held_targets = [r for _, r in held]
    predicted = [[r for r, _ in top] for top in adapter.predict(held_pairs, k)]
    frequent = [r for r, _ in Counter(r for _, rs in train for r in rs).most_common(k)]
    held_labels = [lp for lp in labeled if lp.selected_rules and held_out(lp.pair)]
    rng = random.Random(seed)
    graded = sorted({j.rule_id for j in held_labels[0].judgments} - {NULL_RULE_ID})
    picks = {
        "adapter": predicted,
        "max-discrepancy": held_targets,
        "random-k": [rng.sample(graded, min(k, len(graded))) for _ in held_labels],
        "all": [graded] * len(held_labels),
    }
    return AdapterReport(
        train_pairs=len(train),
        held_out_pairs=len(held),
        k=k,
        recall_adapter=topk_recall(predicted, held_targets),
        recall_random=min(k, len(index)) / len(index),
        recall_frequent=topk_recall([frequent] * len(held), held_targets),
        final_loss=loss_value,
        agreement=gold_agreement(held_labels, picks),
    )
