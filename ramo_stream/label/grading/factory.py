"""Builds the grader the settings ask for. Backends are imported only when chosen."""

from __future__ import annotations

from pathlib import Path

from ramo_stream.config import ModelSettings, Settings
from ramo_stream.label.grading.base import Grader
from ramo_stream.local_models import model_id, resolve


class NoTrainedGrader(RuntimeError):
    """grader.backend classifier, but no trained grader exists for the rule pool."""


def choose_backend(settings: Settings) -> tuple[str, Path | None]:
    """(backend, artifact folder): resolves ``auto``. A trained grader is used when one
    exists for the pool in use and no other grader model was named (an explicit
    ``models.grader`` means that LLM is wanted)."""
    from ramo_stream.core.rules import load_pool
    from ramo_stream.label.grading.artifact import REBUILD, newest_artifact
    from ramo_stream.label.grading.template import CLASSIFIER_TEMPLATE_VERSION

    g = settings.grader
    if g.backend not in ("auto", "classifier"):
        return g.backend, None
    default_llm = ModelSettings.model_fields["grader"].default
    if g.backend == "auto" and settings.models.grader != default_llm:
        return "transformers", None
    if g.artifact is not None:
        return "classifier", g.artifact
    pool = load_pool(settings.paths.rule_pool)
    found = newest_artifact(settings.paths.cache_dir, pool_hash=pool.hash,
                            template_version=CLASSIFIER_TEMPLATE_VERSION)  # fmt: skip
    if found is not None:
        return "classifier", found
    if g.backend == "classifier":
        raise NoTrainedGrader(
            f"no trained grader for rule pool {pool.name} ({pool.hash}) under"
            f" {settings.paths.cache_dir / 'graders'} or in the package; build one with"
            f" `{REBUILD}`, or choose --grader-backend transformers"
        )
    return "transformers", None


def make_grader(settings: Settings) -> Grader:
    g = settings.grader
    backend, artifact = choose_backend(settings)
    if backend == "classifier":
        from ramo_stream.core.rules import load_pool
        from ramo_stream.label.grading.classifier_backend import ClassifierGrader

        assert artifact is not None
        pool = load_pool(settings.paths.rule_pool)
        base = resolve(settings.models.encoder, settings.paths.models_dir)
        return ClassifierGrader(artifact, base, pool.hash, batch=g.classifier_batch)
    model = resolve(settings.models.grader, settings.paths.models_dir)
    grader: Grader
    if backend == "transformers":
        from ramo_stream.label.grading.transformers_backend import TransformersGrader

        grader = TransformersGrader(
            model, dtype=g.dtype, rule_batch=g.rule_batch, max_prompt_tokens=g.max_prompt_tokens
        )
    elif backend == "vllm":
        # The backend imports vllm in its constructor and says what to install if missing.
        from ramo_stream.label.grading.vllm_backend import VLLMGrader

        grader = VLLMGrader(model, dtype=g.dtype, max_prompt_tokens=g.max_prompt_tokens)
    else:
        grader = _openai(settings, model)
    if backend in ("transformers", "vllm"):
        # Every label records this: a portable id (name@weights digest), not the local path.
        grader.name = model_id(settings.models.grader, settings.paths.models_dir)
    return grader


def _openai(settings: Settings, model: str) -> Grader:
    g = settings.grader
    if g.backend == "openai":
        from ramo_stream.label.grading.openai_backend import OpenAIGrader

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


def describe(grader: Grader) -> str:
    """One line saying which grader labels: printed by every command that grades."""
    manifest = getattr(grader, "manifest", None)
    if isinstance(manifest, dict):
        return (
            f"grader {grader.name} (trained {manifest.get('created')}, base"
            f" {manifest.get('base_model')}, template {grader.template_version})"
        )
    if (Path(grader.name) / "manifest.json").is_file():  # built by `ramo grader train --kind llm`
        return f"grader {grader.name} (fine-tuned LLM, template {grader.template_version})"
    return f"grader {grader.name} (zero-shot LLM, template {grader.template_version})"


def describe_choice(settings: Settings) -> str:
    """Which grader a labeler built from ``settings`` will load, without loading it (for
    commands whose labeler loads inside Ray, where its own print is not seen)."""
    backend, artifact = choose_backend(settings)
    if artifact is not None:
        return f"grader: trained classifier {artifact}"
    return f"grader: {backend} on {settings.models.grader} (zero-shot)"
