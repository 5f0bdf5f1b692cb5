"""Prometheus metrics of the reward service, in two registries that GET /metrics joins.

The ingress counts requests and their latency; each reward-model replica counts its
batches, forward passes, tokens and reloads. The ingress asks a replica for its text on
every scrape, so one endpoint shows both. (With several model replicas, a scrape shows the
replica that answered it.)
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # the *_created series only add noise to a scrape

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_LOAD_BUCKETS = (0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class HttpMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ramo_reward_requests",
            "HTTP requests by endpoint and status code.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ramo_reward_request_seconds",
            "HTTP request latency, body read to reply, by endpoint.",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.rbr_requests = Counter(
            "ramo_reward_rbr_requests",
            "Answered scoring requests whose rewards include the Rule-Based Reward.",
            ["endpoint"],
            registry=self.registry,
        )

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.latency.labels(endpoint).observe(seconds)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


class ReplicaMetrics:
    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.batch_size = Histogram(
            "ramo_reward_batch_size",
            "Items per dynamic batch (items of several requests share one batch).",
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.forward_passes = Counter(
            "ramo_reward_forward_passes", "Forward passes (length-sorted sub-batches).", registry=r
        )
        self.busy_seconds = Counter(
            "ramo_reward_model_busy_seconds",
            "Time the model spent scoring batches; its rate is the replica's utilisation"
            " (near 1: saturated, add replicas).",
            registry=r,
        )
        self.tokens = Counter(
            "ramo_reward_tokens",
            "Tokens through the model: kind=real, or kind=padding (wasted).",
            ["kind"],
            registry=r,
        )
        self.model_version = Gauge(
            "ramo_reward_model_version", "Version new requests get (0: none yet).", registry=r
        )
        self.loaded_versions = Gauge(
            "ramo_reward_loaded_versions", "Versions held in memory for pinning.", registry=r
        )
        self.reloads = Counter(
            "ramo_reward_reloads", "Versions swapped in (the first load included).", registry=r
        )
        self.reload_failures = Counter(
            "ramo_reward_reload_failures",
            "Failed attempts to read the registry or load a version (retried next poll).",
            registry=r,
        )
        self.queued_tokens = Gauge(
            "ramo_reward_queued_tokens",
            "Estimated tokens waiting or being scored on the replica (admission control's"
            " queue; bounded by serve.max_queued_tokens).",
            registry=r,
        )
        self.refused = Counter(
            "ramo_reward_refused",
            "Requests the replica refused or dropped, by reason: overloaded (queue full or the"
            " deadline cannot be met), deadline_exceeded (expired while waiting), too_large,"
            " no_model, version_not_loaded.",
            ["reason"],
            registry=r,
        )
        self.load_seconds = Histogram(
            "ramo_reward_model_load_seconds",
            "Time to load a new version, off the request path.",
            buckets=_LOAD_BUCKETS,
            registry=r,
        )

    def on_forward(self, rows: int, width: int, real_tokens: int) -> None:
        self.forward_passes.inc()
        self.tokens.labels("real").inc(real_tokens)
        self.tokens.labels("padding").inc(rows * width - real_tokens)

    def text(self) -> str:
        return generate_latest(self.registry).decode()
