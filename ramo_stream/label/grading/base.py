"""The Grader interface every backend implements."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from ramo_stream.schemas import ChatMessage


class PromptTooLong(ValueError):
    """A (conversation, response) does not fit the grader; every backend raises this."""


@dataclass(frozen=True)
class GradeRequest:
    """Grade ``response`` (to ``prompt``) against one rule."""

    prompt: str | list[ChatMessage]
    response: str
    rule_text: str


@dataclass(frozen=True)
class AnswerProbs:
    """P(Yes), P(No), P(Irrelevant), normalised over the three answer words."""

    p_yes: float
    p_no: float
    p_irrelevant: float

    @property
    def score(self) -> float:
        return self.p_yes - self.p_no


def normalise(logp_yes: float, logp_no: float, logp_irrelevant: float) -> AnswerProbs:
    """Softmax over three log-probabilities (stable for very negative values)."""
    top = max(logp_yes, logp_no, logp_irrelevant)
    e = [math.exp(x - top) for x in (logp_yes, logp_no, logp_irrelevant)]
    total = sum(e)
    return AnswerProbs(e[0] / total, e[1] / total, e[2] / total)


class Grader(Protocol):
    """Scores (conversation, response, rule) triples. Backends: transformers, vllm, openai."""

    name: str  # the grader model, recorded in every label
    template_version: str
    # Whether labeling.calibrate defaults to on (see LabelingSettings.calibrate): an LLM
    # grader's score carries a response-only bias; a classifier trained per rule does not.
    calibrate_by_default: bool

    def grade(self, requests: Sequence[GradeRequest]) -> list[AnswerProbs]:
        """One AnswerProbs per request, in order."""
        ...
