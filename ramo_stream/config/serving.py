"""Settings of the reward service (`serve`) and the selection gate (`select`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    model_validator,
)

from ramo_stream.config.base import Secret, _Section


def is_loopback(host: str) -> bool:
    """Whether binding ``host`` only accepts connections from this machine."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name other than localhost may resolve to anything
        return False


class ServeSettings(_Section):
    host: str = Field(
        default="127.0.0.1",
        description="Address `ramo serve` binds. Anything but a loopback address needs"
        " serve.api_token.",
    )
    port: int = Field(default=8000, ge=1, le=65535, description="HTTP port of `ramo serve`.")
    api_token: Secret | None = Field(
        default=None,
        min_length=16,
        description="Bearer token every request but GET /health must carry (Authorization:"
        " Bearer ...); compared in constant time; surrounding whitespace is stripped. Prefer"
        " the variable RAMO_SERVE__API_TOKEN or serve.api_token_file to a flag or file.",
    )
    api_token_file: Path | None = Field(
        default=None,
        description="A file holding serve.api_token (a mounted Kubernetes Secret), read at"
        " start; a trailing newline is stripped.",
    )
    max_body_bytes: int = Field(
        default=1 << 20, ge=1024, description="Larger request bodies get 413 before parsing."
    )
    max_items: int = Field(
        default=256, ge=1, description="Most items (or OpenRLHF queries) in one request; 413."
    )
    replicas: int = Field(
        default=1, ge=1, description="Reward-model replicas (ignored when autoscaling is set)."
    )
    autoscaling_min_replicas: int | None = Field(
        default=None,
        ge=1,
        description="Autoscale the reward model between this and autoscaling_max_replicas"
        " replicas (both or neither), targeting max_batch_size ongoing requests per replica.",
    )
    autoscaling_max_replicas: int | None = Field(
        default=None, ge=1, description="Upper bound of autoscaling."
    )
    replica_cpus: float = Field(
        default=1.0,
        gt=0,
        description="CPUs reserved per reward-model replica (torch uses that many threads).",
    )
    replica_gpus: float | None = Field(
        default=None,
        ge=0,
        description="GPUs per reward-model replica. Default: 1 when the Ray cluster has a GPU,"
        " else 0.",
    )
    max_batch_size: int = Field(
        default=32, ge=1, description="Items scored together at most (one dynamic batch)."
    )
    batch_wait_timeout_s: float = Field(
        default=0.005, ge=0, description="Longest wait for a batch to fill after its first item."
    )
    max_ongoing_requests: int = Field(
        default=256,
        ge=1,
        description="Requests a reward-model replica takes at once; must be >= max_batch_size"
        " or batches can never fill. Keep it high: serve.max_queued_tokens is what bounds the"
        " work a replica holds, and requests held back here wait unseen by admission control.",
    )
    max_queued_tokens: int = Field(
        default=1 << 18,
        ge=8,
        description="Work a reward-model replica queues at most, in estimated tokens"
        " (characters / 4, each item capped at max_length). A request that would pass it gets"
        " 503 overloaded with Retry-After; one larger than it alone gets 413.",
    )
    max_batch_tokens: int | None = Field(
        default=None,
        ge=8,
        description="Estimated tokens one dynamic batch takes at most, so a small request"
        " waits for at most one such batch behind a large one (requests take turns item by"
        " item). Default: batch_tokens on a CPU (where batching gains little and a 4096-token"
        " batch held small requests 3-4 s behind a large one), 4 x batch_tokens on a GPU.",
    )
    request_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="Deadline of a scoring request when it sends no X-Request-Timeout header:"
        " a request predicted to finish later is refused at once (503 overloaded, Retry-After),"
        " and one still waiting at its deadline gets 503 deadline_exceeded.",
    )
    max_request_timeout_s: float = Field(
        default=120.0,
        gt=0,
        description="Most a client may ask for with the X-Request-Timeout header (seconds);"
        " larger values are capped to it.",
    )
    health_timeout_s: float = Field(
        default=2.0,
        gt=0,
        description="GET /health answers 503 when no reward-model replica replies within this.",
    )
    batch_tokens: int | None = Field(
        default=None,
        ge=8,
        description="Token budget of one forward pass: a batch sorted by length is cut into"
        " sub-batches of rows x padded length <= this. Default: 16384 on a GPU; on a CPU,"
        " max(1024, max_length), since batching gains nothing there and padding costs.",
    )
    pass_overhead_tokens: int | None = Field(
        default=None,
        ge=0,
        description="What one forward pass costs besides its tokens, in tokens: a batch is cut"
        " into passes minimising passes x this + padded tokens. Default: 40 on a CPU"
        " (MiniLM, one thread: benchmarks/serve_load.py measured 41); 2048 on a GPU (an"
        " estimate, not measured; serve_load.py prints the figure for a model and device).",
    )
    max_length: int = Field(
        default=1024, ge=8, description="Tokens scored per item, kept from the end."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weights dtype: auto is bfloat16 on GPU, float32 on CPU."
    )
    reload_poll_s: float = Field(
        default=1.0, gt=0, description="How often the registry's CURRENT is checked."
    )
    rbr: Literal["off", "opt_in", "default"] = Field(
        default="off",
        description="Rule-Based Rewards: off (no proposition grader is deployed; a request"
        " asking for rbr gets 422), opt_in (deployed; /v1/score adds the RBR reward to items"
        ' of requests with "rbr": true) or default (every /v1/score request gets'
        ' rm + rbr unless it sends "rbr": false). Items then need a response_type.',
    )
    rbr_artifact: Path | None = Field(
        default=None,
        description="RBR weights (an rbr-*.json of `ramo rbr fit`). Default: the newest one"
        " fitted for paths.propositions, paths.rbr_rubric and the configured grader.",
    )
    rbr_cpus: float = Field(
        default=1.0, gt=0, description="CPUs of the RBR deployment (it holds the grader)."
    )
    keep_loaded: int = Field(
        default=2,
        ge=1,
        description="Versions kept in memory (the current one and the newest before it), so a"
        " request may pin one with model_version.",
    )

    @model_validator(mode="before")
    @classmethod
    def _token_from_file(cls, data: Any) -> Any:
        """serve.api_token from serve.api_token_file; the token itself never in a message."""
        if not isinstance(data, dict) or not data.get("api_token_file"):
            return data
        path = Path(str(data["api_token_file"])).expanduser()
        try:
            token = path.read_text().strip()
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(
                f"serve.api_token_file={str(path)!r} cannot be read ({type(e).__name__}); mount"
                " the Secret there, or unset the setting"
            ) from None
        given = data.get("api_token")
        if given is not None and str(given).strip() != token:
            raise ValueError(
                f"serve.api_token and serve.api_token_file={str(path)!r} hold different tokens;"
                " set only one of them"
            )
        return {**data, "api_token": token}

    @model_validator(mode="after")
    def _consistent(self) -> ServeSettings:
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests={self.max_ongoing_requests} is below max_batch_size="
                f"{self.max_batch_size}, so a batch could never fill; raise"
                " max_ongoing_requests or lower max_batch_size"
            )
        lo, hi = self.autoscaling_min_replicas, self.autoscaling_max_replicas
        if (lo is None) != (hi is None):
            raise ValueError(
                f"autoscaling_min_replicas={lo} and autoscaling_max_replicas={hi}: set both"
                " (autoscaling) or neither (a fixed number of replicas)"
            )
        if lo is not None and hi is not None and lo > hi:
            raise ValueError(
                f"autoscaling_min_replicas={lo} is above autoscaling_max_replicas={hi}"
            )
        if self.request_timeout_s > self.max_request_timeout_s:
            raise ValueError(
                f"request_timeout_s={self.request_timeout_s} is above max_request_timeout_s="
                f"{self.max_request_timeout_s}; lower the default or raise the maximum"
            )
        if self.batch_tokens is not None and self.batch_tokens < self.max_length:
            raise ValueError(
                f"batch_tokens={self.batch_tokens} cannot hold one item of max_length="
                f"{self.max_length}; raise batch_tokens or lower max_length"
            )
        return self

    def forward_tokens(self, device: str) -> int:
        """``batch_tokens``, or its default for ``device`` ("cuda" or "cpu")."""
        if self.batch_tokens is not None:
            return self.batch_tokens
        return 16384 if device == "cuda" else max(1024, self.max_length)

    def batch_cost(self, device: str) -> int:
        """``max_batch_tokens``, or its default for ``device``."""
        return self.max_batch_tokens or (4 if device == "cuda" else 1) * self.forward_tokens(device)

    def pass_overhead(self, device: str) -> int:
        """``pass_overhead_tokens``, or its default for ``device`` ("cuda" or "cpu")."""
        if self.pass_overhead_tokens is not None:
            return self.pass_overhead_tokens
        return 2048 if device == "cuda" else 40

    def check_exposure(self) -> None:
        """Refuse to serve on a non-loopback address without a token (raises ValueError)."""
        if self.api_token is None and not is_loopback(self.host):
            raise ValueError(
                f"serve.host={self.host!r} accepts connections from other machines, but"
                " serve.api_token is unset, so anyone reaching it could use the service. Set"
                " RAMO_SERVE__API_TOKEN (16+ characters), or bind 127.0.0.1"
            )


class SelectSettings(_Section):
    """The selection gate between the pairs topic and the labeler (`ramo select`)."""

    enabled: Literal["auto", "on", "off"] = Field(
        default="auto",
        description="Whether `ramo up` runs the gate in front of the labeler (`ramo select`"
        " always does). auto: on when the pairs waiting at start (on the pairs topic and in"
        " --file) are more than the labeler labels in train.publish_every_s at its rate"
        " (select.budget_per_s, or as measured by the last `ramo up`); off when that rate is"
        " not known. --demo sets off.",
    )
    strategy: Literal["d-opt", "uncertainty", "random", "all"] = Field(
        default="d-opt",
        description="Which pairs to label: d-opt (p(1-p) x^T M^-1 x, Fisher information of the"
        " reward head), uncertainty (p(1-p)), random, all (no gate: every pair is selected).",
    )
    window_pairs: int | None = Field(
        default=100,
        ge=1,
        description="A window is this many arriving pairs (set window_s instead for a time"
        " window; exactly one of the two). A poll with fewer pairs is a partial window with a"
        " pro-rated budget.",
    )
    window_s: float | None = Field(
        default=None,
        gt=0,
        description="A window is the pairs that arrived in this many seconds (the gate polls"
        " once per window).",
    )
    budget: float = Field(
        default=10.0,
        ge=0,
        description="Pairs per window sent to the labeler when no rate is known (no"
        " select.budget_per_s, and no measured labeler: `ramo select` on its own, or `ramo up`"
        " before the labeler's first batch). Fractions carry over.",
    )
    budget_per_s: float | None = Field(
        default=None,
        ge=0,
        description="The budget as labels per second, earned per second of the gate's running"
        " time and shared among a poll's windows (a quiet spell earns at most 30 s). Unset:"
        " in `ramo up`, the labeler's measured rate (pairs per second of labeling, last 20"
        " batches); elsewhere select.budget per window.",
    )
    lam: float = Field(
        default=1.0, gt=0, description="lambda of M = sum p(1-p) x x^T + lambda I (its prior)."
    )
    greedy: bool = Field(
        default=False,
        description="d-opt: pick a window's pairs one at a time, re-scoring the rest against"
        " the updated M (avoids near-duplicates); else the top-k scores of the window.",
    )
    keep_m_on_new_version: bool = Field(
        default=False,
        description="Keep M when a new reward-model version is served (its features moved, so"
        " M is then an approximation); else restart from lambda I.",
    )
    reload_poll_s: float = Field(
        default=5.0, gt=0, description="How often the registry's CURRENT is checked."
    )
    max_length: int = Field(default=512, ge=8, description="Tokens per response, from the end.")
    batch: int = Field(default=32, ge=1, description="Responses per forward pass.")
    device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where features are computed; auto: cuda when present."
    )
    max_in_flight: int = Field(
        default=1000, ge=1, description="Most pairs polled (and held uncommitted) at once."
    )
    features_wait_s: float = Field(
        default=120.0,
        gt=0,
        description="`ramo up`: how long the gate waits for its features deployment (a poll's"
        " reply, or a replica Serve restarts after a crash) before it stops with an error; the"
        " poll stays uncommitted, nothing is dead-lettered.",
    )
    linger_s: float = Field(
        default=1.0,
        ge=0,
        description="After a poll smaller than a window, wait this long so the next fills.",
    )
    group: str = Field(default="ramo-select", description="Consumer group on the pairs topic.")
    seed: int = Field(default=0, description="Seed of the random strategy.")

    @model_validator(mode="after")
    def _one_window(self) -> SelectSettings:
        if (self.window_pairs is None) == (self.window_s is None):
            raise ValueError(
                f"set exactly one of window_pairs ({self.window_pairs}) and window_s"
                f" ({self.window_s}); e.g. select.window_pairs=null with select.window_s=10"
            )
        if self.window_pairs is not None and self.window_pairs > self.max_in_flight:
            raise ValueError(
                f"window_pairs={self.window_pairs} exceeds max_in_flight={self.max_in_flight}:"
                " a window must fit in one poll; raise select.max_in_flight"
            )
        return self
