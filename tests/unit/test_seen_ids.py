"""SeenIds: the bounded, recency-ordered window of pair_ids used to drop duplicates."""

from __future__ import annotations

from ramo_stream.stream.processor import SeenIds


def test_remembers() -> None:
    seen = SeenIds(3)
    assert "p-1" not in seen
    seen.add("p-1")
    seen.add("p-2")
    assert "p-1" in seen and "p-2" in seen
    assert "p-3" not in seen
    assert len(seen) == 2


def test_adding_twice_counts_once() -> None:
    seen = SeenIds(3)
    seen.add("p-1")
    seen.add("p-1")
    assert len(seen) == 1


def test_evicts_oldest_beyond_capacity() -> None:
    seen = SeenIds(3)
    for i in range(1, 5):
        seen.add(f"p-{i}")
    assert len(seen) == 3
    assert "p-1" not in seen
    assert all(f"p-{i}" in seen for i in (2, 3, 4))
    seen.add("p-5")
    assert "p-2" not in seen
    assert all(f"p-{i}" in seen for i in (3, 4, 5))


def test_readding_refreshes_recency() -> None:
    seen = SeenIds(3)
    for key in ("p-1", "p-2", "p-3"):
        seen.add(key)
    seen.add("p-1")  # now the newest; p-2 is the oldest
    seen.add("p-4")
    assert "p-1" in seen
    assert "p-2" not in seen
    assert "p-3" in seen and "p-4" in seen
    assert len(seen) == 3


def test_capacity_one() -> None:
    seen = SeenIds(1)
    seen.add("a")
    seen.add("b")
    assert "a" not in seen and "b" in seen
    assert len(seen) == 1


def test_capacity_zero_remembers_nothing() -> None:
    seen = SeenIds(0)
    for key in ("a", "b", "a"):
        seen.add(key)
        assert key not in seen
    assert len(seen) == 0


def test_large_window() -> None:
    seen = SeenIds(1000)
    for i in range(1500):
        seen.add(str(i))
    assert len(seen) == 1000
    assert "499" not in seen and "500" in seen and "1499" in seen
