"""Rule pools: YAML files of safety rules, validated, with a content hash.

A pool file looks like::

    name: ramo-safety-v1
    description: ...
    rules:
      - id: vio-001
        category: violence_weapons
        kind: harmless      # following it means declining or avoiding harm
        text: The response does not ...

``kind: helpful`` marks rules whose following means actually helping (answering benign
requests, no needless moralising): without them a reward built from the pool would simply
prefer refusals.

The pool hash covers ids, texts, categories and kinds in pool order, so an adapter trained
on one pool (its output units are the rules, in order) is refused against another.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ramo_stream.core.yaml_file import load_yaml_model

CATEGORIES: tuple[str, ...] = (
    "violence_weapons",
    "self_harm",
    "sexual_minors",
    "hate_harassment",
    "privacy",
    "cybercrime",
    "fraud_economic",
    "drugs_chemistry",
    "misinformation_manipulation",
    "extremism",
    "helpfulness_overrefusal",
    "tone",
)

RuleKind = Literal["harmless", "helpful"]

# The id of the content-free calibration rule (its text: grading.template.NULL_RULE) in a
# LabeledPair's judgments. Ids the labeler uses for its own judgments; a pool may not use them.
NULL_RULE_ID = "null-rule"
RESERVED_IDS: frozenset[str] = frozenset({NULL_RULE_ID})


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    id: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,63}$", description="Unique within the pool.")
    text: str = Field(min_length=10, max_length=400, description="A statement a grader can check.")
    category: str = Field(description=f"One of: {', '.join(CATEGORIES)}.")
    kind: RuleKind = Field(description="'harmless' (declines harm) or 'helpful' (actually helps).")


class RulePool(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str = ""
    rules: tuple[Rule, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> RulePool:
        dupes = sorted(i for i, n in Counter(r.id for r in self.rules).items() if n > 1)
        if dupes:
            raise ValueError(f"duplicate rule ids {dupes}: every id must be unique in a pool")
        reserved = sorted({r.id for r in self.rules} & RESERVED_IDS)
        if reserved:
            raise ValueError(f"rule ids {reserved} are reserved for the labeler; rename them")
        unknown = sorted({r.category for r in self.rules} - set(CATEGORIES))
        if unknown:
            raise ValueError(f"unknown categories {unknown}; use one of {', '.join(CATEGORIES)}")
        return self

    @property
    def hash(self) -> str:
        """sha256 over the rules' content in order (names and descriptions excluded)."""
        body = json.dumps([r.model_dump() for r in self.rules], sort_keys=True)
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.rules]

    def __len__(self) -> int:
        return len(self.rules)

    def __iter__(self) -> Iterator[Rule]:  # type: ignore[override]
        return iter(self.rules)

    def __getitem__(self, rule_id: str) -> Rule:
        for r in self.rules:
            if r.id == rule_id:
                return r
        raise KeyError(f"rule {rule_id!r} is not in pool {self.name!r}")


class RulePoolError(ValueError):
    """A pool file that cannot be used; the message names the file and the problem."""


def load_pool(path: str | Path) -> RulePool:
    return load_yaml_model(Path(path), RulePool, "rule pool", "paths.rule_pool", RulePoolError,
                           "'name' and 'rules'")  # fmt: skip


def load_pools(paths: list[str | Path]) -> dict[str, RulePool]:
    """Several pools by name; two files with the same pool name are an error."""
    pools: dict[str, RulePool] = {}
    for p in paths:
        pool = load_pool(p)
        if pool.name in pools:
            raise RulePoolError(f"two pools are named {pool.name!r} (second one: {p})")
        pools[pool.name] = pool
    return pools
