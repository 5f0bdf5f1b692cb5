"""``RBRScorer``: the Rule-Based Reward of (prompt, response, response type) items.

One object holds what R_rbr needs: the proposition pool, the grader (``make_grader``: the
labeler's, the shipped trained classifier by default) and the fitted weights of the RBR
artifact that matches the pool, the rubric and that grader (``serve.rbr_artifact``, else the
newest such artifact). The reward service's RBR deployment and a local ``ramo eval --rbr``
use it, so both compute the same reward.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from ramo_stream.schemas import ChatMessage

# (prompt, response, response type id): the prompt a string or chat messages.
TypedItem = tuple[str | Sequence[ChatMessage], str, str]


class RBRScorer:
    def __init__(self, settings: Any) -> None:
        from ramo_stream.core.propositions import load_propositions
        from ramo_stream.core.rbr_rubric import load_rubric
        from ramo_stream.label.grading.factory import describe, make_grader
        from ramo_stream.label.rbr.artifact import (
            GraderRef,
            RBRArtifactError,
            load_artifact,
            newest_artifact,
        )

        self.pool = load_propositions(settings.paths.propositions)
        rubric = load_rubric(settings.paths.rbr_rubric)
        self.grader = make_grader(settings)
        ref = GraderRef(name=self.grader.name, template_version=self.grader.template_version)
        path = settings.serve.rbr_artifact or newest_artifact(
            settings.paths.cache_dir, self.pool.hash, rubric.hash, ref
        )
        if path is None:
            raise RBRArtifactError(
                f"no RBR weights fitted for propositions {self.pool.name} ({self.pool.hash}),"
                f" rubric {rubric.name} ({rubric.hash}) and grader {ref.name} under"
                f" {settings.paths.rbr_dir} or in the package; fit them with `ramo rbr fit`,"
                " or set serve.rbr=off"
            )
        self.artifact = load_artifact(path, self.pool.hash, rubric.hash, ref)
        self.grader_text = describe(self.grader)

    @property
    def version(self) -> str:
        return self.artifact.version

    def score(
        self,
        items: Sequence[TypedItem],
        on_progress: Callable[[int], None] | None = None,
        chunk: int | None = None,
    ) -> tuple[list[float], list[dict[str, float]]]:
        """(R_rbr of every item with its response type's weights, P(true) of every
        proposition per item). ``chunk``: responses graded per grader call (default: all of
        them in one call, as a service request is)."""
        from ramo_stream.label.rbr.features import grade_propositions
        from ramo_stream.label.rbr.fit import rbr_scores

        pairs = [(p, r) for p, r, _ in items]
        feats = grade_propositions(self.grader, self.pool, pairs, on_progress,
                                   chunk=chunk or max(1, len(pairs)))  # fmt: skip
        values = [
            rbr_scores(self.artifact.weights[t], self.pool, [f])[0]
            for (_, _, t), f in zip(items, feats, strict=True)
        ]
        probs = [dict(zip(self.pool.ids, f, strict=True)) for f in feats]
        return values, probs
