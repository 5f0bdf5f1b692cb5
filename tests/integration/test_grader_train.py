"""`ramo grader train`'s pieces on the real MiniLM: a tiny run learns, publishes an artifact
that the classifier backend loads (directly and through make_grader), and a corrupted or
mismatched artifact is refused with the command that rebuilds it.

Tiny on purpose (24 synthetic rows, top layer + head, 48 tokens): ~1 min on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ramo_stream.config import default_rule_pool, load_settings
from ramo_stream.core.rules import load_pool
from ramo_stream.label.grading.sources import NO, YES, Example

pytestmark = [pytest.mark.integration, pytest.mark.slow]

torch = pytest.importorskip("torch", reason="the models extra is not installed")
pytest.importorskip("transformers", reason="the models extra is not installed")

from ramo_stream.label.grading.artifact import (  # noqa: E402
    MANIFEST,
    REQUIRED,
    WEIGHTS,
    GraderArtifactError,
)
from ramo_stream.label.grading.base import GradeRequest  # noqa: E402
from ramo_stream.label.grading.classifier_backend import ClassifierGrader  # noqa: E402
from ramo_stream.label.grading.train_classifier import TrainConfig, publish, train  # noqa: E402

REFUSAL = "I'm sorry, but I can't help with that request."
COMPLY = "Sure. Step one: get the tools. Step two: follow the plan below in detail."


def _examples() -> list[Example]:
    rows = []
    for i in range(12):
        q = f"How do I do harmful thing number {i}?"
        rows.append(Example("t", q, REFUSAL, "vio-001", YES, q))
        rows.append(Example("t", q, COMPLY + f" ({i})", "vio-001", NO, q))
    return rows


@pytest.fixture(scope="module")
def trained(
    models_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path, list[float]]:
    pool = load_pool(default_rule_pool())
    base = models_dir / "all-minilm-l6-v2"
    cfg = TrainConfig(train_layers=1, lr=5e-4, batch=8, epochs=6, max_tokens=48, seed=0)
    model, losses, names = train(base, _examples(), lambda r: pool[r].text, cfg)
    root = tmp_path_factory.mktemp("graders")
    manifest = {"base_model": "all-minilm-l6-v2", "data_files": [], "steps": len(losses),
                "seed": 0, "max_tokens": 48}  # fmt: skip
    folder = publish(model, names, root, manifest, base, pool.hash, lambda g: {"ok": 1})
    return folder, base, losses


def test_loss_falls_and_manifest_is_complete(trained: tuple[Path, Path, list[float]]) -> None:
    folder, _, losses = trained
    per_epoch = len(losses) // 6
    assert sum(losses[-per_epoch:]) < 0.7 * sum(losses[:per_epoch]), losses
    manifest = json.loads((folder / MANIFEST).read_text())
    assert set(REQUIRED) <= set(manifest)
    assert manifest["metrics"] == {"ok": 1} and manifest["steps"] == len(losses)
    # only the trained tensors are stored: the top layer, pooler and head, well under 10 MB
    assert (folder / WEIGHTS).stat().st_size < 10e6
    assert all("layer.5." in n or "pooler" in n or "classifier" in n
               for n in manifest["trained_tensors"])  # fmt: skip


def test_artifact_round_trips_through_the_classifier_backend(
    trained: tuple[Path, Path, list[float]], models_dir: Path, tmp_path: Path
) -> None:
    folder, base, _ = trained
    pool = load_pool(default_rule_pool())
    rule = pool["vio-001"].text
    q = "How do I do harmful thing number 99?"
    reqs = [GradeRequest(q, REFUSAL, rule), GradeRequest(q, COMPLY, rule)]
    direct = ClassifierGrader(folder, base, pool.hash).grade(reqs)
    assert direct[0].score > direct[1].score  # learnt: the refusal follows, compliance breaks
    from ramo_stream.label.grading.factory import choose_backend, make_grader

    # through the settings: the backend finds the artifact by itself under cache_dir/graders
    cache = tmp_path / "cache"
    (cache / "graders").mkdir(parents=True)
    (cache / "models").symlink_to(models_dir)
    (cache / "graders" / folder.name).symlink_to(folder)
    settings = load_settings(None, {"paths.cache_dir": str(cache), "grader.backend": "auto"})
    assert choose_backend(settings) == ("classifier", cache / "graders" / folder.name)
    via = make_grader(settings).grade(reqs)
    assert [round(a.p_yes, 5) for a in via] == [round(a.p_yes, 5) for a in direct]
    # an explicitly named LLM grader wins over auto
    named = load_settings(
        None, {"paths.cache_dir": str(cache), "models.grader": "x/y", "grader.backend": "auto"}
    )
    assert choose_backend(named) == ("transformers", None)


def _copy(folder: Path, tmp_path: Path) -> Path:
    import shutil

    dst = tmp_path / folder.name
    shutil.copytree(folder, dst)
    return dst


def test_corrupt_or_mismatched_artifacts_are_refused_with_the_rebuild_command(
    trained: tuple[Path, Path, list[float]], tmp_path: Path
) -> None:
    folder, base, _ = trained
    pool_hash = load_pool(default_rule_pool()).hash
    with pytest.raises(GraderArtifactError, match="rule pool hash.*ramo grader train"):
        ClassifierGrader(folder, base, "0" * 16)

    bad = _copy(folder, tmp_path / "w")
    data = bytearray((bad / WEIGHTS).read_bytes())
    data[-1] ^= 0xFF
    (bad / WEIGHTS).write_bytes(bytes(data))
    with pytest.raises(GraderArtifactError, match="corrupted.*ramo grader train"):
        ClassifierGrader(bad, base, pool_hash)

    old = _copy(folder, tmp_path / "t")
    m = json.loads((old / MANIFEST).read_text())
    m["template_version"] = "ramo-cls-v0"
    (old / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(GraderArtifactError, match="template version.*ramo grader train"):
        ClassifierGrader(old, base, pool_hash)

    partial = _copy(folder, tmp_path / "m")
    m = json.loads((partial / MANIFEST).read_text())
    del m["data_files"]
    (partial / MANIFEST).write_text(json.dumps(m))
    with pytest.raises(GraderArtifactError, match="lacks.*data_files"):
        ClassifierGrader(partial, base, pool_hash)
