"""The registry built from settings: ``open_registry``, the one way the trainer, the reward
service, the selection gate, ``ramo eval``, ``ramo models`` and ``ramo up`` open it."""

from __future__ import annotations

from ramo_stream.config import Settings
from ramo_stream.registry.store import Registry


def registry_root(settings: Settings) -> str:
    """Where the registry lives: ``train.registry`` (a path or URI), else ``paths.registry_dir``."""
    return settings.train.registry or str(settings.paths.registry_dir)


def open_registry(settings: Settings, root: str | None = None) -> Registry:
    """The registry the settings name, as every entry point opens it: the trainer publishes
    into it, the reward service, the gate, ``ramo eval`` and ``ramo models`` read it."""
    return Registry(
        root or registry_root(settings),
        keep=settings.train.keep_versions,
        cache_dir=settings.paths.cache_dir / "registry-cache",  # for URI roots
    )
