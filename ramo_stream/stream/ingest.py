"""Reading JSONL files of pairs and producing them to the pairs topic.

Two line formats are accepted:

- the project's own ``ResponsePair`` JSON (``prompt``, ``response_a``, ``response_b``, ...);
- RewardBench style ``{"prompt", "chosen", "rejected", "id"?, "subset"?}``. The gold side
  is hidden: which response becomes A is decided by a hash of the content (so the order
  says nothing about the preference, yet re-ingesting the same file gives the same
  pair_ids), and the gold preference is kept in ``metadata.gold`` for evaluation.

A line that does not parse goes to the dead-letter topic with its reason and bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from ramo_stream.schemas import (
    MAX_ID_CHARS,
    DeadLetter,
    LabeledPair,
    Rejection,
    ResponsePair,
    describe_validation_error,
    rewardbench_missing,
)
from ramo_stream.stream.kafka_io import TopicWriter


def _a_is_chosen(prompt: Any, chosen: Any, rejected: Any) -> bool:
    digest = hashlib.sha256(json.dumps([prompt, chosen, rejected]).encode()).digest()
    return digest[0] & 1 == 1


def from_rewardbench(row: dict[str, Any], source: str) -> dict[str, Any]:
    """Map a prompt/chosen/rejected row to ResponsePair fields with the sides shuffled."""
    chosen, rejected = row["chosen"], row["rejected"]
    a_chosen = _a_is_chosen(row.get("prompt"), chosen, rejected)
    metadata: dict[str, Any] = {"gold": "a" if a_chosen else "b"}
    for k in ("id", "subset"):
        if k in row:
            metadata["original_id" if k == "id" else k] = row[k]
    return {
        "prompt": row.get("prompt"),
        "response_a": chosen if a_chosen else rejected,
        "response_b": rejected if a_chosen else chosen,
        "source": row.get("source", source),
        "metadata": metadata,
    }


def parse_line(raw: bytes, source: str) -> ResponsePair | Rejection:
    """One JSONL line (either format) to a pair, or a Rejection with the reason."""
    try:
        row = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        return Rejection(f"not a JSON line: {e}", raw)
    if not isinstance(row, dict):
        return Rejection(f"expected a JSON object, got {type(row).__name__}", raw)
    try:
        if "chosen" in row or "rejected" in row:
            problem = rewardbench_missing(row)
            if problem:
                return Rejection(problem, raw)
            row = from_rewardbench(row, source)
        else:
            row.setdefault("source", source)
        return ResponsePair.model_validate(row)
    except ValidationError as e:
        return Rejection(f"invalid ResponsePair: {describe_validation_error(e)}", raw)


def human_label(pair: ResponsePair, raw: bytes) -> LabeledPair | Rejection:
    """The human preference a RewardBench row carries (``metadata.gold``), as a label."""
    gold = pair.metadata.get("gold")
    if gold not in ("a", "b"):
        return Rejection(
            "a label needs a human preference: RewardBench rows (prompt/chosen/rejected)"
            " carry one, ResponsePair lines do not",
            raw,
        )
    return LabeledPair(
        pair=pair, preferred="a" if gold == "a" else "b", margin=0.0, labeler="human"
    )


def iter_lines(path: Path) -> Iterator[tuple[int, bytes]]:
    with path.open("rb") as f:
        for no, line in enumerate(f, start=1):
            line = line.strip()
            if line:
                yield no, line


def count_lines(path: Path, limit: int | None = None) -> int:
    """Non-blank lines of a file (capped at ``limit``): the total for a progress bar."""
    with path.open("rb") as f:
        n = sum(1 for line in f if line.strip())
    return n if limit is None else min(n, limit)


def source_name(path: Path) -> str:
    """A valid source identifier from a file name."""
    # ASCII only and bounded, as the Identifier pattern of ResponsePair.source requires.
    cleaned = "".join(c if c.isascii() and (c.isalnum() or c in "._-") else "-" for c in path.stem)
    return cleaned.lstrip("._-")[:MAX_ID_CHARS] or "file"


def parse_file(
    path: Path, source: str, limit: int | None = None
) -> Iterator[tuple[int, bytes, ResponsePair | Rejection]]:
    """(line number, raw bytes, parsed pair or rejection) for the first ``limit`` lines."""
    for i, (no, raw) in enumerate(iter_lines(path)):
        if limit is not None and i >= limit:
            return
        yield no, raw, parse_line(raw, source)


@dataclass
class LineReport:
    """Counts of a pass over a file; keeps the first few rejection reasons for the summary."""

    rejected: int = 0
    reasons: list[str] = field(default_factory=list)

    def reject(self, no: int, reason: str) -> str:
        text = f"line {no}: {reason}"
        self.rejected += 1
        if len(self.reasons) < 5:
            self.reasons.append(text)
        return text


@dataclass
class IngestReport(LineReport):
    accepted: int = 0


def ingest_file(
    path: Path,
    writer: TopicWriter,
    pairs_topic: str,
    dlq_topic: str,
    source: str | None = None,
    limit: int | None = None,
    on_line: Callable[[], None] | None = None,
    flush_every: int = 1000,
    as_labels: bool = False,
) -> IngestReport:
    """Produce every valid line to ``pairs_topic`` and every bad one to ``dlq_topic``.

    With ``as_labels``, ``pairs_topic`` is the labels topic and each pair goes there as a
    human label (its ``metadata.gold``); a line without a human preference is rejected.
    Returns once every send is acknowledged (acks=all).
    """
    source = source or source_name(path)
    report = IngestReport()
    for i, (no, raw, parsed) in enumerate(parse_file(path, source, limit)):
        out: ResponsePair | LabeledPair | Rejection = parsed
        if as_labels and isinstance(parsed, ResponsePair):
            out = human_label(parsed, raw)
        if isinstance(out, Rejection):
            reason = report.reject(no, out.reason)
            writer.send(dlq_topic, DeadLetter.of(raw, reason, "ingest"))
        else:
            report.accepted += 1
            writer.send(pairs_topic, out, key=out.pair_id)
        if on_line:
            on_line()
        if (i + 1) % flush_every == 0:
            writer.flush()
    writer.flush()
    return report
