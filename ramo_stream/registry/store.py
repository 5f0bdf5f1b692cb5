"""Versioned reward-model registry: immutable numbered folders and a CURRENT pointer.

Layout, on a local path or on any storage URI Ray Train accepts (s3://, gs://, abfs://, file://)::

    root/
      v000001/   config.json, model.safetensors, tokenizer files, ..., manifest.json
      v000002/   ...
      CURRENT    "v000002\\n"

``publish`` makes a new version invisible to readers until it is complete:

1. stage: ``write(stage_dir)`` saves the model; ``manifest.json`` is written last; fsync;
2. commit: the stage folder is renamed to ``v{n:06d}`` whole (atomic on one filesystem); on a
   storage URI the files are uploaded first and ``manifest.json`` after them;
3. flip: CURRENT is replaced atomically (rename of a temp file; one PUT on an object store);
4. retention: versions beyond the newest ``keep`` are deleted, never the current one.

So a reader that reads CURRENT and then opens that folder sees a complete version, and a folder
without ``manifest.json`` is not a version (it is an unfinished upload).

One writer at a time: the trainer's rank 0. Any number of concurrent readers. A reader that has
resolved CURRENT has until ``keep`` further publishes to open its files (on POSIX, files already
open stay readable after the folder is deleted).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import ValidationError

from ramo_stream.registry.durable import fsync_dir, fsync_tree, write_durable
from ramo_stream.registry.manifest import (
    _SET_BY_PUBLISH,
    MANIFEST,
    Manifest,
    RegistryError,
    _parse_manifest,
    _parse_name,
    holds,
    version_name,
)
from ramo_stream.schemas import describe_validation_error

log = logging.getLogger(__name__)

POINTER = "CURRENT"
STALE_TMP_S = 3600.0  # a stage or pointer temp file this old belongs to a writer that died
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*://")


def _now() -> datetime:
    return datetime.now(UTC)


class _Entry(NamedTuple):
    name: str
    number: int | None  # set for a name like v000003
    is_dir: bool
    mtime: float | None  # seconds since the epoch; None where the store has none (prefixes)

    @property
    def version(self) -> int | None:
        return self.number if self.is_dir else None


class Registry:
    """Versions of one reward-model lineage under ``root`` (a local path or a storage URI).

    Local paths need nothing beyond the standard library; a storage URI goes through
    ``pyarrow.fs`` (installed with ``ramo-stream[train]``). ``cache_dir`` is where
    ``current_dir()`` downloads versions of a URI root (default: a folder in the temp dir).
    """

    def __init__(
        self, root: str | Path, keep: int = 5, cache_dir: str | Path | None = None
    ) -> None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
            raise RegistryError(
                f"keep must be an integer >= 1 (got {keep!r}): the number of versions kept"
            )
        self.keep = keep
        self.root = str(root)
        self._fs: Any = None  # pyarrow.fs.FileSystem for a URI root, None for a local path
        self._base = ""
        self._local = Path(root).expanduser()
        if isinstance(root, str) and _URI.match(root):
            self._open_uri(root)
        elif self._local.exists() and not self._local.is_dir():
            raise RegistryError(
                f"registry root {self._local} exists but is not a directory; point the registry"
                " at a folder (a missing one is created)"
            )
        else:
            try:
                self._local.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise RegistryError(f"cannot create registry root {self._local}: {e}") from e
        digest = hashlib.sha256(self.root.encode()).hexdigest()[:12]
        default_cache = Path(tempfile.gettempdir()) / f"ramo-registry-{digest}"
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache

    # ---- public API ----------------------------------------------------------------------

    def publish(self, write: Callable[[Path], object], **fields: Any) -> Manifest:
        """Publish a new version: ``write(stage_dir)`` saves its files; ``fields`` fill the
        manifest (steps, samples_seen, offsets, base_model, ...). Returns its manifest.

        If ``write`` raises, the stage is removed and the registry is unchanged.
        """
        reserved = [k for k in _SET_BY_PUBLISH if k in fields]
        if reserved:
            raise RegistryError(f"publish() sets {', '.join(reserved)} itself; do not pass it")
        numbers = [e.version for e in self._scan() if e.version is not None]
        n = max(numbers, default=0) + 1  # counting unfinished uploads too, so no name clashes
        parent = self._pointer()
        try:  # validate before the (slow) model save, so a bad field fails fast
            manifest = Manifest(version=n, parent_version=parent, created_at=_now(), **fields)
        except ValidationError as e:
            raise RegistryError(
                f"cannot publish version {n} to {self.root}: {describe_validation_error(e)}."
                " Fix the fields passed to Registry.publish()."
            ) from e
        name = version_name(n)
        if self._fs is None:
            stage = self._local / f".tmp-{name}-{uuid.uuid4().hex}"
            stage.mkdir()
        else:
            stage = Path(tempfile.mkdtemp(prefix=f"ramo-stage-{name}-"))
        try:
            write(stage)
            if (stage / MANIFEST).exists():
                raise RegistryError(
                    f"write() created {stage / MANIFEST}; that name is the registry's own,"
                    " save the file under another name"
                )
            manifest = manifest.model_copy(update={"created_at": _now()})
            self._commit(stage, name, manifest.model_dump_json(indent=2).encode() + b"\n")
        finally:
            shutil.rmtree(stage, ignore_errors=True)  # gone already after a local commit
        self._write_pointer(f"{name}\n".encode())
        try:
            self._retain(n)
        except OSError as e:  # the version is published; a leftover folder is only disk space
            log.warning("registry %s: retention after %s failed: %s", self.root, name, e)
        return manifest

    def current(self) -> Manifest | None:
        """The manifest CURRENT points at, or None before the first publish."""
        seen: int | None = None
        for _ in range(3):
            n = self._pointer()
            if n is None:
                return None
            manifest = self._load(n)
            if manifest is not None:
                return manifest
            if n == seen:
                break
            # Retention deleted it between our two reads, so CURRENT has moved on: read again.
            seen = n
        raise RegistryError(
            f"{self._show(POINTER)} names {version_name(seen or 0)}, which does not exist"
            f" (versions present: {self._present()}). Write an existing version's name into"
            f" {POINTER}, or delete it to start the lineage over."
        )

    def current_dir(self) -> Path | None:
        """Local folder of the current version (downloaded to ``cache_dir`` for a URI root)."""
        manifest = self.current()
        if manifest is None:
            return None
        if self._fs is None:
            return self.path(manifest.version)
        return self.local_dir(manifest.version, self.cache_dir)

    def path(self, version: int) -> Path:
        """Folder of ``version`` under a local root (it may not exist)."""
        self._check_number(version)
        if self._fs is not None:
            raise RegistryError(
                f"registry root {self.root} is a storage URI, so version folders are not local"
                " paths; use local_dir(version, cache) or current_dir() to download one"
            )
        return self._local / version_name(version)

    def get(self, version: int) -> Manifest:
        """The manifest of ``version``; RegistryError naming the versions present if missing."""
        self._check_number(version)
        manifest = self._load(version)
        if manifest is None:
            raise RegistryError(
                f"version {version} is not in the registry at {self.root}"
                f" (versions present: {self._present()})"
            )
        return manifest

    def versions(self) -> list[Manifest]:
        """Manifests of all complete versions, oldest first."""
        numbers = sorted(e.version for e in self._scan() if e.version is not None)
        return [m for n in numbers if (m := self._load(n)) is not None]

    def local_dir(self, version: int, cache: str | Path) -> Path:
        """A local folder holding ``version``: its own folder under a local root; for a URI root
        a copy in ``cache/v{n:06d}``, downloaded once and reused while its manifest matches."""
        manifest = self.get(version)
        if self._fs is None:
            return self.path(version)
        name = version_name(version)
        dest = Path(cache) / name
        if holds(dest, manifest):
            return dest
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=dest.parent))
        pafs = self._arrow()
        try:
            try:
                pafs.copy_files(
                    f"{self._base}/{name}",
                    str(tmp),
                    source_filesystem=self._fs,
                    destination_filesystem=pafs.LocalFileSystem(),
                )
                complete = (tmp / MANIFEST).is_file()
            except FileNotFoundError:
                complete = False
            # Retention deletes manifest.json first, so if it is still there every file was.
            if not complete or self._read(f"{name}/{MANIFEST}") is None:
                raise RegistryError(
                    f"version {version} was deleted from {self.root} while it was downloaded"
                    f" (retention keeps {self.keep}); read current() again"
                )
            if holds(dest, manifest):  # another reader (a second rank) finished first
                return dest
            if dest.exists():  # a stale copy: move it aside whole, then delete it
                stale = dest.parent / f".tmp-stale-{name}-{uuid.uuid4().hex}"
                os.rename(dest, stale)
                shutil.rmtree(stale, ignore_errors=True)
            try:
                os.rename(tmp, dest)
            except OSError:
                if not holds(dest, manifest):
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return dest

    # ---- storage: a local folder or a pyarrow filesystem -----------------------------------

    def _open_uri(self, uri: str) -> None:
        pafs = self._arrow()
        try:
            self._fs, base = pafs.FileSystem.from_uri(uri)
            self._base = base.rstrip("/")
            info = self._fs.get_file_info(self._base)
            if info.type == pafs.FileType.File:
                raise RegistryError(
                    f"registry root {uri} is a file, not a directory; point it at a folder"
                )
            if info.type == pafs.FileType.NotFound:
                self._fs.create_dir(self._base, recursive=True)
        except (OSError, ValueError, NotImplementedError) as e:
            raise RegistryError(
                f"cannot open registry root {uri}: {e}. Check the URI and the credentials."
            ) from e

    def _arrow(self) -> Any:
        try:
            import pyarrow.fs as pafs
        except ImportError as e:
            raise RegistryError(
                f"registry root {self.root} is a storage URI, which needs pyarrow; install"
                " `ramo-stream[train]` (ray[train] brings it), or use a local path"
            ) from e
        return pafs

    def _show(self, rel: str) -> str:
        return str(self._local / rel) if self._fs is None else f"{self.root.rstrip('/')}/{rel}"

    def _read(self, rel: str) -> bytes | None:
        try:
            if self._fs is None:
                return (self._local / rel).read_bytes()
            with self._fs.open_input_stream(f"{self._base}/{rel}") as f:
                return bytes(f.readall())
        except (FileNotFoundError, NotADirectoryError):
            return None
        except OSError as e:
            raise RegistryError(f"cannot read {self._show(rel)}: {e}") from e

    def _scan(self) -> list[_Entry]:
        out: list[_Entry] = []
        mtime: float | None
        if self._fs is None:
            with os.scandir(self._local) as entries:
                for e in entries:
                    try:
                        mtime = e.stat(follow_symlinks=False).st_mtime
                        is_dir = e.is_dir(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    out.append(_Entry(e.name, _parse_name(e.name), is_dir, mtime))
            return out
        pafs = self._arrow()
        for info in self._fs.get_file_info(pafs.FileSelector(self._base, allow_not_found=True)):
            name = info.base_name
            is_dir = info.type == pafs.FileType.Directory
            mtime = info.mtime.timestamp() if info.mtime is not None else None
            out.append(_Entry(name, _parse_name(name), is_dir, mtime))
        return out

    def _commit(self, stage: Path, name: str, manifest: bytes) -> None:
        if self._fs is None:
            fsync_tree(stage)
            write_durable(stage / MANIFEST, manifest)
            fsync_dir(stage)
            dest = self._local / name
            if dest.exists():  # os.rename would silently replace an empty folder
                raise RegistryError(
                    f"{dest} already exists: is a second writer publishing to {self.root}?"
                    " Only one process (the trainer's rank 0) may publish."
                )
            os.rename(stage, dest)
            fsync_dir(self._local)
            return
        pafs = self._arrow()
        dest_uri = f"{self._base}/{name}"
        try:
            self._fs.create_dir(dest_uri, recursive=True)
            pafs.copy_files(
                str(stage),
                dest_uri,
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=self._fs,
            )
            with self._fs.open_output_stream(f"{dest_uri}/{MANIFEST}") as out:
                out.write(manifest)
        except OSError as e:
            raise RegistryError(
                f"upload of {name} to {self.root} failed: {e}. Nothing was published (a"
                " partial folder without manifest.json is ignored and cleaned up later)."
            ) from e

    def _write_pointer(self, data: bytes) -> None:
        tmp = f"{POINTER}.tmp-{uuid.uuid4().hex}"
        if self._fs is None:
            write_durable(self._local / tmp, data)
            os.replace(self._local / tmp, self._local / POINTER)
            fsync_dir(self._local)
            return
        pafs = self._arrow()
        if isinstance(self._fs, pafs.LocalFileSystem):  # file:// writes in place: rename instead
            with self._fs.open_output_stream(f"{self._base}/{tmp}") as out:
                out.write(data)
            self._fs.move(f"{self._base}/{tmp}", f"{self._base}/{POINTER}")
        else:  # one PUT: readers see the old object or the new one
            with self._fs.open_output_stream(f"{self._base}/{POINTER}") as out:
                out.write(data)

    def _delete(self, name: str) -> None:
        if self._fs is None:
            # Rename first so that readers see the whole version or none of it.
            doomed = self._local / f".tmp-del-{name}-{uuid.uuid4().hex}"
            os.rename(self._local / name, doomed)
            shutil.rmtree(doomed)
            return
        if self._has_manifest(name):  # first, so the version stops existing before it shrinks
            self._fs.delete_file(f"{self._base}/{name}/{MANIFEST}")
        self._fs.delete_dir(f"{self._base}/{name}")

    # ---- helpers ---------------------------------------------------------------------------

    def _has_manifest(self, name: str) -> bool:
        if self._fs is None:
            return (self._local / name / MANIFEST).is_file()
        info = self._fs.get_file_info(f"{self._base}/{name}/{MANIFEST}")
        return bool(info.type == self._arrow().FileType.File)

    def _pointer(self) -> int | None:
        raw = self._read(POINTER)
        if raw is None:
            return None
        text = raw.decode(errors="replace").strip()
        n = _parse_name(text)
        if n is None:
            raise RegistryError(
                f"{self._show(POINTER)} holds {text[:40]!r}, not a version name like 'v000003';"
                " write an existing version's name into it, or delete it to start over"
            )
        return n

    def _load(self, version: int) -> Manifest | None:
        rel = f"{version_name(version)}/{MANIFEST}"
        raw = self._read(rel)
        if raw is None:
            return None
        manifest = _parse_manifest(raw, self._show(rel))
        if manifest.version != version:
            raise RegistryError(
                f"{self._show(rel)} says version {manifest.version} but lies in folder"
                f" {version_name(version)}; version folders must not be renamed or copied"
                " between registries. Move it back or delete it."
            )
        return manifest

    def _present(self) -> str:
        numbers = sorted(e.version for e in self._scan() if e.version is not None)
        return ", ".join(map(str, numbers)) or "none"

    def _check_number(self, version: int) -> None:
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise RegistryError(f"version must be an integer >= 1 (got {version!r})")

    def _retain(self, current: int) -> None:
        """Delete versions beyond the newest ``keep`` (never ``current``), uploads that never
        finished, and temp files of writers that died over an hour ago."""
        entries = self._scan()
        versions = {e.version: e.name for e in entries if e.version is not None}
        complete = sorted(n for n, name in versions.items() if self._has_manifest(name))
        keep = set(complete[-self.keep :]) | {current}
        for n, name in versions.items():
            # Below current and without manifest: an upload whose writer died (single writer).
            if n not in keep and (n in complete or n < current):
                self._delete(name)
        cutoff = time.time() - STALE_TMP_S
        for e in entries:
            stale = e.mtime is not None and e.mtime < cutoff
            if stale and e.name.startswith((".tmp-", f"{POINTER}.tmp-")):
                if self._fs is not None:
                    path = f"{self._base}/{e.name}"
                    if e.is_dir:
                        self._fs.delete_dir(path)
                    else:
                        self._fs.delete_file(path)
                elif e.is_dir:
                    shutil.rmtree(self._local / e.name, ignore_errors=True)
                else:
                    (self._local / e.name).unlink(missing_ok=True)
