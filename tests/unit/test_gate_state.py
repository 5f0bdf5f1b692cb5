"""M kept across gate restarts: saved with the model it belongs to, loaded only for that
model (and lambda, and dimension), rebuilt from lambda I otherwise; a damaged file is not
fatal."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")

from ramo_stream.config import load_settings  # noqa: E402
from ramo_stream.core.fisher import FisherInfo  # noqa: E402
from ramo_stream.stream.gate import SelectionGate, info_store  # noqa: E402
from ramo_stream.stream.gate_state import InfoStore  # noqa: E402
from tests.unit.test_select_gate import FakeFeaturizer, FakeModel, FakeWriter, batch  # noqa: E402


def info_after(pairs: int, dim: int = 3, lam: float = 1.0) -> FisherInfo:
    info = FisherInfo.prior(torch.eye(dim, dtype=torch.float64), lam)
    g = torch.Generator().manual_seed(3)
    for _ in range(pairs):
        info.add(torch.randn(dim, generator=g, dtype=torch.float64), 0.2)
    return info


def test_saved_m_loads_for_the_same_model_only(tmp_path: Path) -> None:
    store = InfoStore(tmp_path / "select", "ramo-select")
    info = info_after(5)
    store.save(info, "version 3 of 2026-01-01T00:00:00+00:00", lam=1.0, now=0.0)
    again = store.load("version 3 of 2026-01-01T00:00:00+00:00", 1.0, 3, any_version=False)
    assert again is not None and again.labeled == 5
    assert torch.equal(again.m_inv, info.m_inv)
    assert store.load("version 4 of 2026-01-02T00:00:00+00:00", 1.0, 3, any_version=False) is None
    assert store.load("version 4 of x", 1.0, 3, any_version=True) is not None  # keep_m...
    assert store.load("version 3 of 2026-01-01T00:00:00+00:00", 2.0, 3, False) is None  # lambda
    assert store.load("version 3 of 2026-01-01T00:00:00+00:00", 1.0, 4, True) is None  # dim
    assert not list((tmp_path / "select").glob("*.tmp*"))  # written beside, then renamed


def test_a_damaged_or_missing_file_means_lambda_i(tmp_path: Path) -> None:
    store = InfoStore(tmp_path, "g")
    assert store.load("x", 1.0, 3, any_version=True) is None
    store.path.write_bytes(b"not a torch file")
    assert store.load("x", 1.0, 3, any_version=True) is None


def gate_with_store(tmp: Path, writer: FakeWriter, model: Any) -> SelectionGate:
    settings = load_settings(None, {"paths.cache_dir": str(tmp), "select.window_pairs": 10,
                                    "select.budget": 3})  # fmt: skip
    return SelectionGate(settings, writer, model, store=info_store(settings))  # type: ignore[arg-type]


def test_a_restarted_gate_carries_on_with_m_of_the_same_version(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    feats = FakeFeaturizer(torch.randn(25, 3, generator=g, dtype=torch.float64),
                           torch.rand(25, generator=g, dtype=torch.float64))  # fmt: skip
    first = gate_with_store(tmp_path, FakeWriter(), FakeModel(feats))
    first.handle(batch(20))  # the first poll saves (nothing saved yet)
    assert first.info is not None and first.info.labeled == 6
    assert first.store is not None and first.store.path.is_file()
    assert first.store.path == tmp_path / "select" / "ramo-select.pt"

    second = gate_with_store(tmp_path, FakeWriter(), FakeModel(feats))
    second.handle(batch(10))
    assert second.stats.m_loaded and second.info is not None and second.info.labeled == 6 + 3

    other = FakeModel(feats)
    other.version = 8  # another version: its features differ, M starts from lambda I
    third = gate_with_store(tmp_path, FakeWriter(), other)
    third.handle(batch(10))
    assert not third.stats.m_loaded and third.info is not None and third.info.labeled == 3


class LoadingModel(FakeModel):
    """As ``ServedModel``: the first refresh loads the model and says it was replaced."""

    def __init__(self, featurizer: FakeFeaturizer) -> None:
        super().__init__(featurizer)
        self.loaded = False

    def refresh(self, now: float) -> bool:
        first, self.loaded = not self.loaded, True
        return first


def test_m_carries_over_when_the_first_refresh_loads_the_model(tmp_path: Path) -> None:
    """The real ServedModel (and the features proxy of `ramo up`) returns True from its
    first refresh; that load is not a new version, so the saved M is still used."""
    g = torch.Generator().manual_seed(0)
    feats = FakeFeaturizer(torch.randn(25, 3, generator=g, dtype=torch.float64),
                           torch.rand(25, generator=g, dtype=torch.float64))  # fmt: skip
    first = gate_with_store(tmp_path, FakeWriter(), LoadingModel(feats))
    first.handle(batch(20))
    assert first.info is not None and first.info.labeled == 6 and first.stats.reloads == 0
    second = gate_with_store(tmp_path, FakeWriter(), LoadingModel(feats))
    second.handle(batch(10))
    assert second.stats.m_loaded and second.info is not None and second.info.labeled == 6 + 3
