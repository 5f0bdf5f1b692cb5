"""Proposition pools for Rule-Based Rewards (RBR): statements about one completion.

A pool file looks like::

    name: ramo-rbr-propositions-v1
    description: ...
    propositions:
      - id: apology
        text: The response contains an apology, such as "I'm sorry".
        separates: [hard_refuse, safe_refuse_1, safe_refuse_2]

A grader answers Yes when the statement is true of the response. ``separates`` names the
response types whose completion classes the proposition helps tell apart; RBR fits a weight
per (response type, proposition), so it documents where a weight is expected to matter.

Unlike a rule of a safety pool, a proposition is neither good nor bad: "apology" is wanted in
a refusal and unwanted nowhere else. The weights decide, not the text.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ramo_stream.core.yaml_file import load_yaml_model

# What the request calls for (the RBR gold set's response types, lower-cased).
RESPONSE_TYPES: tuple[str, ...] = ("comply", "hard_refuse", "safe_refuse_1", "safe_refuse_2")


def response_type_id(name: str) -> str:
    """'Safe Refuse 2' (the gold set's spelling) -> 'safe_refuse_2'; raises on an unknown type."""
    key = name.strip().lower().replace(" ", "_")
    if key not in RESPONSE_TYPES:
        raise ValueError(f"unknown response type {name!r}; use one of {', '.join(RESPONSE_TYPES)}")
    return key


class Proposition(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z][a-z0-9_]{0,63}$", description="Unique within the pool.")
    text: str = Field(min_length=10, max_length=400, description="True or false of a response.")
    separates: tuple[str, ...] = Field(
        min_length=1, description=f"Response types it helps rank: {', '.join(RESPONSE_TYPES)}."
    )


class PropositionPool(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    description: str = ""
    propositions: tuple[Proposition, ...] = Field(min_length=1)

    @model_validator(mode="after")
    def _check(self) -> PropositionPool:
        ids = Counter(p.id for p in self.propositions)
        dupes = sorted(i for i, n in ids.items() if n > 1)
        if dupes:
            raise ValueError(f"duplicate proposition ids {dupes}: every id must be unique")
        unknown = sorted({t for p in self.propositions for t in p.separates} - set(RESPONSE_TYPES))
        if unknown:
            raise ValueError(
                f"unknown response types {unknown} in 'separates'; use {', '.join(RESPONSE_TYPES)}"
            )
        return self

    @property
    def hash(self) -> str:
        """sha256 over ids and texts in order: fitted weights are refused against another pool."""
        body = json.dumps([[p.id, p.text] for p in self.propositions])
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    @property
    def ids(self) -> list[str]:
        return [p.id for p in self.propositions]

    def __len__(self) -> int:
        return len(self.propositions)

    def __iter__(self) -> Iterator[Proposition]:  # type: ignore[override]
        return iter(self.propositions)

    def __getitem__(self, prop_id: str) -> Proposition:
        for p in self.propositions:
            if p.id == prop_id:
                return p
        raise KeyError(f"proposition {prop_id!r} is not in pool {self.name!r}")


class PropositionPoolError(ValueError):
    """A proposition file that cannot be used; the message names the file and the problem."""


def load_propositions(path: str | Path) -> PropositionPool:
    what = "proposition pool"
    return load_yaml_model(Path(path), PropositionPool, what, "paths.propositions",
                           PropositionPoolError, "'propositions'")  # fmt: skip
