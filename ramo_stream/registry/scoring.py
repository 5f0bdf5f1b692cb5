"""Scoring items with loaded registry versions: each version's items formatted with its
tokenizer (``format_text``, the one input format training used), sorted by token length,
and cut into sub-batches whose padded size (rows x longest row) stays within
``batch_tokens``. The cuts weigh padding against the fixed cost of one more forward pass
(``plan_sub_batches``), so on a CPU, where a pass costs little beyond its tokens, unlike
lengths are not padded to each other. The reward service batches requests into these
calls (``serve.reward_batching``); ``ramo eval`` calls them directly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from ramo_stream.registry.model import encode, format_text, rewards
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


def plan_sub_batches(
    lengths: Sequence[int], budget: int, pass_overhead: int = 0
) -> list[list[int]]:
    """Indices into ``lengths``, longest first, cut into groups of the least total cost.

    A group pads to its longest row (its first index), so a pass over it costs
    ``rows x longest`` padded tokens, plus ``pass_overhead``: what one forward pass costs
    besides its tokens (launches, Python, weight reads), in tokens. The plan minimises
    ``passes x pass_overhead + padded tokens`` with ``rows x longest <= budget``; a row
    longer than the budget gets a group of its own. With a small overhead (a CPU) rows of
    unlike lengths go in separate passes rather than pad; with a large one (a GPU) few,
    full passes win.

    Rows sorted by length can be cut into runs without losing the optimum (swapping two
    rows across groups never lowers both widths), so this is a dynamic programme over cut
    points: ``best[j]`` is the cost of the ``j`` longest rows.
    """
    order = sorted(range(len(lengths)), key=lambda i: lengths[i], reverse=True)
    width = [lengths[i] for i in order]
    n = len(order)
    best = [0] * (n + 1)
    start = [0] * (n + 1)  # start[j]: where the last group of the best plan of j rows starts
    for j in range(1, n + 1):
        best[j], start[j] = best[j - 1] + pass_overhead + width[j - 1], j - 1  # row alone
        for i in range(j - 2, -1, -1):  # group i..j-1: widening it to the left
            rows = j - i
            if rows * width[i] > budget:
                break  # widths only grow leftwards: no longer group fits either
            cost = best[i] + pass_overhead + rows * width[i]
            if cost <= best[j]:  # ties: the longer group (fewer passes)
                best[j], start[j] = cost, i
    groups: list[list[int]] = []
    j = n
    while j > 0:
        groups.append(order[start[j] : j])
        j = start[j]
    groups.reverse()
    return groups


def score_items(
    items: Sequence[BatchItem],
    max_length: int,
    batch_tokens: int,
    on_forward: ForwardHook | None = None,
    pass_overhead: int = 0,
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
        for group in plan_sub_batches(lengths, batch_tokens, pass_overhead):
            batch = encode(tok, [texts[j] for j in group], limit)
            batch = {k: v.to(loaded.device) for k, v in batch.items()}
            with torch.inference_mode():
                values = rewards(loaded.model, batch).float().tolist()
            for j, value in zip(group, values, strict=True):
                out[idxs[j]] = float(value)
            if on_forward is not None:
                on_forward(len(group), lengths[group[0]], sum(lengths[j] for j in group))
    return out
