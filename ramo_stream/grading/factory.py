"""Builds the grader the settings ask for. Backends are imported only when chosen."""

from __future__ import annotations

from ramo_stream.config import Settings
from ramo_stream.grading.base import Grader
from ramo_stream.local_models import model_id, resolve


def make_grader(settings: Settings) -> Grader:
    model = resolve(settings.models.grader, settings.paths.models_dir)
    g = settings.grader
    grader: Grader
    if g.backend == "transformers":
        from ramo_stream.grading.transformers_backend import TransformersGrader

        grader = TransformersGrader(
            model, dtype=g.dtype, rule_batch=g.rule_batch, max_prompt_tokens=g.max_prompt_tokens
        )
    elif g.backend == "vllm":
        # The backend imports vllm in its constructor and says what to install if missing.
        from ramo_stream.grading.vllm_backend import VLLMGrader

        grader = VLLMGrader(model, dtype=g.dtype, max_prompt_tokens=g.max_prompt_tokens)
    else:
        grader = _openai(settings, model)
    if g.backend in ("transformers", "vllm"):
        # Every label records this: a portable id (name@weights digest), not the local path.
        grader.name = model_id(settings.models.grader, settings.paths.models_dir)
    return grader


def _openai(settings: Settings, model: str) -> Grader:
    g = settings.grader
    if g.backend == "openai":
        from ramo_stream.grading.openai_backend import OpenAIGrader

        # The tokenizer is loaded from `model` here; the server runs the model itself.
        return OpenAIGrader(
            model,
            served_model=g.openai_model or settings.models.grader,
            base_url=g.openai_base_url,
            api_key=g.openai_api_key,
            timeout_s=g.openai_timeout_s,
            retries=g.openai_retries,
            batch=g.openai_batch,
            max_prompt_tokens=g.max_prompt_tokens,
        )
    raise ValueError(f"unknown grader.backend {g.backend!r}")  # pragma: no cover
