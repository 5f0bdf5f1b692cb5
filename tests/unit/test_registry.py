"""The versioned model registry: manifests, publishing, retention, and what readers may see."""

from __future__ import annotations

import math
import os
import sys
import threading
import time
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from ramo_stream.registry.store import MANIFEST, Manifest, Registry, RegistryError, version_name

FIELDS: dict[str, Any] = {
    "steps": 10,
    "samples_seen": 80,
    "offsets": {"ramo.labels": {0: 5, 3: 17}, "file:/data/pairs.jsonl": {0: 12}},
    "base_model": "smollm2-135m-instruct",
}


def dummy(text: str = "weights") -> Any:
    def write(stage: Path) -> None:
        (stage / "model.bin").write_text(text)

    return write


def manifest(**over: Any) -> Manifest:
    base: dict[str, Any] = {
        "version": 2,
        "parent_version": 1,
        "created_at": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
        **FIELDS,
        "metrics": {"loss_ema": 0.41, "lr": 1e-5},
        "heldout_accuracy": 0.75,
        "heldout_size": 200,
        "rule_pool_hash": "abc123",
        "grader": "smollm2-135m-instruct",
        "template_version": "t1",
        "settings": {"batch_size": 8, "lora": None, "layers": [1, 2]},
    }
    return Manifest(**{**base, **over})


# ---- Manifest ----------------------------------------------------------------------------


def test_manifest_json_round_trip_keeps_int_partitions() -> None:
    m = manifest()
    back = Manifest.model_validate_json(m.model_dump_json())
    assert back == m
    assert back.offsets["ramo.labels"] == {0: 5, 3: 17}
    assert all(isinstance(p, int) for p in back.offsets["ramo.labels"])


def test_manifest_nan_metric_round_trips() -> None:
    back = Manifest.model_validate_json(manifest(metrics={"loss_ema": math.nan}).model_dump_json())
    assert math.isnan(back.metrics["loss_ema"])


def test_manifest_created_at_is_utc() -> None:
    plus2 = datetime(2025, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert manifest(created_at=plus2).created_at == datetime(2025, 1, 1, 10, tzinfo=UTC)
    assert manifest(created_at=plus2).created_at.utcoffset() == timedelta(0)
    with pytest.raises(ValueError, match="timezone"):
        manifest(created_at=datetime(2025, 1, 1))


@pytest.mark.parametrize(
    ("over", "problem"),
    [
        ({"parent_version": 2}, "must be lower than version"),
        ({"offsets": {"t": {0: -1}}}, "greater than or equal to 0"),
        ({"steps": "10"}, "valid integer"),
        ({"heldout_size": 0}, "heldout_size is 0"),
        ({"schema_version": 99}, "upgrade ramo-stream"),
        ({"extra": 1}, "Extra inputs"),
    ],
)
def test_manifest_rejects(over: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        manifest(**over)


# ---- publishing --------------------------------------------------------------------------


def test_empty_registry(tmp_path: Path) -> None:
    reg = Registry(tmp_path / "new" / "reg")
    assert (tmp_path / "new" / "reg").is_dir()
    assert reg.current() is None
    assert reg.current_dir() is None
    assert reg.versions() == []


def test_publish_numbers_versions_and_chains_parents(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    before = datetime.now(UTC)
    published = [reg.publish(dummy(f"w{i}"), **{**FIELDS, "steps": i}) for i in range(3)]
    assert [m.version for m in published] == [1, 2, 3]
    assert [m.parent_version for m in published] == [None, 1, 2]
    assert [m.version for m in reg.versions()] == [1, 2, 3]
    assert reg.current() == published[-1] == reg.get(3)
    assert published[0].created_at >= before
    assert (tmp_path / "CURRENT").read_text() == "v000003\n"
    assert reg.current_dir() == reg.path(3) == tmp_path / "v000003"
    assert (reg.path(3) / "model.bin").read_text() == "w2"
    assert Manifest.model_validate_json((reg.path(2) / MANIFEST).read_bytes()) == published[1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CURRENT", *map(version_name, [1, 2, 3])]


def test_parent_is_the_current_version_not_the_newest(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    for _ in range(3):
        reg.publish(dummy(), **FIELDS)
    (tmp_path / "CURRENT").write_text("v000001\n")  # an operator rolled back
    rolled_back = reg.current()
    assert rolled_back is not None and rolled_back.version == 1
    m = reg.publish(dummy(), **FIELDS)
    assert (m.version, m.parent_version) == (4, 1)


def test_failing_write_leaves_nothing(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    first = reg.publish(dummy(), **FIELDS)

    def broken(stage: Path) -> None:
        (stage / "model.bin").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        reg.publish(broken, **FIELDS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CURRENT", "v000001"]
    assert reg.current() == first
    assert reg.publish(dummy(), **FIELDS).version == 2


def test_bad_fields_fail_before_write(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    calls: list[Path] = []
    with pytest.raises(RegistryError, match=r"samples_seen.*Registry.publish"):
        reg.publish(calls.append, **{**FIELDS, "samples_seen": -1})
    with pytest.raises(RegistryError, match="sets version itself"):
        reg.publish(calls.append, **FIELDS, version=7)
    assert calls == []
    assert list(tmp_path.iterdir()) == []


def test_write_must_not_create_the_manifest(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    with pytest.raises(RegistryError, match="registry's own"):
        reg.publish(lambda d: (d / MANIFEST).write_text("{}"), **FIELDS)
    assert list(tmp_path.iterdir()) == []


# ---- retention ---------------------------------------------------------------------------


def test_retention_keeps_the_newest(tmp_path: Path) -> None:
    reg = Registry(tmp_path, keep=2)
    for _ in range(5):
        reg.publish(dummy(), **FIELDS)
    assert [m.version for m in reg.versions()] == [4, 5]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["CURRENT", "v000004", "v000005"]


def test_retention_never_deletes_the_current_version(tmp_path: Path) -> None:
    reg = Registry(tmp_path, keep=1)
    for _ in range(3):
        reg.publish(dummy(), **FIELDS)
    # publish() always makes the newest current; retention must hold even if that ever changes.
    for n in (1, 2):  # restore two deleted versions as an operator would from a backup
        reg.path(n).mkdir()
        (reg.path(n) / MANIFEST).write_text(
            manifest(version=n, parent_version=None).model_dump_json()
        )
    reg._retain(current=1)
    assert [m.version for m in reg.versions()] == [1, 3]


def test_stale_temp_dirs_are_cleaned_and_fresh_ones_kept(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    stale, fresh = tmp_path / ".tmp-v000001-dead", tmp_path / ".tmp-v000009-live"
    stale_ptr = tmp_path / "CURRENT.tmp-dead"
    for d in (stale, fresh):
        d.mkdir()
        (d / "model.bin").write_text("x")
    stale_ptr.write_text("v000001\n")
    hour_ago = time.time() - 3700
    os.utime(stale, (hour_ago, hour_ago))
    os.utime(stale_ptr, (hour_ago, hour_ago))
    assert reg.versions() == []
    reg.publish(dummy(), **FIELDS)
    assert not stale.exists() and not stale_ptr.exists() and fresh.exists()


def test_versions_skip_unfinished_folders_and_numbering_passes_them(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.publish(dummy(), **FIELDS)
    (tmp_path / "v000002").mkdir()  # an upload that died before its manifest
    (tmp_path / ".tmp-v000003-abc").mkdir()
    (tmp_path / "notes.txt").write_text("hi")
    assert [m.version for m in reg.versions()] == [1]
    assert reg.publish(dummy(), **FIELDS).version == 3
    assert not (tmp_path / "v000002").exists()  # below current and incomplete: cleaned up
    assert [m.version for m in reg.versions()] == [1, 3]


# ---- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "Invalid JSON"),
        ('{"model": "someone else\'s"}', "version: Field required"),
        (
            manifest(version=1, parent_version=None)
            .model_dump_json()
            .replace('"schema_version":1', '"schema_version":2'),
            "upgrade ramo-stream",
        ),
    ],
)
def test_corrupt_or_foreign_manifest_names_the_file(
    tmp_path: Path, content: str, problem: str
) -> None:
    reg = Registry(tmp_path)
    reg.publish(dummy(), **FIELDS)
    path = tmp_path / "v000001" / MANIFEST
    path.write_text(content)
    for call in (reg.current, reg.versions, lambda: reg.get(1)):
        with pytest.raises(RegistryError, match=problem) as err:
            call()
        assert str(path) in str(err.value)


def test_manifest_in_the_wrong_folder(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    reg.publish(dummy(), **FIELDS)
    reg.publish(dummy(), **FIELDS)
    (tmp_path / "v000002" / MANIFEST).write_bytes((tmp_path / "v000001" / MANIFEST).read_bytes())
    with pytest.raises(RegistryError, match="says version 1 but lies in folder v000002"):
        reg.get(2)


def test_missing_version_lists_what_exists(tmp_path: Path) -> None:
    reg = Registry(tmp_path, keep=2)
    for _ in range(3):
        reg.publish(dummy(), **FIELDS)
    with pytest.raises(RegistryError, match=r"version 1 is not .*versions present: 2, 3"):
        reg.get(1)
    with pytest.raises(RegistryError, match="integer >= 1"):
        reg.get(0)


def test_bad_pointer(tmp_path: Path) -> None:
    reg = Registry(tmp_path)
    (tmp_path / "CURRENT").write_text("latest\n")
    with pytest.raises(RegistryError, match=r"CURRENT holds 'latest'"):
        reg.current()
    (tmp_path / "CURRENT").write_text("v000004\n")
    with pytest.raises(RegistryError, match=r"names v000004, which does not exist"):
        reg.current()


def test_root_must_be_a_directory_and_keep_positive(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(RegistryError, match="not a directory"):
        Registry(tmp_path / "file")
    with pytest.raises(RegistryError, match=r"keep must be an integer >= 1 \(got 0\)"):
        Registry(tmp_path, keep=0)


def test_local_paths_do_not_need_pyarrow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    monkeypatch.setitem(sys.modules, "pyarrow.fs", None)  # importing them now fails
    reg = Registry(tmp_path, keep=1)
    reg.publish(dummy(), **FIELDS)
    reg.publish(dummy(), **FIELDS)
    assert [m.version for m in reg.versions()] == [2]
    with pytest.raises(RegistryError, match=r"ramo-stream\[train\]"):
        Registry("s3://bucket/registry")


# ---- concurrent readers ------------------------------------------------------------------


def payload(version: int) -> bytes:
    return f"version={version};".encode() * 2000


def test_reader_never_sees_a_partial_version(tmp_path: Path) -> None:
    """A reader polling CURRENT while versions are published sees only complete versions.

    write() produces the payload in chunks with sleeps, so a registry that exposed a version
    before it was complete would show a short payload or a missing manifest. keep=3 lets
    retention run during the test: a reader that resolved CURRENT to v can lose v's folder only
    after three more publishes, each taking several milliseconds. That race is allowed only when
    CURRENT has really moved >= keep versions past v; every other failure fails the test.
    """
    keep, total = 3, 30
    reg = Registry(tmp_path, keep=keep)
    stop = threading.Event()
    seen: list[int] = []
    raced: list[int] = []
    failures: list[str] = []

    def reader() -> None:
        mine = Registry(tmp_path, keep=keep)  # a separate instance, as a serving process has
        last = 0
        try:
            while not stop.is_set():
                for how in ("current", "current_dir"):
                    version = 0
                    try:
                        if how == "current":
                            m = mine.current()
                            if m is None:
                                continue
                            version = m.version
                            data = (mine.path(version) / "payload.bin").read_bytes()
                        else:
                            d = mine.current_dir()
                            if d is None:
                                continue
                            version = int(d.name.removeprefix("v"))
                            m = Manifest.model_validate_json((d / MANIFEST).read_bytes())
                            if m.version != version:
                                failures.append(f"{d} holds the manifest of v{m.version}")
                            data = (d / "payload.bin").read_bytes()
                    except FileNotFoundError:
                        now = mine.current()
                        assert now is not None and version and now.version - version >= keep
                        raced.append(version)
                        continue
                    if data != payload(version):
                        failures.append(f"{how}: v{version} payload of {len(data)} bytes")
                    if version < last:
                        failures.append(f"{how}: went back from v{last} to v{version}")
                    last = version
                    seen.append(version)
        except Exception as e:  # noqa: BLE001 - reported below with the rest
            failures.append(f"reader crashed: {e!r}")

    def slow_write(version: int) -> Any:
        def write(stage: Path) -> None:
            data = payload(version)
            with open(stage / "payload.bin", "wb") as f:
                for i in range(4):
                    f.write(data[i * len(data) // 4 : (i + 1) * len(data) // 4])
                    f.flush()
                    time.sleep(0.002)

        return write

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for v in range(1, total + 1):
            assert reg.publish(slow_write(v), **FIELDS).version == v
        deadline = time.monotonic() + 10
        while (not seen or seen[-1] != total) and time.monotonic() < deadline:
            time.sleep(0.005)  # let the reader observe the last version
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert failures == []
    assert len(set(seen)) >= total // 3, f"reader saw too few versions: {sorted(set(seen))}"
    assert seen[-1] == total
    assert [m.version for m in reg.versions()] == list(range(total - keep + 1, total + 1))


# ---- storage URIs ------------------------------------------------------------------------


def test_file_uri_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow.fs")
    root = tmp_path / "bucket" / "registry"
    uri = root.as_uri()
    reg = Registry(uri, keep=2, cache_dir=tmp_path / "cache")
    assert root.is_dir() and reg.current() is None and reg.current_dir() is None

    def write(text: str) -> Any:
        def save(stage: Path) -> None:
            (stage / "sub").mkdir()
            (stage / "sub" / "model.bin").write_text(text)

        return save

    published = [reg.publish(write(f"w{i}"), **FIELDS) for i in range(1, 4)]
    assert [(m.version, m.parent_version) for m in published] == [(1, None), (2, 1), (3, 2)]
    assert sorted(p.name for p in root.iterdir()) == ["CURRENT", "v000002", "v000003"]
    assert (root / "CURRENT").read_text() == "v000003\n"

    reader = Registry(uri, cache_dir=tmp_path / "cache")
    assert reader.current() == published[-1]
    assert [m.version for m in reader.versions()] == [2, 3]
    local = reader.current_dir()
    assert local == tmp_path / "cache" / "v000003"
    assert (local / "sub" / "model.bin").read_text() == "w3"
    assert Manifest.model_validate_json((local / MANIFEST).read_bytes()) == published[-1]
    other = reader.local_dir(2, tmp_path / "other")
    assert (other / "sub" / "model.bin").read_text() == "w2"
    assert reader.local_dir(2, tmp_path / "other") == other  # cached: no second download
    # A registry started over (or another one sharing the cache) has a different v000002.
    (other / "sub" / "model.bin").write_text("stale")
    (other / MANIFEST).write_text(published[0].model_copy(update={"version": 2}).model_dump_json())
    assert reader.local_dir(2, tmp_path / "other") == other
    assert (other / "sub" / "model.bin").read_text() == "w2"
    with pytest.raises(RegistryError, match="version 1 is not"):
        reader.local_dir(1, tmp_path / "other")
    with pytest.raises(RegistryError, match="storage URI"):
        reader.path(3)
    assert not any(p.name.startswith(".tmp-") for p in (tmp_path / "other").iterdir())


def test_uri_root_that_is_a_file(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow.fs")
    (tmp_path / "file").write_text("x")
    with pytest.raises(RegistryError, match="is a file, not a directory"):
        Registry((tmp_path / "file").as_uri())


def test_ranks_downloading_into_one_cache_agree(tmp_path: Path) -> None:
    pytest.importorskip("pyarrow.fs")
    uri = (tmp_path / "registry").as_uri()
    reg = Registry(uri)
    for i in range(2):
        reg.publish(dummy(f"w{i}"), **FIELDS)
    cache = tmp_path / "cache"
    results: list[Path | BaseException] = []

    def rank() -> None:
        try:
            results.append(Registry(uri, cache_dir=cache).local_dir(2, cache))
        except BaseException as e:  # noqa: BLE001 - asserted below
            results.append(e)

    threads = [threading.Thread(target=rank) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert results == [cache / "v000002"] * 4
    assert (cache / "v000002" / "model.bin").read_text() == "w1"
    assert [p.name for p in cache.iterdir()] == ["v000002"]
