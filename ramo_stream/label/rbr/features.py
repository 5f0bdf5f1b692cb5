"""Proposition features: the grader's P(Yes) for every proposition of a completion.

A feature is ``P(Yes) / (P(Yes) + P(No))``: the probability that the statement is true of
the response, read from the same ``Grader`` interface that grades rules (the proposition's
text is the rule text). P(Irrelevant) is left out: a proposition is always applicable, it is
true or false.

Grading a data file is the slow part of ``ramo rbr fit`` (|rows| x |pool| grader calls), so
the features are cached as JSON under ``paths.cache_dir/rbr/features``, keyed by everything
that decides them: the grader's name and template version, the pool hash, and the data
file's sha256.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from ramo_stream.core.propositions import PropositionPool, response_type_id
from ramo_stream.label.grading.base import AnswerProbs, Grader, GradeRequest
from ramo_stream.schemas import ChatMessage, Prompt

_PROMPT: TypeAdapter[Any] = TypeAdapter(Prompt)


@dataclass(frozen=True)
class GoldRow:
    """One completion of the RBR gold set with its human proposition labels."""

    id: str
    prompt: str | list[ChatMessage]
    completion: str
    response_type: str  # comply | hard_refuse | safe_refuse_1 | safe_refuse_2
    category: str
    truth: dict[str, bool]


def read_gold(path: Path) -> list[GoldRow]:
    """The rows of an rbr_gold JSONL file; raises ValueError naming the line of a bad one."""
    rows: list[GoldRow] = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            rows.append(
                GoldRow(
                    id=str(d.get("id", f"{path.name}:{n}")),
                    prompt=_PROMPT.validate_python(d["prompt"]),
                    completion=str(d["completion"]),
                    response_type=response_type_id(str(d["response_type"])),
                    category=str(d.get("category", "")),
                    truth={str(k): bool(v) for k, v in d["propositions"].items()},
                )
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise ValueError(
                f"{path}:{n}: not an RBR gold row ({type(e).__name__}: {e}); expected prompt,"
                " completion, response_type and propositions"
            ) from e
    return rows


def p_true(p: AnswerProbs) -> float:
    """P(Yes) among Yes and No."""
    return p.p_yes / max(p.p_yes + p.p_no, 1e-12)


def grade_propositions(
    grader: Grader,
    pool: PropositionPool,
    items: Sequence[tuple[str | Sequence[ChatMessage], str]],
    on_progress: Callable[[int], None] | None = None,
    chunk: int = 8,
) -> list[list[float]]:
    """P(true) of every proposition (pool order) for every (prompt, response), in order.
    Graded ``chunk`` responses at a time (all propositions of one response together, so an
    LLM backend shares the conversation prefix); ``on_progress`` gets the responses done."""
    texts = [p.text for p in pool]
    out: list[list[float]] = []
    for start in range(0, len(items), chunk):
        part = items[start : start + chunk]
        reqs = [
            GradeRequest(prompt=prompt if isinstance(prompt, str) else list(prompt),
                         response=response, rule_text=t)
            for prompt, response in part
            for t in texts
        ]  # fmt: skip
        probs = grader.grade(reqs)
        for i in range(len(part)):
            out.append([p_true(p) for p in probs[i * len(texts) : (i + 1) * len(texts)]])
        if on_progress is not None:
            on_progress(len(part))
    return out


def gold_features(pool: PropositionPool, rows: Sequence[GoldRow]) -> list[list[float]]:
    """The human labels as 0/1 features: the upper bound a perfect grader would give."""
    missing = sorted(set(pool.ids) - set(rows[0].truth)) if rows else []
    if missing:
        raise ValueError(f"the gold rows lack propositions {missing} of pool {pool.name}")
    return [[1.0 if r.truth[p] else 0.0 for p in pool.ids] for r in rows]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def cache_key(grader: Grader, pool: PropositionPool, data: Path) -> str:
    body = json.dumps([grader.name, grader.template_version, pool.hash, _sha256(data)])
    return hashlib.sha256(body.encode()).hexdigest()[:16]


def cached_features(
    grader: Grader,
    pool: PropositionPool,
    data: Path,
    rows: Sequence[GoldRow],
    cache_root: Path,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[list[list[float]], bool]:
    """(features of ``rows``, read from the cache?). Grades and writes the cache on a miss."""
    path = cache_root / "features" / f"{data.stem}-{cache_key(grader, pool, data)}.json"
    ids = [r.id for r in rows]
    try:
        cached = json.loads(path.read_text())
        if cached["ids"] == ids and cached["propositions"] == pool.ids:
            return cached["features"], True
    except (OSError, ValueError, KeyError, TypeError):
        pass
    feats = grade_propositions(grader, pool, [(r.prompt, r.completion) for r in rows], on_progress)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({
        "grader": grader.name, "template_version": grader.template_version,
        "pool_hash": pool.hash, "data": str(data), "ids": ids, "propositions": pool.ids,
        "features": feats,
    }))  # fmt: skip
    tmp.replace(path)
    return feats, False
