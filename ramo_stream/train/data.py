"""From labeled records to training pairs and token-bounded micro-batches (pure logic).

A record on the labels topic is a ``LabeledPair`` (from the labeler, or from a human via
``ramo ingest --labels``); a file given to ``ramo train --from-file`` may also hold
RewardBench rows (prompt, chosen, rejected), which are human labels already. Ties carry
no preference and are not trained on. One pair in ``heldout_every`` is held out by a hash
of its pair_id, so the held-out slice is the same on every worker and after a restart.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ramo_stream.schemas import ChatMessage, LabeledPair, Rejection, describe_validation_error


@dataclass(frozen=True)
class TrainPair:
    """One preference: ``chosen`` beat ``rejected`` by ``margin`` (0 for human labels)."""

    pair_id: str
    prompt: str | list[ChatMessage]
    chosen: str
    rejected: str
    margin: float = 0.0


def parse_label(raw: bytes) -> LabeledPair | Rejection:
    """A LabeledPair JSON line, or a RewardBench row taken as a human label."""
    try:
        row = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return Rejection(f"not a JSON line: {e}", raw)
    if isinstance(row, dict) and ("chosen" in row or "rejected" in row):
        from ramo_stream.stream.ingest import human_label, parse_line

        pair = parse_line(raw, "file")
        return pair if isinstance(pair, Rejection) else human_label(pair, raw)
    try:
        return LabeledPair.model_validate(row)
    except ValidationError as e:
        return Rejection(f"invalid LabeledPair: {describe_validation_error(e)}", raw)


def to_train_pair(label: LabeledPair) -> TrainPair | None:
    """The preference a label states; None for a tie."""
    p = label.pair
    if label.preferred == "tie":
        return None
    a_wins = label.preferred == "a"
    return TrainPair(
        pair_id=p.pair_id,
        prompt=p.prompt,
        chosen=p.response_a if a_wins else p.response_b,
        rejected=p.response_b if a_wins else p.response_a,
        margin=label.margin,
    )


def is_heldout(pair_id: str, every: int) -> bool:
    """Deterministic 1-in-``every`` split by a hash of the pair id."""
    if every < 1:
        raise ValueError(f"heldout every must be >= 1, got {every}")
    digest = hashlib.sha256(pair_id.encode()).digest()
    return int.from_bytes(digest[:8], "big") % every == 0


@dataclass
class _Pending:
    item: Any
    tokens: int
    arrived: float


@dataclass
class MicroBatcher:
    """FIFO micro-batches bounded by pairs and by padded tokens.

    A micro-batch of n pairs whose longest sequence has L tokens costs 2 * n * L padded
    tokens (chosen and rejected rows). Pairs are taken in arrival order, so the data a
    version has trained on is always a prefix of each partition: what the manifest's
    offsets record. A single pair over the bound still makes a batch of one.
    """

    max_pairs: int
    max_tokens: int
    clock: Callable[[], float] = time.monotonic
    _queue: deque[_Pending] = field(default_factory=deque)

    def __len__(self) -> int:
        return len(self._queue)

    def add(self, item: Any, tokens: int) -> None:
        self._queue.append(_Pending(item, tokens, self.clock()))

    def oldest_age(self) -> float:
        return self.clock() - self._queue[0].arrived if self._queue else 0.0

    def _fits(self) -> int:
        """How many queued pairs the next micro-batch takes."""
        n, longest = 0, 0
        for p in self._queue:
            longest_if = max(longest, p.tokens)
            if n and (n + 1 > self.max_pairs or 2 * (n + 1) * longest_if > self.max_tokens):
                break
            n, longest = n + 1, longest_if
        return n

    def ready(self) -> bool:
        """A full micro-batch is queued (more is waiting behind it, or the pair limit is met)."""
        n = self._fits()
        return n > 0 and (n < len(self._queue) or n == self.max_pairs)

    def take(self, force: bool = False) -> list[Any]:
        """The next micro-batch if one is ready (or, with ``force``, whatever fits)."""
        if not (force or self.ready()):
            return []
        return [self._queue.popleft().item for _ in range(self._fits())]
