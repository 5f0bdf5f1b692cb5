"""The reward-model deployment: loaded versions, hot reload, dynamic batching.

Hot reload. A watcher thread reads the registry's CURRENT every ``serve.reload_poll_s``.
A new version is loaded (and warmed up with one forward) in that thread, off the request
path; then one reference assignment swaps the table of loaded versions, so a request sees
the old table or the new one, never a mix. A request resolves its version once, at
arrival, and its items carry that model object into the batch: a batch in flight finishes
on the model it started with even if the version is evicted meanwhile. Besides the current
version, the newest ``serve.keep_loaded - 1`` others stay loaded for requests that pin one.

Batching. ``score`` submits the items of a request to a ``DynamicBatcher``: items of
concurrent requests share forward passes, requests taking turns item by item. The batcher
forms a batch only when the model is free, so items that arrive during a forward all join
the next one (``reward_batching`` says why this is not ``@serve.batch``). A batch runs in a
worker thread, so the event loop keeps accepting requests meanwhile.

Admission. Before queueing, ``score`` asks ``reward_admission`` whether the request fits the
replica's token queue and can finish before its deadline; if not it is refused at once
(413 or 503 with Retry-After), in milliseconds rather than at the client's timeout.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any, NamedTuple

from ray import serve

from ramo_stream.registry.model import torch_dtype
from ramo_stream.registry.scoring import BatchItem, LoadedModel, model_max_length, score_items
from ramo_stream.registry.setup import open_registry
from ramo_stream.registry.store import Registry
from ramo_stream.serve.reward_admission import Admission, Throughput, estimate_tokens
from ramo_stream.serve.reward_batching import DynamicBatcher
from ramo_stream.serve.reward_metrics import ReplicaMetrics
from ramo_stream.serve.reward_protocol import (
    NoModel,
    ServiceError,
    VersionNotLoaded,
    no_model_message,
)
from ramo_stream.serve.reward_service import Item

log = logging.getLogger(__name__)


class _Table(NamedTuple):
    current: LoadedModel | None
    loaded: dict[int, LoadedModel]  # never mutated: a new table replaces it


class ModelPool:
    """The versions in memory and the watcher that keeps them in step with CURRENT.

    One writer (the watcher thread), any number of readers (requests): readers take
    ``self.table`` once and use that snapshot.
    """

    def __init__(
        self,
        registry: Registry,
        cache_dir: Path,
        keep_loaded: int,
        device: str,
        dtype: str,
        metrics: ReplicaMetrics,
        warmup: tuple[int, int] = (64, 64),  # max_length, batch_tokens of the warm-up pass
    ) -> None:
        self.registry, self.cache_dir, self.keep_loaded = registry, cache_dir, keep_loaded
        self.device, self.dtype = device, torch_dtype(dtype, device)
        self.metrics, self.warmup = metrics, warmup
        self.table = _Table(None, {})
        self._failed: set[int] = set()  # versions whose load failed (logged once each)

    def resolve(self, version: int | None) -> LoadedModel:
        table = self.table
        if version is None:
            if table.current is None:
                raise NoModel(no_model_message(self.registry.root))
            return table.current
        loaded = table.loaded.get(version)
        if loaded is None:
            have = ", ".join(map(str, sorted(table.loaded))) or "none"
            now = table.current.version if table.current else None
            raise VersionNotLoaded(
                f"model_version {version} is not loaded; loaded versions: {have} (current:"
                f" {now}). Pin one of those, or leave model_version out for the current one;"
                f" serve.keep_loaded={self.keep_loaded} versions are kept."
            )
        return loaded

    def poll(self) -> bool:
        """Swap in the version CURRENT names, loading it first if needed; True if swapped."""
        try:
            manifest = self.registry.current()
        except Exception as e:  # an unreadable pointer: keep serving what we have
            self.metrics.reload_failures.inc()
            log.warning("registry %s: cannot read CURRENT: %s", self.registry.root, e)
            return False
        if manifest is None:
            return False
        version, table = manifest.version, self.table
        if table.current is not None and table.current.version == version:
            return False
        loaded = table.loaded.get(version)
        if loaded is None:
            started = time.monotonic()
            try:
                loaded = self._load(version)
            except Exception as e:  # deleted by retention meanwhile, a broken folder, OOM
                self.metrics.reload_failures.inc()
                if version not in self._failed:
                    self._failed.add(version)
                    log.warning("cannot load version %d from %s (retrying every poll): %s",
                                version, self.registry.root, e)  # fmt: skip
                return False
            self.metrics.load_seconds.observe(time.monotonic() - started)
        self._swap(loaded)
        log.info("serving version %d", version)
        return True

    def _load(self, version: int) -> LoadedModel:
        from ramo_stream.registry.model import load_reward_model

        folder = self.registry.local_dir(version, self.cache_dir)
        model, tokenizer = load_reward_model(folder, dtype=self.dtype)
        model = model.to(self.device).eval()
        loaded = LoadedModel(version, model, tokenizer, self.device,
                             model_max_length(model, tokenizer))  # fmt: skip
        # One forward now, so the first real batch does not pay for lazy initialisation.
        score_items([BatchItem(loaded, "warm-up", "ok")], *self.warmup)
        return loaded

    def _swap(self, new: LoadedModel) -> None:
        loaded = {**self.table.loaded, new.version: new}
        keep = set(sorted(loaded, reverse=True)[: self.keep_loaded]) | {new.version}
        self.table = _Table(new, {v: m for v, m in loaded.items() if v in keep})  # the swap
        self.metrics.reloads.inc()
        self.metrics.model_version.set(new.version)
        self.metrics.loaded_versions.set(len(self.table.loaded))

    def watch(self, stop: threading.Event, every_s: float) -> None:
        swapped = False
        # After a swap, look again at once: CURRENT may have moved on during a long load.
        while swapped or not stop.wait(every_s):
            if stop.is_set():
                return
            try:
                swapped = self.poll()
            except Exception:  # the watcher must outlive any one bad poll
                swapped = False
                log.exception("reward-model watcher: poll failed")


@serve.deployment
class RewardModelServer:
    """Holds the loaded versions; ``score`` is what the ingress calls."""

    def __init__(self, args: Any) -> None:  # RewardAppArgs (reward_app imports this module)
        import torch

        settings = args.settings()
        s = settings.serve
        self.metrics = ReplicaMetrics()
        registry = open_registry(settings)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        self.max_length, self.batch_tokens = s.max_length, s.forward_tokens(device)
        self.pass_overhead = s.pass_overhead(device)
        self.pool = ModelPool(registry, registry.cache_dir, s.keep_loaded, device, s.dtype,
                              self.metrics)  # fmt: skip
        self.pool.poll()  # serve the current version from the first request on
        self._stop = threading.Event()
        threading.Thread(target=self.pool.watch, args=(self._stop, s.reload_poll_s),
                         name="ramo-reward-watcher", daemon=True).start()  # fmt: skip
        self.throughput = Throughput()
        try:
            self.replica_id = serve.get_replica_context().replica_id.unique_id
        except Exception:  # outside Serve (a test building the class directly)
            self.replica_id = f"pid-{os.getpid()}"
        self.admission = Admission(s.max_queued_tokens, self.throughput)
        self.batcher = DynamicBatcher(
            self._score_batch, s.max_batch_size, s.batch_wait_timeout_s,
            on_batch=self.metrics.batch_size.observe, max_batch_cost=s.batch_cost(device),
            on_done=self._batch_done,
        )  # fmt: skip

    def _batch_done(self, cost: int, seconds: float) -> None:
        self.throughput.observe(cost, seconds)
        self.metrics.queued_tokens.set(self.batcher.queued_cost)

    async def score(
        self, items: list[Item], version: int | None, timeout_s: float | None = None
    ) -> tuple[list[float], int, float | None, str] | ServiceError:
        """Rewards of ``items``, all from one version, that version, this replica's measured
        speed and its id (the ingress's admission control sums the speeds); or the error.

        ``timeout_s``: the request's deadline, from now. An expected error (no model yet, a
        version not loaded, overload) is returned, not raised: a raise would log a traceback
        per request, and a loop may poll for minutes before the first version exists.
        """
        started = time.monotonic()
        try:
            loaded = self.pool.resolve(version)
            costs = [estimate_tokens(p, r, self.max_length) for p, r in items]
            self.admission.check(self.batcher.queued_costs(), sum(costs), timeout_s)
        except ServiceError as e:
            self.metrics.refused.labels(e.kind).inc()
            return e
        deadline = None if timeout_s is None else started + timeout_s
        batch = [BatchItem(loaded, p, r) for p, r in items]
        try:
            values = await self.batcher.submit_many(batch, costs, deadline)
        except ServiceError as e:  # its deadline passed while it waited
            self.metrics.refused.labels(e.kind).inc()
            return e
        finally:
            self.metrics.queued_tokens.set(self.batcher.queued_cost)
        return values, loaded.version, self.throughput.tokens_per_s, self.replica_id

    def _score_batch(self, items: list[BatchItem]) -> list[float]:  # in the batcher's thread
        started = time.perf_counter()
        try:
            return score_items(items, self.max_length, self.batch_tokens,
                               self.metrics.on_forward, self.pass_overhead)  # fmt: skip
        finally:
            self.metrics.busy_seconds.inc(time.perf_counter() - started)

    def info(self) -> dict[str, Any]:
        table = self.pool.table
        return {
            "current": table.current.version if table.current else None,
            "loaded": sorted(table.loaded),
            "registry": self.pool.registry.root,
        }

    def metrics_text(self) -> str:
        return self.metrics.text()

    def __del__(self) -> None:
        stop = getattr(self, "_stop", None)
        if stop is not None:
            stop.set()
        batcher = getattr(self, "batcher", None)
        if batcher is not None:
            batcher.close()
