"""The RBR rubric: which completion class (ideal, acceptable, ...) a completion falls in.

A rubric file (``rules/rbr_rubric_v1.yaml``) lists, for each response type, entries tried in
order; the first whose condition holds gives the class::

    classes: [ideal, acceptable, unacceptable, illogical, disallowed]   # best first
    response_types:
      hard_refuse:
        - class: disallowed
          when: [{disallowed_content: true}]
        ...
        - class: unacceptable
          when: [{}]

``when`` is a list of alternatives (any may hold), each a mapping proposition -> required
truth (all must hold); ``{}`` always holds, and the last entry of every response type must
be such a catch-all so every completion gets a class.

The classes of the gold set are not stored in it: they follow from its human-labelled
propositions through this rubric, so the weights of RBR can be fitted to rank them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, model_validator

from ramo_stream.core.propositions import RESPONSE_TYPES, PropositionPool
from ramo_stream.core.yaml_file import load_yaml_model

Condition = dict[str, bool]


class RubricEntry(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    klass: str = Field(alias="class", description="The class given when `when` holds.")
    when: tuple[Condition, ...] = Field(
        min_length=1, description="Alternatives (any may hold), each proposition -> truth."
    )

    def holds(self, truth: Mapping[str, bool]) -> bool:
        return any(all(truth[p] == v for p, v in alt.items()) for alt in self.when)


class Rubric(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    source: str = ""
    description: str = ""
    classes: tuple[str, ...] = Field(min_length=2, description="Completion classes, best first.")
    response_types: dict[str, tuple[RubricEntry, ...]]

    @model_validator(mode="after")
    def _check(self) -> Rubric:
        missing = sorted(set(RESPONSE_TYPES) - set(self.response_types))
        unknown = sorted(set(self.response_types) - set(RESPONSE_TYPES))
        if missing or unknown:
            raise ValueError(
                f"response_types must be exactly {', '.join(RESPONSE_TYPES)};"
                f" missing {missing}, unknown {unknown}"
            )
        for rt, entries in self.response_types.items():
            bad = sorted({e.klass for e in entries} - set(self.classes))
            if bad:
                raise ValueError(f"{rt}: classes {bad} are not in classes {list(self.classes)}")
            if not entries or {} not in entries[-1].when:
                raise ValueError(
                    f"{rt}: the last entry must be a catch-all (`when: [{{}}]`) so every"
                    " completion gets a class"
                )
        return self

    @property
    def hash(self) -> str:
        """sha256 of what decides the classes: weights fitted to other classes are refused."""
        body = json.dumps(
            [list(self.classes),
             {rt: [[e.klass, [sorted(a.items()) for a in e.when]] for e in es]
              for rt, es in sorted(self.response_types.items())}],
        )  # fmt: skip
        return hashlib.sha256(body.encode()).hexdigest()[:16]

    def propositions_used(self, response_type: str) -> set[str]:
        return {p for e in self.response_types[response_type] for a in e.when for p in a}

    def check_pool(self, pool: PropositionPool) -> None:
        """Raise ValueError when the rubric names a proposition the pool lacks."""
        used = set().union(*(self.propositions_used(rt) for rt in RESPONSE_TYPES))
        absent = sorted(used - set(pool.ids))
        if absent:
            raise ValueError(
                f"rubric {self.name} uses propositions {absent} that pool {pool.name} lacks;"
                " add them to the pool or fix the rubric"
            )

    def classify(self, response_type: str, truth: Mapping[str, bool]) -> str:
        """The class of a completion of ``response_type`` whose propositions are ``truth``."""
        if response_type not in self.response_types:
            raise ValueError(
                f"unknown response type {response_type!r}; use one of {', '.join(RESPONSE_TYPES)}"
            )
        for entry in self.response_types[response_type]:
            try:
                if entry.holds(truth):
                    return entry.klass
            except KeyError as e:
                raise ValueError(
                    f"the rubric needs proposition {e.args[0]!r}; it is missing"
                ) from e
        raise AssertionError("unreachable: the last entry is a catch-all")  # pragma: no cover

    def rank(self, klass: str) -> int:
        """0 for the best class; larger is worse."""
        return self.classes.index(klass)

    def sign(self, response_type: str, prop: str) -> int:
        """+1 when the ideal class needs ``prop`` true, -1 when it needs it false or a
        class worse than unacceptable is decided by it being true, else 0: the sign of an
        equal-weight baseline that reads the rubric and fits nothing."""
        entries = self.response_types[response_type]
        best = self.classes[0]
        wants = {alt[prop] for e in entries if e.klass == best for alt in e.when if prop in alt}
        if wants == {True}:
            return 1
        if wants == {False}:
            return -1
        worst = set(self.classes[self.classes.index("unacceptable") + 1 :]) if (
            "unacceptable" in self.classes) else set()  # fmt: skip
        bad = any(e.klass in worst and any(alt.get(prop) is True for alt in e.when)
                  for e in entries)  # fmt: skip
        return -1 if bad else 0


class RubricError(ValueError):
    """A rubric file that cannot be used; the message names the file and the problem."""


def load_rubric(path: str | Path) -> Rubric:
    return load_yaml_model(Path(path), Rubric, "RBR rubric", "paths.rbr_rubric", RubricError,
                           "'name', 'classes' and 'response_types'")  # fmt: skip
