"""Scoring one dynamic batch: grouped by model version, sorted by length, cut by a token budget.

A batch gathers items of several requests, which may be pinned to different versions. Each
version's items are formatted with that version's tokenizer (``format_text``, the one input
format training used), sorted by token length, and cut into sub-batches whose padded size
(rows x longest row) stays within ``batch_tokens``. Sorting first means each sub-batch pads
to a length close to its rows' own, so little compute goes to padding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ramo_stream.reward.model import encode, format_text, rewards
from ramo_stream.schemas import ChatMessage


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """One registry version in memory. Compared by identity: a batch holds the object it
    started with, however the service's table of versions changes meanwhile."""

    version: int
    model: Any
    tokenizer: Any
    device: Any
    max_length: int  # tokens the model takes (its position embeddings, its tokenizer)


class BatchItem(NamedTuple):
    loaded: LoadedModel
    prompt: str | Sequence[ChatMessage]
    response: str


# rows, padded width, real (non-pad) tokens of one forward pass
ForwardHook = Callable[[int, int, int], None]


def model_max_length(model: Any, tokenizer: Any, default: int = 1 << 20) -> int:
    """Longest input the model takes: its position embeddings and its tokenizer's limit
    (a tokenizer without one reports a huge sentinel, ignored here)."""
    limits = [getattr(model.config, "max_position_embeddings", None), tokenizer.model_max_length]
    return min([n for n in limits if isinstance(n, int) and 0 < n < 1_000_000] or [default])


def plan_sub_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """Indices into ``lengths``, longest first, cut into groups with rows x longest <= budget.

    A group's first index is its longest row, so that is the width it pads to. A row longer
    than the budget gets a group of its own.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    groups: list[list[int]] = []
    group: list[int] = []
    for i in order:
        if group and (len(group) + 1) * lengths[group[0]] > budget:
            groups.append(group)
            group = []
        group.append(i)
    if group:
        groups.append(group)
    return groups


def score_items(
    items: Sequence[BatchItem],
    max_length: int,
    batch_tokens: int,
    on_forward: ForwardHook | None = None,
) -> list[float]:
    """One reward per item, in order. Blocking (torch); call it off the event loop."""
    import torch

    out = [0.0] * len(items)
    by_model: dict[int, tuple[LoadedModel, list[int]]] = {}
    for i, it in enumerate(items):
        by_model.setdefault(id(it.loaded), (it.loaded, []))[1].append(i)
    for loaded, idxs in by_model.values():
        tok, limit = loaded.tokenizer, min(max_length, loaded.max_length)
        texts = [format_text(tok, items[i].prompt, items[i].response) for i in idxs]
        ids = tok(texts, truncation=True, max_length=limit)["input_ids"]
        lengths = [len(x) for x in ids]
        for group in plan_sub_batches(lengths, batch_tokens):
            batch = encode(tok, [texts[j] for j in group], limit)
            batch = {k: v.to(loaded.device) for k, v in batch.items()}
            with torch.inference_mode():
                values = rewards(loaded.model, batch).float().tolist()
            for j, value in zip(group, values, strict=True):
                out[idxs[j]] = float(value)
            if on_forward is not None:
                on_forward(len(group), lengths[group[0]], sum(lengths[j] for j in group))
    return out
