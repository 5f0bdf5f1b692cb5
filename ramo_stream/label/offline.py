"""Offline labeling: a JSONL file of pairs in, a JSONL file of LabeledPair out.

Resumable: pairs whose pair_id is already in the output are skipped, so re-running the
same command after a crash continues where it stopped. Each batch is appended and flushed
as soon as it is labeled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ramo_stream.label.labeler import Labeler
from ramo_stream.schemas import Rejection, ResponsePair
from ramo_stream.stream.ingest import LineReport, iter_lines, parse_file, source_name


def done_ids(out: Path) -> set[str]:
    """pair_ids already labeled in ``out`` (a torn last line from a crash is ignored)."""
    ids: set[str] = set()
    if not out.exists():
        return ids
    for _, raw in iter_lines(out):
        try:
            ids.add(json.loads(raw)["pair"]["pair_id"])
        except (ValueError, KeyError, TypeError):
            continue
    return ids


def drop_torn_tail(out: Path, chunk: int = 1 << 16) -> None:
    """Cut a last line that a crash left without its newline, so appends start clean.

    Reads backwards from the end in chunks: the output can be large, the tail is short.
    """
    if not out.exists() or out.stat().st_size == 0:
        return
    with out.open("rb+") as f:
        end = f.seek(0, 2)
        f.seek(end - 1)
        if f.read(1) == b"\n":
            return
        pos = end
        while pos > 0:
            step = min(chunk, pos)
            pos -= step
            f.seek(pos)
            newline = f.read(step).rfind(b"\n")
            if newline >= 0:
                f.truncate(pos + newline + 1)
                return
        f.truncate(0)


@dataclass
class LabelReport(LineReport):
    labeled: int = 0
    skipped: int = 0
    preferred: dict[str, int] = field(default_factory=lambda: {"a": 0, "b": 0, "tie": 0})
    agree_with_gold: int = 0
    with_gold: int = 0


def label_file(
    src: Path,
    out: Path,
    labeler: Labeler,
    pair_batch: int = 4,
    limit: int | None = None,
    on_pairs: Callable[[int], None] | None = None,
) -> LabelReport:
    report = LabelReport()
    drop_torn_tail(out)
    seen = done_ids(out)
    source = source_name(src)
    pending: list[ResponsePair] = []
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("a", encoding="utf-8") as sink:

        def flush() -> None:
            for lp in labeler.label(pending):
                sink.write(lp.model_dump_json() + "\n")
                report.labeled += 1
                report.preferred[lp.preferred] += 1
                gold = lp.pair.metadata.get("gold")
                if gold in ("a", "b"):
                    report.with_gold += 1
                    report.agree_with_gold += int(lp.preferred == gold)
            sink.flush()
            if on_pairs:
                on_pairs(len(pending))
            pending.clear()

        for no, _, parsed in parse_file(src, source, limit):
            if isinstance(parsed, Rejection):
                report.reject(no, parsed.reason)
                continue
            if parsed.pair_id in seen:
                report.skipped += 1
                if on_pairs:
                    on_pairs(1)
                continue
            seen.add(parsed.pair_id)
            pending.append(parsed)
            if len(pending) >= pair_batch:
                flush()
        if pending:
            flush()
    return report
