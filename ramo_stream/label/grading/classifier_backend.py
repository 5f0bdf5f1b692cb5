"""Grader as a trained cross-encoder: (rule, conversation + response) -> P(Yes, No, NA).

The model is a BERT-style encoder (all-MiniLM-L6-v2 by default) with a three-way head,
trained by ``ramo grader train`` (grading/train_classifier.py). Its input is a text pair:
the rule text first, ``template.classifier_text(conversation, response)`` second, cut to
``max_tokens`` from the end of the second segment. The head's softmax is the AnswerProbs
the labeler consumes, so nothing downstream changes.

Unlike the LLM backends nothing is shared between the rules of one response (the rule
comes first, every token attends to it); each call is one short encoder pass, 22M
parameters instead of 135M.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ramo_stream.label.grading.artifact import WEIGHTS, Expected, load_manifest, sha256_file
from ramo_stream.label.grading.base import AnswerProbs, GradeRequest
from ramo_stream.label.grading.template import (
    CLASSIFIER_TEMPLATE_VERSION,
    DEFAULT_WORDS,
    classifier_text,
)

BASE_WEIGHTS = "model.safetensors"


def base_sha256(base: str | Path) -> str:
    """The sha256 of a base model folder's weights file (what an artifact is built on)."""
    return sha256_file(Path(base) / BASE_WEIGHTS)


def build_model(base: str | Path, config: Any | None = None) -> Any:
    """The base encoder with a fresh three-way head (labels in answer-word order)."""
    from transformers import AutoModelForSequenceClassification

    words = DEFAULT_WORDS.as_tuple()
    return AutoModelForSequenceClassification.from_pretrained(
        str(base),
        num_labels=3,
        id2label=dict(enumerate(words)),
        label2id={w: i for i, w in enumerate(words)},
    )


def load_trained(folder: Path, base: str | Path, pool_hash: str) -> tuple[Any, dict[str, Any]]:
    """The fine-tuned model of an artifact on top of its base, after every manifest check."""
    from safetensors.torch import load_file

    manifest = load_manifest(
        folder,
        Expected(
            template_version=CLASSIFIER_TEMPLATE_VERSION,
            answer_words=list(DEFAULT_WORDS.as_tuple()),
            rule_pool_hash=pool_hash,
            base_sha256=base_sha256(base),
        ),
    )
    from transformers.utils import logging as hf_logging

    # The base has no head: transformers reports it "missing"; the artifact supplies it.
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        model = build_model(base)
    finally:
        hf_logging.set_verbosity(level)
    trained = load_file(str(folder / WEIGHTS))
    state = model.state_dict()
    unknown = sorted(set(trained) - set(state))
    if unknown or sorted(trained) != sorted(manifest["trained_tensors"]):
        raise ValueError(f"trained grader {folder}: tensors {unknown[:3]} do not fit the base")
    state.update({k: v.to(state[k].dtype) for k, v in trained.items()})
    model.load_state_dict(state)
    return model.eval(), manifest


class ClassifierGrader:
    """Loads an artifact folder (see grading/artifact.py) over the base encoder."""

    def __init__(
        self,
        artifact: Path,
        base: str | Path,
        pool_hash: str,
        batch: int = 64,
        max_tokens: int | None = None,
        device: str | None = None,
    ) -> None:
        from transformers import AutoTokenizer

        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model, self.manifest = load_trained(artifact, base, pool_hash)
        self.model.to(self.device)
        self.tokenizer = AutoTokenizer.from_pretrained(str(base))
        self.name = f"classifier:{self.manifest['version']}"
        self.template_version = CLASSIFIER_TEMPLATE_VERSION
        self.calibrate_by_default = False
        self.batch = batch
        self.max_tokens = int(max_tokens or self.manifest.get("max_tokens", 256))

    def encode(self, rules: Sequence[str], texts: Sequence[str]) -> Any:
        return self.tokenizer(
            list(rules), list(texts), truncation="only_second", max_length=self.max_tokens,
            padding=True, return_tensors="pt",
        )  # fmt: skip

    @torch.inference_mode()
    def grade(self, requests: Sequence[GradeRequest]) -> list[AnswerProbs]:
        texts = [classifier_text(r.prompt, r.response, self.max_tokens) for r in requests]
        # Similar lengths batched together: less padding.
        order = sorted(range(len(requests)), key=lambda i: len(texts[i]))
        out: list[AnswerProbs | None] = [None] * len(requests)
        for start in range(0, len(order), self.batch):
            idx = order[start : start + self.batch]
            enc = self.encode([requests[i].rule_text for i in idx], [texts[i] for i in idx])
            logits = self.model(**enc.to(self.device)).logits.float()
            for i, p in zip(idx, torch.softmax(logits, -1).tolist(), strict=True):
                out[i] = AnswerProbs(p[0], p[1], p[2])
        return [p for p in out if p is not None]
