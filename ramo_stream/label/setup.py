"""The label stage built from settings: ``build_labeler``, the one way offline labeling,
``ramo up`` and the labeler's Serve app make a ``Labeler``."""

from __future__ import annotations

from typing import Any

from ramo_stream.config import Settings
from ramo_stream.core.rules import load_pool
from ramo_stream.label.labeler import Labeler


def build_labeler(
    settings: Settings,
    selector: str | None = None,
    grader: Any | None = None,
    adapter: Any | None = None,
) -> Labeler:
    """A Labeler over the rule pool of ``paths.rule_pool``.

    ``selector`` replaces ``labeling.selector`` (the fallback when no adapter is trained).
    ``grader``: default ``make_grader(settings)``; the Serve app passes its remote grader.
    ``adapter``: default, for the ``adapter`` selector, the one in ``paths.adapter_dir``.
    """
    labeling = settings.labeling.model_copy(
        update={"selector": selector or settings.labeling.selector}
    )
    pool = load_pool(settings.paths.rule_pool)
    if grader is None:
        from ramo_stream.label.grading.factory import make_grader

        grader = make_grader(settings)
    if adapter is None and labeling.selector == "adapter":
        from ramo_stream.label.rule_adapter.model import load_adapter

        adapter = load_adapter(settings.paths.adapter_dir, pool)
    return Labeler(grader, pool, labeling, adapter)
